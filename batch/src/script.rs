//! Runs one executable for a task: arguments and environment given, standard output and error
//! appended to the try's log file, killed when it runs past its timeout. By default the process
//! writes straight into the log (no pipes, no copying); with [`Script::capture_stdout`] its
//! output is read line by line instead (stderr lines marked) and the tail of standard output is
//! returned — branch tasks read their choice there.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use std::io::Write as _;

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
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
    /// The log file (created with its directories; appended to).
    pub log: PathBuf,
    /// Killed after this long.
    pub timeout: Option<Duration>,
    /// Read the output through pipes and return the tail of standard output.
    pub capture_stdout: bool,
}

/// The last this many bytes of standard output are kept.
const STDOUT_TAIL: usize = 64 << 10;

impl Script {
    /// Runs it to the end; `Ok` holds the tail of its standard output.
    pub async fn run(&self) -> Result<String, ScriptError> {
        let program = self.command.first().cloned().unwrap_or_default();
        let log_err = |source| ScriptError::Log { path: self.log.display().to_string(), source };
        // Local file operations this small are done in place: tokio::fs would hand each one to
        // its blocking thread pool and back, several hops per task.
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir).map_err(log_err)?;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).map_err(log_err)?;
        let started = Instant::now();
        let mut cmd = Command::new(resolve(&program, &self.cwd));
        cmd.args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if !self.capture_stdout {
            // The process appends to the log itself.
            cmd.stdout(Stdio::from(log.try_clone().map_err(log_err)?))
                .stderr(Stdio::from(log.try_clone().map_err(log_err)?));
            let mut child = cmd.spawn().map_err(|source| ScriptError::Spawn { program: program.clone(), source })?;
            let status = tokio::select! {
                status = child.wait() => status,
                _ = sleep_until(self.timeout.map(|t| tokio::time::Instant::now() + t)) => {
                    let _ = child.kill().await;
                    let limit = self.timeout.unwrap_or_default();
                    (&log).write_all(format!("[weir] killed after {limit:?} (execution_timeout)\n").as_bytes()).map_err(log_err)?;
                    return Err(ScriptError::Timeout { program, limit });
                }
            };
            return self.ended(&log, program, status, started).map(|()| String::new());
        }
        let mut lines = tokio::fs::File::from_std(log.try_clone().map_err(log_err)?);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ScriptError::Spawn { program: program.clone(), source })?;
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut tail = String::new();
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let (mut out_open, mut err_open) = (true, true);
        let status = loop {
            tokio::select! {
                line = out.next_line(), if out_open => match line {
                    Ok(Some(l)) => {
                        lines.write_all(format!("{l}\n").as_bytes()).await.map_err(log_err)?;
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
                    Ok(Some(l)) => lines.write_all(format!("[stderr] {l}\n").as_bytes()).await.map_err(log_err)?,
                    _ => err_open = false,
                },
                status = child.wait(), if !out_open && !err_open => break status,
                _ = sleep_until(deadline) => {
                    let _ = child.kill().await;
                    let limit = self.timeout.unwrap_or_default();
                    lines.write_all(format!("[weir] killed after {limit:?} (execution_timeout)\n").as_bytes()).await.map_err(log_err)?;
                    return Err(ScriptError::Timeout { program, limit });
                }
            }
        };
        lines.flush().await.map_err(log_err)?;
        self.ended(&log, program, status, started).map(|()| tail)
    }

    /// Notes the end in the log; a non-zero status or a signal is an error.
    fn ended(
        &self,
        mut log: &std::fs::File,
        program: String,
        status: std::io::Result<std::process::ExitStatus>,
        started: Instant,
    ) -> Result<(), ScriptError> {
        let log_err = |source| ScriptError::Log { path: self.log.display().to_string(), source };
        let status = status.map_err(|source| ScriptError::Spawn { program: program.clone(), source })?;
        let line = format!("[weir] {program} ended with {status} after {:.3} s\n", started.elapsed().as_secs_f64());
        log.write_all(line.as_bytes()).map_err(log_err)?;
        match status.code() {
            Some(0) => Ok(()),
            Some(code) => Err(ScriptError::Exit { program, code }),
            None => Err(ScriptError::Signal { program }),
        }
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
}
