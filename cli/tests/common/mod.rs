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

/// A running `weir up`: the process, its API and PostgreSQL ports, its banner's bearer token.
pub struct Up {
    pub child: std::process::Child,
    pub port: u16,
    pub pg_port: u16,
    pub token: String,
}

/// `weir up` in `dir` on its own configuration (no bus URL from the environment), with `env`
/// added, once its /healthz answers 200 (every role runs); stdout and stderr go to `up.out`
/// and `up.err` there.
pub async fn weir_up(dir: &std::path::Path, env: &[(&str, &str)]) -> Up {
    up_until(dir, env, |status| status == 200).await
}

/// `weir up` as [`weir_up`] starts it, once its /healthz answers with a status `ready` accepts.
pub async fn up_until(dir: &std::path::Path, env: &[(&str, &str)], ready: impl Fn(u16) -> bool) -> Up {
    let (port, pg_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--pg-listen", &format!("127.0.0.1:{pg_port}")])
        .current_dir(dir)
        .env_remove("WEIR_BUS_URL")
        .env_remove("WEIR_LOG")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(dir.join("up.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("up.err")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
            && ready(r.status().as_u16())
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("weir up exited ({status}): {}", std::fs::read_to_string(dir.join("up.err")).unwrap_or_default());
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "weir up not healthy within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let banner = std::fs::read_to_string(dir.join("up.out")).unwrap();
    let token = banner
        .split_once("bearer token ")
        .map(|(_, t)| t.split(')').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no token in the banner: {banner}"));
    Up { child, port, pg_port, token }
}

/// The bus URL `weir up` uses by default, for `weir` commands run beside it.
pub const EMBEDDED: &str = "local:./weir-data/bus";
