//! The one harness of the end-to-end tests: the `weir` binary under test, processes that
//! are killed when the test ends however it ends ([`Proc`]), and the services `scripts/services`
//! started on loopback (their addresses from the environment it writes, with a clear message when a
//! test runs without them).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The `weir` binary under test. The end-to-end tests are test targets of the `weir` package
/// (`cli/Cargo.toml` lists `tests/tests/*.rs`), so cargo builds the binary with them, with the
/// same features; it sits beside their `deps/` folder. Nextest names it in `NEXTEST_BIN_EXE_weir`;
/// `WEIR_BIN` names another binary to test.
pub fn weir_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WEIR_BIN").or_else(|| std::env::var_os("NEXTEST_BIN_EXE_weir")) {
            return PathBuf::from(bin);
        }
        // A test binary is <target>/<profile>/deps/<name>-<hash>; `weir` is <target>/<profile>/weir.
        let exe = std::env::current_exe().expect("the test binary's path");
        let bin =
            exe.parent().and_then(Path::parent).expect("the test binary sits in <target>/<profile>/deps").join("weir");
        assert!(
            bin.exists(),
            "{} is missing: run the end-to-end tests through cargo (`cargo nextest run -p weir`)",
            bin.display()
        );
        bin
    })
}

/// `weir` run in `dir` with `bus_url`, `stdin` fed to it; waits for it to end.
pub fn weir(dir: &Path, bus_url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(weir_bin())
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

/// A `weir <args>` command in `dir` with `WEIR_LOG` unset.
fn weir_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(weir_bin());
    command.args(args).current_dir(dir).env_remove("WEIR_LOG");
    command
}

/// Its stdout, after asserting that it succeeded (its stderr in the failure message).
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "weir failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A process of a test, killed (SIGKILL) and reaped when dropped: a failing assertion never leaves
/// it running beside the next test. Derefs to its [`Child`].
pub struct Proc(Option<Child>);

impl Proc {
    /// Spawns `command`.
    pub fn spawn(command: &mut Command) -> Proc {
        Proc(Some(command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))))
    }

    /// The child, no longer killed on drop (e.g. to wait for its output).
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("a Proc holds its child until dropped")
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a Proc holds its child until dropped")
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a Proc holds its child until dropped")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port free on loopback right now, below the kernel's ephemeral range (32768–60999 here): a
/// port `bind(0)` hands out is released before the process under test binds it, and meanwhile
/// the kernel may give it to any outgoing connection as its local port (which once failed the
/// console test with "Address already in use"). Ports 20000–31999 are never handed out that way;
/// the fixed test services sit below them.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()) << 32
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    for _ in 0..1000 {
        // A splitmix64 step over the seed and a counter: tests in parallel processes spread out.
        let mut x = seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let port = 20_000 + (x ^ (x >> 31)) % 12_000;
        let port = u16::try_from(port).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999 on loopback after 1000 tries")
}

fn service(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run scripts/test (or scripts/services start and source .weir-test/env), which starts {what} on loopback")
    })
}

/// The test Kafka-protocol broker's address (`WEIR_TEST_KAFKA`, host:port).
pub fn kafka_brokers() -> String {
    service("WEIR_TEST_KAFKA", "a Kafka-protocol broker")
}

/// The bus URL of the test Kafka-protocol broker.
pub fn kafka() -> String {
    format!("kafka://{}", kafka_brokers())
}

/// The test S3 server's endpoint (`WEIR_TEST_S3_ENDPOINT`; moto).
pub fn s3_endpoint() -> String {
    service("WEIR_TEST_S3_ENDPOINT", "an S3 server (moto)")
}

/// The Python with the peers' packages (`WEIR_TEST_PYTHON`: confluent-kafka, fastavro, DuckDB,
/// Selenium).
pub fn python() -> PathBuf {
    PathBuf::from(service("WEIR_TEST_PYTHON", "nothing, but installs a Python with the peers' packages and"))
}

/// The test certificates (`WEIR_TEST_TLS_DIR`), see [`crate::https::tls_dir`].
pub use crate::https::tls_dir;

/// The test PostgreSQL server's URL (`WEIR_TEST_POSTGRES_URL`).
pub fn postgres_url() -> String {
    service("WEIR_TEST_POSTGRES_URL", "PostgreSQL")
}

/// The test MariaDB's URL (`WEIR_TEST_MYSQL_URL`), on the port [`mariadb`] assumes.
pub fn test_mysql_url() -> String {
    let url = service("WEIR_TEST_MYSQL_URL", "MariaDB");
    assert!(url.ends_with(":13306"), "the SQL client here assumes scripts/services' port: {url}");
    url
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

/// A running `weir up`: the process, its API and PostgreSQL ports, its banner's bearer token.
pub struct Up {
    /// The process (killed when dropped).
    pub child: Proc,
    /// Its HTTP API's port.
    pub port: u16,
    /// Its PostgreSQL wire port.
    pub pg_port: u16,
    /// The operate token its banner printed.
    pub token: String,
}

/// `weir up` in `dir` on its own configuration (no bus URL from the environment), with `env`
/// added, once its /healthz answers 200 (every role runs); stdout and stderr go to `up.out`
/// and `up.err` there.
pub async fn weir_up(dir: &Path, env: &[(&str, &str)]) -> Up {
    up_until(dir, env, |status| status == 200).await
}

/// `weir up` as [`weir_up`] starts it, once its /healthz answers with a status `ready` accepts.
pub async fn up_until(dir: &Path, env: &[(&str, &str)], ready: impl Fn(u16) -> bool) -> Up {
    let (port, pg_port) = (free_port(), free_port());
    let mut child = Proc::spawn(
        weir_command(
            dir,
            &["up", "--listen", &format!("127.0.0.1:{port}"), "--pg-listen", &format!("127.0.0.1:{pg_port}")],
        )
        .env_remove("WEIR_BUS_URL")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(dir.join("up.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("up.err")).unwrap()),
    );
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
            && ready(r.status().as_u16())
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("weir up exited ({status}): {}", std::fs::read_to_string(dir.join("up.err")).unwrap_or_default());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "weir up not healthy within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
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

/// A directory of this repository (`examples`, `tests/peers`): `name` under the workspace root.
pub fn repo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}
