//! Debezium's own classes as a test peer: runs `tests/peers/DebeziumPeer.java` (Debezium 3.6.3's
//! jars at `WEIR_TEST_DEBEZIUM_LIBS`, a JDK, both from `scripts/deps`) and returns what it prints.

use std::{path::Path, process::Command};

/// Runs the peer with `args` (`schemas <prefix>`, `history <file> <prefix> <offset json>`); panics
/// with its stderr if it fails.
pub fn peer(args: &[&str]) -> String {
    let libs = std::env::var("WEIR_TEST_DEBEZIUM_LIBS")
        .expect("WEIR_TEST_DEBEZIUM_LIBS is not set: run scripts/test, which unpacks Debezium's jars");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/DebeziumPeer.java");
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{libs}/*"))
        .arg(&source)
        .args(args)
        .output()
        .expect("java runs (scripts/deps installs a JDK)");
    assert!(out.status.success(), "Debezium peer failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the peer prints UTF-8")
}
