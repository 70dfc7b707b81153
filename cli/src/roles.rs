//! Roles running side by side in one process: each is supervised on its own — a role that fails
//! (a source that cannot connect, a pipeline whose input is bad) is reported, retried with
//! backoff and leaves the others running — and its state is kept in one [`Health`] table that
//! `/healthz` and the terminal's status show.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use futures::FutureExt as _;
use serde::Serialize;
use tokio::{sync::watch, task::JoinSet};

/// A role's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RoleState {
    /// Opening its connections and files.
    Starting,
    /// Doing its work.
    Running,
    /// Failed; tried again after the backoff.
    Failed {
        /// Why, with its causes.
        error: String,
        /// Tries so far.
        attempts: u32,
    },
    /// Done: it had nothing (more) to do, or the process is stopping.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Every role's state, by name.
#[derive(Default)]
pub struct Health {
    roles: Mutex<BTreeMap<String, (RoleState, Instant)>>,
}

impl Health {
    /// Records `role`'s new state.
    pub fn set(&self, role: &str, state: RoleState) {
        let mut roles = self.roles.lock().unwrap();
        if roles.get(role).is_none_or(|(s, _)| *s != state) {
            roles.insert(role.to_string(), (state, Instant::now()));
        }
    }

    /// Forgets `role` (a problem that went away).
    pub fn clear(&self, role: &str) {
        self.roles.lock().unwrap().remove(role);
    }

    /// Every role's state, by name.
    pub fn snapshot(&self) -> Vec<(String, RoleState)> {
        self.roles.lock().unwrap().iter().map(|(n, (s, _))| (n.clone(), s.clone())).collect()
    }

    /// Whether every role runs (or finished its work).
    pub fn ready(&self) -> bool {
        self.roles.lock().unwrap().values().all(|(s, _)| matches!(s, RoleState::Running | RoleState::Stopped { .. }))
    }

    /// `GET /healthz`: 200 with every role's state when all run, 503 with the same body otherwise.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route(
            "/healthz",
            get(move || {
                let health = self.clone();
                async move {
                    let roles: BTreeMap<String, RoleState> = health.snapshot().into_iter().collect();
                    let ready = health.ready();
                    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    let body = serde_json::json!({"status": if ready { "ok" } else { "degraded" }, "roles": roles});
                    (status, Json(body)).into_response()
                }
            }),
        )
    }
}

/// What a running role is handed: its name, the stop signal, and a way to say it is ready.
#[derive(Clone)]
pub struct Role {
    name: Arc<str>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
}

impl Role {
    /// The role is doing its work.
    pub fn ready(&self) {
        self.health.set(&self.name, RoleState::Running);
    }

    /// A copy of the stop signal (true once the process stops).
    pub fn stop(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Resolves when the process stops.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }
}

/// The longest wait between two tries of a failing role.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs `start` as role `name` until the process stops: again after a failure, first after one
/// second, then twice as long each time up to a minute (reset once a try ran for a minute).
pub fn supervise<F, Fut>(
    tasks: &mut JoinSet<()>,
    health: &Arc<Health>,
    name: &str,
    stop: &watch::Receiver<bool>,
    start: F,
) where
    F: FnMut(Role) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    spawn_role(tasks, health, name, stop, true, start);
}

/// Runs `run` as role `name` once: for a role that holds what cannot be had again in this
/// process (listeners bound at start-up), so a failure stays reported with its own cause.
pub fn run_once<Fut>(
    tasks: &mut JoinSet<()>,
    health: &Arc<Health>,
    name: &str,
    stop: &watch::Receiver<bool>,
    run: impl FnOnce(Role) -> Fut + Send + 'static,
) where
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut run = Some(run);
    spawn_role(tasks, health, name, stop, false, move |role| {
        let run = run.take().expect("a role run once is started once");
        run(role)
    });
}

fn spawn_role<F, Fut>(
    tasks: &mut JoinSet<()>,
    health: &Arc<Health>,
    name: &str,
    stop: &watch::Receiver<bool>,
    retry: bool,
    mut start: F,
) where
    F: FnMut(Role) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let role = Role { name: name.into(), health: health.clone(), stop: stop.clone() };
    health.set(name, RoleState::Starting);
    tasks.spawn(async move {
        let mut wait = Duration::from_secs(1);
        let mut attempts = 0;
        loop {
            let began = Instant::now();
            // A panic is a failure like any other: reported and tried again, the others untouched.
            let result = match std::panic::AssertUnwindSafe(start(role.clone())).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(anyhow::anyhow!(
                    "panicked: {}",
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default()
                )),
            };
            if *role.stop.borrow() {
                role.health.set(&role.name, RoleState::Stopped { reason: "stopped".into() });
                if let Err(e) = result {
                    tracing::error!(role = %role.name, error = %format!("{e:#}"), "role failed while stopping");
                }
                return;
            }
            match result {
                Ok(()) => {
                    tracing::info!(role = %role.name, "role finished");
                    role.health.set(&role.name, RoleState::Stopped { reason: "finished".into() });
                    return;
                }
                Err(e) if !retry => {
                    let error = format!("{e:#}");
                    tracing::error!(role = %role.name, %error, "role failed; it is not started again in this process");
                    role.health.set(&role.name, RoleState::Failed { error, attempts: 1 });
                    return;
                }
                Err(e) => {
                    if began.elapsed() >= MAX_BACKOFF {
                        wait = Duration::from_secs(1);
                    }
                    attempts += 1;
                    let error = format!("{e:#}");
                    tracing::error!(role = %role.name, %error, attempts, "role failed; trying again in {wait:?}");
                    metrics::counter!("weir_role_restarts_total", "role" => role.name.to_string()).increment(1);
                    role.health.set(&role.name, RoleState::Failed { error, attempts });
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = role.stopping() => {
                            role.health.set(&role.name, RoleState::Stopped { reason: "stopped".into() });
                            return;
                        }
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                    role.health.set(&role.name, RoleState::Starting);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_or_panicking_role_is_reported_and_tried_again() {
        let health = Arc::new(Health::default());
        let (_stop_tx, stop) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = tries.clone();
        supervise(&mut tasks, &health, "flaky", &stop, move |role| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 => anyhow::bail!("cannot connect"),
                    1 => panic!("a bug"),
                    _ => {
                        role.ready();
                        Ok(())
                    }
                }
            }
        });
        assert!(!health.ready(), "a starting role is not ready");
        tasks.join_next().await.unwrap().unwrap();
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3, "tried again after an error and a panic");
        assert_eq!(health.snapshot(), vec![("flaky".into(), RoleState::Stopped { reason: "finished".into() })]);
        assert!(health.ready());
    }

    #[tokio::test]
    async fn a_role_run_once_keeps_its_own_failure() {
        let health = Arc::new(Health::default());
        let (_stop_tx, stop) = watch::channel(false);
        let mut tasks = JoinSet::new();
        run_once(&mut tasks, &health, "listener", &stop, |role| async move {
            role.ready();
            anyhow::bail!("accept failed: too many open files")
        });
        tasks.join_next().await.unwrap().unwrap();
        let failed = RoleState::Failed { error: "accept failed: too many open files".into(), attempts: 1 };
        assert_eq!(health.snapshot(), vec![("listener".into(), failed)]);
    }
}
