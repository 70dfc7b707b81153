//! Damaged copies of the real segments, made here: every bit flip inside the written part and every
//! truncation is reported with the file and a byte position, and nothing panics.

use weir_ingest::cassandra::{
    CommitLogError,
    fixtures::{Fixture, default_dir},
    mutation::Tables,
    read_segment,
};

fn fixture(version: &str) -> (Vec<u8>, Tables) {
    let f = Fixture::load(&default_dir().join(version)).unwrap();
    (std::fs::read(&f.segment).unwrap(), f.tables())
}

fn position(e: &CommitLogError) -> u64 {
    match e {
        CommitLogError::Segment(s) => s.position,
        CommitLogError::Mutation { position, .. } => *position,
    }
}

/// One digest per captured partition update (entry position, key, every cell), in log order.
fn digests(name: &str, data: &[u8], tables: &Tables) -> Result<Vec<(u64, u64)>, CommitLogError> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    read_segment(name, data, tables, |position, u| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        u.key.hash(&mut h);
        for row in &u.rows {
            row.clustering.hash(&mut h);
            for c in &row.cells {
                (c.column, c.timestamp, c.value).hash(&mut h);
            }
        }
        out.push((position, h.finish()));
    })?;
    Ok(out)
}

fn bit_flips_are_caught(version: &str) {
    let (data, tables) = fixture(version);
    let clean_stats = read_segment("clean.log", &data, &tables, |_, _| {}).unwrap();
    let clean = digests("clean.log", &data, &tables).unwrap();
    // Every 7th byte of the written part, a different bit each time; the header and the first
    // sync marker byte by byte.
    let positions = (0..28).chain((28..clean_stats.bytes as usize).step_by(7));
    let (mut caught, mut harmless) = (0, 0);
    for (n, i) in positions.enumerate() {
        let mut damaged = data.clone();
        damaged[i] ^= 1 << (n % 8);
        match digests("damaged.log", &damaged, &tables) {
            Err(e) => {
                assert!(e.to_string().contains("damaged.log"), "{e}");
                assert!(position(&e) <= clean_stats.bytes, "{e}");
                caught += 1;
            }
            // Only bytes the format does not protect and that change nothing may pass
            // (the next-marker pointer of an empty trailing section).
            Ok(decoded) => {
                assert_eq!(decoded, clean, "{version}: flip at byte {i} changed the decoded data without an error");
                harmless += 1;
            }
        }
    }
    assert!(caught > 1000 && harmless < 8, "caught {caught}, harmless {harmless}");
}

fn truncations_are_caught(version: &str) {
    let (data, tables) = fixture(version);
    let clean = digests("clean.log", &data, &tables).unwrap();
    let end = read_segment("clean.log", &data, &tables, |_, _| {}).unwrap().bytes as usize;
    for cut in (0..end).step_by(5) {
        match digests("cut.log", &data[..cut], &tables) {
            Err(e) => assert!(e.to_string().contains("cut.log"), "{e}"),
            // A cut at a section boundary reads like a shorter segment: what it yields must be
            // exactly the start of the real one.
            Ok(decoded) => assert_eq!(decoded[..], clean[..decoded.len()], "cut at {cut}"),
        }
    }
}

#[test]
fn bit_flips_in_a_3_0_segment_are_caught() {
    bit_flips_are_caught("3.0.29");
}

#[test]
fn bit_flips_in_a_4_0_segment_are_caught() {
    bit_flips_are_caught("4.0.11");
}

#[test]
fn truncated_segments_never_pass_for_whole() {
    truncations_are_caught("3.0.29");
    truncations_are_caught("4.0.11");
}

#[test]
fn random_garbage_is_an_error_not_a_panic() {
    let (data, tables) = fixture("4.0.11");
    // A small deterministic generator: the same inputs every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let mut damaged = data[..20_000].to_vec();
        for _ in 0..(next() % 16 + 1) {
            let i = (next() as usize) % damaged.len();
            damaged[i] = next() as u8;
        }
        let _ = read_segment("garbage.log", &damaged, &tables, |_, _| {});
        // Mutation bodies alone, with valid framing bypassed: the decoder must return, never panic.
        let start = 36 + (next() as usize % 1000);
        let _ = weir_ingest::cassandra::mutation::decode(&damaged[start..start + (next() as usize % 4000)], &tables);
    }
}
