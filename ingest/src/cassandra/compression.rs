//! Compressed commit-log segments (`commitlog_compression` in cassandra.yaml): LZ4, Snappy,
//! Deflate and Zstd, as Cassandra's `CompressedSegment` writes them.
//!
//! ```text
//! header   as uncompressed, its JSON parameters naming "compressionClass"
//! section  i32 position of the next sync marker | u32 CRC32(id low, id high, this position)
//!          i32 uncompressed length | compressed entries up to the next marker
//! ```
//! Entries inside a section are framed exactly as in uncompressed segments. [`uncompressed_image`]
//! rebuilds the segment as Cassandra would have written it without compression — sections laid
//! end to end, each marker pointing past its uncompressed entries — so one reader serves both,
//! and entry positions are positions in that image: Cassandra's "logical" positions, the same on
//! every read of the segment.

use std::io::Read;

use super::segment::{be_i32, marker_crc, write_header};

/// A compression codec of Cassandra's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `LZ4Compressor`: a 4-byte little-endian uncompressed length, then an LZ4 block.
    Lz4,
    /// `SnappyCompressor`: a raw Snappy block.
    Snappy,
    /// `DeflateCompressor`: a zlib stream (java.util.zip.Deflater).
    Deflate,
    /// `ZstdCompressor`: a Zstandard frame.
    Zstd,
}

impl Codec {
    /// The codec the header's JSON parameters name; `Ok(None)` when uncompressed.
    pub fn from_parameters(parameters: &str) -> Result<Option<Codec>, String> {
        let json: serde_json::Value = match serde_json::from_str(parameters) {
            Ok(j) => j,
            Err(e) => return Err(format!("header parameters are not JSON ({e}): {parameters}")),
        };
        if json.get("encryptionCipher").is_some() || json.get("encCipher").is_some() {
            return Err("encrypted segments are not supported".to_string());
        }
        let Some(class) = json.get("compressionClass").and_then(|c| c.as_str()) else { return Ok(None) };
        let short = class.rsplit('.').next().unwrap_or(class);
        Ok(Some(match short {
            "LZ4Compressor" => Codec::Lz4,
            "SnappyCompressor" => Codec::Snappy,
            "DeflateCompressor" => Codec::Deflate,
            "ZstdCompressor" => Codec::Zstd,
            other => return Err(format!("compression class {other} is not supported")),
        }))
    }

    /// Decompresses one section's bytes, which must come out `expected` bytes long.
    pub fn decompress(self, input: &[u8], expected: usize) -> Result<Vec<u8>, String> {
        let out = match self {
            Codec::Lz4 => {
                let Some(prefix) = input.get(..4) else { return Err("LZ4 block without its length".into()) };
                let len = u32::from_le_bytes(prefix.try_into().unwrap()) as usize;
                if len != expected {
                    return Err(format!("LZ4 block says {len} bytes, the section {expected}"));
                }
                lz4_flex::block::decompress(&input[4..], len).map_err(|e| format!("LZ4: {e}"))?
            }
            Codec::Snappy => snap::raw::Decoder::new().decompress_vec(input).map_err(|e| format!("Snappy: {e}"))?,
            Codec::Deflate => {
                let mut out = Vec::with_capacity(expected);
                flate2::read::ZlibDecoder::new(input)
                    .take(expected as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("Deflate: {e}"))?;
                out
            }
            Codec::Zstd => {
                let mut out = Vec::with_capacity(expected);
                let mut source = input;
                ruzstd::decoding::StreamingDecoder::new(&mut source)
                    .map_err(|e| format!("Zstd: {e}"))?
                    .take(expected as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("Zstd: {e}"))?;
                out
            }
        };
        if out.len() != expected {
            return Err(format!("section decompressed to {} bytes, its header says {expected}", out.len()));
        }
        Ok(out)
    }
}

/// The segment as it would read uncompressed, from a compressed `data` whose header (already
/// checked, `header_len` bytes) says version `version` and id `id`. Sections past `limit` (a
/// durable offset in the compressed file) are left out. Errors name the byte of `data` at fault.
pub(crate) fn uncompressed_image(
    data: &[u8],
    codec: Codec,
    version: i32,
    id: i64,
    header_len: usize,
    limit: usize,
) -> Result<Vec<u8>, (usize, String)> {
    let mut image = write_header(version, id, "{}");
    let mut at = header_len;
    while at + 8 <= limit {
        let next = be_i32(&data[at..at + 4]);
        let stored = be_i32(&data[at + 4..at + 8]) as u32;
        if next == 0 && stored == 0 {
            break;
        }
        if marker_crc(id, at) != stored {
            return Err((at, "sync marker CRC mismatch".into()));
        }
        let next = next as usize;
        if next < at + 12 || next > data.len() {
            return Err((at, format!("sync marker points to byte {next}, outside the segment")));
        }
        if next > limit {
            break;
        }
        let length = be_i32(&data[at + 8..at + 12]);
        if length < 0 || length as usize > 256 * 1024 * 1024 {
            return Err((at + 8, format!("impossible uncompressed section length {length}")));
        }
        let entries = codec.decompress(&data[at + 12..next], length as usize).map_err(|e| (at + 12, e))?;
        let marker_at = image.len();
        let image_next = (marker_at + 8 + entries.len()) as i32;
        image.extend_from_slice(&image_next.to_be_bytes());
        image.extend_from_slice(&marker_crc(id, marker_at).to_be_bytes());
        image.extend_from_slice(&entries);
        at = next;
    }
    Ok(image)
}
