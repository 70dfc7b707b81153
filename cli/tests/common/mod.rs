//! Shared by the `weir` binary's tests: running it, and the test MariaDB.
#![allow(dead_code)]

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

/// `weir` run in `dir` with `bus_url`.
pub fn weir(dir: &std::path::Path, bus_url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(dir)
        .env("WEIR_BUS_URL", bus_url)
        .env_remove("WEIR_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "weir failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs SQL on the test MariaDB with its command-line client.
pub fn mariadb(sql: &str) {
    let status = Command::new("mariadb")
        .args(["-h127.0.0.1", "-P13306", "-uweir", "-pweir", "-e", sql])
        .status()
        .expect("the mariadb client (installed by scripts/test)");
    assert!(status.success(), "{sql}");
}

/// `weir.toml` with one MariaDB source capturing `db.*`.
pub fn mysql_source_toml(url: &str, server_id: u32, db: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nkind = \"mysql\"\nname = \"maria\"\nurl = \"{url}\"\ntopic_prefix = \"shop\"\n\
         server_id = {server_id}\ninclude_tables = [\"{db}.*\"]\n{extra}"
    )
}

pub fn test_mysql_url() -> String {
    let url = std::env::var("WEIR_TEST_MYSQL_URL")
        .expect("WEIR_TEST_MYSQL_URL is not set: run scripts/test, which starts MariaDB on loopback");
    assert!(url.ends_with(":13306"), "the SQL client here assumes scripts/services' port: {url}");
    url
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The bus URL of the test Kafka broker (`WEIR_TEST_KAFKA`, started by `scripts/test`).
pub fn kafka() -> String {
    let brokers = std::env::var("WEIR_TEST_KAFKA")
        .expect("WEIR_TEST_KAFKA is not set: run scripts/test, which starts a Kafka-protocol broker on loopback");
    format!("kafka://{brokers}")
}
