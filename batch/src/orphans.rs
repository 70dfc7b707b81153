//! What an executor killed with SIGKILL leaves running, and how the next one stops it.
//!
//! Each executor (a scheduler's local executor, a worker) keeps a [`Ledger`]: one file, named after
//! its pid and start time, to which it appends a line when a try's process group starts (`+ <group>
//! <leader start time>`) and when it ends (`- <group>`); the file is emptied whenever nothing runs
//! and removed when the executor stops. Appending costs no file creation per try (creating and
//! deleting files is what a fan-out of short tries spends most on, see docs/benchmarks.md).
//!
//! An executor that dies leaves its ledger behind; the next executor on the machine calls
//! [`kill_orphans`] on the folder before it runs anything again: for each ledger whose executor is
//! gone, every group started and not ended whose leader is still the same process (same pid *and*
//! start time, so a reused pid is never signalled) is killed whole. Start times come from
//! `/proc/<pid>/stat`; where there is no `/proc`, nothing is killed.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// A process's start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`), `None` when
/// there is no such process (or no `/proc`). A zombie no longer runs: `None`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further.
    fields.nth(18)?.parse().ok()
}

/// Whether the process `pid` that started at `start` is still running.
fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// One executor's record of the process groups it has running.
pub struct Ledger {
    path: PathBuf,
    state: Mutex<Open>,
}

struct Open {
    file: Option<std::fs::File>,
    running: usize,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    /// A ledger of this process in `dir` (the file is created with the folder on the first try;
    /// several executors of one process each have their own).
    pub fn new(dir: &Path) -> Ledger {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let me = std::process::id();
        let start = start_time(me).unwrap_or(0);
        let path = dir.join(format!("{me}-{start}-{n}.ledger"));
        Ledger { path, state: Mutex::new(Open { file: None, running: 0 }) }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, line: &str, delta: isize) {
        let mut open = self.state.lock().expect("ledger lock");
        let write = |open: &mut Open| -> std::io::Result<()> {
            if open.file.is_none() {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                open.file = Some(std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?);
            }
            let file = open.file.as_mut().expect("opened");
            open.running = open.running.saturating_add_signed(delta);
            if open.running == 0 {
                file.set_len(0) // nothing runs: nothing to remember
            } else {
                file.write_all(line.as_bytes())
            }
        };
        if let Err(e) = write(&mut open) {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot record a try's process group");
        }
    }

    /// A try's process group `group` started (its leader is `group`).
    pub fn started(&self, group: u32) {
        let start = start_time(group).unwrap_or(0);
        self.append(&format!("+ {group} {start}\n"), 1);
    }

    /// The group ended or was killed.
    pub fn ended(&self, group: u32) {
        self.append(&format!("- {group}\n"), -1);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The groups a ledger's text says are running: group → leader start time.
fn running(text: &str) -> BTreeMap<u32, u64> {
    let mut live = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next().and_then(|g| g.parse().ok()), f.next().and_then(|s| s.parse().ok())) {
            (Some("+"), Some(group), Some(start)) => {
                live.insert(group, start);
            }
            (Some("-"), Some(group), _) => {
                live.remove(&group);
            }
            _ => {} // a torn last line
        }
    }
    live
}

/// Kills the process groups the ledgers under `dir` of executors that are gone say were running;
/// removes those ledgers. Returns the groups killed, with the ledger that named them.
pub fn kill_orphans(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return killed };
    for path in entries.flatten().map(|e| e.path()) {
        let Some((owner, owner_start)) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ledger")).and_then(|n| {
                let mut f = n.split('-');
                Some((f.next()?.parse::<u32>().ok()?, f.next()?.parse::<u64>().ok()?))
            })
        else {
            continue;
        };
        if owner == std::process::id() || alive(owner, owner_start) {
            continue; // a live executor's tries
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (group, start) in running(&text) {
            if alive(group, start)
                && let Ok(pgid) = i32::try_from(group)
            {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
                killed.push((path.clone(), group));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    #[test]
    fn a_ledger_keeps_only_what_runs() {
        assert_eq!(running("+ 10 5\n+ 11 6\n- 10\n+ 12"), BTreeMap::from([(11, 6)]));
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path());
        ledger.started(std::process::id());
        let text = std::fs::read_to_string(&ledger.path).unwrap();
        assert_eq!(running(&text).len(), 1, "{text}");
        ledger.ended(std::process::id());
        assert_eq!(std::fs::read_to_string(&ledger.path).unwrap(), "", "emptied when nothing runs");
        let path = ledger.path.clone();
        drop(ledger);
        assert!(!path.exists(), "removed when the executor stops");
    }

    #[test]
    fn a_dead_executors_groups_are_killed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
        let group = child.id();
        // Its executor: a process that has ended.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let start = start_time(group).unwrap();
        std::fs::write(dir.path().join(format!("{gone_pid}-1-0.ledger")), format!("+ {group} {start}\n+ 999999 1\n"))
            .unwrap();
        // This (live) process's ledger: kept.
        let mine = Ledger::new(dir.path());
        mine.started(group);

        let killed = kill_orphans(dir.path());
        assert_eq!(killed.iter().map(|(_, g)| *g).collect::<Vec<_>>(), [group], "{killed:?}");
        assert!(!child.wait().unwrap().success(), "the orphan was killed");
        assert!(!dir.path().join(format!("{gone_pid}-1-0.ledger")).exists());
        assert!(mine.path.exists());
        assert!(kill_orphans(dir.path()).is_empty(), "nothing left to kill");
    }
}
