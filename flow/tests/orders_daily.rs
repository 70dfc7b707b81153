//! The shipped example DAG `examples/dags/orders_daily.yaml`, run by the scheduler over change
//! logs shaped as the lake writer writes them (written here directly with deltalake): snapshots
//! into current.*, the four-way join into views.order_facts, one day's rows per run, reruns and
//! the next day without duplicates.

use std::{sync::Arc, time::Duration};

use deltalake::{
    DeltaTable,
    arrow::{
        array::{ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray},
        datatypes::{DataType, Field, Schema, TimeUnit},
        record_batch::RecordBatch,
    },
    kernel::{StructType, engine::arrow_conversion::TryIntoKernel as _},
};
use weir_flow::{
    dag,
    rules::RunState,
    runs::{self, ClearSpec},
    scheduler::{FlowConfig, Scheduler},
    store::Store,
};
use weir_lake::{Lake, LakeConfig};

fn ts(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
}

/// A column of a raw table: name, type, values.
type Col = (&'static str, DataType, ArrayRef);

/// Writes `raw.<name>` with the row columns, the writer's metadata columns (one change per row,
/// in offset order, with its op) and the primary key property.
async fn raw_table(lake: &Lake, name: &str, key: &str, ops: &[&str], cols: Vec<Col>) {
    let n = ops.len();
    let mut fields: Vec<Field> = cols.iter().map(|(c, t, _)| Field::new(*c, t.clone(), true)).collect();
    let mut arrays: Vec<ArrayRef> = cols.into_iter().map(|(_, _, a)| a).collect();
    let meta: Vec<Col> = vec![
        ("_op", DataType::Utf8, Arc::new(StringArray::from(ops.to_vec()))),
        ("_source_ts_ms", DataType::Int64, Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>()))),
        ("_pos", DataType::Utf8, Arc::new(StringArray::from(vec!["mysql-bin.000001:4:0"; n]))),
        ("_topic", DataType::Utf8, Arc::new(StringArray::from(vec![name; n]))),
        ("_partition", DataType::Int32, Arc::new(Int32Array::from(vec![0; n]))),
        ("_offset", DataType::Int64, Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>()))),
        ("_date", DataType::Date32, Arc::new(Date32Array::from(vec![20_412; n]))),
    ];
    for (c, t, a) in meta {
        fields.push(Field::new(c, t, true));
        arrays.push(a);
    }
    let schema = Arc::new(Schema::new(fields));
    let columns: StructType = schema.as_ref().try_into_kernel().unwrap();
    let url = lake.table_url(&format!("raw.{name}")).unwrap();
    let table = DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns(columns.fields().cloned())
        .with_configuration([("weir.key", Some(key))])
        .with_raise_if_key_not_exists(false)
        .await
        .unwrap();
    table.write(vec![RecordBatch::try_new(schema, arrays).unwrap()]).await.unwrap();
}

fn i64s(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

fn strs(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn times(v: &[&str]) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v.iter().map(|s| ts(s)).collect::<Vec<_>>()).with_timezone("UTC"))
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_daily_joins_one_day_per_run_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let lake_url = url::Url::from_directory_path(dir.path().join("lake")).unwrap();
    let lake = Arc::new(Lake::new(&LakeConfig { url: lake_url.as_str().parse().unwrap(), ..LakeConfig::default() }));
    // Orders: 1 and 2 on the 20th (2 updated), 3 created then deleted, 4 on the 21st.
    raw_table(
        &lake,
        "food_delivery_orders",
        "order_id",
        &["c", "c", "c", "u", "d", "c"],
        vec![
            ("order_id", DataType::Int64, i64s(&[1, 2, 3, 2, 3, 4])),
            ("customer_id", DataType::Int64, i64s(&[7, 8, 9, 8, 9, 7])),
            ("restaurant_id", DataType::Int64, i64s(&[3, 3, 4, 3, 4, 5])),
            ("amount", DataType::Float64, Arc::new(Float64Array::from(vec![12.5, 18.0, 9.0, 20.0, 9.0, 31.0]))),
            (
                "created_at",
                timestamp(),
                times(&[
                    "2026-11-20T10:00:00Z",
                    "2026-11-20T11:00:00Z",
                    "2026-11-20T12:00:00Z",
                    "2026-11-20T11:00:00Z",
                    "2026-11-20T12:00:00Z",
                    "2026-11-21T09:00:00Z",
                ]),
            ),
        ],
    )
    .await;
    raw_table(
        &lake,
        "food_delivery_payments",
        "payment_id",
        &["c", "c", "u", "c"],
        vec![
            ("payment_id", DataType::Int64, i64s(&[100, 101, 100, 102])),
            ("order_id", DataType::Int64, i64s(&[1, 2, 1, 4])),
            ("status", DataType::Utf8, strs(&["pending", "failed", "paid", "paid"])),
            ("method", DataType::Utf8, strs(&["card", "cash", "card", "card"])),
        ],
    )
    .await;
    raw_table(
        &lake,
        "food_delivery_deliveries",
        "delivery_id",
        &["c"],
        vec![
            ("delivery_id", DataType::Int64, i64s(&[500])),
            ("order_id", DataType::Int64, i64s(&[1])),
            ("courier_id", DataType::Int64, i64s(&[9])),
            ("delivered_at", timestamp(), times(&["2026-11-20T10:40:00Z"])),
        ],
    )
    .await;
    raw_table(
        &lake,
        "food_delivery_ratings",
        "rating_id",
        &["c"],
        vec![
            ("rating_id", DataType::Int64, i64s(&[900])),
            ("order_id", DataType::Int64, i64s(&[1])),
            ("stars", DataType::Int64, i64s(&[5])),
        ],
    )
    .await;

    let dags_dir = dir.path().join("dags");
    std::fs::create_dir_all(&dags_dir).unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dags/orders_daily.yaml");
    std::fs::copy(&example, dags_dir.join("orders_daily.yaml")).unwrap();
    let d = dag::load_file(&dags_dir.join("orders_daily.yaml")).unwrap();

    let pool =
        weir_schemas::metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5))
            .await
            .unwrap();
    let store = Store::open(pool).await.unwrap();
    store.upsert_dag(&d).await.unwrap();
    store.set_paused("orders_daily", true).await.unwrap(); // only the runs triggered here
    let config = FlowConfig {
        dags_dir,
        poll_interval: Duration::from_millis(50),
        parse_interval: Duration::from_millis(500),
        logs_dir: Some(dir.path().join("logs")),
        ..FlowConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(Scheduler::new(store.clone(), lake.clone(), config).run(async move {
        let _ = stopped.await;
    }));

    let finish = |run: String| {
        let store = store.clone();
        async move {
            for _ in 0..1200 {
                let r = store.run("orders_daily", &run).await.unwrap();
                if matches!(r.state, RunState::Success | RunState::Failed) {
                    return r.state;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("run {run} did not finish");
        }
    };
    let facts = || async {
        let sql = "SELECT order_id, CAST(order_date AS VARCHAR) AS day, amount, payment_status, payment_method, courier_id, stars \
                   FROM views.order_facts ORDER BY order_id";
        let batches = weir_lake::query::run(&lake, sql, None).await.unwrap();
        deltalake::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
    };

    let day1: chrono::DateTime<chrono::Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
    let run1 = runs::trigger(&store, &d, Default::default(), Some(day1)).await.unwrap();
    assert_eq!(finish(run1.clone()).await, RunState::Success, "{:?}", store.tasks("orders_daily", &run1).await);
    let want_day1 = [
        "| 1        | 2026-11-20 | 12.5   | paid           | card           | 9          | 5     |",
        "| 2        | 2026-11-20 | 20.0   | failed         | cash           |            |       |",
    ];
    let got = facts().await;
    for line in want_day1 {
        assert!(got.contains(line), "missing {line}\n{got}");
    }
    assert_eq!(got.lines().filter(|l| l.starts_with("| ") && !l.contains("order_id")).count(), 2, "{got}");

    // A rerun of the same day replaces its rows.
    let spec = ClearSpec { run_id: Some(run1.clone()), ..ClearSpec::default() };
    runs::clear(&store, &d, &spec).await.unwrap();
    assert_eq!(finish(run1.clone()).await, RunState::Success);
    assert_eq!(facts().await, got, "a rerun changes nothing");

    // The next day adds its own rows.
    let day2: chrono::DateTime<chrono::Utc> = "2026-11-21T00:00:00Z".parse().unwrap();
    let run2 = runs::trigger(&store, &d, Default::default(), Some(day2)).await.unwrap();
    assert_eq!(finish(run2).await, RunState::Success);
    let got = facts().await;
    assert!(
        got.contains("| 4        | 2026-11-21 | 31.0   | paid           | card           |            |       |"),
        "{got}"
    );
    assert_eq!(got.lines().filter(|l| l.starts_with("| ") && !l.contains("order_id")).count(), 3, "{got}");
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}
