//! What an executor killed with SIGKILL leaves running, and how the next one stops it.
//!
//! Each try's process group is recorded in a pid file while it runs ([`Record`]: the executor's
//! pid and start time, the group leader's pid and start time), removed when the group ends or is
//! killed. An executor that dies without cleaning up leaves its files behind; the next executor on
//! the machine calls [`kill_orphans`] on the folder before it runs anything again: a file whose
//! executor is gone and whose group leader is still the same process (same pid *and* start time,
//! so a reused pid is never signalled) has its whole group killed. Start times come from
//! `/proc/<pid>/stat`; where there is no `/proc`, nothing is killed.

use std::path::{Path, PathBuf};

/// A running try's process group and the executor that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The executor's pid.
    pub owner: u32,
    /// Its start time (clock ticks after boot).
    pub owner_start: u64,
    /// The process group (its leader's pid).
    pub group: u32,
    /// The leader's start time.
    pub group_start: u64,
}

impl Record {
    /// The record of group `group`, started by this process; `None` without `/proc`.
    pub fn of_group(group: u32) -> Option<Record> {
        let owner = std::process::id();
        Some(Record { owner, owner_start: start_time(owner)?, group, group_start: start_time(group)? })
    }

    fn text(&self) -> String {
        format!("{} {} {} {}\n", self.owner, self.owner_start, self.group, self.group_start)
    }

    fn parse(text: &str) -> Option<Record> {
        let mut n = text.split_whitespace().map(str::parse::<u64>);
        let mut next = || n.next()?.ok();
        let (owner, owner_start, group, group_start) = (next()?, next()?, next()?, next()?);
        Some(Record { owner: u32::try_from(owner).ok()?, owner_start, group: u32::try_from(group).ok()?, group_start })
    }

    /// Writes the record to `path` (creating its folders).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.text())
    }
}

/// A process's start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`), `None` when
/// there is no such process (or no `/proc`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None; // a zombie is no longer running
    }
    // rest starts at field 3 (state); field 22 is 19 further.
    fields.nth(18)?.parse().ok()
}

/// Whether the process `pid` that started at `start` is still running.
fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Kills the process groups recorded under `dir` whose executor is gone; removes their files (and
/// those of groups that ended). Returns the groups killed.
pub fn kill_orphans(dir: &Path) -> Vec<(PathBuf, Record)> {
    let mut killed = Vec::new();
    for path in pid_files(dir) {
        let Some(record) = std::fs::read_to_string(&path).ok().and_then(|t| Record::parse(&t)) else {
            let _ = std::fs::remove_file(&path); // a torn write: its executor died writing it
            continue;
        };
        if alive(record.owner, record.owner_start) {
            continue; // another executor's try, running
        }
        if alive(record.group, record.group_start)
            && let Ok(group) = i32::try_from(record.group)
        {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
            killed.push((path.clone(), record));
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// Every `*.pid` file under `dir`.
fn pid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(_) if p.extension().is_some_and(|x| x == "pid") => out.push(p),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    #[test]
    fn records_round_trip_and_this_process_is_alive() {
        let me = Record::of_group(std::process::id()).unwrap();
        assert_eq!(Record::parse(&me.text()), Some(me));
        assert!(alive(me.owner, me.owner_start));
        assert!(!alive(me.owner, me.owner_start + 1), "a reused pid has another start time");
        assert_eq!(Record::parse("1 2 3"), None);
    }

    #[test]
    fn a_dead_executors_group_is_killed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
        let group = child.id();
        // Its executor: a process that has ended.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        let gone_start = start_time(gone_pid).unwrap_or(1);
        gone.wait().unwrap();
        let mut orphan = Record::of_group(group).unwrap();
        orphan.owner = gone_pid;
        orphan.owner_start = gone_start;
        orphan.write(&dir.path().join("d/r/t.1.pid")).unwrap();
        // A try of this (live) process: kept.
        let mine = Record::of_group(std::process::id()).unwrap();
        mine.write(&dir.path().join("d/r/u.1.pid")).unwrap();

        let killed = kill_orphans(dir.path());
        assert_eq!(killed.len(), 1, "{killed:?}");
        assert_eq!(killed[0].1.group, group);
        let status = child.wait().unwrap();
        assert!(!status.success(), "the orphan was killed: {status:?}");
        assert!(!dir.path().join("d/r/t.1.pid").exists());
        assert!(dir.path().join("d/r/u.1.pid").exists());
        // Nothing left to kill the second time.
        assert!(kill_orphans(dir.path()).is_empty());
    }
}
