//! Arrow record batches as checkpoints hold them: one Arrow IPC stream, in base64 (the joined
//! tables' rows, an interval join's held events and kept rows).

use base64::Engine as _;
use deltalake::arrow::{
    array::RecordBatch,
    ipc::{reader::StreamReader, writer::StreamWriter},
};

/// `batch` as an IPC stream in base64.
pub fn encode(batch: &RecordBatch) -> Result<String, String> {
    let mut bytes = Vec::new();
    let mut writer = StreamWriter::try_new(&mut bytes, &batch.schema()).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The batches of an IPC stream in base64.
pub fn decode(text: &str) -> Result<Vec<RecordBatch>, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| e.to_string())?;
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    reader.map(|b| b.map_err(|e| e.to_string())).collect()
}
