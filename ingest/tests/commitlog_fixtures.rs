//! Real commit-log segments written by Cassandra 3.0.29 and 4.0.11 (../shared/fixtures): decoding
//! them must reproduce the cell count and hash Cassandra's own CommitLogUpgradeTest expects.

use std::path::PathBuf;

use weir_ingest::cassandra::{
    mutation::{Tables, decode},
    schema::TableSchema,
    segment::SegmentReader,
};

fn fixture_dir(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/cassandra-commitlog").join(version)
}

/// `cells`, `hash` and `cfid` from hash.txt.
fn expectations(version: &str) -> (usize, i32, String) {
    let text = std::fs::read_to_string(fixture_dir(version).join("hash.txt")).unwrap();
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap().trim().to_string();
    (get("cells").parse().unwrap(), get("hash").parse().unwrap(), get("cfid"))
}

/// The upgrade test's fold: each byte shifted by 0, 8, 16, 24, 0, … and added, wrapping.
fn fold(mut hash: i32, bytes: &[u8]) -> i32 {
    let mut shift = 0;
    for &b in bytes {
        hash = hash.wrapping_add(i32::from(b).wrapping_shl(shift));
        shift = (shift + 8) & 31;
    }
    hash
}

fn check(version: &str) {
    let (expected_cells, expected_hash, cfid) = expectations(version);
    let cql = format!(
        r#"CREATE TABLE "Keyspace1"."Standard1" (key ascii, col ascii, val blob, val0 blob, PRIMARY KEY (key, col)) WITH ID = {cfid};"#
    );
    let tables = Tables::new(TableSchema::parse_all(&cql).unwrap());
    let dir = fixture_dir(version);
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let data = std::fs::read(&segment).unwrap();
    let reader = SegmentReader::new(&segment.display().to_string(), &data).unwrap();
    let (mut cells, mut hash, mut mutations, mut skipped, mut rows) = (0usize, 0i32, 0, 0, 0);
    for entry in reader {
        let entry = entry.unwrap();
        mutations += 1;
        let decoded =
            decode(entry.mutation, &tables).unwrap_or_else(|e| panic!("{version} entry at {}: {e}", entry.position));
        if decoded.updates.is_empty() {
            skipped += 1;
        }
        for update in &decoded.updates {
            for row in &update.rows {
                rows += 1;
                if !row.clustering.first().and_then(|c| *c).is_some_and(|c| c.starts_with(b"name")) {
                    continue;
                }
                for cell in &row.cells {
                    cells += 1;
                    hash = fold(hash, cell.value);
                }
            }
        }
    }
    println!(
        "{version}: {mutations} mutations, {skipped} of other tables skipped, {rows} rows, {cells} cells, hash {hash}"
    );
    assert_eq!((cells, hash), (expected_cells, expected_hash), "{version}");
}

#[test]
fn cassandra_3_0_29_segment_matches_the_upgrade_test() {
    check("3.0.29");
}

#[test]
fn cassandra_4_0_11_segment_matches_the_upgrade_test() {
    check("4.0.11");
}
