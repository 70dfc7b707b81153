//! `weir bench console`: the operator console's speed on a large metadata DB. A DAG of 200 tasks
//! with 100 finished runs, 999 more DAGs, and a 50 MB task log, served by the same routes as
//! `weir serve`. Measures the grid API (against the per-run calls a grid without it makes: one
//! request per run, as the previous dashboard did), and, in headless Chromium driven by Selenium
//! (the test venv's), how long the console takes to show the grid, the 1,000-DAG list and the
//! 50 MB log (paged: its last 256 KB, earlier pages on demand), against fetching the whole log.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use clap::Args;
use serde_json::{Value, json};
use weir_flow::{
    dag,
    rules::TaskState,
    schedule::Interval,
    store::{Finish, Store, TaskKey},
};
use weir_lake::{Lake, LakeConfig};

use super::median;

/// `weir bench console`.
#[derive(Args)]
pub struct ConsoleBenchArgs {
    /// Tasks of the wide DAG (in layers of 10).
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// Its finished runs.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// DAGs in the list (the wide one included).
    #[arg(long, default_value_t = 1000)]
    dags: usize,
    /// Size of the big task log, in MB.
    #[arg(long, default_value_t = 50)]
    log_mb: usize,
    /// Measurements of each kind (medians are reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// The Python with selenium (scripts/deps' venv by default).
    #[arg(long, env = "WEIR_TEST_PYTHON")]
    python: Option<PathBuf>,
}

const TOKEN: &str = "bench-console-token";
const WIDE: &str = "wide";

/// The wide DAG's file: `tasks` scripts in layers of 10, each after two of the layer before.
fn wide_dag(tasks: usize) -> String {
    let mut out = format!(
        "description: {tasks} tasks in layers of ten\nowner: bench\nschedule: \"@daily\"\nstart_date: 2026-01-01\ntasks:\n"
    );
    for i in 0..tasks {
        let (layer, k) = (i / 10, i % 10);
        out.push_str(&format!("  - id: t{layer:03}_{k}\n    script: [\"true\"]\n"));
        if layer > 0 {
            out.push_str(&format!("    upstream: [t{:03}_{k}, t{:03}_{}]\n", layer - 1, layer - 1, (k + 1) % 10));
        }
    }
    out
}

/// Writes the DAG files, and fills the metadata DB: the wide DAG's runs with one try per task
/// (a few failed), one run of every other DAG. Returns the run and task holding the big log.
async fn fill(store: &Store, dir: &Path, args: &ConsoleBenchArgs) -> anyhow::Result<(String, String)> {
    let dags_dir = dir.join("dags");
    std::fs::create_dir_all(&dags_dir)?;
    std::fs::write(dags_dir.join(format!("{WIDE}.yaml")), wide_dag(args.tasks))?;
    for n in 1..args.dags {
        let text = format!(
            "description: small DAG {n}\nowner: team-{}\nschedule: \"@daily\"\nstart_date: 2026-01-01\ntasks:\n  \
             - id: extract\n    script: [\"true\"]\n  - id: load\n    script: [\"true\"]\n    upstream: [extract]\n",
            n % 17
        );
        std::fs::write(dags_dir.join(format!("d{n:04}.yaml")), text)?;
    }
    let (dags, errors) = dag::load_dir(&dags_dir);
    anyhow::ensure!(errors.is_empty(), "generated DAG files refused: {errors:?}");
    store.sync_dags(&dags, &[]).await?;
    let day = chrono::Duration::days(1);
    let first = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().context("date")?;
    let wide = dags.iter().find(|d| d.id == WIDE).context("the wide DAG")?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut last = (String::new(), String::new());
    for r in 0..args.runs {
        let start = first + day * r as i32;
        let run_id = format!("scheduled__{}", start.to_rfc3339());
        store.create_run(wide, &run_id, "scheduled", Interval { start, end: start + day }, &Default::default()).await?;
        let ids: Vec<String> = wide.tasks.iter().map(|t| t.id.clone()).collect();
        let changes: Vec<(String, TaskState)> = ids.iter().map(|t| (t.clone(), TaskState::Scheduled)).collect();
        store.set_task_states(WIDE, &run_id, &changes).await?;
        let key = |t: &String| TaskKey { dag_id: WIDE.into(), run_id: run_id.clone(), task_id: t.clone() };
        let starts: Vec<(TaskKey, u32, String)> =
            ids.iter().map(|t| (key(t), 1, logs.join(format!("{r}-{t}.log")).display().to_string())).collect();
        store.start_tries(&starts).await?;
        let finishes: Vec<Finish> = ids
            .iter()
            .enumerate()
            .map(|(i, t)| Finish {
                key: key(t),
                try_number: 1,
                state: if (i + r) % 37 == 0 { TaskState::Failed } else { TaskState::Success },
                reason: None,
                retry_wait: None,
                skip: Vec::new(),
                log: None,
                expand: None,
            })
            .collect();
        store.finish_tries(&finishes).await?;
        last = (run_id, ids.last().cloned().unwrap_or_default());
        if (r + 1) % 20 == 0 {
            eprintln!("[bench console] {} of {} runs of {WIDE} recorded", r + 1, args.runs);
        }
    }
    for (n, d) in dags.iter().filter(|d| d.id != WIDE).enumerate() {
        let start = first + day * (n % 300) as i32;
        store
            .create_run(
                d,
                &format!("scheduled__{}", start.to_rfc3339()),
                "scheduled",
                Interval { start, end: start + day },
                &Default::default(),
            )
            .await?;
    }
    // The big log, with ANSI colours as tools write them.
    let path = logs.join(format!("{}-{}.log", args.runs - 1, last.1));
    let mut text = String::with_capacity(args.log_mb << 20);
    let mut line = 0u64;
    while text.len() < args.log_mb << 20 {
        line += 1;
        text.push_str(&format!(
            "2026-12-06T10:00:00Z \x1b[32mINFO\x1b[0m step {line}: processed 1000 rows into views.bench\n"
        ));
    }
    std::fs::write(&path, text)?;
    Ok(last)
}

/// Headless Chromium through Selenium: prints one JSON line per measured page load.
const RENDER: &str = r##"
import json, sys, time
from selenium import webdriver
url, token = sys.argv[1], sys.argv[2]
routes = json.loads(sys.argv[3])
rounds = int(sys.argv[4])
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--disable-dev-shm-usage"]:
    options.add_argument(a)
d = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))
try:
    d.get(f"{url}/#token={token}")
    for name, route in routes.items():
        for i in range(rounds + 1):
            d.get("about:blank")
            d.get(f"{url}/#{route}")
            end = time.time() + 60
            while d.execute_script("return document.body.dataset.route || ''") != "#" + route:
                if time.time() > end:
                    raise SystemExit(f"{route} did not render: {d.find_element('tag name', 'main').text[:500]}")
                time.sleep(0.01)
            ds = d.execute_script("return Object.assign({}, document.body.dataset)")
            shown = d.execute_script("const l = document.getElementById('log'); return l ? l.textContent.length : null")
            cells = d.execute_script("const g = document.getElementById('grid'); return g ? Number(g.dataset.cells) : null")
            rows = d.execute_script("const l = document.getElementById('dag-table'); return l ? Number(l.dataset.total) : null")
            if i > 0:  # the first load warms the browser's caches
                print(json.dumps({"page": name, "render_ms": float(ds["renderMs"]), "since_navigation_ms": float(ds["sinceNavigationMs"]),
                                  "log_chars": shown, "grid_cells": cells, "dag_rows": rows}), flush=True)
finally:
    d.quit()
"##;

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"median": median(s.clone()), "min": s.first(), "max": s.last(), "n": s.len()})
}

pub async fn run(args: ConsoleBenchArgs, routes: super::Routes) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let pool =
        weir_schemas::metadata::connect(&format!("sqlite://{}/weir.db", tmp.path().display()), Duration::from_secs(10))
            .await?;
    let store = Store::open(pool).await?;
    eprintln!(
        "[bench console] {} DAGs, {WIDE}: {} tasks × {} runs, a {} MB log",
        args.dags, args.tasks, args.runs, args.log_mb
    );
    let filled = Instant::now();
    let (log_run, log_task) = fill(&store, tmp.path(), &args).await?;
    eprintln!("[bench console] metadata DB filled in {:.1} s", filled.elapsed().as_secs_f64());

    let lake_url = url::Url::from_directory_path(tmp.path().join("lake")).map_err(|()| anyhow::anyhow!("lake path"))?;
    let lake =
        Lake::new(&LakeConfig { url: lake_url.as_str().parse().map_err(anyhow::Error::msg)?, ..LakeConfig::default() });
    let serving = weir_serving::ServingConfig::default();
    let realtime = Arc::new(weir_serving::realtime::Realtime::new(serving.realtime_retention));
    let catalog = Arc::new(weir_serving::catalog::Catalog::new(lake.clone(), realtime, serving));
    let tokens = Arc::new(weir_schemas::tokens::Tokens::from_text(TOKEN)?);
    let routes = routes(catalog, tokens, store.clone(), Arc::new(lake), tmp.path().join("dags"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, routes).await });

    let client = reqwest::Client::new();
    let get = |path: String| {
        let req = client.get(format!("{url}{path}")).bearer_auth(TOKEN);
        async move {
            let r = req.send().await?;
            anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
            Ok::<_, anyhow::Error>(r.bytes().await?)
        }
    };
    // The grid API, and the same grid from per-run calls.
    let grid_path = format!("/api/v1/dags/{WIDE}/grid?runs={}", args.runs);
    let body = get(grid_path.clone()).await?;
    let grid: Value = serde_json::from_slice(&body)?;
    let cells =
        grid["cells"].as_array().map_or(0, |r| r.iter().map(|c| c.as_array().map_or(0, Vec::len)).sum::<usize>());
    anyhow::ensure!(cells == args.tasks * args.runs, "the grid has {cells} cells, not {}", args.tasks * args.runs);
    let run_ids: Vec<String> = grid["runs"]
        .as_array()
        .context("runs")?
        .iter()
        .filter_map(|r| r["run_id"].as_str().map(String::from))
        .collect();
    let (mut api_ms, mut per_run_ms) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for _ in 0..5 {
            let t = Instant::now();
            get(grid_path.clone()).await?;
            api_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let t = Instant::now();
        for run in &run_ids {
            get(format!("/api/v1/dags/{WIDE}/runs/{}/tasks", urlencoding(run))).await?;
        }
        per_run_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        eprintln!("[bench console] API round {} of {}", round + 1, args.rounds);
    }
    // The first call parses every DAG version once; the rounds after it are what a page pays.
    let t = Instant::now();
    let list = get("/api/v1/dags".into()).await?;
    let list_cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut list_ms = Vec::new();
    for _ in 0..args.rounds {
        let t = Instant::now();
        get("/api/v1/dags".into()).await?;
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let log_base = format!("/api/v1/dags/{WIDE}/runs/{}/tasks/{log_task}/logs", urlencoding(&log_run));
    let mut whole_ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let whole = get(log_base.clone()).await?;
        whole_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(whole.len() >= args.log_mb << 20, "the big log is {} bytes", whole.len());
    }

    // The pages in Chromium.
    let python = args.python.clone().unwrap_or_else(|| super::batch::dirs_cache().join("weir/venv/bin/python"));
    let routes = json!({
        "grid": format!("/dag/{WIDE}/grid?runs={}", args.runs),
        "dag_list": "/dags",
        "log_50mb": format!("/task/{WIDE}/{}/{log_task}", urlencoding(&log_run)),
    });
    eprintln!("[bench console] rendering in headless Chromium ({} rounds per page)", args.rounds);
    let out = Command::new(&python)
        .args(["-c", RENDER, &url, TOKEN, &routes.to_string(), &args.rounds.to_string()])
        .output()
        .with_context(|| format!("starting {} (run scripts/deps for the venv with selenium)", python.display()))?;
    anyhow::ensure!(out.status.success(), "the browser run failed: {}", String::from_utf8_lossy(&out.stderr));
    let loads: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let page = |name: &str| -> (Vec<f64>, Vec<f64>, Option<&Value>) {
        let of: Vec<&Value> = loads.iter().filter(|l| l["page"] == name).collect();
        (
            of.iter().filter_map(|l| l["render_ms"].as_f64()).collect(),
            of.iter().filter_map(|l| l["since_navigation_ms"].as_f64()).collect(),
            of.first().copied(),
        )
    };
    let (grid_render, grid_nav, grid_load) = page("grid");
    let (list_render, list_nav, list_load) = page("dag_list");
    let (log_render, log_nav, log_load) = page("log_50mb");
    anyhow::ensure!(
        grid_load.and_then(|l| l["grid_cells"].as_u64()) == Some((args.tasks * args.runs) as u64),
        "the page's grid is not complete: {grid_load:?}"
    );
    anyhow::ensure!(
        list_load.and_then(|l| l["dag_rows"].as_u64()) == Some(args.dags as u64),
        "the page's DAG list is not complete: {list_load:?}"
    );
    let (api_median, per_run_median) = (median(api_ms.clone()), median(per_run_ms.clone()));
    let med = |v: &[f64]| median(v.to_vec());
    Ok(json!({
        "benchmark": "console",
        "setup": {"dags": args.dags, "wide_dag_tasks": args.tasks, "wide_dag_runs": args.runs, "log_mb": args.log_mb,
                  "grid_bytes": body.len(), "dag_list_bytes": list.len(), "metadata_db": "sqlite"},
        "grid_api_ms": stats(&api_ms),
        "grid_from_per_run_calls_ms": stats(&per_run_ms),
        "grid_api_speedup": per_run_median / api_median,
        "grid_render_ms": stats(&grid_render),
        "grid_since_navigation_ms": stats(&grid_nav),
        "dag_list_api_ms": stats(&list_ms),
        "dag_list_api_first_call_ms": list_cold_ms,
        "dag_list_render_ms": stats(&list_render),
        "dag_list_since_navigation_ms": stats(&list_nav),
        "log": {"render_ms": stats(&log_render), "since_navigation_ms": stats(&log_nav),
                "chars_shown": log_load.and_then(|l| l["log_chars"].as_u64()), "whole_log_fetch_ms": stats(&whole_ms)},
        "goals": {
            "grid_api_ms_50": api_median <= 50.0,
            "grid_render_ms_300": med(&grid_render) <= 300.0,
            "dag_list_render_ms_500": med(&list_render) <= 500.0,
        },
    }))
}

/// A path segment with the characters run ids carry (`+`, `:`) escaped.
fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}
