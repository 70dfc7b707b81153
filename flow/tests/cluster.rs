//! Scale-out on a real PostgreSQL (`WEIR_TEST_POSTGRES_URL`): the lease and its fence, failover
//! between schedulers, claims under contention, zombie workers and draining.

use std::{
    collections::HashSet,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use weir_flow::{
    dag,
    rules::{RunState, TaskState},
    runs,
    schedule::Interval,
    scheduler::{Executor, FlowConfig, Scheduler},
    store::{Store, StoreError, TaskKey},
    worker::Worker,
};
use weir_lake::{Lake, LakeConfig};

mod common;

struct Cluster {
    dir: tempfile::TempDir,
    store: Store,
    lake: Arc<Lake>,
}

impl Cluster {
    async fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        let store = Store::open(common::postgres_database().await).await.unwrap();
        let lake_url = url::Url::from_directory_path(dir.path().join("lake")).unwrap();
        let lake =
            Arc::new(Lake::new(&LakeConfig { url: lake_url.as_str().parse().unwrap(), ..LakeConfig::default() }));
        Cluster { dir, store, lake }
    }

    fn config(&self) -> FlowConfig {
        FlowConfig {
            dags_dir: self.dir.path().join("dags"),
            slots: 64,
            parse_interval: Duration::from_millis(200),
            poll_interval: Duration::from_millis(100),
            logs_dir: Some(self.dir.path().join("logs")),
            executor: Executor::Workers,
            heartbeat_interval: Duration::from_millis(100),
            lease_timeout: Duration::from_millis(600),
            zombie_timeout: Duration::from_millis(800),
            ..FlowConfig::default()
        }
    }

    fn write_dag(&self, name: &str, text: &str) -> dag::Dag {
        let path = self.dir.path().join("dags").join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        dag::load_file(&path).unwrap()
    }

    /// A scheduler task; aborting it is a crash (nothing is given up cleanly).
    fn scheduler(&self) -> tokio::task::JoinHandle<()> {
        self.scheduler_with(self.config())
    }

    /// [`Self::scheduler`] with `config`.
    fn scheduler_with(&self, config: FlowConfig) -> tokio::task::JoinHandle<()> {
        let s = Scheduler::new(self.store.clone(), self.lake.clone(), config);
        tokio::spawn(async move { s.run(std::future::pending()).await.unwrap() })
    }

    /// A worker task with `slots` slots that drains when `stop` resolves.
    fn worker(
        &self,
        slots: usize,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let w = Worker::new(self.store.clone(), self.lake.clone(), self.config(), vec!["default".into()], slots);
        tokio::spawn(async move { w.run(stop).await.unwrap() })
    }

    async fn leader(&self) -> (String, i64) {
        let l = self.store.lease().await.unwrap();
        (l.holder, l.epoch)
    }

    async fn wait_until<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> F,
    ) {
        let start = Instant::now();
        while !f().await {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Lines of a side-effect file, one per execution.
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_leader_can_no_longer_write() {
    let c = Cluster::new().await;
    let dag = c.write_dag("fenced", "tasks:\n  - {id: a, script: [true]}\n");
    let seen = c.store.lease().await.unwrap();
    let a = c.store.acquire_lease("a", &seen).await.unwrap().expect("a free lease is taken");
    assert_eq!(c.store.acquire_lease("b", &seen).await.unwrap(), None, "a second heir with the same view loses");
    let as_a = c.store.with_fence(a.clone());
    as_a.upsert_dag(&dag).await.unwrap();
    let interval = Interval { start: chrono::Utc::now(), end: chrono::Utc::now() };
    assert!(as_a.create_run(&dag, "r1", "manual", interval, &Default::default()).await.unwrap());

    // b takes over (as after a's lease timed out); a, paused meanwhile, wakes up and writes.
    let b = c.store.acquire_lease("b", &c.store.lease().await.unwrap()).await.unwrap().unwrap();
    assert_eq!(b.epoch, a.epoch + 1);
    let refused = as_a.set_run_state("fenced", "r1", RunState::Failed).await.unwrap_err();
    assert!(matches!(refused, StoreError::Fenced(e) if e == a.epoch), "{refused}");
    assert!(refused.to_string().contains("another scheduler took over"), "{refused}");
    assert!(matches!(
        as_a.set_task_states("fenced", "r1", &[("a".into(), TaskState::Scheduled)]).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(!c.store.renew_lease(&a).await.unwrap());
    assert_eq!(c.store.run("fenced", "r1").await.unwrap().state, RunState::Queued, "nothing written");
    assert_eq!(c.store.tasks("fenced", "r1").await.unwrap()[0].state, TaskState::None);
    // The new leader writes.
    c.store.with_fence(b).set_run_state("fenced", "r1", RunState::Running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_heir_takes_over_a_crashed_leader_and_the_dag_finishes_once() {
    let c = Cluster::new().await;
    let out = c.dir.path().join("out");
    let mut text = String::from("tasks:\n");
    for i in 0..30 {
        let up = if i == 0 { String::new() } else { format!(", upstream: [t{}]", i - 1) };
        text.push_str(&format!(
            "  - {{id: t{i}{up}, script: [sh, -c, 'sleep 0.05; echo t{i} >> {}']}}\n",
            out.display()
        ));
    }
    let dag = c.write_dag("chain", &text);
    let first = c.scheduler();
    c.wait_until("the first scheduler leads", Duration::from_secs(5), || async { !c.leader().await.0.is_empty() })
        .await;
    let (first_id, first_epoch) = c.leader().await;
    let heir = c.scheduler();
    let worker = c.worker(4, std::future::pending());
    c.store.upsert_dag(&dag).await.unwrap();
    let run_id = runs::trigger(&c.store, &dag, serde_json::Map::new(), None).await.unwrap();
    c.wait_until("ten tasks ran", Duration::from_secs(20), || async { lines(&out).len() >= 10 }).await;

    first.abort();
    let killed = Instant::now();
    c.wait_until("an heir leads", Duration::from_secs(10), || async { c.leader().await.1 > first_epoch }).await;
    let failover = killed.elapsed();
    let (leader, _) = c.leader().await;
    assert_ne!(leader, first_id);
    // Lease timeout 0.6 s, beats every 0.1 s.
    assert!(failover < Duration::from_secs(3), "failover took {failover:?}");

    c.wait_until("the run finishes", Duration::from_secs(30), || async {
        c.store.run("chain", &run_id).await.unwrap().state == RunState::Success
    })
    .await;
    let ran = lines(&out);
    let distinct: HashSet<&String> = ran.iter().collect();
    assert_eq!((ran.len(), distinct.len()), (30, 30), "each task exactly once: {ran:?}");
    heir.abort();
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_share_an_instance() {
    let c = Cluster::new().await;
    let mut text = String::from("tasks:\n");
    for i in 0..300 {
        text.push_str(&format!("  - {{id: t{i}, script: [true]}}\n"));
    }
    let dag = c.write_dag("wide", &text);
    c.store.upsert_dag(&dag).await.unwrap();
    let interval = Interval { start: chrono::Utc::now(), end: chrono::Utc::now() };
    c.store.create_run(&dag, "r", "manual", interval, &Default::default()).await.unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    let scheduled: Vec<(String, TaskState)> = ids.iter().map(|id| (id.clone(), TaskState::Scheduled)).collect();
    c.store.set_task_states("wide", "r", &scheduled).await.unwrap();
    let keys: Vec<TaskKey> =
        ids.iter().map(|id| TaskKey { dag_id: "wide".into(), run_id: "r".into(), task_id: id.clone() }).collect();
    assert!(c.store.queue_tasks(&keys).await.unwrap().iter().all(|q| *q));

    let claimers: Vec<_> = (0..6)
        .map(|w| {
            let store = c.store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let claims =
                        store.claim(&format!("w{w}"), &["default".into()], 7, |_, _| "-".into()).await.unwrap();
                    if claims.is_empty() {
                        return got;
                    }
                    got.extend(claims.into_iter().map(|c| (c.key.task_id, c.try_number)));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let distinct: HashSet<&(String, u32)> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (300, 300));
    assert!(all.iter().all(|(_, t)| *t == 1));
    assert!(c.store.claim("late", &["default".into()], 10, |_, _| "-".into()).await.unwrap().is_empty());
    // Another queue's worker claims none of them.
    let tasks = c.store.tasks("wide", "r").await.unwrap();
    assert!(tasks.iter().all(|t| t.state == TaskState::Running && t.try_number == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_beating_has_its_try_retried_elsewhere() {
    let c = Cluster::new().await;
    let out = c.dir.path().join("out");
    let dag = c.write_dag(
        "zombie",
        &format!(
            "default_args: {{retries: 1, retry_delay: 0s}}\ntasks:\n  - {{id: slow, script: [sh, -c, 'sleep 1.5; echo done >> {}']}}\n",
            out.display()
        ),
    );
    let scheduler = c.scheduler();
    let doomed = c.worker(1, std::future::pending());
    c.store.upsert_dag(&dag).await.unwrap();
    let run_id = runs::trigger(&c.store, &dag, serde_json::Map::new(), None).await.unwrap();
    let key = TaskKey { dag_id: "zombie".into(), run_id: run_id.clone(), task_id: "slow".into() };
    c.wait_until("the first worker runs the try", Duration::from_secs(10), || async {
        c.store.tries(&key).await.unwrap().len() == 1
    })
    .await;
    // The worker dies: no more beats; its script is killed with it.
    doomed.abort();
    let rescuer = c.worker(1, std::future::pending());
    c.wait_until("the run finishes", Duration::from_secs(20), || async {
        c.store.run("zombie", &run_id).await.unwrap().state.to_string() != "running"
            && c.store.run("zombie", &run_id).await.unwrap().state.to_string() != "queued"
    })
    .await;
    assert_eq!(c.store.run("zombie", &run_id).await.unwrap().state, RunState::Success);
    let tries = c.store.tries(&key).await.unwrap();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(tries[0].state, TaskState::Failed);
    assert!(tries[0].reason.as_deref().unwrap_or_default().contains("stopped heartbeating"), "{tries:?}");
    assert_eq!(tries[1].state, TaskState::Success);
    assert_eq!(lines(&out), vec!["done"], "the killed try never finished; the retry did, once");
    let workers = c.store.workers().await.unwrap();
    assert_eq!(workers.iter().filter(|w| w.state == "lost").count(), 1, "{workers:?}");
    scheduler.abort();
    rescuer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_finishes_its_try_and_claims_no_more() {
    let c = Cluster::new().await;
    let out = c.dir.path().join("out");
    let dag = c.write_dag(
        "drain",
        &format!(
            "tasks:\n  - {{id: a, script: [sh, -c, 'sleep 1; echo a >> {o}']}}\n  - {{id: b, script: [sh, -c, 'sleep 1; echo b >> {o}']}}\n",
            o = out.display()
        ),
    );
    let scheduler = c.scheduler();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = c.worker(1, async move {
        let _ = stop_rx.await;
    });
    c.store.upsert_dag(&dag).await.unwrap();
    let run_id = runs::trigger(&c.store, &dag, serde_json::Map::new(), None).await.unwrap();
    c.wait_until("one task runs", Duration::from_secs(10), || async {
        c.store.tasks("drain", &run_id).await.unwrap().iter().any(|t| t.state == TaskState::Running)
    })
    .await;
    let running: Vec<String> = c
        .store
        .tasks("drain", &run_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.state == TaskState::Running)
        .map(|t| t.task_id)
        .collect();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker).await.expect("the worker drains and exits").unwrap();
    let tasks = c.store.tasks("drain", &run_id).await.unwrap();
    let state = |id: &str| tasks.iter().find(|t| t.task_id == id).unwrap().state;
    assert_eq!(state(&running[0]), TaskState::Success, "the running try finished before the exit");
    let other = if running[0] == "a" { "b" } else { "a" };
    assert_eq!(state(other), TaskState::Queued, "nothing more was claimed");
    assert_eq!(lines(&out).len(), 1);
    let workers = c.store.workers().await.unwrap();
    assert_eq!(workers[0].state, "stopped");
    scheduler.abort();
}

/// Every state change reaches `weir.flow.events` in order, and a `push` task publishes its
/// artifact with each file's MD5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_and_artifacts_are_published_in_order() {
    use weir_bus::{Bus, ConsumerConfig, TopicPartition, local::LocalBus};
    use weir_flow::events::{EVENTS_TOPIC, FlowEvent};

    let c = Cluster::new().await;
    std::fs::write(c.dir.path().join("dags/report.csv"), "day,orders\n2026-11-30,42\n").unwrap();
    let flaky = c.dir.path().join("calls");
    let dag = c.write_dag(
        "publish",
        &format!(
            "tasks:\n  - {{id: flaky, retries: 1, retry_delay: 0s, script: [sh, -c, 'echo x >> {f}; [ $(wc -l < {f}) -ge 2 ]']}}\n  \
             - {{id: ship, upstream: [flaky], push: {{files: [report.csv], uri: 's3://reports/{{{{ ds }}}}/report.csv'}}}}\n",
            f = flaky.display()
        ),
    );
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::open(&c.dir.path().join("bus"), Default::default()).unwrap());
    let s = Scheduler::new(c.store.clone(), c.lake.clone(), c.config()).with_bus(bus.clone());
    let scheduler = tokio::spawn(async move { s.run(std::future::pending()).await.unwrap() });
    let worker = c.worker(2, std::future::pending());
    c.store.upsert_dag(&dag).await.unwrap();
    let logical = chrono::DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z").unwrap().to_utc();
    let run_id = runs::trigger(&c.store, &dag, serde_json::Map::new(), Some(logical)).await.unwrap();

    let mut consumer = bus.consumer(ConsumerConfig::new("test")).await.unwrap();
    let mut events: Vec<FlowEvent> = Vec::new();
    let start = Instant::now();
    while !events.iter().any(|e| e.kind == "run" && e.state == "success") {
        assert!(start.elapsed() < Duration::from_secs(20), "no run success event: {events:#?}");
        if consumer.assignment().is_empty() {
            if bus.topic(EVENTS_TOPIC).await.is_ok() {
                consumer.assign(&[TopicPartition::new(EVENTS_TOPIC, 0)]).await.unwrap();
                consumer.seek(&TopicPartition::new(EVENTS_TOPIC, 0), 0).await.unwrap();
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        for m in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            assert_eq!(m.key.as_deref(), Some(&b"publish"[..]));
            events.push(serde_json::from_slice(m.value.as_deref().unwrap()).unwrap());
        }
    }
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "in order, none missing");
    assert!(events.iter().all(|e| e.run_id == run_id && e.logical_date == Some(logical)));
    let of = |task: Option<&str>| -> Vec<(String, Option<u32>)> {
        events
            .iter()
            .filter(|e| e.task_id.as_deref() == task && e.kind != "artifact")
            .map(|e| (e.state.clone(), e.try_number))
            .collect()
    };
    let st = |s: &str, t: Option<u32>| (s.to_string(), t);
    assert_eq!(of(None), vec![st("queued", None), st("running", None), st("success", None)]);
    assert_eq!(
        of(Some("flaky")),
        vec![
            st("scheduled", None),
            st("queued", None),
            st("running", Some(1)),
            st("up_for_retry", Some(1)),
            st("scheduled", None),
            st("queued", None),
            st("running", Some(2)),
            st("success", Some(2)),
        ]
    );
    let retry = events.iter().find(|e| e.state == "up_for_retry").unwrap();
    assert!(retry.detail.as_ref().unwrap()["reason"].as_str().unwrap().contains("exited with status 1"), "{retry:?}");
    let artifact = events.iter().find(|e| e.kind == "artifact").expect("an artifact event");
    assert_eq!((artifact.task_id.as_deref(), artifact.state.as_str()), (Some("ship"), "pushed"));
    let md5 = std::process::Command::new("md5sum").arg(c.dir.path().join("dags/report.csv")).output().unwrap();
    let md5 = String::from_utf8(md5.stdout).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(
        artifact.detail.as_ref().unwrap(),
        &serde_json::json!({"files": [{"path": "report.csv", "size": 25, "md5": md5}], "uri": "s3://reports/2026-11-30/report.csv"})
    );
    // Published events leave the outbox.
    c.wait_until("the outbox empties", Duration::from_secs(5), || async {
        c.store.outbox(10).await.unwrap().is_empty()
    })
    .await;
    scheduler.abort();
    worker.abort();
}

/// A deep queue raises the desired worker count at once, the hook hears of it, and the signal
/// is stored for the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_queue_asks_for_more_workers() {
    let c = Cluster::new().await;
    let heard = c.dir.path().join("hook");
    let mut text = String::from("max_active_tasks: 20\ntasks:\n");
    for i in 0..12 {
        text.push_str(&format!("  - {{id: t{i}, script: [sleep, '1']}}\n"));
    }
    let dag = c.write_dag("deep", &text);
    let mut config = c.config();
    config.autoscale.hook =
        Some(vec!["sh".into(), "-c".into(), format!("echo $WEIR_QUEUE $WEIR_DESIRED_WORKERS >> {}", heard.display())]);
    let s = Scheduler::new(c.store.clone(), c.lake.clone(), config);
    let scheduler = tokio::spawn(async move { s.run(std::future::pending()).await.unwrap() });
    let worker = c.worker(2, std::future::pending());
    c.store.upsert_dag(&dag).await.unwrap();
    runs::trigger(&c.store, &dag, serde_json::Map::new(), None).await.unwrap();
    // 2 running + 10 queued of unknown duration = 12 slots = 6 workers of 2 slots.
    // (12 queued before the worker takes any is 6 workers too: wait for the worker's two.)
    c.wait_until("the signal rises to 6 with two running", Duration::from_secs(10), || async {
        c.store.desired().await.unwrap().first().is_some_and(|d| d.desired == 6 && d.running == 2)
    })
    .await;
    let d = &c.store.desired().await.unwrap()[0];
    assert_eq!((d.queue.as_str(), d.workers, d.running, d.queued), ("default", 1, 2, 10), "{d:?}");
    assert!(d.oldest_queued_ms.is_some());
    c.wait_until("the hook ran", Duration::from_secs(5), || async {
        std::fs::read_to_string(&heard).unwrap_or_default().lines().any(|l| l == "default 6")
    })
    .await;
    // The same signal over HTTP, and who leads.
    let app = weir_flow::api::router(c.store.clone(), c.lake.clone(), c.dir.path().join("dags"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let body: serde_json::Value =
        reqwest::get(format!("http://{addr}/api/v1/workers/desired")).await.unwrap().json().await.unwrap();
    assert_eq!(body["queues"][0]["queue"], "default", "{body}");
    assert!(body["queues"][0]["desired"].as_i64().unwrap() >= 1, "{body}");
    let body: serde_json::Value =
        reqwest::get(format!("http://{addr}/api/v1/schedulers")).await.unwrap().json().await.unwrap();
    let leader = c.store.lease().await.unwrap().holder;
    assert_eq!(body["lease"]["holder"], leader.as_str(), "{body}");
    assert_eq!(body["schedulers"][0]["role"], "leader", "{body}");
    assert_eq!(body["workers"][0]["state"], "active", "{body}");
    assert_eq!(body["workers"][0]["queues"], serde_json::json!(["default"]), "{body}");
    // Once tasks have ended, their average time counts: twelve 1 s tasks.
    c.wait_until("the average task time is known", Duration::from_secs(20), || async {
        c.store.desired().await.unwrap()[0].avg_task_ms.is_some_and(|ms| (1000..3000).contains(&ms))
    })
    .await;
    scheduler.abort();
    worker.abort();
}

/// A queue nobody serves: `TaskQueuedTooLong` fires to the orchestrator's receivers, and
/// resolves once a worker for it has taken the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_nobody_serves_raises_an_alert_that_resolves() {
    let (addr, received) = common::receiver().await;

    let c = Cluster::new().await;
    let dag = c.write_dag("orphan", "tasks:\n  - {id: t, queue: gpu, script: [true]}\n");
    let mut config = c.config();
    config.queued_alert_after = Duration::from_millis(300);
    config.receivers = vec![weir_notify::Receiver {
        name: "ops".into(),
        webhook: Some(format!("http://{addr}/alerts")),
        ..weir_notify::Receiver::default()
    }];
    let s = Scheduler::new(c.store.clone(), c.lake.clone(), config);
    let scheduler = tokio::spawn(async move { s.run(std::future::pending()).await.unwrap() });
    let _default = c.worker(1, std::future::pending());
    c.store.upsert_dag(&dag).await.unwrap();
    let run_id = runs::trigger(&c.store, &dag, serde_json::Map::new(), None).await.unwrap();
    let alerts = || -> Vec<serde_json::Value> {
        received.lock().unwrap().iter().filter(|(to, _)| to == "alerts").map(|(_, b)| b.clone()).collect()
    };
    c.wait_until("the alert fires", Duration::from_secs(10), || async { !alerts().is_empty() }).await;
    let firing = &alerts()[0];
    assert_eq!(firing["status"], "firing");
    assert_eq!(firing["commonLabels"]["alertname"], "TaskQueuedTooLong");
    assert_eq!(firing["commonLabels"]["queue"], "gpu");
    assert!(firing["commonAnnotations"]["summary"].as_str().unwrap().contains("0 workers claim from it"), "{firing}");

    let w = Worker::new(c.store.clone(), c.lake.clone(), c.config(), vec!["gpu".into()], 1);
    let gpu = tokio::spawn(async move { w.run(std::future::pending()).await.unwrap() });
    c.wait_until("the run finishes", Duration::from_secs(10), || async {
        c.store.run("orphan", &run_id).await.unwrap().state == RunState::Success
    })
    .await;
    c.wait_until("the alert resolves", Duration::from_secs(10), || async { alerts().len() == 2 }).await;
    assert_eq!(alerts()[1]["status"], "resolved");
    scheduler.abort();
    gpu.abort();
}

/// Whether process `pid` still runs (a zombie does not).
fn runs(pid: u32) -> bool {
    weir_batch::orphans::start_time(pid).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_that_loses_its_lease_stops_its_local_tries() {
    let c = Cluster::new().await;
    let pids = c.dir.path().join("pids");
    // The try's shell and its background child: killing the shell alone would leave the child.
    let dag = c.write_dag(
        "long",
        &format!(
            "tasks:\n  - {{id: a, retries: 1, script: [sh, -c, 'sleep 60 & echo $$ $! >> {}; wait']}}\n",
            pids.display()
        ),
    );
    let scheduler = c.scheduler_with(FlowConfig { executor: Executor::Local, ..c.config() });
    c.wait_until("the scheduler leads", Duration::from_secs(5), || async { !c.leader().await.0.is_empty() }).await;
    let (_, epoch) = c.leader().await;
    c.store.upsert_dag(&dag).await.unwrap();
    runs::trigger(&c.store, &dag, serde_json::Map::new(), None).await.unwrap();
    c.wait_until("the try runs", Duration::from_secs(10), || async { !lines(&pids).is_empty() }).await;
    let first: Vec<u32> = lines(&pids)[0].split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(first.iter().all(|&p| runs(p)), "the try's shell and sleep run: {first:?}");

    // Another scheduler takes the lease (as after a partition): this one is fenced off.
    let intruder = c.store.acquire_lease("intruder", &c.store.lease().await.unwrap()).await.unwrap().unwrap();
    assert_eq!(intruder.epoch, epoch + 1);
    c.wait_until("the fenced scheduler stops its try, child included", Duration::from_secs(5), || async {
        first.iter().all(|&p| !runs(p))
    })
    .await;
    // The intruder never renews: the scheduler leads again, resets the stopped try and retries
    // it; the retry runs alone.
    c.wait_until("the try runs again", Duration::from_secs(15), || async { lines(&pids).len() >= 2 }).await;
    let second: Vec<u32> = lines(&pids)[1].split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(first.iter().all(|&p| !runs(p)), "the first try is gone while its retry runs");
    assert!(second.iter().all(|&p| runs(p)), "the retry runs: {second:?}");
    scheduler.abort();
    // The retry's process group (its shell leads it), left by the aborted scheduler task — only
    // while its leader still runs: once it is gone its number may lead another group. Signalled
    // with killpg(2), never `/usr/bin/kill -9 -<group>`: procps-ng 4.0.2 reads `-12345` as `-1`
    // and kills every process it may (what stopped a whole CI run here).
    if runs(second[0]) {
        let group = nix::unistd::Pid::from_raw(i32::try_from(second[0]).unwrap());
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Approvals a worker runs hold none of its slots, nor the scheduler's: a one-slot worker
/// waiting on three approvals (more than the scheduler's two slots) still runs another DAG's
/// script, and the approvals go on once decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_on_a_worker_hold_none_of_its_slots() {
    let c = Cluster::new().await;
    let gates: String =
        (0..3).map(|i| format!("  - {{id: g{i}, approval: {{message: 'go?', timeout: 60s}}}}\n")).collect();
    let gated = c.write_dag("gated", &format!("tasks:\n{gates}"));
    let busy = c.write_dag("busy", "tasks:\n  - {id: work, script: [\"true\"]}\n");
    c.store.upsert_dag(&gated).await.unwrap();
    c.store.upsert_dag(&busy).await.unwrap();
    let scheduler = c.scheduler_with(FlowConfig { slots: 2, ..c.config() });
    let worker = c.worker(1, std::future::pending());
    let gated_run = runs::trigger(&c.store, &gated, serde_json::Map::new(), None).await.unwrap();
    let states = |dag: &'static str, run: String| {
        let store = c.store.clone();
        async move { store.tasks(dag, &run).await.unwrap().into_iter().map(|t| t.state).collect::<Vec<_>>() }
    };
    c.wait_until("the three approvals wait on the worker", Duration::from_secs(20), || async {
        states("gated", gated_run.clone()).await.iter().filter(|s| **s == TaskState::Running).count() == 3
    })
    .await;
    let busy_run = runs::trigger(&c.store, &busy, serde_json::Map::new(), None).await.unwrap();
    c.wait_until("the script runs beside them", Duration::from_secs(20), || async {
        states("busy", busy_run.clone()).await == [TaskState::Success]
    })
    .await;
    for i in 0..3 {
        let k = TaskKey { dag_id: "gated".into(), run_id: gated_run.clone(), task_id: format!("g{i}") };
        weir_flow::approvals::decide(&c.store, &k, weir_flow::approvals::Decision::Approve, "alice", "").await.unwrap();
    }
    c.wait_until("the approvals go on", Duration::from_secs(20), || async {
        states("gated", gated_run.clone()).await.iter().all(|s| *s == TaskState::Success)
    })
    .await;
    scheduler.abort();
    worker.abort();
}
