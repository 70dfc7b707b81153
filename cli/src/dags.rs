//! `weir dags …` (DAG files, runs, tasks, logs), `weir scheduler [status]` (the orchestrator
//! role and who leads it) and `weir worker` (a remote worker).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use weir_flow::{
    approvals::{self, Decision},
    dag::{self, Dag, TaskKind},
    runs::{self, ClearSpec},
    scheduler::Scheduler,
    store::{Store, TaskKey},
    template::{Context as TemplateContext, Syntax as TemplateSyntax},
    worker::Worker,
};
use weir_lake::Lake;

use crate::{config::Config, telemetry};

/// `weir dags …`.
#[derive(Subcommand)]
pub enum DagsCommand {
    /// List the DAGs of the DAG folder with their schedule and state, then the files refused.
    List,
    /// Show one DAG: schedule, tasks, their kinds, upstream tasks and trigger rules.
    Show {
        /// The DAG.
        dag: String,
    },
    /// Show how DataFusion runs the DAG's SQL tasks (templates rendered for the latest
    /// interval): the physical plan with its partitioned, parallel stages, or, for a task on
    /// Ballista, the stages its scheduler splits the plan into.
    Explain {
        /// The DAG.
        dag: String,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
    },
    /// Start a manual run now.
    Trigger {
        /// The DAG.
        dag: String,
        /// A JSON object merged over the DAG's params.
        #[arg(long)]
        conf: Option<String>,
        /// The run's logical date (default: the start of the latest complete interval).
        #[arg(long)]
        logical_date: Option<String>,
    },
    /// Stop creating scheduled runs of a DAG (manual runs still run).
    Pause {
        /// The DAG.
        dag: String,
    },
    /// Resume a paused DAG's schedule.
    Unpause {
        /// The DAG.
        dag: String,
    },
    /// Create runs for every data interval starting between two dates that has no run yet.
    Backfill {
        /// The DAG.
        dag: String,
        /// First logical date (a date, local time in the DAG's zone, or RFC 3339).
        #[arg(long)]
        from: String,
        /// Last logical date.
        #[arg(long)]
        to: String,
    },
    /// Clear task instances so they run again (a new try; the history stays).
    Clear {
        /// The DAG.
        dag: String,
        /// Only this task…
        #[arg(long)]
        task: Option<String>,
        /// … and every task downstream of it.
        #[arg(long)]
        downstream: bool,
        /// Only instances that failed or failed upstream.
        #[arg(long)]
        failed: bool,
        /// Only this run (default: every run of the DAG).
        #[arg(long)]
        run: Option<String>,
        /// SQL tasks read the tables' latest versions (by default a rerun reads what its first
        /// try read).
        #[arg(long)]
        latest: bool,
    },
    /// The lake tables each SQL task of a run read, at which versions, and the view version it
    /// wrote (the latest run when none is named).
    Lineage {
        /// The DAG.
        dag: String,
        /// The run id.
        run: Option<String>,
    },
    /// The DAG's runs, newest first.
    Runs {
        /// The DAG.
        dag: String,
        /// At most this many.
        #[arg(long, default_value_t = 25)]
        limit: usize,
    },
    /// The task instances of a run (the latest run when none is named).
    Tasks {
        /// The DAG.
        dag: String,
        /// The run id.
        run: Option<String>,
    },
    /// Print the log of a task's try (the last try when none is named).
    Logs {
        /// The DAG.
        dag: String,
        /// The run id.
        run: String,
        /// The task.
        task: String,
        /// The try number.
        #[arg(long = "try")]
        try_number: Option<u32>,
    },
    /// Approve an approval task that is waiting: it succeeds and the run goes on.
    Approve(DecideArgs),
    /// Reject an approval task that is waiting: it fails.
    Reject(DecideArgs),
    /// Show the state the DAG's tasks keep across tries and runs ($WEIR_STATE), or set or clear
    /// one task's.
    State {
        /// The DAG.
        dag: String,
        /// Only this task.
        task: Option<String>,
        /// Replace the task's state with this JSON object.
        #[arg(long, requires = "task", conflicts_with = "clear")]
        set: Option<String>,
        /// Forget the task's state (its next try starts from {}).
        #[arg(long, requires = "task")]
        clear: bool,
    },
}

/// `weir dags approve|reject`.
#[derive(Args)]
pub struct DecideArgs {
    /// The DAG.
    dag: String,
    /// The run id.
    run: String,
    /// The approval task.
    task: String,
    /// Who decides (default: $USER); must be one of the task's approvers when it names them.
    #[arg(long)]
    by: Option<String>,
    /// Why.
    #[arg(long, default_value = "")]
    comment: String,
}

/// `weir scheduler`.
#[derive(Args)]
pub struct SchedulerArgs {
    /// Where to serve /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9096")]
    listen: SocketAddr,
    #[command(subcommand)]
    pub command: Option<SchedulerCommand>,
}

/// `weir scheduler …`.
#[derive(Subcommand)]
pub enum SchedulerCommand {
    /// Show which scheduler leads, its heirs, and the workers.
    Status,
}

/// `weir worker`.
#[derive(Args)]
pub struct WorkerArgs {
    /// The queues to claim tasks from (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    queues: Vec<String>,
    /// Tries run at once (default: `[flow] slots`).
    #[arg(long)]
    slots: Option<usize>,
    /// Where to serve /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9097")]
    listen: SocketAddr,
}

async fn store(config: &Config) -> anyhow::Result<Store> {
    let pool = config.metadata.connect().await?;
    Ok(Store::open(pool).await?)
}

/// The DAG `id` from the DAG folder, or an error naming why it is not there.
fn load(config: &Config, id: &str) -> anyhow::Result<Dag> {
    let (dags, errors) = dag::load_dir(&config.flow.dags_dir);
    if let Some(d) = dags.into_iter().find(|d| d.id == id) {
        return Ok(d);
    }
    let stem_matches =
        |e: &&dag::DagError| PathBuf::from(&e.file).file_stem().is_some_and(|s| s.to_string_lossy() == id);
    match errors.iter().find(stem_matches) {
        Some(e) => bail!("DAG {id} cannot be used: {e}"),
        None => bail!("no DAG {id:?} in {} (see `weir dags list`)", config.flow.dags_dir.display()),
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Runs a `weir dags` command.
pub async fn run(config: &Config, command: DagsCommand) -> anyhow::Result<()> {
    let store = store(config).await?;
    match command {
        DagsCommand::List => {
            let (dags, errors) = dag::load_dir(&config.flow.dags_dir);
            store.sync_dags(&dags, &errors).await?;
            let rows = store.dags().await?;
            println!("{:<28} {:<22} {:<7} {:>5}  {:<9} file", "dag", "schedule", "paused", "tasks", "last run");
            for d in &dags {
                let row = rows.iter().find(|r| r.dag_id == d.id);
                let last = store.runs(&d.id, 1).await?.first().map_or("-".to_string(), |r| r.state.to_string());
                println!(
                    "{:<28} {:<22} {:<7} {:>5}  {:<9} {}",
                    d.id,
                    d.schedule.to_string(),
                    row.is_some_and(|r| r.paused),
                    d.tasks.len(),
                    last,
                    d.file.display()
                );
            }
            if !errors.is_empty() {
                eprintln!("\n{} DAG file(s) refused:", errors.len());
                for e in &errors {
                    eprintln!("  {e}");
                }
            }
            Ok(())
        }
        DagsCommand::Show { dag } => {
            let d = load(config, &dag)?;
            println!("dag:       {}", d.id);
            if !d.description.is_empty() {
                println!("about:     {}", d.description);
            }
            println!("schedule:  {} ({})", d.schedule, d.timezone);
            println!("start:     {}  catchup: {}  max_active_runs: {}", d.start_date, d.catchup, d.max_active_runs);
            println!("version:   {}", &d.hash[..12]);
            println!("tasks:");
            for t in &d.tasks {
                let upstream =
                    if t.upstream.is_empty() { String::new() } else { format!(" ← {}", t.upstream.join(", ")) };
                println!(
                    "  {:<24} {:<14} retries {} rule {}{}",
                    t.id,
                    t.kind.name(),
                    t.retries,
                    t.trigger_rule,
                    upstream
                );
            }
            Ok(())
        }
        DagsCommand::Explain { dag, task } => {
            let d = load(config, &dag)?;
            let lake = Lake::new(&config.lake);
            let now = Utc::now();
            let interval = d
                .schedule
                .latest_complete(d.start_date, d.timezone, now)
                .unwrap_or(weir_flow::schedule::Interval { start: now, end: now });
            let mut shown = 0;
            for t in d.tasks.iter().filter(|t| task.as_ref().is_none_or(|id| *id == t.id)) {
                let TaskKind::Sql { sql, view, engine, .. } = &t.kind else { continue };
                let ctx = TemplateContext::new(
                    &d.id,
                    "explain",
                    &t.id,
                    1,
                    interval.start,
                    (interval.start, interval.end),
                    &d.params,
                    &Default::default(),
                );
                let sql = ctx.render(sql, TemplateSyntax::Sql).map_err(|e| anyhow::anyhow!("task {}: {e}", t.id))?;
                println!("== task {} → views.{view}  (interval {} – {})", t.id, interval.start, interval.end);
                let engine = config.batch.engine_for(*engine).map_err(|e| anyhow::anyhow!("task {}: {e}", t.id))?;
                if let weir_batch::engine::Engine::Ballista { .. } = engine {
                    println!("-- engine {engine}: Ballista's stages");
                    for stage in ballista_stages(&lake, &sql, view).await.with_context(|| format!("task {}", t.id))? {
                        println!("{stage}");
                    }
                    shown += 1;
                    continue;
                }
                let batches = weir_lake::query::run(&lake, &format!("EXPLAIN {sql}"), None)
                    .await
                    .with_context(|| format!("task {}", t.id))?;
                for b in &batches {
                    use deltalake::arrow::array::AsArray as _;
                    let (kinds, plans) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
                    for i in 0..b.num_rows() {
                        println!("-- {}\n{}", kinds.value(i), plans.value(i));
                    }
                }
                shown += 1;
            }
            if shown == 0 {
                bail!("DAG {} has no sql task{}", d.id, task.map(|t| format!(" {t:?}")).unwrap_or_default());
            }
            Ok(())
        }
        DagsCommand::Trigger { dag, conf, logical_date } => {
            let d = load(config, &dag)?;
            let conf = match conf {
                Some(text) => match serde_json::from_str(&text).context("--conf")? {
                    serde_json::Value::Object(m) => m,
                    _ => bail!("--conf must be a JSON object"),
                },
                None => serde_json::Map::new(),
            };
            let logical_date = match logical_date {
                Some(s) => {
                    Some(dag::parse_instant(&s, d.timezone).map_err(|e| anyhow::anyhow!("--logical-date {s:?}: {e}"))?)
                }
                None => None,
            };
            let run_id = runs::trigger(&store, &d, conf, logical_date).await?;
            println!("{run_id}");
            Ok(())
        }
        DagsCommand::Pause { dag } => {
            store.upsert_dag(&load(config, &dag)?).await?;
            store.set_paused(&dag, true).await?;
            println!("{dag} paused");
            Ok(())
        }
        DagsCommand::Unpause { dag } => {
            store.upsert_dag(&load(config, &dag)?).await?;
            store.set_paused(&dag, false).await?;
            println!("{dag} unpaused");
            Ok(())
        }
        DagsCommand::Backfill { dag, from, to } => {
            let d = load(config, &dag)?;
            let parse = |flag: &str, s: &str| {
                dag::parse_instant(s, d.timezone).map_err(|e| anyhow::anyhow!("--{flag} {s:?}: {e}"))
            };
            let created = runs::backfill(&store, &d, parse("from", &from)?, parse("to", &to)?).await?;
            for r in &created {
                println!("{r}");
            }
            eprintln!("{} backfill run(s) created; `weir scheduler` runs them", created.len());
            Ok(())
        }
        DagsCommand::Clear { dag, task, downstream, failed, run, latest } => {
            let d = load(config, &dag)?;
            let spec = ClearSpec { task, downstream, only_failed: failed, run_id: run, latest };
            let cleared = runs::clear(&store, &d, &spec).await?;
            for (run, tasks) in &cleared {
                println!("{run}: {}", tasks.join(", "));
            }
            eprintln!("{} run(s) cleared", cleared.len());
            Ok(())
        }
        DagsCommand::Runs { dag, limit } => {
            store.dag(&dag).await?;
            println!(
                "{:<48} {:<9} {:<9} {:<20} {:<20} {:<20} version",
                "run", "type", "state", "interval start", "started", "ended"
            );
            for r in store.runs(&dag, limit).await? {
                println!(
                    "{:<48} {:<9} {:<9} {:<20} {:<20} {:<20} {}",
                    r.run_id,
                    r.run_type,
                    r.state,
                    time(Some(r.interval.start)),
                    time(r.started_at),
                    time(r.ended_at),
                    &r.dag_hash[..12.min(r.dag_hash.len())]
                );
                // A table-triggered run: the versions it covers.
                for (table, input) in r.inputs.iter().filter(|(_, i)| i.changed()) {
                    println!("  {table}: versions {}..={}", input.previous + 1, input.version);
                }
            }
            Ok(())
        }
        DagsCommand::Tasks { dag, run } => {
            let run = run_or_latest(&store, &dag, run).await?;
            let r = store.run(&dag, &run).await?;
            println!("{} {} ({})", r.dag_id, r.run_id, r.state);
            let mut tasks = store.tasks(&dag, &run).await?;
            tasks.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.task_id.cmp(&b.task_id)));
            println!("{:<28} {:<16} {:>5}  {:<20} {:<20}", "task", "state", "try", "started", "ended");
            let outputs = store.outputs(&dag, &run).await?;
            for t in tasks {
                println!(
                    "{:<28} {:<16} {:>5}  {:<20} {:<20}",
                    t.task_id,
                    t.state.to_string(),
                    t.try_number,
                    time(t.started_at),
                    time(t.ended_at)
                );
                if let Some(output) = outputs.get(&t.task_id) {
                    println!("  output: {}", serde_json::Value::Object(output.clone()));
                }
            }
            Ok(())
        }
        DagsCommand::Lineage { dag, run } => {
            let run = run_or_latest(&store, &dag, run).await?;
            store.run(&dag, &run).await?;
            println!("{dag} {run}");
            for e in store.lineage(&dag, &run).await? {
                let read: Vec<String> = e.read.iter().map(|(t, v)| format!("{t}@{v}")).collect();
                let wrote = e.wrote.map_or_else(|| "(no view yet)".to_string(), |(v, n)| format!("{v}@{n}"));
                let read = if read.is_empty() { "no lake table".to_string() } else { read.join(", ") };
                println!("  {} (try {}): {read} → {wrote}", e.task_id, e.try_number);
            }
            Ok(())
        }
        DagsCommand::Approve(args) => decide(&store, args, Decision::Approve).await,
        DagsCommand::Reject(args) => decide(&store, args, Decision::Reject).await,
        DagsCommand::State { dag, task, set, clear } => {
            let d = store.dag(&dag).await?;
            if let (Some(task), true) = (&task, set.is_some() || clear) {
                anyhow::ensure!(
                    load(config, &d.dag_id)?.task(task).is_some(),
                    "DAG {dag} has no task {task:?} (see `weir dags show {dag}`)"
                );
                let state = match &set {
                    Some(text) => match serde_json::from_str(text) {
                        Ok(serde_json::Value::Object(m)) => Some(m),
                        _ => anyhow::bail!("--set {text:?}: a JSON object is expected"),
                    },
                    None => None,
                };
                store.set_task_state(&dag, task, state.as_ref()).await?;
                eprintln!("{dag}.{task}: state {}", if clear { "cleared" } else { "set" });
                return Ok(());
            }
            for (t, state, at) in store.task_states(&dag).await? {
                if task.as_ref().is_none_or(|only| *only == t) {
                    println!("{t}\t{}\t{}", serde_json::Value::Object(state), at.to_rfc3339());
                }
            }
            Ok(())
        }
        DagsCommand::Logs { dag, run, task, try_number } => {
            let key = TaskKey { dag_id: dag, run_id: run, task_id: task };
            let tries = store.tries(&key).await?;
            let chosen = match try_number {
                Some(n) => tries.iter().find(|t| t.try_number == n),
                None => tries.last(),
            };
            let Some(t) = chosen else {
                bail!("{} {} {}: no such try (tries: {})", key.dag_id, key.run_id, key.task_id, tries.len());
            };
            eprintln!("# try {} — {} — {}", t.try_number, t.state, t.log);
            let bytes = runs::read_log(&Lake::new(&config.lake), &t.log).await?;
            print!("{}", String::from_utf8_lossy(&bytes));
            if let Some(reason) = &t.reason {
                eprintln!("# {reason}");
            }
            Ok(())
        }
    }
}

/// The stages Ballista's scheduler splits `sql` into (its own planner, on the plan over the
/// tables' data files that the task writing `views.<view>` sends, with that task's session
/// configuration), each printed with its plan.
async fn ballista_stages(lake: &Lake, sql: &str, view: &str) -> anyhow::Result<Vec<String>> {
    use ballista_scheduler::planner::{DefaultDistributedPlanner, DistributedPlanner as _};
    use deltalake::datafusion::{physical_plan::displayable, prelude::SessionContext};
    let ctx = SessionContext::new_with_config(weir_batch::sql::ballista_config(view)?);
    let (sql, _) = weir_lake::query::register_for(&ctx, lake, sql, weir_lake::query::Registration::Files).await?;
    let plan = ctx.sql(&sql).await?.create_physical_plan().await?;
    let state = ctx.state();
    let stages = DefaultDistributedPlanner::new().plan_query_stages(
        &ballista_core::JobId::new("explain"),
        plan,
        state.config().options(),
    )?;
    Ok(stages
        .iter()
        .enumerate()
        .map(|(i, stage)| format!("stage {}:\n{}", i + 1, displayable(stage.as_ref()).indent(false)))
        .collect())
}

/// `weir scheduler`: runs DAGs until Ctrl-C or SIGTERM, serving /healthz and /metrics; or,
/// with `status`, shows the schedulers and workers.
pub async fn scheduler(config: &Config, args: SchedulerArgs) -> anyhow::Result<()> {
    if let Some(SchedulerCommand::Status) = args.command {
        return status(config).await;
    }
    let store = store(config).await?;
    let metrics = telemetry::init_metrics()?;
    let (bound, server) = telemetry::ops_server(args.listen, metrics).await?;
    tracing::info!(listen = %bound, dags = %config.flow.dags_dir.display(), slots = config.flow.slots, "scheduler running");
    let bus = match weir_bus::open(&config.bus).await {
        Ok(bus) => Some(bus),
        // Several schedulers on one machine share the embedded bus's directory, which one
        // process owns: the others run without publishing (use Kafka for several schedulers).
        Err(e @ weir_bus::BusError::Locked { .. }) => {
            tracing::warn!(error = %e, "this scheduler neither publishes weir.flow.events nor hears lake commit signals while another process owns the embedded bus");
            None
        }
        Err(e) => return Err(e).with_context(|| format!("opening bus {}", config.bus.url)),
    };
    let lake = Arc::new(signalled(Lake::new(&config.lake), bus.as_ref()));
    let mut scheduler = Scheduler::new(store, lake, config.flow.clone());
    if let Some(bus) = bus {
        scheduler = scheduler.with_bus(bus);
    }
    tokio::select! {
        r = scheduler.run(telemetry::stop_signal()) => r?,
        r = server => r.context("health and metrics server")?,
    }
    Ok(())
}

/// `weir worker`: claims and runs tasks from its queues until Ctrl-C or SIGTERM, then drains.
pub async fn worker(config: &Config, args: WorkerArgs) -> anyhow::Result<()> {
    let store = store(config).await?;
    // On Kafka, SQL tasks' commits are announced for table-triggered DAGs. A worker never
    // opens the embedded bus (it would own it, and the platform would depend on the worker): the
    // scheduler finds those commits in the tables' logs when it next reads the DAG folder.
    let bus = match &config.bus.url {
        weir_bus::BusUrl::Kafka(_) => match weir_bus::open(&config.bus).await {
            Ok(bus) => Some(bus),
            Err(e) => {
                tracing::warn!(error = %e, "this worker does not announce its SQL tasks' lake commits");
                None
            }
        },
        weir_bus::BusUrl::Local(_) => None,
    };
    let lake = Arc::new(signalled(Lake::new(&config.lake), bus.as_ref()));
    let metrics = telemetry::init_metrics()?;
    let (bound, server) = telemetry::ops_server(args.listen, metrics).await?;
    let slots = args.slots.unwrap_or(config.flow.slots);
    tracing::info!(listen = %bound, queues = %args.queues.join(","), slots, "worker running");
    let worker = Worker::new(store, lake, config.flow.clone(), args.queues, slots);
    tokio::select! {
        r = worker.run(telemetry::stop_signal()) => r?,
        r = server => r.context("health and metrics server")?,
    }
    Ok(())
}

/// `run`, or the DAG's latest run when none is named.
async fn run_or_latest(store: &Store, dag: &str, run: Option<String>) -> anyhow::Result<String> {
    match run {
        Some(r) => Ok(r),
        None => store.runs(dag, 1).await?.into_iter().next().map(|r| r.run_id).context("the DAG has no runs"),
    }
}

/// `weir dags approve|reject`.
async fn decide(store: &Store, args: DecideArgs, decision: Decision) -> anyhow::Result<()> {
    let by = args.by.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
    let key = TaskKey { dag_id: args.dag, run_id: args.run, task_id: args.task };
    let d = approvals::decide(store, &key, decision, &by, &args.comment).await?;
    eprintln!(
        "{} {} {}: {} by {} (try {})",
        key.dag_id,
        key.run_id,
        key.task_id,
        d.decision.as_str(),
        d.by,
        d.try_number
    );
    Ok(())
}

/// `lake`, announcing its commits on `bus` when there is one.
fn signalled(lake: Lake, bus: Option<&Arc<dyn weir_bus::Bus>>) -> Lake {
    match bus {
        Some(bus) => lake.with_signals(weir_lake::signal::Signals::new(bus.clone())),
        None => lake,
    }
}

/// `weir scheduler status`: the lease, the schedulers (leader first, then heirs by age) and the
/// workers. "Last beat" is by each machine's own clock.
async fn status(config: &Config) -> anyhow::Result<()> {
    let store = store(config).await?;
    let lease = store.lease().await?;
    let now = Utc::now();
    let ago = |t: DateTime<Utc>| format!("{:.1} s ago", (now - t).num_milliseconds() as f64 / 1000.0);
    match &lease.holder {
        h if h.is_empty() => println!("lease: free (epoch {})", lease.epoch),
        h => println!("lease: held by {h} (epoch {}, since {})", lease.epoch, time(lease.acquired_at)),
    }
    println!("{:<40} {:<7} {:<20} LAST BEAT", "SCHEDULER", "ROLE", "STARTED");
    let schedulers = store.schedulers().await?;
    let (leader, heirs): (Vec<_>, Vec<_>) = schedulers.iter().partition(|m| m.id == lease.holder);
    // Display only (by the members' own clocks): a member whose last beat is older than the
    // lease timeout has probably stopped.
    let silent = |t: DateTime<Utc>| (now - t).to_std().is_ok_and(|d| d > config.flow.lease_timeout);
    for m in leader.iter().chain(heirs.iter()) {
        let role = match (m.id == lease.holder, silent(m.heartbeat_at)) {
            (true, _) => "leader",
            (false, false) => "heir",
            (false, true) => "silent",
        };
        println!("{:<40} {role:<7} {:<20} {}", m.id, time(Some(m.started_at)), ago(m.heartbeat_at));
    }
    let workers = store.workers().await?;
    if !workers.is_empty() {
        println!();
        println!("{:<40} {:<9} {:<20} {:>5} LAST BEAT", "WORKER", "STATE", "QUEUES", "SLOTS");
        for w in &workers {
            println!("{:<40} {:<9} {:<20} {:>5} {}", w.id, w.state, w.queues.join(","), w.slots, ago(w.heartbeat_at));
        }
    }
    let desired = store.desired().await?;
    if !desired.is_empty() {
        println!();
        println!(
            "{:<20} {:>7} {:>7} {:>7} {:>7} {:>10} {:>11}",
            "QUEUE", "DESIRED", "WORKERS", "QUEUED", "RUNNING", "AVG TASK", "OLDEST WAIT"
        );
        for d in &desired {
            let ms = |v: Option<i64>| v.map_or_else(|| "-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
            println!(
                "{:<20} {:>7} {:>7} {:>7} {:>7} {:>10} {:>11}",
                d.queue,
                d.desired,
                d.workers,
                d.queued,
                d.running,
                ms(d.avg_task_ms),
                ms(d.oldest_queued_ms)
            );
        }
    }
    Ok(())
}
