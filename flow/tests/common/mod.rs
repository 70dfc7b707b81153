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

/// What a [`receiver`] got: (path without the leading `/`, JSON body), in arrival order.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>;

/// A local webhook receiver: records every JSON body POSTed to `/<name>` and answers 200, or
/// 500 for `/broken`. Returns its address.
pub async fn receiver() -> (std::net::SocketAddr, Received) {
    use axum::{Json, Router, extract::Path, http::StatusCode, routing::post};
    let received = Received::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/{name}",
        post(move |Path(name): Path<String>, Json(body): Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                if name == "broken" {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                sink.lock().unwrap().push((name, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}
