//! The schema registry end to end: the REST server over the SQL store, driven by the HTTP client,
//! on SQLite and on PostgreSQL (`WEIR_TEST_POSTGRES_URL`, started by `scripts/test`).

use std::{sync::Arc, time::Duration};

use weir_schemas::{
    metadata,
    registry::{RegistryError, SchemaRegistry, Version, http::HttpRegistry, server, store::SqlRegistry},
};

/// A record with one field; the field has a default, so that any two of these are compatible under
/// the default BACKWARD level (these tests are about ids and versions).
fn schema(name: &str, field: &str) -> String {
    format!(
        r#"{{"type": "record", "name": "{name}", "fields": [{{"name": "{field}", "type": "long", "default": 0}}]}}"#
    )
}

/// Serves `store` on an ephemeral loopback port; returns a client of it.
async fn serve(store: SqlRegistry) -> HttpRegistry {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, server::router(Arc::new(store))).await.unwrap() });
    HttpRegistry::new(&format!("http://{addr}"), Duration::from_secs(10)).unwrap()
}

async fn sqlite() -> (HttpRegistry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/meta/weir.db", dir.path().display());
    let pool = metadata::connect(&url, Duration::from_secs(5)).await.unwrap();
    (serve(SqlRegistry::open(pool).await.unwrap()).await, dir)
}

/// A fresh PostgreSQL database for one test.
async fn postgres() -> (HttpRegistry, ()) {
    let base = std::env::var("WEIR_TEST_POSTGRES_URL")
        .expect("WEIR_TEST_POSTGRES_URL is not set: run scripts/test, which starts PostgreSQL on loopback");
    let name = format!(
        "registry_{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let url = metadata::create_postgres_database(&base, &name).await.unwrap();
    let pool = metadata::connect(&url, Duration::from_secs(10)).await.unwrap();
    (serve(SqlRegistry::open(pool).await.unwrap()).await, ())
}

async fn ids_versions_and_lookups(r: HttpRegistry) {
    let a = schema("A", "x");
    let id_a = r.register("orders-value", &a).await.unwrap();
    // The same schema again — even with other whitespace — is the same id and no new version.
    let spaced = a.replace(", ", ",\n   ");
    assert_eq!(r.register("orders-value", &spaced).await.unwrap(), id_a);
    assert_eq!(r.versions("orders-value").await.unwrap(), vec![1]);
    let b = schema("A", "y");
    let id_b = r.register("orders-value", &b).await.unwrap();
    assert_ne!(id_a, id_b);
    assert_eq!(r.versions("orders-value").await.unwrap(), vec![1, 2]);
    // Another subject with an existing schema reuses its global id.
    assert_eq!(r.register("payments-value", &a).await.unwrap(), id_a);
    assert_eq!(r.subjects().await.unwrap(), vec!["orders-value", "payments-value"]);

    let latest = r.version("orders-value", Version::Latest).await.unwrap();
    assert_eq!((latest.id, latest.version), (id_b, 2));
    let first = r.version("orders-value", Version::Number(1)).await.unwrap();
    assert_eq!(first.id, id_a);
    let found = r.lookup("orders-value", &b).await.unwrap();
    assert_eq!((found.id, found.version, found.subject.as_str()), (id_b, 2, "orders-value"));
    let text = r.schema_by_id(id_a).await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::from_str::<serde_json::Value>(&a).unwrap()
    );
}

async fn errors_carry_confluent_codes(r: HttpRegistry) {
    assert!(matches!(r.versions("nope-value").await, Err(RegistryError::SubjectNotFound(s)) if s == "nope-value"));
    assert!(matches!(r.schema_by_id(999_999).await, Err(RegistryError::SchemaNotFound(_))));
    let bad = r.register("orders-value", r#"{"type": "record", "name": "A"}"#).await;
    assert!(matches!(&bad, Err(RegistryError::InvalidSchema(_))), "{bad:?}");
    let not_json = r.register("orders-value", "{nope").await;
    assert!(matches!(&not_json, Err(RegistryError::InvalidSchema(m)) if m.contains("not JSON")), "{not_json:?}");
    r.register("orders-value", &schema("A", "x")).await.unwrap();
    assert!(matches!(r.version("orders-value", Version::Number(7)).await, Err(RegistryError::VersionNotFound { .. })));
    assert!(matches!(r.lookup("orders-value", &schema("Z", "z")).await, Err(RegistryError::SchemaNotFound(_))));
}

async fn concurrent_registrations_get_distinct_ids(r: HttpRegistry) {
    let r = Arc::new(r);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.register("race-value", &schema("R", &format!("f{i}"))).await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "every distinct schema gets its own id");
    assert_eq!(r.versions("race-value").await.unwrap(), (1..=12).collect::<Vec<u32>>());
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { let (r, _keep) = super::sqlite().await; super::$name(r).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { let (r, _keep) = super::postgres().await; super::$name(r).await } )*
        }
    };
}

on_both_databases!(ids_versions_and_lookups, errors_carry_confluent_codes, concurrent_registrations_get_distinct_ids);
