//! The serving API over a real lake table and real-time results read from the embedded bus:
//! the lambda merge, tokens, read-only SQL, limits, JSON and Arrow answers.

use std::{sync::Arc, time::Duration};

use deltalake::{
    DeltaTable,
    arrow::{
        array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray},
        datatypes::{DataType, Field, Schema, TimeUnit},
        ipc::reader::StreamReader,
    },
    kernel::{StructType, engine::arrow_conversion::TryIntoKernel},
};
use serde_json::{Value, json};
use weir_bus::{Bus, Record, local::LocalBus};
use weir_lake::{Lake, LakeConfig, LakeUrl};
use weir_serving::{
    ServingConfig,
    catalog::Catalog,
    http, pg,
    realtime::{self, Realtime},
};

/// 2026-11-23T10:00:00Z in µs.
const T10: i64 = 1_795_428_000_000_000;

fn minute(m: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_micros((T10 + m * 60_000_000) as u64);
    humantime::format_rfc3339(t).to_string()
}

/// Rows of `views.pay`: (method, minute after T10, payments).
fn pay_rows(rows: &[(&str, i64, i64)]) -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("method", DataType::Utf8, true),
        Field::new("window_start", ts, true),
        Field::new("payments", DataType::Int64, true),
    ]));
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| T10 + r.1 * 60_000_000))
                .with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
    ];
    RecordBatch::try_new(schema, arrays).unwrap()
}

/// `views.pay`: the batch side, minutes 0 and 1 per method.
async fn batch_view(lake: &Lake) {
    let rows = pay_rows(&[("card", 0, 100), ("card", 1, 110), ("cash", 0, 7)]);
    let columns: StructType = rows.schema().as_ref().try_into_kernel().unwrap();
    let table = DeltaTable::try_from_url(lake.table_url("views.pay").unwrap())
        .await
        .unwrap()
        .create()
        .with_columns(columns.fields().cloned())
        .await
        .unwrap();
    table.write(vec![rows]).await.unwrap();
}

/// A result record as the speed layer writes it.
fn result(method: &str, m: i64, payments: i64) -> Record {
    let start = minute(m);
    let key = json!({"method": method, "window_start": start});
    let value = json!({"method": method, "window_start": start, "window_end": minute(m + 1), "final": true,
        "payments": payments, "pipeline": "pay"});
    Record {
        key: Some(serde_json::to_vec(&key).unwrap().into()),
        value: Some(serde_json::to_vec(&value).unwrap().into()),
        timestamp_ms: Some((T10 / 1000) + (m + 1) * 60_000),
        ..Record::default()
    }
}

struct Server {
    _dir: tempfile::TempDir,
    lake: Lake,
    base: String,
    catalog: Arc<Catalog>,
    pg_port: u16,
}

async fn server(config: ServingConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(dir.path().join("lake")), ..LakeConfig::default() });
    batch_view(&lake).await;
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::open(&dir.path().join("bus"), Default::default()).unwrap());
    bus.create_topic("weir.stream.pay", 1).await.unwrap();
    // Minute 1 is in the batch view too (the batch value wins); minute 1 of card arrives twice
    // (the later result replaces the earlier); minutes 2 and 3 are only real-time.
    let records = vec![
        result("card", 1, 90),
        result("card", 1, 95),
        result("card", 2, 120),
        result("card", 3, 5),
        result("cash", 2, 3),
    ];
    bus.producer().await.unwrap().send("weir.stream.pay", records).await.unwrap();
    let realtime = Arc::new(Realtime::new(Duration::from_secs(86_400)));
    let (_stop, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(realtime::follow(bus, realtime.clone(), Duration::from_millis(100), stop));
    for _ in 0..100 {
        if realtime.batch("pay").is_some_and(|b| b.num_rows() == 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let catalog = Arc::new(Catalog::new(lake.clone(), realtime, config));
    catalog.refresh().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let tokens = Arc::new(weir_schemas::tokens::Tokens::from_text("secret").unwrap());
    let app = http::router(catalog.clone(), tokens.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let pg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pg_port = pg_listener.local_addr().unwrap().port();
    tokio::spawn(pg::serve(pg_listener, catalog.clone(), "weir".into(), tokens, None, _stop.subscribe()));
    std::mem::forget(_stop);
    Server { _dir: dir, lake, base, catalog, pg_port }
}

async fn post(s: &Server, token: Option<&str>, body: Value) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let mut req = reqwest::Client::new().post(format!("{}/api/v1/query", s.base)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap())
}

async fn rows(s: &Server, sql: &str) -> Vec<Value> {
    let (status, _, body) = post(s, Some("secret"), json!({"sql": sql})).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{v}");
    v["rows"].as_array().unwrap().clone()
}

#[tokio::test]
async fn serving_views_merge_batch_rows_up_to_the_watermark_with_real_time_after_it() {
    let s = server(ServingConfig::default()).await;
    let got = rows(&s, "SELECT method, window_start, payments FROM serving.pay ORDER BY method, window_start").await;
    let got: Vec<(String, String, i64)> = got
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().into(),
                r["window_start"].as_str().unwrap().into(),
                r["payments"].as_i64().unwrap(),
            )
        })
        .collect();
    let at = minute;
    assert_eq!(
        got,
        vec![
            ("card".into(), at(0), 100),
            ("card".into(), at(1), 110), // batch wins up to its watermark (minute 1)
            ("card".into(), at(2), 120),
            ("card".into(), at(3), 5),
            ("cash".into(), at(0), 7),
            ("cash".into(), at(2), 3),
        ]
    );
    // The real-time view alone holds the latest result per key and window.
    let rt = rows(&s, "SELECT payments FROM realtime.pay WHERE method = 'card' ORDER BY window_start").await;
    assert_eq!(rt.iter().map(|r| r["payments"].as_i64().unwrap()).collect::<Vec<_>>(), vec![95, 120, 5]);
    let names: Vec<String> = s.catalog.tables().await.into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["views.pay", "realtime.pay", "serving.pay"]);
}

#[tokio::test]
async fn tokens_read_only_sql_limits_and_formats() {
    let config = ServingConfig { max_rows: 3, query_timeout: Duration::from_millis(300), ..ServingConfig::default() };
    let s = server(config).await;
    let sql = json!({"sql": "SELECT 1 AS one"});
    let (status, _, body) = post(&s, None, sql.clone()).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert_eq!(post(&s, Some("guess"), sql.clone()).await.0, 401);
    assert_eq!(post(&s, Some("secret"), sql).await.0, 200);

    for (sql, want) in [
        ("CREATE TABLE t AS SELECT 1", "DDL not supported"),
        ("INSERT INTO views.pay VALUES ('x', now(), 1)", "DML not supported"),
        ("COPY (SELECT 1) TO '/tmp/weir-should-not-exist.csv'", "DML not supported"),
        ("SET datafusion.execution.batch_size = 1", "Statement not supported"),
        ("SELEC 1", "Expected"),
        ("SELECT * FROM views.nope", "views.nope"),
    ] {
        let (status, _, body) = post(&s, Some("secret"), json!({"sql": sql})).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 400, "{sql}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{sql}: {v}");
    }
    assert!(!std::path::Path::new("/tmp/weir-should-not-exist.csv").exists());

    // Row limit: 3 of 6 rows, said so.
    let (_, _, body) = post(&s, Some("secret"), json!({"sql": "SELECT * FROM serving.pay"})).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["row_count"].as_i64(), v["truncated"].as_bool()), (Some(3), Some(true)), "{v}");
    // Timeout: a billion-row count is cancelled.
    let (status, _, body) =
        post(&s, Some("secret"), json!({"sql": "SELECT count(*) FROM generate_series(1, 10000000000)"})).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    // Arrow IPC.
    let (status, headers, body) = post(
        &s,
        Some("secret"),
        json!({"sql": "SELECT method, payments FROM views.pay ORDER BY payments", "format": "arrow"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], http::ARROW_STREAM);
    let batches: Vec<RecordBatch> =
        StreamReader::try_new(std::io::Cursor::new(body), None).unwrap().map(Result::unwrap).collect();
    let payments: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(1).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
        .collect();
    assert_eq!(payments, vec![7, 100, 110]);
    // The catalogue and the spec.
    let tables: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/tables", s.base))
        .bearer_auth("secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tables["tables"][0]["name"], "views.pay");
    assert_eq!(tables["tables"][0]["columns"][2]["name"], "payments");
    let spec: Value = reqwest::get(format!("{}/api/v1/openapi.json", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/api/v1/query"]["post"].is_object());
}

/// `psql` (the Debian client) with `args`, as user `weir` with `password`: (success, stdout, stderr).
async fn psql(s: &Server, password: &str, sql: &str) -> (bool, String, String) {
    let url = format!("postgresql://weir:{password}@127.0.0.1:{}/weir?sslmode=disable", s.pg_port);
    let out = tokio::process::Command::new("psql")
        .args([url.as_str(), "-X", "-A", "-t", "-F", ",", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .await
        .expect("psql (Debian postgresql-client, installed by scripts/test)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn psql_reads_the_same_catalogue_and_nothing_else() {
    let s = server(ServingConfig::default()).await;
    let (ok, out, err) =
        psql(&s, "secret", "SELECT method, payments FROM serving.pay WHERE method = 'card' ORDER BY window_start")
            .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "card,100\ncard,110\ncard,120\ncard,5");
    let (ok, _, err) = psql(&s, "wrong", "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("Password authentication failed for user \"weir\""), "{err}");
    for sql in ["CREATE TABLE t (a INT)", "INSERT INTO views.pay VALUES ('x', now(), 1)", "DROP TABLE views.pay"] {
        let (ok, _, err) = psql(&s, "secret", sql).await;
        assert!(!ok, "{sql} ran");
        assert!(err.contains("read-only SQL"), "{sql}: {err}");
    }
    // Introspection clients use pg_catalog.
    let (ok, out, err) = psql(&s, "secret", "SELECT count(*) > 0 FROM pg_catalog.pg_tables").await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t");
}

#[tokio::test]
async fn the_postgresql_wire_keeps_the_row_limit_and_the_timeout() {
    let config = ServingConfig { max_rows: 3, query_timeout: Duration::from_millis(500), ..ServingConfig::default() };
    let s = server(config).await;
    // The simple query protocol (psql).
    let (ok, out, err) = psql(&s, "secret", "SELECT payments FROM serving.pay ORDER BY payments LIMIT 3").await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "3\n5\n7");
    let (ok, _, err) = psql(&s, "secret", "SELECT * FROM serving.pay").await;
    assert!(!ok && err.contains("more than 3 rows (serving.max_rows)"), "{err}");
    let (ok, _, err) = psql(&s, "secret", "SELECT count(*) FROM generate_series(1, 10000000000)").await;
    assert!(!ok && err.contains("ran longer than 500ms"), "{err}");
    // The extended protocol (sqlx prepares and binds, as Grafana's driver does).
    let url = format!("postgresql://weir:secret@127.0.0.1:{}/weir?sslmode=disable", s.pg_port);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM serving.pay WHERE method = $1")
        .bind("card")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 4);
    let too_many = sqlx::query("SELECT * FROM serving.pay").fetch_all(&mut conn).await.unwrap_err();
    assert!(too_many.to_string().contains("more than 3 rows"), "{too_many}");
    let slow =
        sqlx::query("SELECT count(*) FROM generate_series(1, 10000000000)").fetch_all(&mut conn).await.unwrap_err();
    assert!(slow.to_string().contains("ran longer than"), "{slow}");
}

#[tokio::test]
async fn a_refresh_serves_new_versions_through_scans_and_lookups() {
    let s = server(ServingConfig::default()).await;
    let lookup = "SELECT payments FROM views.pay WHERE method = 'cash' ORDER BY payments";
    let payments = |rows: Vec<Value>| rows.iter().map(|r| r["payments"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(payments(rows(&s, lookup).await), vec![7]);
    // A DAG run appends to the view: the next refresh reads that commit and serves it, through
    // the index of the new hot copy and through a scan.
    let mut table = DeltaTable::try_from_url(s.lake.table_url("views.pay").unwrap()).await.unwrap();
    table.load().await.unwrap();
    table.write(vec![pay_rows(&[("cash", 1, 9), ("card", 2, 130)])]).await.unwrap();
    assert_eq!(payments(rows(&s, lookup).await), vec![7], "served from the catalogue until it refreshes");
    s.catalog.refresh().await.unwrap();
    assert_eq!(payments(rows(&s, lookup).await), vec![7, 9]);
    assert_eq!(rows(&s, "SELECT count(*) AS n FROM views.pay").await[0]["n"], 5);
    // Refreshing again with nothing new keeps the same answers.
    s.catalog.refresh().await.unwrap();
    assert_eq!(payments(rows(&s, lookup).await), vec![7, 9]);
}
