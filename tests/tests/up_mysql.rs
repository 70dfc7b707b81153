//! A team's first hour on its own MariaDB: `weir init` checks the server and writes the
//! project, `weir up` captures two tables; inserts, updates, deletes and truncates reach `current.*`, read
//! over the PostgreSQL wire with psql, equal to the source; a DAG joins them; other processes
//! consume, query and trigger meanwhile. `kill -9` of `weir up` while a writer keeps changing the
//! source loses and repeats nothing. A user without replication privileges is told what to grant.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use weir_e2e::harness::{EMBEDDED, Up, mariadb, ok, test_mysql_url, weir_up};

/// `weir` beside `weir up` in `dir`.
fn weir(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    weir_e2e::harness::weir(dir, EMBEDDED, args, None)
}

/// A database of its own for each test run.
fn database(name: &str) -> String {
    let db = format!("{name}_{}", std::process::id());
    mariadb(&format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}; \
         CREATE TABLE {db}.customers (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, tier INT NOT NULL); \
         CREATE TABLE {db}.orders (id INT PRIMARY KEY, customer_id INT NOT NULL, qty INT NOT NULL); \
         INSERT INTO {db}.customers VALUES (1, 'ada', 1), (2, 'grace', 2), (3, 'edsger', 1); \
         INSERT INTO {db}.orders VALUES (10, 1, 5), (11, 2, 7), (12, 2, 1);"
    ));
    db
}

/// `weir init` for `db` in a new folder, with commits every second.
fn init(db: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let server_id = (20_000 + std::process::id() % 40_000).to_string();
    let out = weir(
        dir.path(),
        &[
            "init",
            "--mysql",
            &test_mysql_url(),
            "--tables",
            &format!("{db}.*"),
            "--prefix",
            "app",
            "--server-id",
            &server_id,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "weir init: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{db}.customers")) && text.contains("weir up"), "{text}");
    let config = std::fs::read_to_string(dir.path().join("weir.toml")).unwrap();
    assert!(config.contains("password_env = \"WEIR_MYSQL_PASSWORD\"") && !config.contains("weir:weir"), "{config}");
    let config = config.replace("flush_interval = \"10s\"", "flush_interval = \"1s\"");
    std::fs::write(dir.path().join("weir.toml"), format!("{config}\n[up]\ncurrent_interval = \"1s\"\n")).unwrap();
    dir
}

/// `weir up` in `dir` with the password in its environment, once it is healthy.
async fn up(dir: &std::path::Path) -> Up {
    weir_up(dir, &[("WEIR_MYSQL_PASSWORD", "weir")]).await
}

/// Rows as `a|b|c` lines, in key order, from the source…
fn source_rows(db: &str, table: &str, columns: &str) -> String {
    let out = Command::new("mariadb")
        .args(["-h127.0.0.1", "-P13306", "-uweir", "-pweir", "-N", "-B", "-e"])
        .arg(format!("SELECT {columns} FROM {db}.{table} ORDER BY id"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().replace('\t', "|")
}

/// … and over the PostgreSQL wire, with psql (`None` while the table is not served yet).
fn served_rows(pg_port: u16, token: &str, sql: &str) -> Option<String> {
    let out = Command::new("psql")
        .arg(format!("postgresql://weir:{token}@127.0.0.1:{pg_port}/weir?sslmode=disable"))
        .args(["-X", "-A", "-t", "-c", sql])
        .output()
        .expect("psql (Debian postgresql, installed by scripts/test)");
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
}

/// Waits until `current.<table>` equals the source table, row for row.
async fn converges(db: &str, table: &str, columns: &str, pg_port: u16, token: &str) {
    let started = Instant::now();
    let current = format!("current.app_{db}_{table}");
    loop {
        let want = source_rows(db, table, columns);
        let got = served_rows(pg_port, token, &format!("SELECT {columns} FROM {current} ORDER BY id"));
        if got.as_deref() == Some(want.as_str()) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{current} does not equal {db}.{table}:\nsource:\n{want}\nserved:\n{got:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_up_keeps_current_tables_equal_to_the_source() {
    let db = database("upe2e");
    let dir = init(&db);
    let d = dir.path();
    std::fs::write(
        d.join("dags/orders_per_tier.yaml"),
        format!(
            "tasks:\n  - id: join\n    view: orders_per_tier\n    sql: |\n      \
             SELECT c.tier, sum(o.qty) AS qty FROM current.app_{db}_orders o \
             JOIN current.app_{db}_customers c ON c.id = o.customer_id GROUP BY c.tier\n"
        ),
    )
    .unwrap();
    let Up { child: mut running, pg_port, token, .. } = up(d).await;
    converges(&db, "customers", "id, name, tier", pg_port, &token).await;

    mariadb(&format!(
        "INSERT INTO {db}.customers VALUES (4, 'barbara', 2); UPDATE {db}.customers SET tier = 3 WHERE id = 1; \
         DELETE FROM {db}.customers WHERE id = 3; INSERT INTO {db}.orders VALUES (13, 4, 2), (14, 1, 9); \
         UPDATE {db}.orders SET qty = qty + 1 WHERE customer_id = 2; DELETE FROM {db}.orders WHERE id = 10;"
    ));
    converges(&db, "customers", "id, name, tier", pg_port, &token).await;
    converges(&db, "orders", "id, customer_id, qty", pg_port, &token).await;

    // Other processes beside it: a consumer of the change events, SQL, and a DAG run.
    let events = ok(weir(d, &["consume", &format!("app.{db}.customers"), "--group", "look", "--timeout-ms", "1000"]));
    assert!(events.lines().count() >= 6, "{events}");
    ok(weir(d, &["dags", "trigger", "orders_per_tier"]));
    let started = Instant::now();
    let totals = loop {
        let runs = ok(weir(d, &["dags", "runs", "orders_per_tier"]));
        if runs.contains("success") {
            break ok(weir(d, &["query", "SELECT tier, qty FROM views.orders_per_tier ORDER BY tier"]));
        }
        assert!(!runs.contains("failed"), "{runs}");
        assert!(started.elapsed() < Duration::from_secs(60), "the join did not run: {runs}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // tier 2: grace (7+1, 1+1) and barbara (2); tier 3: ada (9).
    let lines: Vec<String> = totals
        .lines()
        .filter(|l| l.chars().any(|c| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(lines.iter().any(|l| l.contains("2") && l.contains("12")), "{totals}");
    assert!(lines.iter().any(|l| l.contains("3") && l.contains("9")), "{totals}");

    // A truncate empties the current table too; what comes after it stays.
    mariadb(&format!("TRUNCATE TABLE {db}.orders; INSERT INTO {db}.orders VALUES (30, 2, 4);"));
    converges(&db, "orders", "id, customer_id, qty", pg_port, &token).await;
    running.kill().unwrap();
    running.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_weir_up_under_writes_loses_and_repeats_nothing() {
    let db = database("upkill");
    let dir = init(&db);
    let d = dir.path().to_path_buf();
    let Up { child: mut running, pg_port, token, .. } = up(&d).await;
    // The snapshot is in the lake: every change from here on comes from the binlog.
    converges(&db, "customers", "id, name, tier", pg_port, &token).await;
    // A writer that keeps changing the source while weir up is killed and restarted.
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..60 {
            let id = 100 + i;
            mariadb(&format!(
                "INSERT INTO {writer_db}.customers VALUES ({id}, 'c{id}', {t}); \
                 UPDATE {writer_db}.customers SET tier = tier + 1 WHERE id = {prev}; \
                 DELETE FROM {writer_db}.customers WHERE id = {old};",
                t = i % 3,
                prev = id - 1,
                old = id - 5
            ));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    for pause_ms in [700, 1_300] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        running.kill().unwrap();
        running.wait().unwrap();
        running = up(&d).await.child;
    }
    writer.join().unwrap();
    running.kill().unwrap();
    running.wait().unwrap();
    let Up { child: mut running, pg_port, token, .. } = up(&d).await;
    converges(&db, "customers", "id, name, tier", pg_port, &token).await;
    // Every change is in the change log once: 60 inserts, 59 updates (the first finds no row 99)
    // and 55 deletes (the first five find none), each binlog position once.
    let counts = served_rows(
        pg_port,
        &token,
        &format!("SELECT count(DISTINCT _pos), count(*) FROM raw.app_{db}_customers WHERE _op <> 'r'"),
    )
    .unwrap();
    let (distinct, all) = counts.trim().split_once('|').unwrap();
    assert_eq!(distinct.parse::<u32>().unwrap(), 60 + 59 + 55, "changes lost: {counts}");
    assert_eq!(all, distinct, "changes written twice: {counts}");
    running.kill().unwrap();
    running.wait().unwrap();
}

#[test]
fn init_names_the_grant_a_user_lacks() {
    let db = database("upgrant");
    let user = format!("np_{}", std::process::id());
    mariadb(&format!(
        "DROP USER IF EXISTS '{user}'@'127.0.0.1'; CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw'; \
         GRANT SELECT ON {db}.* TO '{user}'@'127.0.0.1';"
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = weir(
        dir.path(),
        &["init", "--mysql", &format!("mysql://{user}:pw@127.0.0.1:13306"), "--tables", &format!("{db}.*")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let grant = format!("GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'127.0.0.1';");
    assert!(text.contains(&grant), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("problem(s) on the server"), "{out:?}");
    // The tables it can see are still found, and the project is written for after the fix.
    assert!(text.contains(&format!("{db}.orders")), "{text}");
    assert!(dir.path().join("weir.toml").exists());
    mariadb(&format!("DROP USER '{user}'@'127.0.0.1'"));
}

/// The saved offset of `weir up`'s source in `dir`, as JSON.
fn saved_offset(dir: &std::path::Path) -> serde_json::Value {
    std::fs::read(dir.join("weir-data/ingest/mysql.mysql-offset.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Waits until the saved offset satisfies `done`.
async fn wait_offset(dir: &std::path::Path, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let started = Instant::now();
    while !done(&saved_offset(dir)) {
        assert!(started.elapsed() < Duration::from_secs(600), "timed out waiting for {what}: {}", saved_offset(dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A table of a million rows added to the capture later is snapshotted incrementally (read-only)
/// while a writer keeps changing it; `weir up` is killed with SIGKILL in the middle and restarted:
/// the snapshot resumes where it was, and `current.*` ends equal to the source, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_of_a_million_rows_survives_kill_9_under_writes() {
    const ROWS: u32 = 1_000_000;
    let db = database("upincr");
    let dir = init(&db);
    let d = dir.path().to_path_buf();
    let config = std::fs::read_to_string(d.join("weir.toml")).unwrap();
    let captured = config.replace(
        "topic_prefix = \"app\"",
        "topic_prefix = \"app\"\nread_only = true\nincremental_snapshot_chunk_size = 10000",
    );
    assert_ne!(captured, config);
    let excluded = captured.replace("read_only = true", &format!("read_only = true\nexclude_tables = [\"{db}.big\"]"));
    std::fs::write(d.join("weir.toml"), &excluded).unwrap();
    mariadb(&format!(
        "CREATE TABLE {db}.big (id INT PRIMARY KEY, v INT NOT NULL); SET SESSION max_recursive_iterations = {ROWS}; \
         INSERT INTO {db}.big WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
         SELECT i, i % 7 FROM n;"
    ));
    let Up { child: mut running, pg_port, token, .. } = up(&d).await;
    converges(&db, "customers", "id, name, tier", pg_port, &token).await;
    // The big table joins the capture: from now on its changes stream; its rows need a snapshot.
    running.kill().unwrap();
    running.wait().unwrap();
    std::fs::write(d.join("weir.toml"), &captured).unwrap();
    running = up(&d).await.child;

    let writer_db = db.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut i = 0u32;
        while !stop_writer.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let id = (i * 7919) % ROWS + 1;
            mariadb(&format!(
                "UPDATE {writer_db}.big SET v = v + 100 WHERE id = {id}; \
                 DELETE FROM {writer_db}.big WHERE id = {gone}; \
                 INSERT INTO {writer_db}.big VALUES ({new}, 5);",
                gone = (i * 104_729) % ROWS + 1,
                new = ROWS + i
            ));
        }
        i
    });
    let sent = ok(weir(&d, &["ingest", "snapshot", "mysql", "--tables", &format!("{db}.big")]));
    assert!(sent.contains("app.signals"), "{sent}");
    // Killed once part of the table is out, then restarted.
    wait_offset(&d, "the first chunks", |o| !o["snapshots"]["last_key"].is_null()).await;
    let before_kill = saved_offset(&d);
    running.kill().unwrap();
    running.wait().unwrap();
    let Up { child: mut running, pg_port, token, .. } = up(&d).await;
    wait_offset(&d, "the snapshot to finish", |o| o["signal_offset"] == 1 && o.get("snapshots").is_none()).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statements = writer.join().unwrap();

    // current.* equals the source: same rows (count), same values (sums).
    let source_sql = format!("SELECT count(*), sum(v), sum(CAST(id AS SIGNED) * v) FROM {db}.big");
    let started = Instant::now();
    loop {
        let out = Command::new("mariadb")
            .args(["-h127.0.0.1", "-P13306", "-uweir", "-pweir", "-N", "-B", "-e", &source_sql])
            .output()
            .unwrap();
        let want = String::from_utf8(out.stdout).unwrap().trim().replace('\t', "|");
        let got = served_rows(
            pg_port,
            &token,
            &format!("SELECT count(*), sum(v), sum(CAST(id AS BIGINT) * v) FROM current.app_{db}_big"),
        );
        if got.as_deref().map(str::trim) == Some(want.as_str()) {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            // Which of the rows the writer updated differ, and their change events.
            let updated: Vec<String> = (1..=statements).map(|i| ((i * 7919) % ROWS + 1).to_string()).collect();
            let list = updated.join(",");
            let out = Command::new("mariadb")
                .args(["-h127.0.0.1", "-P13306", "-uweir", "-pweir", "-N", "-B", "-e"])
                .arg(format!("SELECT id, v FROM {db}.big WHERE id IN ({list}) ORDER BY id"))
                .output()
                .unwrap();
            let source = String::from_utf8(out.stdout).unwrap().replace('\t', "|");
            let served = served_rows(
                pg_port,
                &token,
                &format!("SELECT id, v FROM current.app_{db}_big WHERE id IN ({list}) ORDER BY id"),
            )
            .unwrap_or_default();
            let served: std::collections::HashSet<&str> = served.lines().collect();
            let differing: Vec<&str> = source.lines().filter(|l| !served.contains(l)).take(5).collect();
            let ids: Vec<&str> = differing.iter().filter_map(|l| l.split('|').next()).collect();
            let events = served_rows(
                pg_port,
                &token,
                &format!(
                    "SELECT id, v, _op, _pos, _offset, _source_ts_ms FROM raw.app_{db}_big WHERE id IN ({}) ORDER BY _offset",
                    ids.join(",")
                ),
            );
            let log = std::fs::read_to_string(d.join("weir-data/logs/weir.log")).unwrap_or_default();
            let log: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("incremental") || l.contains("chunk") || l.contains("signal"))
                .collect();
            eprintln!("{}", log.join("\n"));
            panic!(
                "current.app_{db}_big ≠ {db}.big after {statements} writer rounds: {got:?} vs {want} (offset before \
                 the kill: {before_kill}); source rows not served: {differing:?}; their events: {events:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    // The restarted source went on from the saved chunk: reads of the first table part are not
    // repeated beyond the chunk in flight at the kill.
    let reads = served_rows(
        pg_port,
        &token,
        &format!("SELECT count(*) - count(DISTINCT id) FROM raw.app_{db}_big WHERE _op = 'r'"),
    )
    .unwrap();
    let repeated: u32 = reads.trim().parse().unwrap();
    assert!(repeated <= 3 * 10_000, "rows read again after the restart: {repeated}");
    running.kill().unwrap();
    running.wait().unwrap();
}
