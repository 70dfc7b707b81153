//! Fuzzes the commit-log reader: any bytes, read as a whole segment and as one bare mutation,
//! must end in a result or an error, never a panic, hang or out-of-bounds access.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_ingest::cassandra::{fixtures::Fixture, mutation, mutation::Tables, read_segment};

fn tables() -> &'static Tables {
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/cassandra-commitlog/4.0.11");
        Fixture::load(&dir).map(|f| f.tables()).unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    let tables = tables();
    let _ = read_segment("fuzz.log", data, tables, |_, update| {
        let _ = weir_ingest::cassandra::json::update_to_json("fuzz.log", 0, update);
    });
    if let Ok(decoded) = mutation::decode(data, tables) {
        for update in &decoded.updates {
            let _ = update.key_components();
        }
    }
});
