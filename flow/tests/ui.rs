//! The console's read models and the mark action on SQLite and PostgreSQL (`WEIR_TEST_POSTGRES_URL`,
//! started by `scripts/test`): the DAG list's newest runs in one query (a window function both
//! must run), the grid, why a task is not running, and marking by hand.

use std::{path::Path, time::Duration};

use chrono::{TimeZone, Utc};
use serde_json::json;
use weir_flow::{
    dag,
    rules::TaskState,
    schedule::Interval,
    store::{Finish, Store, TaskKey},
    ui,
};

// Only the database helper of the shared test module is used here.
#[allow(dead_code)]
mod common;

const DAG: &str = "schedule: \"@daily\"\nstart_date: 2026-01-01\nowner: data-eng\ndescription: three steps\ntasks:\n\
                   - {id: extract, script: [\"true\"], retries: 2}\n\
                   - {id: load, script: [\"true\"], upstream: [extract], pool: warehouse}\n\
                   - {id: report, script: [\"true\"], upstream: [load]}\n";

async fn check(store: Store) {
    let d = dag::parse(Path::new("/dags/three.yaml"), DAG).unwrap();
    store.sync_dags(std::slice::from_ref(&d), &[]).await.unwrap();
    let day = chrono::Duration::days(1);
    let first = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let mut runs = Vec::new();
    for n in 0..7 {
        let start = first + day * n;
        let run_id = format!("scheduled__{}", start.to_rfc3339());
        assert!(
            store
                .create_run(&d, &run_id, "scheduled", Interval { start, end: start + day }, &Default::default())
                .await
                .unwrap()
        );
        runs.push(run_id);
    }
    let newest = runs.last().unwrap().clone();
    let key = |task: &str| TaskKey { dag_id: "three".into(), run_id: newest.clone(), task_id: task.into() };

    // extract's first try fails and waits for its retry: load waits on it.
    store.set_task_states("three", &newest, &[("extract".into(), TaskState::Scheduled)]).await.unwrap();
    store.start_tries(&[(key("extract"), 1, "/nonexistent/log".into())]).await.unwrap();
    let wait = Duration::from_secs(600);
    let finish = Finish {
        key: key("extract"),
        try_number: 1,
        state: TaskState::UpForRetry,
        reason: Some("exit status 1".into()),
        retry_wait: Some(wait),
        skip: Vec::new(),
        log: None,
        expand: None,
    };
    store.finish_tries(&[finish]).await.unwrap();
    let detail = ui::task_detail(&store, &d, &key("extract")).await.unwrap().unwrap();
    let why = detail["why_not_running"].as_str().unwrap();
    assert!(why.starts_with("try 1 failed; try 2 of 3 at "), "{why}");
    assert_eq!(detail["tries"][0]["reason"], "exit status 1");
    let why = ui::task_detail(&store, &d, &key("load")).await.unwrap().unwrap()["why_not_running"].clone();
    assert_eq!(why, json!("waiting on upstream: extract (up_for_retry)"));
    store.set_task_states("three", &newest, &[("load".into(), TaskState::Scheduled)]).await.unwrap();
    let why = ui::task_detail(&store, &d, &key("load")).await.unwrap().unwrap()["why_not_running"].clone();
    assert!(why.as_str().unwrap().starts_with("waiting for a free slot: 0 task(s) hold pool \"warehouse\""), "{why}");

    // Marking: refused while running, accepted once not; the run is settled anew.
    store.set_task_states("three", &newest, &[("report".into(), TaskState::Running)]).await.unwrap();
    assert!(!store.mark("three", &newest, "report", TaskState::Success).await.unwrap());
    store.set_task_states("three", &newest, &[("report".into(), TaskState::Failed)]).await.unwrap();
    assert!(store.mark("three", &newest, "report", TaskState::Success).await.unwrap());
    assert_eq!(store.run("three", &newest).await.unwrap().state.as_str(), "queued");

    // The grid: the newest 5 runs, oldest first, a cell per task.
    let g = ui::grid(&store, &d, 5).await.unwrap();
    assert_eq!(g["tasks"], json!(["extract", "load", "report"]));
    assert_eq!(g["runs"].as_array().unwrap().len(), 5);
    assert_eq!(g["runs"][4]["run_id"], json!(newest));
    assert_eq!(g["runs"][0]["run_id"], json!(runs[2]));
    let state = |run: usize, task: usize| g["states"][g["cells"][run][task][0].as_u64().unwrap() as usize].clone();
    assert_eq!(state(4, 0), "up_for_retry");
    assert_eq!(g["cells"][4][0][1], 1);
    assert_eq!(state(4, 2), "success");
    assert_eq!(state(0, 1), "none");

    // The list: owner, description, the five newest runs newest first, and the next run.
    let list = ui::dag_list(&store, &ui::Versions::default()).await.unwrap();
    let three = &list["dags"][0];
    assert_eq!((three["owner"].clone(), three["tasks"].clone()), (json!("data-eng"), json!(3)));
    let recent: Vec<&str> =
        three["recent_runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(recent, runs.iter().rev().take(5).map(String::as_str).collect::<Vec<_>>());
    // The cursor is at 2026-03-08, long past, and the DAG does not catch up: the latest complete
    // interval is due.
    let next = &three["next_run"];
    assert_eq!(next["due"], true, "{next}");
    let start: chrono::DateTime<Utc> = next["data_interval_start"].as_str().unwrap().parse().unwrap();
    let end: chrono::DateTime<Utc> = next["data_interval_end"].as_str().unwrap().parse().unwrap();
    assert!(start > first + day * 7 && end <= Utc::now() && Utc::now() - end < day, "{next}");
}

/// A mapped task's expansion as the console shows it: its page lists its instances, an
/// instance's page shows its item, the grid keeps one row for the task; a second expansion with
/// fewer items schedules the instances again and removes the one past them.
async fn check_mapped(store: Store) {
    let d =
        dag::parse(Path::new("/dags/fan.yaml"), "tasks:\n  - {id: each, map: {over: [a, b, c]}, script: [\"true\"]}\n")
            .unwrap();
    store.sync_dags(std::slice::from_ref(&d), &[]).await.unwrap();
    let now = Utc::now();
    assert!(store.create_run(&d, "m", "manual", Interval { start: now, end: now }, &Default::default()).await.unwrap());
    let key = |task: &str| TaskKey { dag_id: "fan".into(), run_id: "m".into(), task_id: task.into() };
    let expand = |try_number: u32, items: Vec<serde_json::Value>| Finish {
        key: key("each"),
        try_number,
        state: TaskState::Mapped,
        reason: None,
        retry_wait: None,
        skip: Vec::new(),
        log: None,
        expand: Some(weir_flow::store::Expansion { items, tries: 1 }),
    };
    store.set_task_states("fan", "m", &[("each".into(), TaskState::Scheduled)]).await.unwrap();
    store.start_tries(&[(key("each"), 1, "/nonexistent/log".into())]).await.unwrap();
    store.finish_tries(&[expand(1, vec![json!("a"), json!("b"), json!("c")])]).await.unwrap();
    let detail = ui::task_detail(&store, &d, &key("each")).await.unwrap().unwrap();
    assert_eq!(detail["state"], "mapped");
    assert_eq!(detail["why_not_running"], "waiting for its mapped instances: 0 of 3 finished");
    let listed: Vec<(String, String)> = detail["mapped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["task_id"].as_str().unwrap().into(), m["state"].as_str().unwrap().into()))
        .collect();
    let scheduled = |i: u32| (format!("each[{i}]"), "scheduled".to_string());
    assert_eq!(listed, [scheduled(0), scheduled(1), scheduled(2)]);
    let instance = ui::task_detail(&store, &d, &key("each[1]")).await.unwrap().unwrap();
    assert_eq!(instance["map_item"], json!({"index": 1, "item": "b"}));
    assert_eq!(ui::grid(&store, &d, 5).await.unwrap()["tasks"], json!(["each"]));

    // Expanded anew (after a clear) over fewer items.
    store.set_task_states("fan", "m", &[("each".into(), TaskState::Scheduled)]).await.unwrap();
    store.start_tries(&[(key("each"), 2, "/nonexistent/log".into())]).await.unwrap();
    store.finish_tries(&[expand(2, vec![json!("x"), json!("y")])]).await.unwrap();
    let states: Vec<(String, TaskState)> =
        store.mapped("fan", "m", "each").await.unwrap().into_iter().map(|t| (t.task_id, t.state)).collect();
    assert_eq!(
        states,
        [
            ("each[0]".into(), TaskState::Scheduled),
            ("each[1]".into(), TaskState::Scheduled),
            ("each[2]".into(), TaskState::Removed)
        ]
    );
    assert_eq!(store.map_item(&key("each[0]")).await.unwrap(), Some((0, json!("x"))));
    assert_eq!(store.unfinished("fan", "m").await.unwrap(), 3, "each and its two live instances");
}

#[tokio::test]
async fn console_read_models_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let pool =
        weir_schemas::metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5))
            .await
            .unwrap();
    let store = Store::open(pool).await.unwrap();
    check(store.clone()).await;
    check_mapped(store).await;
}

#[tokio::test]
async fn console_read_models_on_postgres() {
    let store = Store::open(common::postgres_database().await).await.unwrap();
    check(store.clone()).await;
    check_mapped(store).await;
}
