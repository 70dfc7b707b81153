//! Every benchmark run as a user runs it (`weir bench <name>`), at a tiny size, against the real
//! services on loopback: it must end well and print one JSON document naming itself and the
//! machine, with its figures measured (positive numbers, results that agree). Sizes here say
//! nothing about speed (docs/benchmarks.md has the figures); they keep a benchmark from rotting
//! unnoticed. A benchmark added to `weir bench` without a case here fails
//! `every_benchmark_has_a_smoke_case`.

use serde_json::Value;
use weir_e2e::harness::{ok, repo_path, test_mysql_url, weir};

/// `weir bench <name> <args>` in a fresh directory; its JSON document, after checking that it
/// names the benchmark and the machine and that every pointer in `positive` is a number above 0
/// (or `true`).
fn smoke(name: &str, args: &[&str], positive: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["bench", name];
    all.extend_from_slice(args);
    let out = ok(weir(dir.path(), "local:./bus", &all, None));
    let doc: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name}: not one JSON document ({e}):\n{out}"));
    assert_eq!(doc["benchmark"], name, "{doc}");
    assert!(doc["machine"]["cpus"].as_u64().is_some_and(|n| n >= 1), "{name}: no machine: {doc}");
    for pointer in positive {
        let v = doc.pointer(pointer).unwrap_or_else(|| panic!("{name}: no {pointer} in {doc}"));
        assert!(v.as_f64().is_some_and(|x| x > 0.0) || v == &Value::Bool(true), "{name}: {pointer} is {v}: {doc}");
    }
    doc
}

const CASES: &[&str] = &[
    "alert-latency",
    "batch",
    "bus",
    "cdc-cassandra",
    "cdc-mysql",
    "console",
    "lake",
    "scheduler",
    "serve",
    "snapshot",
    "stream",
];

#[test]
fn every_benchmark_has_a_smoke_case() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(weir(dir.path(), "local:./bus", &["bench", "--help"], None));
    let mut listed: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a list of commands")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .take_while(|w| !w.ends_with(':'))
        .filter(|w| *w != "help")
        .collect();
    listed.sort();
    assert_eq!(listed, CASES, "weir bench --help lists other benchmarks than this file tests:\n{help}");
}

#[test]
fn bus() {
    let doc = smoke(
        "bus",
        &["--records", "3000", "--batch", "100"],
        &[
            "/backends/local/produce_records_per_s",
            "/backends/local/consume_records_per_s",
            "/backends/local_shared/consume_records_per_s",
            "/backends/local_shared_to_local/consume",
        ],
    );
    assert_eq!(doc["records"], 3000, "{doc}");
}

#[test]
fn cdc_cassandra() {
    let fixtures = repo_path("../shared/fixtures/cassandra-commitlog");
    smoke(
        "cdc-cassandra",
        &["--fixtures", fixtures.to_str().unwrap(), "--repeat", "2"],
        &["/mutations_per_s", "/segments/3.0.29/mutations_per_s", "/segments/4.0.11/mutations_per_s"],
    );
}

#[test]
fn cdc_mysql() {
    let url = test_mysql_url();
    let doc = smoke(
        "cdc-mysql",
        &[
            "--url",
            &url,
            "--changes",
            "2000",
            "--txn-rows",
            "100",
            "--rate",
            "500",
            "--steady",
            "1s",
            "--snapshot-rows",
            "2000",
            "--chunk",
            "500",
            "--database",
            "weir_bench_smoke",
        ],
        &[
            "/drain/events_per_s",
            "/steady/changes_per_s",
            "/incremental_snapshot/modes/signal_table/rows_per_s",
            "/incremental_snapshot/modes/read_only/rows_per_s",
        ],
    );
    assert_eq!(doc["drain"]["records_on_bus"], 2000, "every change reached the bus: {doc}");
}

#[test]
fn alert_latency() {
    let url = test_mysql_url();
    smoke(
        "alert-latency",
        &["--url", &url, "--trials", "3", "--rate", "100", "--database", "weir_alert_bench_smoke"],
        &["/commit_to_webhook_ms/p50", "/baseline_commit_to_bus_ms/p50", "/events_aggregated"],
    );
}

#[test]
fn batch() {
    let doc = smoke(
        "batch",
        &["--orders", "20000", "--rounds", "1", "--commit-rows", "10000"],
        &["/in_process_s", "/ballista_s", "/duckdb_s", "/results_equal"],
    );
    assert_eq!(doc["result_groups"].as_u64().map(|n| n > 0), Some(true), "{doc}");
}

#[test]
fn console() {
    smoke(
        "console",
        &["--tasks", "5", "--runs", "5", "--dags", "10", "--log-mb", "1", "--rounds", "1"],
        &["/grid_api_ms/median", "/grid_render_ms/median", "/dag_list_render_ms/median", "/log/chars_shown"],
    );
}

#[test]
fn lake() {
    smoke(
        "lake",
        &["--events", "5000", "--commit-rows", "1000", "--rounds", "1"],
        &["/lake/rows_per_s", "/lake/commits", "/baseline_arrow_writer/rows_per_s", "/ratio_lake_to_arrow_writer"],
    );
}

#[test]
fn scheduler() {
    let doc = smoke(
        "scheduler",
        &["--chain", "20", "--dags", "4", "--width", "10", "--slots", "4", "--commits", "5", "--rounds", "1"],
        &[
            "/chain/task_to_task_ms/p50",
            "/fan_out/tasks_per_s",
            "/table_trigger/commit_to_first_task_ms/p50",
            "/baseline/spawn_true_parallel_per_s",
            "/baseline/fan_out_ratio_to_spawning",
        ],
    );
    assert_eq!(doc["fan_out"]["tasks"], 40, "{doc}");
}

#[test]
fn serve() {
    smoke(
        "serve",
        &["--rows", "10000", "--group-bys", "5", "--clients", "2", "--lookups-for", "1s"],
        &["/group_by_over_http_ms/p50", "/point_lookups/qps", "/baseline_point_lookups_without_hot_tables/qps"],
    );
}

#[test]
fn snapshot() {
    let doc = smoke(
        "snapshot",
        &["--keys", "1000", "--histories", "2000,4000", "--changes", "100", "--commit-rows", "1000"],
        &["/histories/0/incremental_s", "/histories/1/full_s", "/incremental_growth", "/speedup_at_longest"],
    );
    assert_eq!(
        doc["histories"][1]["incremental_changes_read"], 100,
        "an incremental build reads only the new changes: {doc}"
    );
}

#[test]
fn stream() {
    smoke(
        "stream",
        // Flink (where `scripts/deps flink` installed it) takes 15 s even at this size.
        &["--events", "20000", "--keys", "100", "--partitions", "2", "--events-per-second", "100", "--no-flink"],
        &[
            "/windows_closed_results",
            "/pipeline/events_per_s",
            "/baseline_decode_only/events_per_cpu_s",
            "/sql_pipeline/events_per_s",
            "/ratio_sql_to_yaml",
            "/join_pipeline/events_per_cpu_s",
            "/ratio_join_to_yaml",
            "/pipeline_again/events_per_cpu_s",
        ],
    );
}
