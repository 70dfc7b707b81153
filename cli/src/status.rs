//! The terminal's view of `weir up` and `weir demo`: a few lines on the roles, the lake's events
//! per second and lag per table, the pipelines' lag, the last run of each DAG and the firing
//! alerts. On a terminal the block is redrawn in place every second; otherwise (a file, a pipe,
//! CI) it is printed every `up.status_interval`.

use std::{collections::BTreeMap, io::IsTerminal, io::Write, sync::Arc, time::Duration};

use tokio::sync::watch;
use weir_flow::store::Store;
use weir_serving::{lag::LagTracker, realtime::Realtime};

use crate::roles::{Health, RoleState};

/// What the status lines are made from.
pub struct Status {
    store: Store,
    health: Arc<Health>,
    lag: Arc<LagTracker>,
    realtime: Arc<Realtime>,
    /// Each lake table's summed position at the previous measurement, for its rate.
    last: BTreeMap<String, (i64, i64)>,
}

impl Status {
    pub fn new(store: Store, health: Arc<Health>, lag: Arc<LagTracker>, realtime: Arc<Realtime>) -> Status {
        Status { store, health, lag, realtime, last: BTreeMap::new() }
    }

    /// Shows the status until `stop`.
    pub async fn show(mut self, every: Duration, mut stop: watch::Receiver<bool>) {
        let tty = std::io::stdout().is_terminal();
        let every = if tty { Duration::from_secs(1) } else { every };
        let mut drawn = 0;
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let lines = self.lines().await;
            let mut out = std::io::stdout().lock();
            if tty {
                // Up over the previous block, then each line cleared before it is written.
                if drawn > 0 {
                    let _ = write!(out, "\x1b[{drawn}A");
                }
                for l in &lines {
                    let _ = writeln!(out, "\x1b[2K{l}");
                }
                drawn = lines.len();
            } else {
                for l in &lines {
                    let _ = writeln!(out, "{l}");
                }
            }
            let _ = out.flush();
        }
    }

    /// The current status, a line each.
    pub async fn lines(&mut self) -> Vec<String> {
        let mut lines = vec![self.roles_line()];
        if let Some(m) = self.lag.latest() {
            let mut lake = Vec::new();
            let mut stream = Vec::new();
            for c in &m.consumers {
                let position: i64 = c.partitions.iter().map(|p| p.position).sum();
                match c.consumer.as_str() {
                    "lake" => {
                        let rate = match self.last.insert(c.target.clone(), (m.at_ms, position)) {
                            Some((at, before)) if m.at_ms > at => {
                                format!("{:.1}/s", (position - before) as f64 * 1000.0 / (m.at_ms - at) as f64)
                            }
                            _ => "-".into(),
                        };
                        lake.push(format!("{} {rate} lag {}", c.target, c.lag));
                    }
                    _ => stream.push(format!("{} lag {}", c.target, c.lag)),
                }
            }
            if !lake.is_empty() {
                lines.push(format!("  lake    {}", lake.join(" · ")));
            }
            if !stream.is_empty() {
                lines.push(format!("  stream  {}", stream.join(" · ")));
            }
        }
        if let Some(dags) = self.dags_line().await {
            lines.push(dags);
        }
        let firing: Vec<String> = self
            .realtime
            .records("alerts")
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let summary = a["annotations"]["summary"].as_str().unwrap_or_default();
                format!("{} {summary}", a["alert"].as_str().unwrap_or_default())
            })
            .collect();
        lines.push(match firing.is_empty() {
            true => "  alerts  none firing".to_string(),
            false => format!("  alerts  FIRING {}", firing.join(" · ")),
        });
        lines
    }

    fn roles_line(&self) -> String {
        let roles = self.health.snapshot();
        let running = roles.iter().filter(|(_, s)| *s == RoleState::Running).count();
        let mut line =
            format!("[weir {}] {running}/{} roles running", chrono::Local::now().format("%H:%M:%S"), roles.len());
        for (name, state) in &roles {
            match state {
                RoleState::Failed { error, attempts } => {
                    let short: String = error.chars().take(120).collect();
                    line.push_str(&format!(" · {name} FAILED ({attempts}×): {short}"));
                }
                RoleState::Starting => line.push_str(&format!(" · {name} starting")),
                _ => {}
            }
        }
        line
    }

    async fn dags_line(&self) -> Option<String> {
        let dags = self.store.dags().await.ok()?;
        let mut parts = Vec::new();
        for d in dags {
            if let Some(run) = self.store.runs(&d.dag_id, 1).await.ok()?.first() {
                parts.push(format!("{} {} ({})", d.dag_id, run.state, run.run_id));
            }
        }
        (!parts.is_empty()).then(|| format!("  dags    {}", parts.join(" · ")))
    }
}
