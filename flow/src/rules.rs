//! Task-instance and DAG-run states and the trigger rules that decide, from how a task's
//! upstream tasks ended, whether it runs, waits, is skipped or fails upstream — Airflow's
//! semantics, as pure functions.

use std::{fmt, str::FromStr};

/// The state of one task instance (a task in one DAG run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Created with its run; its upstream tasks have not all finished.
    None,
    /// Its trigger rule is met; waiting for an executor slot.
    Scheduled,
    /// Handed to an executor.
    Queued,
    /// A try is running.
    Running,
    /// The last try succeeded.
    Success,
    /// The last try failed and no retries are left.
    Failed,
    /// The last try failed; another try is due after the retry delay.
    UpForRetry,
    /// An upstream task failed, so this one will not run.
    UpstreamFailed,
    /// Not run: a branch chose another path, the trigger rule said so, or it mapped over no items.
    Skipped,
    /// A mapped task expanded into its instances (`<task>[i]`); waiting until they all finish.
    Mapped,
    /// A mapped instance a later expansion of its task no longer has (fewer items).
    Removed,
}

impl TaskState {
    /// Every state, for listing.
    pub const ALL: [TaskState; 11] = [
        TaskState::None,
        TaskState::Scheduled,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Success,
        TaskState::Failed,
        TaskState::UpForRetry,
        TaskState::UpstreamFailed,
        TaskState::Skipped,
        TaskState::Mapped,
        TaskState::Removed,
    ];

    /// The name stored in the metadata DB and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::None => "none",
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::UpForRetry => "up_for_retry",
            TaskState::UpstreamFailed => "upstream_failed",
            TaskState::Skipped => "skipped",
            TaskState::Mapped => "mapped",
            TaskState::Removed => "removed",
        }
    }

    /// Finished for good (nothing will change it but a clear).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Success
                | TaskState::Failed
                | TaskState::UpstreamFailed
                | TaskState::Skipped
                | TaskState::Removed
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// The state of a DAG run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Created; waiting for a free run slot (`max_active_runs`).
    Queued,
    /// Its tasks are being scheduled.
    Running,
    /// Every leaf task succeeded or was skipped.
    Success,
    /// Some leaf task failed or failed upstream.
    Failed,
}

impl RunState {
    /// The name stored in the metadata DB and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [RunState::Queued, RunState::Running, RunState::Success, RunState::Failed]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown run state {s:?}"))
    }
}

/// When a task runs, given how its upstream tasks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerRule {
    /// Every upstream succeeded (the default). A failure upstream fails it upstream; a skip skips it.
    AllSuccess,
    /// Every upstream failed.
    AllFailed,
    /// Every upstream finished, however.
    AllDone,
    /// At least one upstream succeeded (runs as soon as one has).
    OneSuccess,
    /// At least one upstream failed (runs as soon as one has).
    OneFailed,
    /// No upstream failed (successes and skips).
    NoneFailed,
    /// No upstream was skipped.
    NoneSkipped,
    /// Runs at once, whatever the upstream tasks do.
    Always,
}

impl TriggerRule {
    /// Every rule, as written in DAG files.
    pub const ALL: [(&'static str, TriggerRule); 8] = [
        ("all_success", TriggerRule::AllSuccess),
        ("all_failed", TriggerRule::AllFailed),
        ("all_done", TriggerRule::AllDone),
        ("one_success", TriggerRule::OneSuccess),
        ("one_failed", TriggerRule::OneFailed),
        ("none_failed", TriggerRule::NoneFailed),
        ("none_skipped", TriggerRule::NoneSkipped),
        ("always", TriggerRule::Always),
    ];
}

impl fmt::Display for TriggerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = TriggerRule::ALL.iter().find(|(_, r)| r == self).map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for TriggerRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TriggerRule::ALL.iter().find(|(n, _)| *n == s).map(|(_, r)| *r).ok_or_else(|| {
            let names: Vec<_> = TriggerRule::ALL.iter().map(|(n, _)| *n).collect();
            format!("trigger_rule {s:?}: expected one of {}", names.join(", "))
        })
    }
}

/// What to do with a task whose state is `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not yet: upstream tasks are still to finish.
    Wait,
    /// Schedule it.
    Run,
    /// Mark it skipped.
    Skip,
    /// Mark it upstream_failed.
    UpstreamFailed,
}

/// Decides for a task with trigger rule `rule` whose upstream tasks are in `upstream`.
pub fn decide(rule: TriggerRule, upstream: &[TaskState]) -> Decision {
    if upstream.is_empty() || rule == TriggerRule::Always {
        return Decision::Run;
    }
    let n = upstream.len();
    let count = |f: fn(&TaskState) -> bool| upstream.iter().filter(|s| f(s)).count();
    let success = count(|s| *s == TaskState::Success);
    let failed = count(|s| matches!(s, TaskState::Failed | TaskState::UpstreamFailed));
    let skipped = count(|s| *s == TaskState::Skipped);
    let done = success + failed + skipped;
    match rule {
        TriggerRule::AllSuccess => {
            if failed > 0 {
                Decision::UpstreamFailed
            } else if skipped > 0 {
                Decision::Skip
            } else if success == n {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::AllFailed => {
            if success + skipped > 0 {
                Decision::Skip
            } else if failed == n {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::AllDone => {
            if done == n {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::OneSuccess => {
            if success > 0 {
                Decision::Run
            } else if done < n {
                Decision::Wait
            } else if skipped == n {
                Decision::Skip
            } else {
                Decision::UpstreamFailed
            }
        }
        TriggerRule::OneFailed => {
            if failed > 0 {
                Decision::Run
            } else if done < n {
                Decision::Wait
            } else {
                Decision::Skip
            }
        }
        TriggerRule::NoneFailed => {
            if failed > 0 {
                Decision::UpstreamFailed
            } else if done == n {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::NoneSkipped => {
            if skipped > 0 {
                Decision::Skip
            } else if done == n {
                Decision::Run
            } else {
                Decision::Wait
            }
        }
        TriggerRule::Always => Decision::Run,
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Decision::{self as D, Run, Skip, Wait},
        TaskState::*,
        TriggerRule::*,
        *,
    };

    #[test]
    fn every_rule_against_every_mix() {
        // (rule, upstream states, decision)
        let cases: &[(TriggerRule, &[TaskState], Decision)] = &[
            (AllSuccess, &[Success, Success], Run),
            (AllSuccess, &[Success, Running], Wait),
            (AllSuccess, &[Success, Failed], D::UpstreamFailed),
            (AllSuccess, &[Running, UpstreamFailed], D::UpstreamFailed),
            (AllSuccess, &[Success, Skipped], Skip),
            (AllSuccess, &[UpForRetry, Success], Wait),
            (AllFailed, &[Failed, UpstreamFailed], Run),
            (AllFailed, &[Failed, Running], Wait),
            (AllFailed, &[Failed, Success], Skip),
            (AllFailed, &[Skipped, Failed], Skip),
            (AllDone, &[Success, Failed, Skipped], Run),
            (AllDone, &[Success, Queued], Wait),
            (OneSuccess, &[Success, Running], Run),
            (OneSuccess, &[Failed, Running], Wait),
            (OneSuccess, &[Failed, Skipped], D::UpstreamFailed),
            (OneSuccess, &[Skipped, Skipped], Skip),
            (OneFailed, &[Failed, Running], Run),
            (OneFailed, &[Success, Running], Wait),
            (OneFailed, &[Success, Skipped], Skip),
            (NoneFailed, &[Success, Skipped], Run),
            (NoneFailed, &[Success, Running], Wait),
            (NoneFailed, &[UpstreamFailed, Running], D::UpstreamFailed),
            (NoneSkipped, &[Success, Failed], Run),
            (NoneSkipped, &[Skipped, Running], Skip),
            (NoneSkipped, &[Success, Scheduled], Wait),
            (Always, &[Running, None], Run),
            (AllSuccess, &[], Run),
        ];
        for (rule, up, want) in cases {
            assert_eq!(decide(*rule, up), *want, "{rule:?} with {up:?}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        for (name, rule) in TriggerRule::ALL {
            assert_eq!(name.parse::<TriggerRule>().unwrap(), rule);
        }
        let err = "all_sucess".parse::<TriggerRule>().unwrap_err();
        assert!(err.contains("\"all_sucess\"") && err.contains("none_skipped"), "{err}");
    }
}
