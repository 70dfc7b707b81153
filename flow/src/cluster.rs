//! The scale-out tables: the scheduler lease, the schedulers and workers with their beat
//! counters, and the task queue workers claim from.
//!
//! Liveness is a counter each member increments every heartbeat. Observers judge it with their
//! own monotonic clock ([`Beats`]): a member whose counter has not moved for a while is gone.
//! No decision compares two machines' clocks; the wall-clock times stored are for display.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::Row as _;

use crate::{
    events::{self, Change},
    store::{Fence, QUEUED_CHANNEL, Store, StoreError, TaskKey, instant, now},
};

/// The scheduler lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leader's id (empty: nobody leads).
    pub holder: String,
    /// The leader's epoch.
    pub epoch: i64,
    /// Renewals by the leader in this epoch.
    pub beats: i64,
    /// When this epoch began.
    pub acquired_at: Option<DateTime<Utc>>,
}

/// A scheduler or worker process as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its id (`host:pid:start`).
    pub id: String,
    /// The machine.
    pub host: String,
    /// The process.
    pub pid: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its beat counter.
    pub beats: i64,
    /// Its last heartbeat by its own clock.
    pub heartbeat_at: DateTime<Utc>,
    /// Workers: active, draining, stopped or lost. Schedulers: empty.
    pub state: String,
    /// Workers: the queues it claims from.
    pub queues: Vec<String>,
    /// Workers: tries it runs at once.
    pub slots: i64,
}

/// A try a worker claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The instance.
    pub key: TaskKey,
    /// The try number it runs.
    pub try_number: u32,
    /// The last try number allowed.
    pub max_tries: u32,
}

/// A task instance queued or running on a worker, as the scheduler counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    /// The instance.
    pub key: TaskKey,
    /// Its pool.
    pub pool: String,
}

/// Judges members' liveness from their beat counters with this process's clock.
#[derive(Debug, Default)]
pub struct Beats {
    seen: HashMap<String, (i64, tokio::time::Instant)>,
}

impl Beats {
    /// Records `beats` of member `id` as seen now; returns how long its counter has not moved.
    pub fn observe(&mut self, id: &str, beats: i64) -> Duration {
        let now = tokio::time::Instant::now();
        match self.seen.get_mut(id) {
            Some((b, at)) if *b == beats => now - *at,
            _ => {
                self.seen.insert(id.to_string(), (beats, now));
                Duration::ZERO
            }
        }
    }
}

/// This machine's name: `HOSTNAME` when set (containers set it), else the kernel's.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// An id for one scheduler or worker in the cluster tables: host, pid, start time and a count of
/// the members this process made, so that it is unique across restarts and among several members
/// of one process started within the same microsecond (as tests and `weir up` do).
pub fn member_id() -> (String, String, i64) {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let host = host_name();
    let pid = i64::from(std::process::id());
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = Utc::now().timestamp_micros() % 1_000_000_000;
    (format!("{host}:{pid}:{started}.{n}"), host, pid)
}

/// Whether member `id` ran on this machine and its process is gone: then nobody need wait for
/// its beats to stop (a crashed scheduler restarted on the same machine takes over at once).
pub fn gone_from_here(id: &str) -> bool {
    let mut parts = id.split(':');
    match (parts.next(), parts.next().and_then(|p| p.parse::<u32>().ok())) {
        (Some(host), Some(pid)) => host == host_name() && !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

impl Store {
    /// The scheduler lease.
    pub async fn lease(&self) -> Result<Lease, StoreError> {
        let r = sqlx::query("SELECT holder, epoch, beats, acquired_at FROM flow_lease WHERE name = 'scheduler'")
            .fetch_one(self.pool())
            .await?;
        Ok(Lease {
            holder: r.get(0),
            epoch: r.get(1),
            beats: r.get(2),
            acquired_at: r.get::<Option<i64>, _>(3).map(instant),
        })
    }

    /// Takes the lease for `me` if it is still as `seen` (so of several heirs one wins).
    pub async fn acquire_lease(&self, me: &str, seen: &Lease) -> Result<Option<Fence>, StoreError> {
        let r = sqlx::query(
            "UPDATE flow_lease SET holder = $1, epoch = epoch + 1, beats = 0, acquired_at = $2 \
             WHERE name = 'scheduler' AND epoch = $3 AND beats = $4 AND holder = $5",
        )
        .bind(me)
        .bind(now())
        .bind(seen.epoch)
        .bind(seen.beats)
        .bind(&seen.holder)
        .execute(self.pool())
        .await?;
        Ok((r.rows_affected() == 1).then(|| Fence { holder: me.to_string(), epoch: seen.epoch + 1 }))
    }

    /// Renews the lease; false when `fence` no longer holds it.
    pub async fn renew_lease(&self, fence: &Fence) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE flow_lease SET beats = beats + 1 WHERE name = 'scheduler' AND holder = $1 AND epoch = $2",
        )
        .bind(&fence.holder)
        .bind(fence.epoch)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives the lease up (a clean stop), so an heir takes over at once.
    pub async fn release_lease(&self, fence: &Fence) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE flow_lease SET holder = '', beats = 0 WHERE name = 'scheduler' AND holder = $1 AND epoch = $2",
        )
        .bind(&fence.holder)
        .bind(fence.epoch)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Registers a scheduler (or a worker, when `worker` gives its queues and slots).
    pub async fn register(
        &self,
        id: &str,
        host: &str,
        pid: i64,
        worker: Option<(&[String], usize)>,
    ) -> Result<(), StoreError> {
        let t = now();
        match worker {
            None => {
                sqlx::query(
                    "INSERT INTO flow_schedulers (id, host, pid, started_at, beats, heartbeat_at) VALUES ($1, $2, $3, $4, 0, $4)",
                )
                .bind(id)
                .bind(host)
                .bind(pid)
                .bind(t)
                .execute(self.pool())
                .await?;
            }
            Some((queues, slots)) => {
                sqlx::query(
                    "INSERT INTO flow_workers (id, host, pid, queues, slots, state, started_at, beats, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, $5, 'active', $6, 0, $6)",
                )
                .bind(id)
                .bind(host)
                .bind(pid)
                .bind(queues.join(","))
                .bind(slots as i64)
                .bind(t)
                .execute(self.pool())
                .await?;
            }
        }
        Ok(())
    }

    /// One heartbeat of a scheduler.
    pub async fn beat_scheduler(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE flow_schedulers SET beats = beats + 1, heartbeat_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// One heartbeat of a worker, with its state (active, draining, stopped). Returns false when
    /// the scheduler declared it lost: its tries were failed, and it must not record them.
    pub async fn beat_worker(&self, id: &str, state: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE flow_workers SET beats = beats + 1, heartbeat_at = $1, state = $2 WHERE id = $3 AND state <> 'lost'",
        )
        .bind(now())
        .bind(state)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Removes a scheduler that stops cleanly from the members.
    pub async fn leave(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM flow_schedulers WHERE id = $1").bind(id).execute(self.pool()).await?;
        Ok(())
    }

    /// The registered schedulers, oldest first.
    pub async fn schedulers(&self) -> Result<Vec<Member>, StoreError> {
        self.members(
            "SELECT id, host, pid, started_at, beats, heartbeat_at, '' AS state, '' AS queues, 0 AS slots \
                      FROM flow_schedulers ORDER BY started_at, id",
        )
        .await
    }

    /// The registered workers, oldest first.
    pub async fn workers(&self) -> Result<Vec<Member>, StoreError> {
        self.members(
            "SELECT id, host, pid, started_at, beats, heartbeat_at, state, queues, slots FROM flow_workers \
                      ORDER BY started_at, id",
        )
        .await
    }

    async fn members(&self, sql: &str) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(self.pool()).await?;
        Ok(rows
            .iter()
            .map(|r| Member {
                id: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                started_at: instant(r.get(3)),
                beats: r.get(4),
                heartbeat_at: instant(r.get(5)),
                state: r.get(6),
                queues: r.get::<String, _>(7).split(',').filter(|q| !q.is_empty()).map(str::to_string).collect(),
                slots: r.get(8),
            })
            .collect())
    }

    /// Forgets schedulers and workers whose last heartbeat is older than `age` (by the
    /// database rows' own times: display housekeeping, not a liveness decision).
    pub async fn forget_members(&self, age: Duration) -> Result<(), StoreError> {
        let before = now() - i64::try_from(age.as_micros()).unwrap_or(i64::MAX / 2);
        sqlx::query("DELETE FROM flow_schedulers WHERE heartbeat_at < $1").bind(before).execute(self.pool()).await?;
        sqlx::query("DELETE FROM flow_workers WHERE heartbeat_at < $1 AND state IN ('stopped', 'lost')")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Hands scheduled instances to the workers: state queued, in one transaction. Returns,
    /// for each, whether it was queued (false: no longer scheduled).
    pub async fn queue_tasks(&self, keys: &[TaskKey]) -> Result<Vec<bool>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let t = now();
        let mut queued = Vec::with_capacity(keys.len());
        let mut made = Vec::with_capacity(keys.len());
        for key in keys {
            let r = sqlx::query(
                "UPDATE flow_task_instances SET state = 'queued', queued_at = $1, worker = NULL WHERE dag_id = $2 \
                 AND run_id = $3 AND task_id = $4 AND state = 'scheduled'",
            )
            .bind(t)
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .execute(&mut *tx)
            .await?;
            queued.push(r.rows_affected() == 1);
            if r.rows_affected() == 1 {
                made.push(Change::task(&key.dag_id, &key.run_id, &key.task_id, None, "queued"));
            }
        }
        self.notify(&mut tx, QUEUED_CHANNEL, "").await?;
        events::record(&mut tx, t, &made).await?;
        tx.commit().await?;
        Ok(queued)
    }

    /// A worker claims up to `n` queued instances from `queues`, highest priority then longest
    /// queued first, and starts their next try with the log at `log(key, try)`. On PostgreSQL
    /// rows other workers are claiming are skipped (`FOR UPDATE SKIP LOCKED`); SQLite has one
    /// writer at a time.
    pub async fn claim(
        &self,
        worker: &str,
        queues: &[String],
        n: usize,
        log: impl Fn(&TaskKey, u32) -> String,
    ) -> Result<Vec<Claim>, StoreError> {
        if n == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (0..queues.len()).map(|i| format!("${}", i + 4)).collect();
        let lock = if self.is_postgres() { " FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE flow_task_instances SET state = 'running', try_number = try_number + 1, worker = $1, \
             started_at = $2, ended_at = NULL, next_try_at = NULL \
             WHERE (dag_id, run_id, task_id) IN (SELECT dag_id, run_id, task_id FROM flow_task_instances \
             WHERE state = 'queued' AND queue IN ({}) ORDER BY priority DESC, queued_at LIMIT $3{lock}) \
             AND state = 'queued' RETURNING dag_id, run_id, task_id, try_number, max_tries",
            marks.join(", ")
        );
        let mut tx = self.begin().await?;
        let t = now();
        let mut q = sqlx::query(&sql).bind(worker).bind(t).bind(n as i64);
        for queue in queues {
            q = q.bind(queue);
        }
        let rows = q.fetch_all(&mut *tx).await?;
        let mut claims = Vec::with_capacity(rows.len());
        for r in &rows {
            let key = TaskKey { dag_id: r.get(0), run_id: r.get(1), task_id: r.get(2) };
            let try_number = r.get::<i64, _>(3) as u32;
            sqlx::query(
                "INSERT INTO flow_task_tries (dag_id, run_id, task_id, try_number, state, started_at, log) \
                 VALUES ($1, $2, $3, $4, 'running', $5, $6)",
            )
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(i64::from(try_number))
            .bind(t)
            .bind(log(&key, try_number))
            .execute(&mut *tx)
            .await?;
            claims.push(Claim { key, try_number, max_tries: r.get::<i64, _>(4) as u32 });
        }
        let made: Vec<Change> = claims
            .iter()
            .map(|c| Change::task(&c.key.dag_id, &c.key.run_id, &c.key.task_id, Some(c.try_number), "running"))
            .collect();
        events::record(&mut tx, t, &made).await?;
        tx.commit().await?;
        Ok(claims)
    }

    /// Instances queued or running on workers.
    pub async fn handed(&self) -> Result<Vec<Handed>, StoreError> {
        let rows = sqlx::query(
            "SELECT dag_id, run_id, task_id, pool FROM flow_task_instances WHERE state IN ('queued', 'running')",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| Handed { key: TaskKey { dag_id: r.get(0), run_id: r.get(1), task_id: r.get(2) }, pool: r.get(3) })
            .collect())
    }

    /// Declares a worker lost: the tries it runs fail (into a retry while tries are left, at
    /// once) with `reason`, and it may record nothing more. Returns the instances failed.
    pub async fn fail_zombies(&self, worker: &str, reason: &str) -> Result<Vec<TaskKey>, StoreError> {
        let mut tx = self.begin().await?;
        let t = now();
        let rows = sqlx::query(
            "SELECT dag_id, run_id, task_id, try_number FROM flow_task_instances WHERE worker = $1 AND state = 'running'",
        )
        .bind(worker)
        .fetch_all(&mut *tx)
        .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let key = TaskKey { dag_id: r.get(0), run_id: r.get(1), task_id: r.get(2) };
            let try_number: i64 = r.get(3);
            sqlx::query(
                "UPDATE flow_task_tries SET state = 'failed', ended_at = $1, reason = $2 WHERE dag_id = $3 \
                 AND run_id = $4 AND task_id = $5 AND try_number = $6 AND state = 'running'",
            )
            .bind(t)
            .bind(reason)
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(try_number)
            .execute(&mut *tx)
            .await?;
            keys.push(key);
        }
        let failed = sqlx::query(
            "UPDATE flow_task_instances SET state = CASE WHEN try_number < max_tries THEN 'up_for_retry' ELSE 'failed' END, \
             next_try_at = $1, ended_at = $1 WHERE worker = $2 AND state = 'running' \
             RETURNING dag_id, run_id, task_id, try_number, state",
        )
        .bind(t)
        .bind(worker)
        .fetch_all(&mut *tx)
        .await?;
        let failed: Vec<(String, String, String, i64, String)> =
            failed.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
        let made: Vec<Change> = failed
            .iter()
            .map(|(d, r, k, n, st)| Change::task(d, r, k, Some(*n as u32), st).because(Some(reason)))
            .collect();
        events::record(&mut tx, t, &made).await?;
        sqlx::query("UPDATE flow_workers SET state = 'lost' WHERE id = $1").bind(worker).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(keys)
    }
}

/// A background task (a heartbeat, a listener) that ends with its owner, even when the owner's
/// future is dropped rather than run to its end.
pub(crate) struct Background(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_made_at_once_get_different_ids() {
        let ids: std::collections::HashSet<String> = (0..100).map(|_| member_id().0).collect();
        assert_eq!(ids.len(), 100);
        assert!(!gone_from_here(&member_id().0), "this process is alive");
    }
}
