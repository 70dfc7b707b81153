//! The autoscaling signal: how many workers each queue wants, from its depth and how long its
//! tasks take, for an autoscaler (KEDA, an auto-scaling group, a hook command) to act on.
//!
//! Aggressive up, conservative down: the count rises as soon as the load asks for it, and falls
//! only after the load has asked for less for `scale_down_after` — then to the most it asked
//! for meanwhile. The leading scheduler computes it every poll and stores it
//! (`flow_autoscale`), sets `weir_flow_workers_desired{queue}`, and runs the hook on a change;
//! `GET /api/v1/workers/desired` and `weir scheduler status` read it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::store::{Store, StoreError, instant, now};

/// `[flow.autoscale]` in `weir.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscaleConfig {
    /// Fewest workers a queue that has ever been used keeps.
    pub min_workers: usize,
    /// Most workers a queue asks for.
    pub max_workers: usize,
    /// Queued work should be done within this long: queued tasks × average task time over
    /// this is how many more slots are needed.
    #[serde(with = "humantime_serde")]
    pub drain_target: Duration,
    /// How long the load must ask for fewer workers before the count falls.
    #[serde(with = "humantime_serde")]
    pub scale_down_after: Duration,
    /// Run on every change as `<hook…> <queue> <desired>` (also in `WEIR_QUEUE` and
    /// `WEIR_DESIRED_WORKERS`).
    pub hook: Option<Vec<String>>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            min_workers: 1,
            max_workers: 20,
            drain_target: Duration::from_secs(60),
            scale_down_after: Duration::from_secs(300),
            hook: None,
        }
    }
}

/// One queue's load, as the metadata DB has it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueLoad {
    /// The queue.
    pub queue: String,
    /// Instances waiting for a worker.
    pub queued: usize,
    /// Instances running on workers.
    pub running: usize,
    /// Live workers claiming from it, and their slots.
    pub workers: usize,
    /// Slots per worker (the workers' average; 0 when none).
    pub slots_per_worker: usize,
    /// The average run time of its tries that ended in the last 10 minutes.
    pub avg_task: Option<Duration>,
    /// How long its oldest queued instance has waited.
    pub oldest_queued: Option<Duration>,
}

/// Workers wanted right now for `load`, before hysteresis: enough slots for what runs plus
/// what is queued to finish within the drain target (a task whose time is unknown needs a slot
/// of its own).
pub fn wanted(load: &QueueLoad, default_slots: usize, config: &AutoscaleConfig) -> usize {
    let slots = if load.slots_per_worker > 0 { load.slots_per_worker } else { default_slots.max(1) };
    let queued_slots = match load.avg_task {
        Some(t) if !config.drain_target.is_zero() => {
            (load.queued as f64 * t.as_secs_f64() / config.drain_target.as_secs_f64()).ceil() as usize
        }
        _ => load.queued,
    };
    (load.running + queued_slots).div_ceil(slots).clamp(config.min_workers, config.max_workers.max(config.min_workers))
}

/// The hysteresis of one queue's count.
#[derive(Debug, Default)]
struct Trend {
    current: usize,
    /// Since when the load has asked for fewer, and the most it asked for meanwhile.
    lower: Option<(Instant, usize)>,
}

/// Applies "aggressive up, conservative down" to each queue's wanted count.
#[derive(Debug, Default)]
pub struct Autoscaler {
    trends: BTreeMap<String, Trend>,
}

impl Autoscaler {
    /// The desired count for `queue` given what it wants `now`; true when it changed.
    pub fn desire(&mut self, queue: &str, wanted: usize, after: Duration, now: Instant) -> (usize, bool) {
        let fresh = !self.trends.contains_key(queue);
        let t = self.trends.entry(queue.to_string()).or_default();
        let before = t.current;
        if fresh || wanted >= t.current {
            t.current = wanted;
            t.lower = None;
        } else {
            let (since, peak) = t.lower.get_or_insert((now, wanted));
            *peak = (*peak).max(wanted);
            if now - *since >= after {
                t.current = *peak;
                t.lower = None;
            }
        }
        (t.current, fresh || t.current != before)
    }
}

/// A queue's stored signal, as the API and `weir scheduler status` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Desired {
    /// The queue.
    pub queue: String,
    /// Workers it wants.
    pub desired: i64,
    /// Workers claiming from it now.
    pub workers: i64,
    /// Queued instances.
    pub queued: i64,
    /// Running instances.
    pub running: i64,
    /// Average task time (ms) over the last 10 minutes.
    pub avg_task_ms: Option<i64>,
    /// Age of the oldest queued instance (ms).
    pub oldest_queued_ms: Option<i64>,
    /// When the leader computed it.
    pub computed_at: chrono::DateTime<Utc>,
}

impl Store {
    /// Each queue's load: every queue with queued or running instances or live workers.
    pub async fn queue_loads(&self) -> Result<Vec<QueueLoad>, StoreError> {
        let t_now = now();
        let mut loads: BTreeMap<String, QueueLoad> = BTreeMap::new();
        let rows = sqlx::query(
            "SELECT queue, state, COUNT(*), MIN(queued_at) FROM flow_task_instances WHERE state IN ('queued', 'running') \
             GROUP BY queue, state",
        )
        .fetch_all(self.pool())
        .await?;
        for r in &rows {
            let q: String = r.get(0);
            let state: String = r.get(1);
            let n = r.get::<i64, _>(2) as usize;
            let e = entry(&mut loads, &q);
            if state == "queued" {
                e.queued = n;
                e.oldest_queued = r.get::<Option<i64>, _>(3).map(|t| Duration::from_micros((t_now - t).max(0) as u64));
            } else {
                e.running = n;
            }
        }
        let rows = sqlx::query(
            "SELECT i.queue, CAST(AVG(t.ended_at - t.started_at) AS BIGINT) FROM flow_task_tries t \
             JOIN flow_task_instances i ON i.dag_id = t.dag_id AND i.run_id = t.run_id AND i.task_id = t.task_id \
             WHERE t.ended_at IS NOT NULL AND t.ended_at > $1 GROUP BY i.queue",
        )
        .bind(t_now - 600_000_000)
        .fetch_all(self.pool())
        .await?;
        for r in &rows {
            let q: String = r.get(0);
            if let Some(us) = r.get::<Option<i64>, _>(1) {
                entry(&mut loads, &q).avg_task = Some(Duration::from_micros(us.max(0) as u64));
            }
        }
        for w in self.workers().await? {
            if !matches!(w.state.as_str(), "active") {
                continue;
            }
            for q in &w.queues {
                let e = entry(&mut loads, q);
                e.slots_per_worker = (e.slots_per_worker * e.workers + w.slots.max(0) as usize) / (e.workers + 1);
                e.workers += 1;
            }
        }
        Ok(loads.into_values().collect())
    }

    /// Stores each queue's signal (under the leader's fence).
    pub async fn set_desired(&self, signals: &[(QueueLoad, usize)]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let at = now();
        for (l, desired) in signals {
            sqlx::query(
                "INSERT INTO flow_autoscale (queue, desired, queued, running, workers, avg_task_ms, oldest_queued_ms, computed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (queue) DO UPDATE SET desired = excluded.desired, \
                 queued = excluded.queued, running = excluded.running, workers = excluded.workers, \
                 avg_task_ms = excluded.avg_task_ms, oldest_queued_ms = excluded.oldest_queued_ms, computed_at = excluded.computed_at",
            )
            .bind(&l.queue)
            .bind(*desired as i64)
            .bind(l.queued as i64)
            .bind(l.running as i64)
            .bind(l.workers as i64)
            .bind(l.avg_task.map(|d| d.as_millis() as i64))
            .bind(l.oldest_queued.map(|d| d.as_millis() as i64))
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored signals, by queue.
    pub async fn desired(&self) -> Result<Vec<Desired>, StoreError> {
        let rows = sqlx::query(
            "SELECT queue, desired, workers, queued, running, avg_task_ms, oldest_queued_ms, computed_at FROM flow_autoscale \
             ORDER BY queue",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| Desired {
                queue: r.get(0),
                desired: r.get(1),
                workers: r.get(2),
                queued: r.get(3),
                running: r.get(4),
                avg_task_ms: r.get(5),
                oldest_queued_ms: r.get(6),
                computed_at: instant(r.get(7)),
            })
            .collect())
    }
}

fn entry<'a>(loads: &'a mut BTreeMap<String, QueueLoad>, q: &str) -> &'a mut QueueLoad {
    loads.entry(q.to_string()).or_insert_with(|| QueueLoad {
        queue: q.to_string(),
        queued: 0,
        running: 0,
        workers: 0,
        slots_per_worker: 0,
        avg_task: None,
        oldest_queued: None,
    })
}

/// Runs the hook for one change (in the background; a failing hook is logged).
pub fn run_hook(hook: &[String], queue: &str, desired: usize) {
    let Some((program, args)) = hook.split_first() else { return };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg(queue)
        .arg(desired.to_string())
        .env("WEIR_QUEUE", queue)
        .env("WEIR_DESIRED_WORKERS", desired.to_string())
        .kill_on_drop(false);
    let (program, queue) = (program.clone(), queue.to_string());
    tokio::spawn(async move {
        match cmd.status().await {
            Ok(s) if s.success() => tracing::info!(%queue, desired, "autoscale hook ran"),
            Ok(s) => tracing::warn!(%queue, desired, status = %s, hook = %program, "autoscale hook failed"),
            Err(e) => tracing::warn!(%queue, desired, error = %e, hook = %program, "autoscale hook could not start"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(queued: usize, running: usize, avg_ms: Option<u64>) -> QueueLoad {
        QueueLoad {
            queue: "default".into(),
            queued,
            running,
            workers: 2,
            slots_per_worker: 4,
            avg_task: avg_ms.map(Duration::from_millis),
            oldest_queued: None,
        }
    }

    #[test]
    fn wanted_follows_depth_and_task_time() {
        let c = AutoscaleConfig::default();
        assert_eq!(wanted(&load(0, 0, None), 4, &c), 1, "min_workers");
        assert_eq!(wanted(&load(0, 8, Some(1000)), 4, &c), 2, "what runs");
        // 600 queued tasks of 1 s within 60 s: 10 slots more.
        assert_eq!(wanted(&load(600, 8, Some(1000)), 4, &c), 5);
        // Unknown task time: a slot per queued task.
        assert_eq!(wanted(&load(30, 2, None), 4, &c), 8);
        assert_eq!(wanted(&load(100_000, 0, Some(60_000)), 4, &c), 20, "max_workers");
        let none = QueueLoad { workers: 0, slots_per_worker: 0, ..load(9, 0, None) };
        assert_eq!(wanted(&none, 16, &c), 1, "no workers yet: the default slots");
    }

    #[test]
    fn up_at_once_down_after_a_while_to_the_peak() {
        let mut a = Autoscaler::default();
        let after = Duration::from_secs(300);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(a.desire("q", 2, after, at(0)), (2, true));
        assert_eq!(a.desire("q", 7, after, at(1)), (7, true), "up at once");
        assert_eq!(a.desire("q", 1, after, at(2)), (7, false), "down waits");
        assert_eq!(a.desire("q", 3, after, at(200)), (7, false));
        assert_eq!(a.desire("q", 1, after, at(302)), (3, true), "to the most asked for meanwhile");
        assert_eq!(a.desire("q", 2, after, at(303)), (3, false));
        assert_eq!(a.desire("q", 4, after, at(304)), (4, true), "a rise cancels the wait");
    }
}
