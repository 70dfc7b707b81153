//! The embedded schema registry checked by Confluent's own Python client (`confluent-kafka`'s
//! `SchemaRegistryClient`, in the test venv): `confluent_registry.py` registers under
//! compatibility levels, tests compatibility, sets levels, deletes softly and permanently, and
//! expects Confluent's answers and error codes.

use std::{process::Command, sync::Arc, time::Duration};

use weir_schemas::{
    metadata,
    registry::{server, store::SqlRegistry},
};

#[tokio::test]
async fn confluents_python_client_accepts_the_embedded_registry() {
    let python = std::env::var("WEIR_TEST_PYTHON")
        .expect("WEIR_TEST_PYTHON is not set: run scripts/test, which installs confluent-kafka in a venv");
    let dir = tempfile::tempdir().unwrap();
    let pool =
        metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5)).await.unwrap();
    let registry = SqlRegistry::open(pool).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, server::router(Arc::new(registry))).await.unwrap() });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/confluent_registry.py");
    let out =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(url).output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().last() == Some("all registry checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
