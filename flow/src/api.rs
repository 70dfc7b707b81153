//! The orchestrator's HTTP routes, mounted by the serving API (which adds its bearer tokens):
//!
//! - `GET /api/v1/dags`: DAGs with schedule, paused flag, owner, description, next run and
//!   newest runs' states, and the files refused ([`crate::ui::dag_list`]);
//! - `GET /api/v1/dags/{dag}`: the DAG's current version: its file, settings and graph;
//! - `PATCH /api/v1/dags/{dag}` with `{"is_paused": true|false}`: pause or unpause it (as
//!   Airflow's REST API), as `weir dags pause|unpause`;
//! - `GET /api/v1/dags/{dag}/grid?runs=N`: runs × tasks in one answer ([`crate::ui::grid`]);
//! - `GET /api/v1/dags/{dag}/versions/{hash}`: the DAG file a run used, and its graph;
//! - `POST /api/v1/dags/{dag}/backfill` with `{"from": "…", "to": "…"}`: runs for every data
//!   interval in the range that has none, as `weir dags backfill`;
//! - `POST /api/v1/dags/{dag}/clear` with `{"task": "t", "downstream": bool, "only_failed": bool,
//!   "run_id": "…"}` (all optional): run task instances again, as `weir dags clear`;
//! - `GET /api/v1/dags/{dag}/runs`: the newest 50 runs;
//! - `POST /api/v1/dags/{dag}/runs` with `{"conf": {…}, "logical_date": "…"}` (both optional):
//!   a manual run, as `weir dags trigger`;
//! - `GET /api/v1/dags/{dag}/runs/{run}/tasks`: its task instances;
//! - `GET /api/v1/dags/{dag}/runs/{run}/lineage`: the table versions its SQL tasks read and the
//!   view versions they wrote ([`crate::lineage`]);
//! - `GET /api/v1/dags/{dag}/runs/{run}/tasks/{task}`: a task instance, its tries and why it is
//!   not running ([`crate::ui::task_detail`]);
//! - `POST /api/v1/dags/{dag}/runs/{run}/tasks/{task}/state` with `{"state": "success"|"failed"}`:
//!   mark it by hand;
//! - `POST /api/v1/dags/{dag}/runs/{run}/tasks/{task}/approval` with `{"decision":
//!   "approve"|"reject", "by": "…", "comment": "…"}`: decide a waiting approval task, as
//!   `weir dags approve|reject` ([`crate::approvals`]);
//! - `GET /api/v1/dags/{dag}/runs/{run}/tasks/{task}/logs[?try=N][&offset=B][&limit=B]`: a try's
//!   log (the last try by default) as text, whole, or `limit` bytes from `offset` (the last
//!   `limit` bytes without `offset`), with `X-Log-Start` and `X-Log-Size` saying which part;
//! - `GET /api/v1/workers/desired`: the autoscaling signal — desired workers per queue, with
//!   the queue's depth, running tasks, live workers and average task time;
//! - `GET /api/v1/schedulers`: the scheduler lease (leader, epoch), the schedulers and workers.

use std::{path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_lake::Lake;

use crate::{
    FlowError, dag,
    rules::TaskState,
    runs,
    store::{Store, StoreError, TaskKey},
    ui,
};

struct Api {
    store: Store,
    lake: Arc<Lake>,
    dags_dir: PathBuf,
    versions: ui::Versions,
}

impl Api {
    /// The DAG `dag_id` as its file in the DAG folder says now, or why there is none.
    fn dag_file(&self, dag_id: &str) -> Result<dag::Dag, String> {
        let (dags, _) = dag::load_dir(&self.dags_dir);
        dags.into_iter()
            .find(|d| d.id == dag_id)
            .ok_or_else(|| format!("no DAG {dag_id} in {}", self.dags_dir.display()))
    }

    /// An action's JSON body of type `T` (400 saying what was `expected`) and the DAG it acts on,
    /// as its file says now (404).
    fn body_and_dag<T: serde::de::DeserializeOwned + Default>(
        &self,
        dag_id: &str,
        body: &[u8],
        expected: &str,
    ) -> Result<(T, dag::Dag), (StatusCode, String)> {
        let body = body_of(body, expected).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
        let d = self.dag_file(dag_id).map_err(|why| (StatusCode::NOT_FOUND, why))?;
        Ok((body, d))
    }
}

/// The routes over `store`; manual runs load DAG files from `dags_dir`.
pub fn router(store: Store, lake: Arc<Lake>, dags_dir: PathBuf) -> Router {
    Router::new()
        .route("/api/v1/dags", get(dags))
        .route("/api/v1/dags/{dag}", get(dag_detail).patch(set_paused))
        .route("/api/v1/dags/{dag}/grid", get(grid))
        .route("/api/v1/dags/{dag}/versions/{hash}", get(version))
        .route("/api/v1/dags/{dag}/clear", post(clear))
        .route("/api/v1/dags/{dag}/backfill", post(backfill))
        .route("/api/v1/dags/{dag}/runs", get(list_runs).post(trigger))
        .route("/api/v1/dags/{dag}/runs/{run}/tasks", get(tasks))
        .route("/api/v1/dags/{dag}/runs/{run}/lineage", get(lineage))
        .route("/api/v1/dags/{dag}/runs/{run}/tasks/{task}", get(task_detail))
        .route("/api/v1/dags/{dag}/runs/{run}/tasks/{task}/state", post(mark))
        .route("/api/v1/dags/{dag}/runs/{run}/tasks/{task}/approval", post(approve))
        .route("/api/v1/dags/{dag}/runs/{run}/tasks/{task}/logs", get(logs))
        .route("/api/v1/workers/desired", get(desired))
        .route("/api/v1/schedulers", get(schedulers))
        .with_state(Arc::new(Api { store, lake, dags_dir, versions: ui::Versions::default() }))
}

/// These routes in OpenAPI 3.0 (the `paths` entries), for the serving API's published spec.
pub fn openapi_paths() -> Value {
    let param = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
    let errors = json!({
        "401": {"description": "missing or wrong bearer token"},
        "404": {"description": "no such DAG or run", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    });
    let with = |ok: Value| {
        let mut r = errors.clone();
        r["200"] = ok;
        r
    };
    json!({
        "/api/v1/dags": {"get": {
            "summary": "Every DAG (id, file, schedule, paused, version = file hash) and the DAG files refused (file, line, reason)",
            "responses": with(json!({"description": "{\"dags\": [...], \"import_errors\": [...]}"}))
        }},
        "/api/v1/dags/{dag}": {
            "parameters": [param("dag")],
            "get": {"summary": "The DAG's current version: file text, settings (owner, description, schedule, params) and graph (tasks with kind, trigger rule and layer; edges)", "responses": with(json!({"description": "the DAG"}))},
            "patch": {
                "summary": "Pause or unpause a DAG (as `weir dags pause|unpause`)",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["is_paused"], "properties": {"is_paused": {"type": "boolean"}}}}}},
                "responses": with(json!({"description": "{\"dag_id\": \"…\", \"is_paused\": true}"}))
            }
        },
        "/api/v1/dags/{dag}/grid": {
            "parameters": [param("dag"), {"name": "runs", "in": "query", "schema": {"type": "integer", "default": 25, "maximum": 1000}}],
            "get": {"summary": "The newest runs (oldest first) × tasks: one cell per task instance, [state, try, duration_ms, started_at] or null", "responses": with(json!({"description": "{\"tasks\": [...], \"runs\": [...], \"cells\": [[...]]}"}))}
        },
        "/api/v1/dags/{dag}/versions/{hash}": {
            "parameters": [param("dag"), param("hash")],
            "get": {"summary": "A DAG version (the file text a run used) and its graph", "responses": with(json!({"description": "{\"source\": \"…\", \"file\": \"…\", \"graph\": {...}}"}))}
        },
        "/api/v1/dags/{dag}/backfill": {
            "parameters": [param("dag")],
            "post": {
                "summary": "Create a run for every data interval starting in [from, to] that has none (as `weir dags backfill`)",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["from", "to"], "properties": {
                    "from": {"type": "string"}, "to": {"type": "string"}
                }}}}},
                "responses": {"201": {"description": "{\"run_ids\": [...]}"}, "400": {"description": "invalid dates or no recurring schedule"}, "401": {"description": "missing or wrong bearer token"}, "404": {"description": "no such DAG"}}
            }
        },
        "/api/v1/dags/{dag}/clear": {
            "parameters": [param("dag")],
            "post": {
                "summary": "Run task instances again (as `weir dags clear`): one task (and its downstream) or all, failed ones only or all, one run or every run; SQL tasks read the table versions their earlier tries read unless `latest`",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                    "task": {"type": "string"}, "downstream": {"type": "boolean"}, "only_failed": {"type": "boolean"}, "run_id": {"type": "string"},
                    "latest": {"type": "boolean"}
                }}}}},
                "responses": with(json!({"description": "{\"cleared\": [{\"run_id\": \"…\", \"task_ids\": [...]}]}"}))
            }
        },
        "/api/v1/dags/{dag}/runs": {
            "parameters": [param("dag")],
            "get": {"summary": "The newest 50 runs of a DAG", "responses": with(json!({"description": "{\"runs\": [{run_id, run_type, state, data_interval_start, data_interval_end, inputs (table-triggered runs: table → {version, previous}), ...}]}"}))},
            "post": {
                "summary": "Trigger a manual run (as `weir dags trigger`)",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                    "conf": {"type": "object"}, "logical_date": {"type": "string", "format": "date-time"}
                }}}}},
                "responses": {"201": {"description": "{\"run_id\": \"manual__…\"}"}, "400": {"description": "invalid conf or date"}, "401": {"description": "missing or wrong bearer token"}, "404": {"description": "no such DAG"}}
            }
        },
        "/api/v1/dags/{dag}/runs/{run}/lineage": {
            "parameters": [param("dag"), param("run")],
            "get": {"summary": "The run's lineage: per SQL task the lake table versions it read and the view version it wrote; edges table@version → task → view@version", "responses": with(json!({"description": "{\"tasks\": [{task_id, try_number, read, wrote}], \"edges\": [{from, to}]}"}))}
        },
        "/api/v1/dags/{dag}/runs/{run}/tasks": {
            "parameters": [param("dag"), param("run")],
            "get": {"summary": "A run's task instances (task_id, state, try_number, times)", "responses": with(json!({"description": "{\"tasks\": [...]}"}))}
        },
        "/api/v1/dags/{dag}/runs/{run}/tasks/{task}": {
            "parameters": [param("dag"), param("run"), param("task")],
            "get": {"summary": "A task instance: state, tries (state, start, end, reason), upstream/downstream and why it is not running", "responses": with(json!({"description": "the task instance"}))}
        },
        "/api/v1/dags/{dag}/runs/{run}/tasks/{task}/state": {
            "parameters": [param("dag"), param("run"), param("task")],
            "post": {
                "summary": "Mark a task instance success or failed by hand (not while queued or running); the run is settled anew",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["state"], "properties": {"state": {"type": "string", "enum": ["success", "failed"]}}}}}},
                "responses": with(json!({"description": "{\"state\": \"success\"}"}))
            }
        },
        "/api/v1/dags/{dag}/runs/{run}/tasks/{task}/approval": {
            "parameters": [param("dag"), param("run"), param("task")],
            "post": {
                "summary": "Approve or reject an approval task waiting for a decision; `by` must be one of its approvers when it names them. The decision, who and when, is recorded and published on weir.flow.events",
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["decision", "by"], "properties": {
                    "decision": {"type": "string", "enum": ["approve", "reject"]}, "by": {"type": "string"}, "comment": {"type": "string"}}}}}},
                "responses": {"200": {"description": "{\"decision\": \"approve\", \"by\": \"…\", \"at\": \"…\", \"try_number\": 1}"},
                              "400": {"description": "bad body, or not an approval task"}, "401": {"description": "missing or wrong bearer token"},
                              "403": {"description": "not one of the task's approvers, or a token that may not operate"}, "404": {"description": "no such DAG or run"},
                              "409": {"description": "the task is not waiting for a decision"}}
            }
        },
        "/api/v1/dags/{dag}/runs/{run}/tasks/{task}/logs": {
            "parameters": [param("dag"), param("run"), param("task"), {"name": "try", "in": "query", "schema": {"type": "integer"}},
                           {"name": "offset", "in": "query", "schema": {"type": "integer"}}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
            "get": {"summary": "A try's log as text (the last try by default): whole, or `limit` bytes from `offset` (the last `limit` bytes without `offset`); headers X-Log-Start, X-Log-Size, X-Try-State", "responses": with(json!({"description": "the log", "content": {"text/plain": {}}}))}
        },
        "/api/v1/workers/desired": {
            "get": {"summary": "The autoscaling signal: desired workers per queue (aggressive up, conservative down), with queued and running tasks, live workers, average task time and the oldest queued task's age", "responses": {"200": {"description": "{\"queues\": [{queue, desired, workers, queued, running, avg_task_ms, oldest_queued_ms, computed_at}]}"}, "401": {"description": "missing or wrong bearer token"}}}
        },
        "/api/v1/schedulers": {
            "get": {"summary": "Who leads: the lease (holder, epoch), the schedulers (leader, heirs) and the workers with their state", "responses": {"200": {"description": "{\"lease\": {...}, \"schedulers\": [...], \"workers\": [...]}"}, "401": {"description": "missing or wrong bearer token"}}}
        }
    })
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

fn failed(e: FlowError) -> Response {
    match e {
        FlowError::Store(e @ (StoreError::NoDag(_) | StoreError::NoRun { .. })) => error(StatusCode::NOT_FOUND, e),
        FlowError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other),
    }
}

use ui::time;

async fn dags(State(api): State<Arc<Api>>) -> Response {
    match ui::dag_list(&api.store, &api.versions).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => failed(e.into()),
    }
}

impl Api {
    /// The DAG's current version as the metadata DB keeps it (what the scheduler last parsed).
    async fn current(&self, dag_id: &str) -> Result<(crate::store::DagRow, Arc<dag::Dag>), Response> {
        let row = self.store.dag(dag_id).await.map_err(|e| failed(e.into()))?;
        match self.versions.get(&self.store, dag_id, &row.hash).await {
            Ok(Some(d)) => Ok((row, d)),
            Ok(None) => Err(error(StatusCode::NOT_FOUND, format!("DAG {dag_id}: version {} is not kept", row.hash))),
            Err(e) => Err(failed(e.into())),
        }
    }
}

async fn dag_detail(State(api): State<Arc<Api>>, Path(dag_id): Path<String>) -> Response {
    let (row, d) = match api.current(&dag_id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    Json(json!({
        "dag_id": d.id, "file": row.file, "version": row.hash, "paused": row.paused, "schedule": row.schedule,
        "timezone": d.timezone.name(), "start_date": d.start_date.to_rfc3339(), "catchup": d.catchup,
        "owner": d.owner, "description": d.description, "params": d.params,
        "max_active_runs": d.max_active_runs, "max_active_tasks": d.max_active_tasks,
        "source": d.source, "graph": ui::graph(&d),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct GridQuery {
    runs: Option<usize>,
}

async fn grid(State(api): State<Arc<Api>>, Path(dag_id): Path<String>, Query(q): Query<GridQuery>) -> Response {
    let (_, d) = match api.current(&dag_id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match ui::grid(&api.store, &d, q.runs.unwrap_or(25).clamp(1, 1000)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => failed(e.into()),
    }
}

async fn version(State(api): State<Arc<Api>>, Path((dag_id, hash)): Path<(String, String)>) -> Response {
    let source = match api.store.version_source(&dag_id, &hash).await {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("DAG {dag_id}: no version {hash}")),
        Err(e) => return failed(e.into()),
    };
    let graph = match api.versions.get(&api.store, &dag_id, &hash).await {
        Ok(d) => d.map(|d| ui::graph(&d)),
        Err(e) => return failed(e.into()),
    };
    Json(json!({"dag_id": dag_id, "version": hash, "file": source.1, "source": source.0, "graph": graph}))
        .into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    from: Option<String>,
    to: Option<String>,
}

async fn backfill(State(api): State<Arc<Api>>, Path(dag_id): Path<String>, body: axum::body::Bytes) -> Response {
    let (body, d): (BackfillBody, _) = match api.body_and_dag(&dag_id, &body, "{\"from\": \"…\", \"to\": \"…\"}") {
        Ok(got) => got,
        Err((status, why)) => return error(status, why),
    };
    let (Some(from), Some(to)) = (body.from, body.to) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"from\": \"…\", \"to\": \"…\"}: both dates are needed");
    };
    let parse = |what: &str, t: &str| dag::parse_instant(t, d.timezone).map_err(|e| format!("{what} {t:?}: {e}"));
    let (from, to) = match (parse("from", &from), parse("to", &to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    match runs::backfill(&api.store, &d, from, to).await {
        Ok(created) => (StatusCode::CREATED, Json(json!({"dag_id": dag_id, "run_ids": created}))).into_response(),
        Err(e) => failed(e),
    }
}

async fn task_detail(
    State(api): State<Arc<Api>>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> Response {
    let run = match api.store.run(&dag_id, &run_id).await {
        Ok(r) => r,
        Err(e) => return failed(e.into()),
    };
    let d = match api.versions.get(&api.store, &dag_id, &run.dag_hash).await {
        Ok(Some(d)) => d,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("DAG {dag_id}: version {} is not kept", run.dag_hash)),
        Err(e) => return failed(e.into()),
    };
    let key = TaskKey { dag_id, run_id, task_id };
    match ui::task_detail(&api.store, &d, &key).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("{} {}: no task {:?}", key.dag_id, key.run_id, key.task_id)),
        Err(e) => failed(e.into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MarkBody {
    state: Option<String>,
}

async fn mark(
    State(api): State<Arc<Api>>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let expected = "{\"state\": \"success\"|\"failed\"}";
    let state = match body_of::<MarkBody>(&body, expected).map(|b| b.state) {
        Ok(Some(s)) if s == "success" => TaskState::Success,
        Ok(Some(s)) if s == "failed" => TaskState::Failed,
        Ok(_) => return error(StatusCode::BAD_REQUEST, format!("expected {expected}")),
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if let Err(e) = api.store.run(&dag_id, &run_id).await {
        return failed(e.into());
    }
    match api.store.mark(&dag_id, &run_id, &task_id, state).await {
        Ok(true) => Json(json!({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "state": state.as_str()}))
            .into_response(),
        Ok(false) => error(
            StatusCode::CONFLICT,
            format!(
                "{dag_id} {run_id}: task {task_id:?} does not exist or is queued or running (wait for its try to end)"
            ),
        ),
        Err(e) => failed(e.into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    by: String,
    #[serde(default)]
    comment: String,
}

async fn approve(
    State(api): State<Arc<Api>>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    use crate::approvals::{self, Refusal};
    let expected = "{\"decision\": \"approve\"|\"reject\", \"by\": \"…\", \"comment\": \"…\"}";
    let body = match body_of::<DecisionBody>(&body, expected) {
        Ok(b) => b,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let decision = match body.decision.parse() {
        Ok(d) => d,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if body.by.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "by: say who decides");
    }
    let key = TaskKey { dag_id, run_id, task_id };
    match approvals::decide(&api.store, &key, decision, &body.by, &body.comment).await {
        Ok(d) => Json(json!({"dag_id": key.dag_id, "run_id": key.run_id, "task_id": key.task_id,
                             "decision": d.decision, "by": d.by, "comment": d.comment,
                             "at": d.at.to_rfc3339(), "try_number": d.try_number}))
        .into_response(),
        Err(e @ Refusal::NotApproval(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ Refusal::NotApprover { .. }) => error(StatusCode::FORBIDDEN, e),
        Err(e @ Refusal::NotWaiting(_)) => error(StatusCode::CONFLICT, e),
        Err(Refusal::Store(e)) => failed(e.into()),
    }
}

async fn lineage(State(api): State<Arc<Api>>, Path((dag_id, run_id)): Path<(String, String)>) -> Response {
    if let Err(e) = api.store.run(&dag_id, &run_id).await {
        return failed(e.into());
    }
    match api.store.lineage(&dag_id, &run_id).await {
        Ok(edges) => Json(crate::lineage::lineage_json(&edges)).into_response(),
        Err(e) => failed(e.into()),
    }
}

async fn desired(State(api): State<Arc<Api>>) -> Response {
    match api.store.desired().await {
        Ok(queues) => Json(json!({ "queues": queues })).into_response(),
        Err(e) => failed(e.into()),
    }
}

async fn schedulers(State(api): State<Arc<Api>>) -> Response {
    let read = async {
        let lease = api.store.lease().await?;
        let schedulers = api.store.schedulers().await?;
        let workers = api.store.workers().await?;
        Ok::<_, StoreError>((lease, schedulers, workers))
    };
    match read.await {
        Ok((lease, schedulers, workers)) => {
            let member = |m: &crate::cluster::Member| {
                json!({"id": m.id, "host": m.host, "pid": m.pid, "started_at": m.started_at.to_rfc3339(),
                       "heartbeat_at": m.heartbeat_at.to_rfc3339(), "beats": m.beats})
            };
            let schedulers: Vec<Value> = schedulers
                .iter()
                .map(|m| {
                    let mut v = member(m);
                    v["role"] = json!(if m.id == lease.holder { "leader" } else { "heir" });
                    v
                })
                .collect();
            let workers: Vec<Value> = workers
                .iter()
                .map(|m| {
                    let mut v = member(m);
                    v["state"] = json!(m.state);
                    v["queues"] = json!(m.queues);
                    v["slots"] = json!(m.slots);
                    v
                })
                .collect();
            Json(json!({
                "lease": {"holder": (!lease.holder.is_empty()).then_some(&lease.holder), "epoch": lease.epoch,
                          "acquired_at": time(lease.acquired_at)},
                "schedulers": schedulers,
                "workers": workers,
            }))
            .into_response()
        }
        Err(e) => failed(e.into()),
    }
}

async fn list_runs(State(api): State<Arc<Api>>, Path(dag_id): Path<String>) -> Response {
    match api.store.runs(&dag_id, 50).await {
        Ok(runs) => {
            let runs: Vec<Value> = runs.iter().map(ui::run_json).collect();
            Json(json!({"runs": runs})).into_response()
        }
        Err(e) => failed(e.into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    conf: serde_json::Map<String, Value>,
    logical_date: Option<String>,
}

async fn trigger(State(api): State<Arc<Api>>, Path(dag_id): Path<String>, body: axum::body::Bytes) -> Response {
    let expected = "{\"conf\": {…}, \"logical_date\": \"…\"}";
    let (body, d): (TriggerBody, _) = match api.body_and_dag(&dag_id, &body, expected) {
        Ok(got) => got,
        Err((status, why)) => return error(status, why),
    };
    let logical = match body.logical_date.as_deref().map(|t| dag::parse_instant(t, d.timezone)).transpose() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("logical_date: {e}")),
    };
    match runs::trigger(&api.store, &d, body.conf, logical).await {
        Ok(run_id) => (StatusCode::CREATED, Json(json!({"dag_id": dag_id, "run_id": run_id}))).into_response(),
        Err(e) => failed(e),
    }
}

/// A JSON body of type `T` (`{}` when empty), or why not, saying what was `expected`.
fn body_of<T: serde::de::DeserializeOwned + Default>(body: &[u8], expected: &str) -> Result<T, String> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("expected {expected}: {e}"))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PatchDag {
    is_paused: Option<bool>,
}

async fn set_paused(State(api): State<Arc<Api>>, Path(dag_id): Path<String>, body: axum::body::Bytes) -> Response {
    let patch: PatchDag = match body_of(&body, "{\"is_paused\": true|false}") {
        Ok(p) => p,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let Some(paused) = patch.is_paused else {
        return error(StatusCode::BAD_REQUEST, "expected {\"is_paused\": true|false}");
    };
    match api.store.set_paused(&dag_id, paused).await {
        Ok(()) => Json(json!({"dag_id": dag_id, "is_paused": paused})).into_response(),
        Err(e) => failed(e.into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    task: Option<String>,
    #[serde(default)]
    downstream: bool,
    #[serde(default)]
    only_failed: bool,
    run_id: Option<String>,
    #[serde(default)]
    latest: bool,
}

async fn clear(State(api): State<Arc<Api>>, Path(dag_id): Path<String>, body: axum::body::Bytes) -> Response {
    let expected =
        "{\"task\": \"…\", \"downstream\": bool, \"only_failed\": bool, \"run_id\": \"…\", \"latest\": bool}";
    let (body, d): (ClearBody, _) = match api.body_and_dag(&dag_id, &body, expected) {
        Ok(got) => got,
        Err((status, why)) => return error(status, why),
    };
    let spec = runs::ClearSpec {
        task: body.task,
        downstream: body.downstream,
        only_failed: body.only_failed,
        run_id: body.run_id,
        latest: body.latest,
    };
    match runs::clear(&api.store, &d, &spec).await {
        Ok(cleared) => {
            let cleared: Vec<Value> =
                cleared.into_iter().map(|(run, tasks)| json!({"run_id": run, "task_ids": tasks})).collect();
            Json(json!({"dag_id": dag_id, "cleared": cleared})).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn tasks(State(api): State<Arc<Api>>, Path((dag_id, run_id)): Path<(String, String)>) -> Response {
    if let Err(e) = api.store.run(&dag_id, &run_id).await {
        return failed(e.into());
    }
    match api.store.tasks(&dag_id, &run_id).await {
        Ok(tasks) => {
            let tasks: Vec<Value> = tasks
                .into_iter()
                .map(|t| {
                    json!({
                        "task_id": t.task_id, "state": t.state.to_string(), "try_number": t.try_number,
                        "max_tries": t.max_tries, "pool": t.pool, "queue": t.queue,
                        "started_at": time(t.started_at), "ended_at": time(t.ended_at),
                    })
                })
                .collect();
            Json(json!({"tasks": tasks})).into_response()
        }
        Err(e) => failed(e.into()),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(rename = "try")]
    try_number: Option<u32>,
    offset: Option<u64>,
    limit: Option<u64>,
}

async fn logs(
    State(api): State<Arc<Api>>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let key = TaskKey { dag_id, run_id, task_id };
    let tries = match api.store.tries(&key).await {
        Ok(t) => t,
        Err(e) => return failed(e.into()),
    };
    let chosen = match q.try_number {
        Some(n) => tries.iter().find(|t| t.try_number == n),
        None => tries.last(),
    };
    let Some(t) = chosen else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{} {} {}: no such try ({} tries)", key.dag_id, key.run_id, key.task_id, tries.len()),
        );
    };
    // Without a limit, the whole log (its last u64::MAX bytes).
    match runs::read_log_part(&api.lake, &t.log, q.offset, q.limit.unwrap_or(u64::MAX)).await {
        Ok(p) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                (header::HeaderName::from_static("x-log-start"), p.start.to_string()),
                (header::HeaderName::from_static("x-log-size"), p.total.to_string()),
                (header::HeaderName::from_static("x-try-state"), t.state.as_str().to_string()),
            ],
            p.bytes,
        )
            .into_response(),
        Err(e) => failed(e),
    }
}
