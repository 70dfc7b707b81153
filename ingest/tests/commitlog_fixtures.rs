//! Real commit-log segments written by Cassandra 3.0.29 and 4.0.11 (../shared/fixtures): decoding
//! them must reproduce the cell count and hash Cassandra's own CommitLogUpgradeTest expects.

use weir_ingest::cassandra::{
    fixtures::{Fixture, default_dir, fold},
    mutation::decode,
    segment::SegmentReader,
};

fn check(version: &str) {
    let fixture = Fixture::load(&default_dir().join(version)).unwrap();
    let tables = fixture.tables();
    let data = std::fs::read(&fixture.segment).unwrap();
    let reader = SegmentReader::new(&fixture.segment.display().to_string(), &data).unwrap();
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
    assert_eq!((cells, hash), (fixture.cells, fixture.hash), "{version}");
}

#[test]
fn cassandra_3_0_29_segment_matches_the_upgrade_test() {
    check("3.0.29");
}

#[test]
fn cassandra_4_0_11_segment_matches_the_upgrade_test() {
    check("4.0.11");
}
