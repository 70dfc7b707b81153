//! A MariaDB primary and a replica following it by GTID, each a `mariadbd` of its own started in a
//! temporary directory on free loopback ports (the test setup installs MariaDB; the shared server
//! of `scripts/services` is left alone). For tests of a failover: stop the primary, promote the
//! replica, point a client at it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One server of the pair.
pub struct Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    socket: PathBuf,
    child: Child,
}

impl Server {
    /// `mysql://weir:weir@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mysql://weir:weir@127.0.0.1:{}", self.port)
    }

    /// Runs SQL as root through the server's socket; its output (tab-separated, no headers).
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .expect("the mariadb client (installed by scripts/deps)");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stops the server at once (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary and its GTID replica.
pub struct Pair {
    /// Takes the writes.
    pub primary: Server,
    /// Follows the primary (`MASTER_USE_GTID = slave_pos`, `log_slave_updates`).
    pub replica: Server,
    _dir: tempfile::TempDir,
}

fn start(dir: &Path, name: &str, server_id: u32) -> Server {
    let data = dir.join(name);
    let status = Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--datadir={}", data.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mariadb-install-db (installed by scripts/deps)");
    assert!(status.success(), "mariadb-install-db for the {name}");
    let port = crate::harness::free_port();
    let socket = dir.join(format!("{name}.sock"));
    // Its own directory for temporary tables, apart from the shared test server's.
    let tmp = dir.join(format!("{name}-tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    let child = Command::new("mariadbd")
        .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1", "--skip-name-resolve"])
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pid-file={}", dir.join(format!("{name}.pid")).display()))
        .args(["--log-bin=mysql-bin", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL"])
        .args(["--log-slave-updates", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M"])
        .arg(format!("--server-id={server_id}"))
        .arg(format!("--tmpdir={}", tmp.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("mariadbd (installed by scripts/deps)");
    let server = Server { port, socket, child };
    let started = Instant::now();
    while !Command::new("mariadb-admin")
        .arg(format!("--socket={}", server.socket.display()))
        .args(["-uroot", "ping"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(started.elapsed() < Duration::from_secs(60), "the {name} MariaDB did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Outside the binlog: the replica's own GTIDs would otherwise precede the primary's.
    server.sql(
        "SET SESSION sql_log_bin = 0; CREATE USER 'weir'@'127.0.0.1' IDENTIFIED BY 'weir'; \
         GRANT ALL PRIVILEGES ON *.* TO 'weir'@'127.0.0.1'; FLUSH PRIVILEGES",
    );
    server
}

impl Pair {
    /// Starts both servers and the replication, and returns once the replica follows.
    pub fn start() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let primary = start(dir.path(), "primary", 1);
        let replica = start(dir.path(), "replica", 2);
        // The replica starts from the primary's current GTID position.
        let position = primary.sql("SELECT @@gtid_binlog_pos").trim().to_string();
        replica.sql(&format!(
            "SET GLOBAL gtid_slave_pos = '{position}'; \
             CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'weir', \
             MASTER_PASSWORD = 'weir', MASTER_USE_GTID = slave_pos; START SLAVE",
            primary.port
        ));
        let pair = Pair { primary, replica, _dir: dir };
        pair.wait_replicated();
        pair
    }

    /// Waits until the replica has applied everything the primary has committed.
    pub fn wait_replicated(&self) {
        let position = self.primary.sql("SELECT @@gtid_binlog_pos").trim().to_string();
        let waited = self.replica.sql(&format!("SELECT MASTER_GTID_WAIT('{position}', 60)"));
        assert_eq!(waited.trim(), "0", "the replica did not reach {position}");
    }

    /// Fails over: the primary stops (killed), the replica stops replicating and takes writes.
    pub fn fail_over(&mut self) {
        self.primary.kill();
        self.replica.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0");
    }
}
