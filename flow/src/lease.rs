//! Leader election among schedulers: one lease row in the metadata DB, held by one scheduler
//! at a time, with an epoch that grows at each change of leader.
//!
//! Every scheduler registers and beats every `heartbeat_interval`. The leader renews the lease
//! by bumping its beat counter; an heir that sees the counter stand still for `lease_timeout`
//! (by its own clock) takes the lease with a conditional update, so of several heirs exactly one
//! wins. Older heirs try first: each waits one more heartbeat per live heir older than itself.
//! A leader whose process is gone from this machine is replaced without waiting.
//! A leader that cannot renew for `lease_timeout` steps down on its own; even if it does not
//! (paused, partitioned), every state change it makes checks its epoch inside the transaction
//! ([`crate::store::Store::with_fence`]), so it can no longer write once another leads.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    cluster::{self, Beats},
    store::{Fence, Store, StoreError},
};

/// How often members beat, and how long a silent leader keeps the lease.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between beats and renewals.
    pub heartbeat: Duration,
    /// How long the leader's beats may stand still before an heir takes over.
    pub lease_timeout: Duration,
}

/// Keeps this scheduler's membership and, when it leads, the lease; publishes the fence it
/// holds (or `None`) on `leader`. Ends when `stop` turns true, giving the lease up.
pub async fn keep(
    store: Store,
    me: String,
    timing: Timing,
    leader: watch::Sender<Option<Fence>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut beats = Beats::default();
    let mut held: Option<Fence> = None;
    let mut last_renewal = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = store.beat_scheduler(&me).await {
            tracing::warn!(error = %e, "scheduler heartbeat failed");
        }
        match &held {
            Some(fence) => match store.renew_lease(fence).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!(epoch = fence.epoch, "another scheduler took the lease; standing by");
                    held = None;
                    metrics::gauge!("weir_flow_scheduler_leader").set(0.0);
                    leader.send_replace(None);
                }
                Err(e) if last_renewal.elapsed() >= timing.lease_timeout => {
                    tracing::error!(epoch = fence.epoch, error = %e, "cannot renew the lease; stepping down");
                    held = None;
                    metrics::gauge!("weir_flow_scheduler_leader").set(0.0);
                    leader.send_replace(None);
                }
                Err(e) => tracing::warn!(epoch = fence.epoch, error = %e, "renewing the lease failed; trying again"),
            },
            None => match try_acquire(&store, &me, timing, &mut beats).await {
                Ok(Some(fence)) => {
                    tracing::info!(epoch = fence.epoch, "took the scheduler lease: leading");
                    metrics::counter!("weir_flow_scheduler_takeovers_total").increment(1);
                    metrics::gauge!("weir_flow_scheduler_leader").set(1.0);
                    last_renewal = tokio::time::Instant::now();
                    held = Some(fence.clone());
                    leader.send_replace(Some(fence));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the scheduler lease failed"),
            },
        }
    }
    if let Some(fence) = held {
        leader.send_replace(None);
        if let Err(e) = store.release_lease(&fence).await {
            tracing::warn!(error = %e, "giving the lease up failed; an heir takes over after the lease timeout");
        }
    }
    if let Err(e) = store.leave(&me).await {
        tracing::warn!(error = %e, "removing this scheduler from the members failed");
    }
}

/// Takes the lease when it is free or its holder has stood still long enough, and every live
/// heir older than this one has had its turn.
async fn try_acquire(store: &Store, me: &str, timing: Timing, beats: &mut Beats) -> Result<Option<Fence>, StoreError> {
    let lease = store.lease().await?;
    let still = beats.observe(&format!("lease/{}/{}", lease.holder, lease.epoch), lease.beats);
    let mut older_heirs = 0u32;
    for m in store.schedulers().await? {
        if m.id == me {
            break;
        }
        let alive = beats.observe(&m.id, m.beats) < timing.lease_timeout && !cluster::gone_from_here(&m.id);
        if alive && m.id != lease.holder {
            older_heirs += 1;
        }
    }
    let holder_gone = lease.holder.is_empty() || cluster::gone_from_here(&lease.holder);
    let wait = if holder_gone { Duration::ZERO } else { timing.lease_timeout } + timing.heartbeat * older_heirs;
    if still < wait {
        return Ok(None);
    }
    if !lease.holder.is_empty() {
        tracing::warn!(holder = %lease.holder, epoch = lease.epoch, silent_s = still.as_secs_f64(), "the leading scheduler stopped renewing its lease; taking over");
    }
    store.acquire_lease(me, &lease).await
}
