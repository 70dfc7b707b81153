//! Helpers the orchestrator's integration tests share.

use std::time::Duration;

use weir_schemas::metadata;

/// A fresh PostgreSQL database for one test.
pub async fn postgres_database() -> sqlx::AnyPool {
    let base = std::env::var("WEIR_TEST_POSTGRES_URL")
        .expect("WEIR_TEST_POSTGRES_URL is not set: run scripts/test, which starts PostgreSQL on loopback");
    let name = format!(
        "flow_{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let url = metadata::create_postgres_database(&base, &name).await.unwrap();
    metadata::connect(&url, Duration::from_secs(10)).await.unwrap()
}
