//! Compressed segments: the real fixtures re-encoded the way Cassandra's `CompressedSegment` lays
//! them out (each sync section's entries compressed behind a marker and the uncompressed length),
//! with each codec. No Cassandra distribution is reachable here to write compressed segments
//! itself, so these tests pin the layout as read from its code; decoding must give the same
//! mutations and the same upgrade-test hash as the uncompressed originals.

use weir_ingest::cassandra::{
    compression::Codec,
    fixtures::{Fixture, compressed_copy, default_dir, fold},
    read_segment,
};

const CODECS: [(Codec, &str); 4] = [
    (Codec::Lz4, "LZ4Compressor"),
    (Codec::Snappy, "SnappyCompressor"),
    (Codec::Deflate, "DeflateCompressor"),
    (Codec::Zstd, "ZstdCompressor"),
];

fn digest(name: &str, data: &[u8], fixture: &Fixture) -> Result<(usize, usize, i32), String> {
    let tables = fixture.tables();
    let (mut updates, mut cells, mut hash) = (0, 0, 0i32);
    read_segment(name, data, &tables, |_, u| {
        updates += 1;
        for row in &u.rows {
            if row.clustering.first().and_then(|c| *c).is_some_and(|c| c.starts_with(b"name")) {
                for cell in &row.cells {
                    cells += 1;
                    hash = fold(hash, cell.value);
                }
            }
        }
    })
    .map_err(|e| e.to_string())?;
    Ok((updates, cells, hash))
}

#[test]
fn every_codec_decodes_to_the_same_mutations() {
    for fixture in Fixture::load_all(&default_dir()).unwrap() {
        let plain = std::fs::read(&fixture.segment).unwrap();
        let expected = digest("plain.log", &plain, &fixture).unwrap();
        assert_eq!((expected.1, expected.2), (fixture.cells, fixture.hash));
        for (codec, class) in CODECS {
            let compressed = compressed_copy(&plain, codec, class);
            assert!(compressed.len() < plain.len(), "{class} should shrink the segment");
            let got = digest("compressed.log", &compressed, &fixture).unwrap_or_else(|e| panic!("{class}: {e}"));
            assert_eq!(got, expected, "{} with {class}", fixture.version);
        }
    }
}

#[test]
fn damaged_compressed_data_is_an_error_not_a_panic() {
    let fixture = Fixture::load(&default_dir().join("4.0.11")).unwrap();
    let plain = std::fs::read(&fixture.segment).unwrap();
    let expected = digest("plain.log", &plain, &fixture).unwrap();
    for (codec, class) in CODECS {
        let compressed = compressed_copy(&plain, codec, class);
        let written = compressed.len() - 64;
        for (n, i) in (0..written).step_by(97).enumerate() {
            let mut damaged = compressed.clone();
            damaged[i] ^= 1 << (n % 8);
            match digest("damaged.log", &damaged, &fixture) {
                Err(e) => assert!(e.contains("damaged.log"), "{class}: {e}"),
                Ok(got) => assert_eq!(got, expected, "{class}: flip at byte {i} changed the data without an error"),
            }
        }
    }
}

#[test]
fn unknown_codecs_and_encryption_are_named() {
    let fixture = Fixture::load(&default_dir().join("3.0.29")).unwrap();
    let plain = std::fs::read(&fixture.segment).unwrap();
    let odd = compressed_copy(&plain, Codec::Lz4, "BrotliCompressor");
    let err = digest("odd.log", &odd, &fixture).unwrap_err();
    assert!(err.contains("BrotliCompressor is not supported"), "{err}");
}
