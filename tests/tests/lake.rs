//! The lake through the `weir` binary, from a real MariaDB: `weir ingest` → `weir lake run` →
//! `weir lake snapshot` gives a `current.*` table equal to the source table (`weir query`
//! against `mariadb -e`), and `weir lake run` killed with SIGKILL again and again leaves every
//! change in the lake exactly once, also on the Kafka-protocol test broker with a second writer
//! racing for the same partitions.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{Proc, kafka, mariadb, mysql_source_toml, ok, test_mysql_url, weir};

const BUS: &str = "local:./weir-data/bus";

/// `SELECT` output of the test MariaDB, tab-separated, no header.
fn mariadb_rows(sql: &str) -> String {
    let out = Command::new("mariadb")
        .args(["-h127.0.0.1", "-P13306", "-uweir", "-pweir", "-N", "-B", "-e", sql])
        .output()
        .expect("the mariadb client");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `weir query --format csv` output as MariaDB's tab-separated rows (no header).
fn query_rows(d: &std::path::Path, sql: &str) -> String {
    let csv = ok(weir(d, BUS, &["query", "--format", "csv", sql], None));
    csv.lines().skip(1).map(|l| format!("{}\n", l.replace(',', "\t"))).collect()
}

#[test]
fn current_state_from_mariadb_equals_the_source_table() {
    let url = test_mysql_url();
    mariadb(
        "DROP DATABASE IF EXISTS weir_lake; CREATE DATABASE weir_lake; \
         CREATE TABLE weir_lake.orders (id INT PRIMARY KEY, status VARCHAR(20), amount DECIMAL(10,2)); \
         CREATE TABLE weir_lake.notes (id INT PRIMARY KEY, body TEXT); \
         INSERT INTO weir_lake.orders VALUES (1, 'new', 10.50), (2, 'new', 20.00), (3, 'new', 30.25); \
         INSERT INTO weir_lake.notes VALUES (1, 'hello')",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("weir.toml"), mysql_source_toml(&url, 6411, "weir_lake", "")).unwrap();
    let compare = |round: &str| {
        ok(weir(d, BUS, &["ingest", "--once"], None));
        let out = ok(weir(d, BUS, &["lake", "run", "--once"], None));
        assert!(out.contains("raw.shop_weir_lake_orders"), "{out}");
        let out = ok(weir(d, BUS, &["lake", "snapshot"], None));
        assert!(out.contains("current.shop_weir_lake_orders") && out.contains("current.shop_weir_lake_notes"), "{out}");
        assert_eq!(
            query_rows(d, "SELECT id, status, amount FROM current.shop_weir_lake_orders ORDER BY id"),
            mariadb_rows("SELECT id, status, amount FROM weir_lake.orders ORDER BY id"),
            "{round}"
        );
    };
    compare("after the snapshot");
    mariadb(
        "UPDATE weir_lake.orders SET status = 'paid' WHERE id IN (1, 3); DELETE FROM weir_lake.orders WHERE id = 2; \
         INSERT INTO weir_lake.orders VALUES (4, 'new', 4.00); UPDATE weir_lake.orders SET id = 5 WHERE id = 4; \
         UPDATE weir_lake.orders SET amount = amount * 2 WHERE id = 1",
    );
    compare("after updates, a delete and a primary-key change");

    let tables = ok(weir(d, BUS, &["lake", "tables"], None));
    for t in ["raw.shop_weir_lake_orders", "raw.shop_weir_lake_notes", "current.shop_weir_lake_orders"] {
        assert!(tables.contains(t), "{tables}");
    }
    let history = ok(weir(d, BUS, &["lake", "history", "current.shop_weir_lake_orders"], None));
    assert_eq!(history.lines().count(), 2, "one version per snapshot: {history}");
    // Time travel: the first snapshot's state.
    assert_eq!(
        query_rows(d, "SELECT id, status FROM current.shop_weir_lake_orders VERSION AS OF 0 ORDER BY id"),
        "1\tnew\n2\tnew\n3\tnew\n"
    );
    let out = weir(d, BUS, &["query", "SELECT * FROM raw.no_such_table"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no_such_table"), "{err}");
}

#[test]
fn kill_9_of_the_lake_writer_neither_loses_nor_duplicates() {
    let url = test_mysql_url();
    mariadb(
        "DROP DATABASE IF EXISTS weir_lake_kill; CREATE DATABASE weir_lake_kill; \
         CREATE TABLE weir_lake_kill.t (id INT PRIMARY KEY, v INT)",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let toml = mysql_source_toml(&url, 6412, "weir_lake_kill", "") + "[lake]\nflush_rows = 1500\n";
    std::fs::write(d.join("weir.toml"), toml).unwrap();
    ok(weir(d, BUS, &["ingest", "--once"], None)); // an empty snapshot; the changes come from the binlog
    mariadb(
        "SET SESSION max_recursive_iterations = 100000; INSERT INTO weir_lake_kill.t WITH RECURSIVE s(i) AS \
         (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 30000) SELECT i, i FROM s; \
         UPDATE weir_lake_kill.t SET v = v + 1 WHERE id % 3 = 0; DELETE FROM weir_lake_kill.t WHERE id % 10 = 0",
    );
    ok(weir(d, BUS, &["ingest", "--once"], None));
    // 30,000 inserts, 10,000 updates, 3,000 deletes (+ tombstones, which carry no row).
    let expected = 30_000 + 10_000 + 3_000;

    let spawn = || {
        Proc::spawn(
            Command::new(weir_e2e::harness::weir_bin())
                .args(["lake", "run", "--listen", "127.0.0.1:0"])
                .current_dir(d)
                .env("WEIR_BUS_URL", BUS)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    // Until the first commit there is no table to count.
    let committed = || -> i64 {
        let out = weir(d, BUS, &["query", "--format", "csv", "SELECT count(*) FROM raw.shop_weir_lake_kill_t"], None);
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    // Commits made so far: the Delta log's entries (cheap to count, unlike a query).
    let log = d.join("weir-data/lake/raw/shop_weir_lake_kill_t/_delta_log");
    let commits = || {
        std::fs::read_dir(&log)
            .map(|dir| dir.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
            .unwrap_or(0)
    };
    let mut seed = std::process::id() as u64 | 1;
    let mut interrupted = 0;
    for _ in 0..8 {
        let before = commits();
        let mut child = spawn();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Kill at a random moment after this writer's first commit (however long its start takes
        // on a loaded machine), unless it finished everything first.
        let started = Instant::now();
        while commits() == before && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(60), "the writer committed nothing in 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(seed % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = committed();
        eprintln!("killed with {n} of {expected} rows committed");
        interrupted += usize::from(n > 0 && n < expected);
        if n >= expected {
            break; // nothing left to interrupt
        }
    }
    assert!(interrupted >= 3, "at least three kills landed while the writer was writing: {interrupted}");
    ok(weir(d, BUS, &["lake", "run", "--once"], None));
    let summary = query_rows(
        d,
        "SELECT count(*), count(DISTINCT concat(_partition, ':', _offset)), sum(id), \
         sum(CASE WHEN _op = 'u' THEN v ELSE 0 END) FROM raw.shop_weir_lake_kill_t",
    );
    let ids: i64 = (1..=30_000).sum::<i64>()
        + (1..=30_000).filter(|i| i % 3 == 0).sum::<i64>()
        + (1..=30_000).filter(|i| i % 10 == 0).sum::<i64>();
    let updated: i64 = (1..=30_000).filter(|i| i % 3 == 0).map(|i| i + 1).sum();
    assert_eq!(
        summary,
        format!("{expected}\t{expected}\t{ids}\t{updated}\n"),
        "after {interrupted} interrupted writers"
    );
    // And the current state equals the source.
    ok(weir(d, BUS, &["lake", "snapshot", "raw.shop_weir_lake_kill_t"], None));
    assert_eq!(
        query_rows(d, "SELECT count(*), sum(id), sum(v) FROM current.shop_weir_lake_kill_t"),
        mariadb_rows("SELECT count(*), sum(id), sum(v) FROM weir_lake_kill.t")
    );
}

#[test]
fn two_writers_and_kill_9_on_kafka_write_every_change_once() {
    let url = test_mysql_url();
    let bus = kafka();
    mariadb(
        "DROP DATABASE IF EXISTS weir_lake_race; CREATE DATABASE weir_lake_race; \
         CREATE TABLE weir_lake_race.t (id INT PRIMARY KEY, v INT)",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Topics of their own on the shared broker, whatever earlier runs left there.
    let prefix = format!("race{}", std::process::id());
    let toml = mysql_source_toml(&url, 6413, "weir_lake_race", "topic_config = { \"retention.ms\" = \"604800000\" }\n")
        .replace("topic_prefix = \"shop\"", &format!("topic_prefix = \"{prefix}\""))
        + "[lake]\nflush_rows = 200\n";
    std::fs::write(d.join("weir.toml"), toml).unwrap();
    ok(weir(d, &bus, &["ingest", "--once"], None));
    let table = format!("raw.{prefix}_weir_lake_race_t");
    // The schema history keeps every record; change topics get the source's topic_config.
    let history = ok(weir(d, &bus, &["topics", "describe", &format!("{prefix}.schema-history")], None));
    assert!(history.contains("config\tretention.ms=-1") && history.contains("config\tretention.bytes=-1"), "{history}");

    // Writer n logs to writer{n}.log.
    let spawn = |n: usize| {
        Proc::spawn(
            Command::new(weir_e2e::harness::weir_bin())
                .args(["lake", "run", "--listen", "127.0.0.1:0"])
                .current_dir(d)
                .env("WEIR_BUS_URL", &bus)
                .env("WEIR_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(format!("writer{n}.log"))).unwrap()),
        )
    };
    let committed = || -> i64 {
        let out = weir(d, &bus, &["query", "--format", "csv", &format!("SELECT count(*) FROM {table}")], None);
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    // Two writers follow every partition of the topic. Changes arrive in rounds while both are
    // caught up, so both write the same offsets' rows and one loses each race; one of them is
    // killed and restarted at a random point of each round. Few changes: the test broker's fetch
    // slows down with a partition's length (tansu 0.6 on SQLite: 5,000 records read in 0.9 s,
    // 10,000 in 4.7 s).
    let ids = |round: i64| round * 1000 + 1..=round * 1000 + 750;
    // A writer is in the race once it has positioned its consumer on the topic (its log says so).
    let positioned = |writer: usize| {
        let log = std::fs::read_to_string(d.join(format!("writer{writer}.log"))).unwrap_or_default();
        log.lines().any(|l| l.contains("lake writer positioned") && l.contains(&format!("{prefix}.weir_lake_race.t")))
    };
    // Commits made so far: the Delta log's entries (cheap to count, unlike a query).
    let delta_log = d.join(format!("weir-data/lake/raw/{prefix}_weir_lake_race_t/_delta_log"));
    let commits = || {
        std::fs::read_dir(&delta_log)
            .map(|dir| dir.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
            .unwrap_or(0)
    };
    let steady = spawn(1);
    let mut racer = spawn(2);
    let mut logs = 2;
    let mut seed = std::process::id() as u64 | 1;
    for round in 0..4 {
        // Both writers must be following the topic before the round's changes arrive, however
        // long a start takes on a loaded machine; otherwise one of them has nothing to race for.
        let started = Instant::now();
        while !(positioned(1) && positioned(logs)) {
            assert!(started.elapsed() < Duration::from_secs(60), "a writer did not position itself in 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = commits();
        let (first, last) = (*ids(round).start(), *ids(round).end());
        mariadb(&format!(
            "SET SESSION max_recursive_iterations = 100000; INSERT INTO weir_lake_race.t WITH RECURSIVE s(i) AS \
             (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {last}) SELECT i, i FROM s; \
             UPDATE weir_lake_race.t SET v = v + 1 WHERE id >= {first} AND id % 4 = 0; \
             DELETE FROM weir_lake_race.t WHERE id >= {first} AND id % 10 = 0"
        ));
        ok(weir(d, &bus, &["ingest", "--once"], None));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Kill at a random moment after the round's first commit: the race for its offsets is on.
        let started = Instant::now();
        while commits() == before {
            assert!(started.elapsed() < Duration::from_secs(60), "no writer committed round {round} in 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(seed % 400));
        racer.kill().unwrap(); // SIGKILL
        racer.wait().unwrap();
        eprintln!("racer killed in round {round} with {} rows committed", committed());
        logs += 1;
        racer = spawn(logs);
    }
    let changes = ok(weir(d, &bus, &["topics", "describe", &format!("{prefix}.weir_lake_race.t")], None));
    assert!(changes.contains("config\tretention.ms=604800000"), "{changes}");
    let all = || (0..4).flat_map(ids);
    let expected = all().count() + all().filter(|i| i % 4 == 0).count() + all().filter(|i| i % 10 == 0).count();
    let expected = expected as i64;
    let started = Instant::now();
    while committed() < expected {
        assert!(started.elapsed() < Duration::from_secs(120), "the writers stalled at {} rows", committed());
    }
    for mut w in [steady, racer] {
        w.kill().unwrap();
        w.wait().unwrap();
    }
    ok(weir(d, &bus, &["lake", "run", "--once"], None));
    let summary = query_rows(
        d,
        &format!(
            "SELECT count(*), count(DISTINCT concat(_partition, ':', _offset)), sum(id), \
             sum(CASE WHEN _op = 'u' THEN v ELSE 0 END) FROM {table}"
        ),
    );
    let ids: i64 =
        all().sum::<i64>() + all().filter(|i| i % 4 == 0).sum::<i64>() + all().filter(|i| i % 10 == 0).sum::<i64>();
    let updated: i64 = all().filter(|i| i % 4 == 0).map(|i| i + 1).sum();
    let fenced: usize = (1..=logs)
        .map(|i| std::fs::read_to_string(d.join(format!("writer{i}.log"))).unwrap())
        .map(|log| log.matches("rejoining from the table").count())
        .sum();
    assert_eq!(summary, format!("{expected}\t{expected}\t{ids}\t{updated}\n"), "after {fenced} fenced batches");
    eprintln!("{fenced} batches fenced");
    assert!(fenced > 0, "the writers raced for the same offsets and one was fenced");
}
