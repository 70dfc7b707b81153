//! Runs one executable for a task: arguments and environment given, standard output and error
//! appended to the try's log file, killed when it runs past its timeout. By default both streams
//! go through one pipe into the log, created when the first byte arrives (a silent success
//! leaves no file); with [`Script::capture_stdout`] the output is read line by line instead
//! (stderr lines marked) and the tail of standard output is returned — branch tasks read their
//! choice there.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use std::io::Write as _;

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader},
    process::Command,
};

/// Why a script did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// It could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// argv[0].
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It exited with a non-zero status.
    #[error("{program:?} exited with status {code}")]
    Exit {
        /// argv[0].
        program: String,
        /// The status.
        code: i32,
    },
    /// A signal ended it.
    #[error("{program:?} was killed by a signal")]
    Signal {
        /// argv[0].
        program: String,
    },
    /// It ran past its time limit and was killed.
    #[error("{program:?} ran longer than its execution_timeout of {limit:?} and was killed")]
    Timeout {
        /// argv[0].
        program: String,
        /// The limit.
        limit: Duration,
    },
    /// The log file could not be written.
    #[error("log {path}: {source}")]
    Log {
        /// The log file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// One execution.
#[derive(Debug, Clone)]
pub struct Script {
    /// argv.
    pub command: Vec<String>,
    /// Added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The log file (created with its directories when there is something to write; appended
    /// to).
    pub log: PathBuf,
    /// Killed after this long.
    pub timeout: Option<Duration>,
    /// Read the output through pipes and return the tail of standard output.
    pub capture_stdout: bool,
    /// Where the try's process group is recorded while it runs, so that the next executor finds
    /// it should this one die with it running ([`crate::orphans`]).
    pub ledger: Option<std::sync::Arc<crate::orphans::Ledger>>,
}

/// The try's process group (the script is its leader, its children are in it): killed whole
/// when the try runs past its timeout or is dropped unfinished (cancelled, scheduler shut down),
/// so a `sh -c` script's children do not outlive it. A script that ends by itself keeps what it
/// left running in the background.
/// While it runs, the group is recorded in the executor's ledger.
struct Group {
    pgid: Option<nix::unistd::Pid>,
    ledger: Option<std::sync::Arc<crate::orphans::Ledger>>,
}

impl Group {
    fn of(child: &tokio::process::Child, ledger: Option<&std::sync::Arc<crate::orphans::Ledger>>) -> Group {
        let id = child.id();
        let ledger = match (id, ledger) {
            (Some(id), Some(ledger)) => {
                ledger.started(id);
                Some(ledger.clone())
            }
            _ => None,
        };
        Group { pgid: id.and_then(|id| i32::try_from(id).ok()).map(nix::unistd::Pid::from_raw), ledger }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        self.forget();
    }

    fn disarm(&mut self) {
        self.forget();
    }

    /// The group is no longer this try's to kill: out of the ledger.
    fn forget(&mut self) {
        if let (Some(pgid), Some(ledger)) = (self.pgid.take(), self.ledger.take()) {
            ledger.ended(pgid.as_raw().unsigned_abs());
        }
        self.pgid = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last this many bytes of standard output are kept.
const STDOUT_TAIL: usize = 64 << 10;

impl Script {
    /// Runs it to the end; `Ok` holds the tail of its standard output.
    pub async fn run(&self) -> Result<String, ScriptError> {
        let program = self.command.first().cloned().unwrap_or_default();
        let log_err = |source| ScriptError::Log { path: self.log.display().to_string(), source };
        let mut log = Log::new(&self.log);
        let started = Instant::now();
        let mut cmd = Command::new(resolve(&program, &self.cwd));
        cmd.args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if !self.capture_stdout {
            // One pipe for both streams, so they interleave as the process wrote them.
            let (reader, writer) = std::io::pipe().map_err(log_err)?;
            cmd.stdout(Stdio::from(writer.try_clone().map_err(log_err)?)).stderr(Stdio::from(writer));
            let mut child = cmd.spawn().map_err(|source| ScriptError::Spawn { program: program.clone(), source })?;
            let mut group = Group::of(&child, self.ledger.as_ref());
            drop(cmd); // its copies of the pipe's writing end: the pipe ends with the process
            let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).map_err(log_err)?;
            let mut buf = vec![0u8; 16 << 10];
            let mut open = true;
            let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
            let status = loop {
                tokio::select! {
                    read = pipe.read(&mut buf), if open => match read {
                        Ok(n) if n > 0 => log.write(&buf[..n]).map_err(log_err)?,
                        _ => open = false,
                    },
                    status = child.wait() => {
                        group.disarm();
                        break status;
                    }
                    _ = sleep_until(deadline) => {
                        group.kill();
                        let _ = child.kill().await;
                        let limit = self.timeout.unwrap_or_default();
                        log.write(format!("[weir] killed after {limit:?} (execution_timeout)\n").as_bytes()).map_err(log_err)?;
                        return Err(ScriptError::Timeout { program, limit });
                    }
                }
            };
            // What it wrote before exiting is in the pipe: read to its end (a `try_read` can
            // answer "would block" before the reactor has seen the pipe readable, losing the
            // last lines). Processes it left behind holding the pipe are waited for a moment only.
            let drained_by = tokio::time::Instant::now() + Duration::from_millis(500);
            while open {
                match tokio::time::timeout_at(drained_by, pipe.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => log.write(&buf[..n]).map_err(log_err)?,
                    _ => open = false,
                }
            }
            return self.ended(&mut log, program, status, started).map(|()| String::new());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ScriptError::Spawn { program: program.clone(), source })?;
        let mut group = Group::of(&child, self.ledger.as_ref());
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut tail = String::new();
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let (mut out_open, mut err_open) = (true, true);
        let status = loop {
            tokio::select! {
                line = out.next_line(), if out_open => match line {
                    Ok(Some(l)) => {
                        log.write(format!("{l}\n").as_bytes()).map_err(log_err)?;
                        tail.push_str(&l);
                        tail.push('\n');
                        if tail.len() > STDOUT_TAIL {
                            let cut = tail.len() - STDOUT_TAIL;
                            let cut = (cut..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
                            tail.drain(..cut);
                        }
                    }
                    _ => out_open = false,
                },
                line = err.next_line(), if err_open => match line {
                    Ok(Some(l)) => log.write(format!("[stderr] {l}\n").as_bytes()).map_err(log_err)?,
                    _ => err_open = false,
                },
                status = child.wait(), if !out_open && !err_open => {
                    group.disarm();
                    break status;
                }
                _ = sleep_until(deadline) => {
                    group.kill();
                    let _ = child.kill().await;
                    let limit = self.timeout.unwrap_or_default();
                    log.write(format!("[weir] killed after {limit:?} (execution_timeout)\n").as_bytes()).map_err(log_err)?;
                    return Err(ScriptError::Timeout { program, limit });
                }
            }
        };
        self.ended(&mut log, program, status, started).map(|()| tail)
    }

    /// Notes the end in the log, if the try wrote anything or failed (a silent success leaves
    /// no log file: its end is in the metadata DB); a non-zero status or a signal is an error.
    fn ended(
        &self,
        log: &mut Log<'_>,
        program: String,
        status: std::io::Result<std::process::ExitStatus>,
        started: Instant,
    ) -> Result<(), ScriptError> {
        let log_err = |source| ScriptError::Log { path: self.log.display().to_string(), source };
        let status = status.map_err(|source| ScriptError::Spawn { program: program.clone(), source })?;
        if log.file.is_some() || !status.success() {
            let line = format!("[weir] {program} ended with {status} after {:.3} s\n", started.elapsed().as_secs_f64());
            log.write(line.as_bytes()).map_err(log_err)?;
        }
        match status.code() {
            Some(0) => Ok(()),
            Some(code) => Err(ScriptError::Exit { program, code }),
            None => Err(ScriptError::Signal { program }),
        }
    }
}

/// A try's log file, created (with its folders) when the first bytes come: creating a file for
/// every try, silent ones included, was most of what a `true` task cost the machine.
struct Log<'a> {
    path: &'a Path,
    file: Option<std::fs::File>,
}

impl<'a> Log<'a> {
    fn new(path: &'a Path) -> Log<'a> {
        Log { path, file: None }
    }

    /// Appends in place: tokio::fs would hand each small write to its blocking pool and back.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(std::fs::OpenOptions::new().create(true).append(true).open(self.path)?);
        }
        self.file.as_mut().expect("opened above").write_all(bytes)
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A program named with a path (`./x.sh`, `bin/x`) is relative to `cwd`; a bare name is looked
/// up on `PATH`.
fn resolve(program: &str, cwd: &Path) -> PathBuf {
    if program.contains('/') && !Path::new(program).is_absolute() { cwd.join(program) } else { PathBuf::from(program) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, command: &[&str], timeout: Option<Duration>) -> Script {
        Script {
            command: command.iter().map(|s| s.to_string()).collect(),
            env: vec![("WEIR_DS".into(), "2026-11-22".into())],
            cwd: dir.to_path_buf(),
            log: dir.join("logs/t/1.log"),
            timeout,
            capture_stdout: true,
            ledger: None,
        }
    }

    #[tokio::test]
    async fn output_goes_to_the_log_and_failures_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let ok = script(dir.path(), &["sh", "-c", "echo day $WEIR_DS; echo oops >&2"], None);
        assert_eq!(ok.run().await.unwrap(), "day 2026-11-22\n");
        let log = std::fs::read_to_string(dir.path().join("logs/t/1.log")).unwrap();
        assert!(log.contains("day 2026-11-22\n") && log.contains("[stderr] oops\n"), "{log}");

        // Straight into the log: both streams, nothing returned.
        let direct =
            Script { capture_stdout: false, ..script(dir.path(), &["sh", "-c", "echo direct; echo bad >&2"], None) };
        assert_eq!(direct.run().await.unwrap(), "");
        let log = std::fs::read_to_string(dir.path().join("logs/t/1.log")).unwrap();
        assert!(log.contains("direct\n") && log.contains("bad\n"), "{log}");
        assert!(log.contains("ended with exit status: 0"), "{log}");

        // A silent success leaves no file; a silent failure does, saying how it ended.
        let quiet = |dir: &Path, command: &[&str], log: &str| Script {
            capture_stdout: false,
            log: dir.join(log),
            ..script(dir, command, None)
        };
        quiet(dir.path(), &["true"], "quiet/ok.log").run().await.unwrap();
        assert!(!dir.path().join("quiet").exists(), "no log folder or file for a silent success");
        quiet(dir.path(), &["false"], "quiet/bad.log").run().await.unwrap_err();
        let log = std::fs::read_to_string(dir.path().join("quiet/bad.log")).unwrap();
        assert!(log.starts_with("[weir] false ended with exit status: 1"), "{log}");

        // A process it leaves behind holding the output does not hold up the end.
        let started = Instant::now();
        quiet(dir.path(), &["sh", "-c", "sleep 5 & echo left"], "quiet/bg.log").run().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        let log = std::fs::read_to_string(dir.path().join("quiet/bg.log")).unwrap();
        assert!(log.starts_with("left\n"), "{log}");

        let slow =
            Script { capture_stdout: false, ..script(dir.path(), &["sleep", "30"], Some(Duration::from_millis(300))) };
        assert!(matches!(slow.run().await.unwrap_err(), ScriptError::Timeout { .. }));

        let err = script(dir.path(), &["sh", "-c", "exit 3"], None).run().await.unwrap_err();
        assert!(matches!(err, ScriptError::Exit { code: 3, .. }), "{err}");
        let err = script(dir.path(), &["no-such-program-weir"], None).run().await.unwrap_err();
        assert!(err.to_string().contains("no-such-program-weir"), "{err}");
        let started = Instant::now();
        let err = script(dir.path(), &["sleep", "30"], Some(Duration::from_millis(300))).run().await.unwrap_err();
        assert!(matches!(err, ScriptError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Processes whose command line holds `marker`.
    fn running(marker: &str) -> usize {
        let out = std::process::Command::new("pgrep").args(["-f", marker]).output().expect("pgrep (procps)");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Waits (bounded) until no process holds `marker`; how many are left.
    async fn left(marker: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(marker) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running(marker)
    }

    #[tokio::test]
    async fn the_group_is_in_the_ledger_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = std::sync::Arc::new(crate::orphans::Ledger::new(&dir.path().join("running")));
        let marker = dir.path().join("go");
        let command = format!("while [ ! -e {} ]; do sleep 0.01; done", marker.display());
        let s = Script { ledger: Some(ledger.clone()), ..script(dir.path(), &["sh", "-c", &command], None) };
        let running = tokio::spawn(async move { s.run().await });
        let file = ledger.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&file).unwrap_or_default().is_empty() {
            assert!(Instant::now() < deadline, "the group never reached the ledger");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(std::fs::read_to_string(&file).unwrap().starts_with("+ "));
        assert!(crate::orphans::kill_orphans(&dir.path().join("running")).is_empty(), "its executor is alive");
        std::fs::write(&marker, "").unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "", "nothing runs: the ledger is empty");
    }

    #[tokio::test]
    async fn a_timeout_or_a_cancel_kills_the_scripts_children_too() {
        let dir = tempfile::tempdir().unwrap();
        for (capture, marker) in [(true, "3000.101"), (false, "3000.102")] {
            // A shell whose children run on: the shell alone was killed before.
            let command = format!("sleep {marker} & sleep {marker} & wait");
            let s = Script {
                capture_stdout: capture,
                ..script(dir.path(), &["sh", "-c", &command], Some(Duration::from_millis(300)))
            };
            assert!(matches!(s.run().await.unwrap_err(), ScriptError::Timeout { .. }));
            assert_eq!(left(marker).await, 0, "children of a timed-out try still run (capture_stdout = {capture})");
        }
        // Cancelled: the run is dropped unfinished (a scheduler shutting down, a cancelled try).
        let command = "sleep 3000.103 & sleep 3000.103 & wait";
        let s = script(dir.path(), &["sh", "-c", command], None);
        assert!(tokio::time::timeout(Duration::from_millis(300), s.run()).await.is_err());
        assert_eq!(left("3000.103").await, 0, "children of a cancelled try still run");
        // A script that ends by itself keeps its background work.
        let s = script(dir.path(), &["sh", "-c", "sleep 3000.104 > /dev/null 2>&1 &"], None);
        s.run().await.unwrap();
        assert_eq!(running("3000.104"), 1, "a finished script's background process is left alone");
        let _ = std::process::Command::new("pkill").args(["-f", "3000.104"]).status();
    }
}
