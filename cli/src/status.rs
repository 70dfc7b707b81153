//! The terminal's view of `weir up` and `weir demo`: a few lines on the roles, the lake's events
//! per second and lag per table, the pipelines' lag, the last run of each DAG and the firing
//! alerts. On a terminal the block is redrawn in place every second, below the lines other parts
//! print through the same [`Console`] (alerts, run states); otherwise (a file, a pipe, CI) it is
//! printed every `up.status_interval`.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{IsTerminal, Write},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use weir_flow::store::Store;
use weir_serving::{lag::LagTracker, realtime::Realtime};

use crate::roles::{Health, RoleState};

/// The one writer of stdout while the status shows: lines printed through it go above the
/// status block, which is then drawn again below them.
#[derive(Clone)]
pub struct Console {
    state: Arc<Mutex<Screen>>,
}

struct Screen {
    tty: bool,
    block: Vec<String>,
    /// Terminal rows the drawn block takes.
    drawn: usize,
}

impl Screen {
    fn clear(&mut self, out: &mut impl Write) {
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    fn draw(&mut self, out: &mut impl Write) {
        // Cut to the terminal's width: a wrapped line would take rows the next redraw misses.
        let width = terminal_size::terminal_size().map_or(120, |(w, _)| w.0 as usize).max(20);
        for l in &self.block {
            let _ = writeln!(out, "{}", l.chars().take(width - 1).collect::<String>());
        }
        self.drawn = self.block.len();
    }
}

impl Default for Console {
    fn default() -> Self {
        let tty = std::io::stdout().is_terminal();
        Console { state: Arc::new(Mutex::new(Screen { tty, block: Vec::new(), drawn: 0 })) }
    }
}

impl Console {
    /// Prints `text` as a line of its own (above the status block on a terminal).
    pub fn line(&self, text: &str) {
        let mut screen = self.state.lock().unwrap();
        let mut out = std::io::stdout().lock();
        screen.clear(&mut out);
        let _ = writeln!(out, "{text}");
        if screen.tty {
            screen.draw(&mut out);
        }
        let _ = out.flush();
    }

    fn tty(&self) -> bool {
        self.state.lock().unwrap().tty
    }

    /// Shows `lines` as the status: redrawn in place on a terminal, printed otherwise.
    fn status(&self, lines: Vec<String>) {
        let mut screen = self.state.lock().unwrap();
        let mut out = std::io::stdout().lock();
        if screen.tty {
            screen.clear(&mut out);
            screen.block = lines;
            screen.draw(&mut out);
        } else {
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
    }

    /// Takes the status block off a terminal (before the closing lines).
    pub fn done(&self) {
        let mut screen = self.state.lock().unwrap();
        screen.block.clear();
        screen.clear(&mut std::io::stdout().lock());
    }
}

/// What the status lines are made from.
pub struct Status {
    store: Store,
    health: Arc<Health>,
    lag: Arc<LagTracker>,
    realtime: Arc<Realtime>,
    /// Each lake table's summed positions over the last [`RATE_WINDOW_MS`] (time, position).
    seen: BTreeMap<String, VecDeque<(i64, i64)>>,
}

/// The health entry of DAG files the scheduler refused.
const DAG_FILES: &str = "dag files";

/// The span a table's rate is averaged over: the lake commits in steps of its flush interval,
/// so a rate between two measurements alone would jump between zero and bursts.
const RATE_WINDOW_MS: i64 = 30_000;

impl Status {
    pub fn new(store: Store, health: Arc<Health>, lag: Arc<LagTracker>, realtime: Arc<Realtime>) -> Status {
        Status { store, health, lag, realtime, seen: BTreeMap::new() }
    }

    /// Shows the status on `console` until `stop`.
    pub async fn show(mut self, console: Console, every: Duration, mut stop: watch::Receiver<bool>) {
        let every = if console.tty() { Duration::from_secs(1) } else { every };
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            console.status(self.lines().await);
        }
    }

    /// The current status, a line each.
    pub async fn lines(&mut self) -> Vec<String> {
        self.check_dag_files().await;
        let mut lines = vec![self.roles_line()];
        if let Some(m) = self.lag.latest() {
            let mut lake = Vec::new();
            let mut stream = Vec::new();
            for c in &m.consumers {
                let position: i64 = c.partitions.iter().map(|p| p.position).sum();
                match c.consumer.as_str() {
                    "lake" => {
                        let seen = self.seen.entry(c.target.clone()).or_default();
                        if seen.back().is_none_or(|(at, _)| *at < m.at_ms) {
                            seen.push_back((m.at_ms, position));
                        }
                        while seen.front().is_some_and(|(at, _)| *at < m.at_ms - RATE_WINDOW_MS) {
                            seen.pop_front();
                        }
                        let rate = match (seen.front(), seen.back()) {
                            (Some((t0, p0)), Some((t1, p1))) if t1 > t0 => {
                                format!("{:.1}/s", (p1 - p0) as f64 * 1000.0 / (t1 - t0) as f64)
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

    /// DAG files the scheduler refused: a problem on /healthz and in the roles line while any is
    /// refused; the other DAGs still run.
    async fn check_dag_files(&self) {
        match self.store.import_errors().await {
            Ok(errors) if !errors.is_empty() => {
                let named: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                let error = format!("{} DAG file(s) refused: {}", errors.len(), named.join("; "));
                self.health.set(DAG_FILES, RoleState::Failed { error, attempts: 1 });
            }
            Ok(_) => self.health.clear(DAG_FILES),
            Err(e) => tracing::warn!(error = %e, "reading the refused DAG files"),
        }
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
