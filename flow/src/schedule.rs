//! Schedules and data intervals, with Airflow's meaning: a scheduled run covers the data
//! interval `[start, end)` between two consecutive schedule ticks, carries `start` as its logical
//! date, and becomes due when `end` has passed.
//!
//! A schedule is a five-field cron expression (`minute hour day-of-month month day-of-week`, with
//! `*`, lists, ranges, steps, month and weekday names, `L`, `W`, `#`; evaluated by `croner`), a preset (`@hourly`, `@daily`,
//! `@weekly`, `@monthly`, `@yearly`), a fixed interval (`@every 15m`), `@once`, or none (manual
//! runs only), or a set of lake tables whose commits start runs ([`TableTrigger`], see
//! [`crate::triggers`]). Cron ticks are evaluated in the DAG's time zone: a daily run at 02:30 in a zone
//! that skips 02:30 one night fires at the first minute after the gap; a repeated hour fires once.

use std::{fmt, time::Duration};

use chrono::{DateTime, Duration as ChronoDuration, Timelike as _, Utc};
use chrono_tz::Tz;

/// A data interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval {
    /// Inclusive start; the run's logical date.
    pub start: DateTime<Utc>,
    /// Exclusive end; the run is due once it has passed.
    pub end: DateTime<Utc>,
}

/// When runs of a DAG are due.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Manual runs only.
    None,
    /// One run, for the instant `start_date`.
    Once,
    /// Cron ticks (boxed: croner's parsed pattern is large beside the other variants).
    Cron(Box<Cron>),
    /// Every fixed duration from `start_date`.
    Every(Duration),
    /// When lake tables commit (no time intervals: see [`crate::triggers`]).
    Tables(TableTrigger),
}

/// `schedule: {tables: [...], mode, debounce}`: a run starts when the tables commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTrigger {
    /// The lake tables (`raw.x`, `current.x`, `views.x`).
    pub tables: Vec<String>,
    /// Whether a commit to any table starts a run, or only one to each since the last run.
    pub mode: TriggerMode,
    /// How long after the first commit a run waits for more (so the commits of several
    /// partitions, or of several tables, start one run).
    pub debounce: Duration,
}

/// How a [`TableTrigger`]'s tables combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerMode {
    /// A commit to any of the tables.
    #[default]
    Any,
    /// A commit to every one of the tables since the last run.
    All,
}

impl Schedule {
    /// Parses a DAG file's `schedule` (absent or `null`: manual runs only).
    pub fn parse(s: Option<&str>) -> Result<Schedule, String> {
        let Some(s) = s.map(str::trim) else { return Ok(Schedule::None) };
        let cron = match s {
            "" | "@none" | "None" => return Ok(Schedule::None),
            "@once" => return Ok(Schedule::Once),
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            _ => {
                if let Some(d) = s.strip_prefix("@every ") {
                    let d = crate::dag::parse_duration(d)?;
                    if d < Duration::from_secs(1) {
                        return Err(format!("{s:?}: the interval must be at least 1s"));
                    }
                    return Ok(Schedule::Every(d));
                }
                if s.starts_with('@') {
                    return Err(format!(
                        "{s:?}: unknown preset (use @once, @hourly, @daily, @weekly, @monthly, @yearly or @every <duration>)"
                    ));
                }
                s
            }
        };
        let mut parsed = Cron::parse(cron).map_err(|e| format!("{s:?}: {e}"))?;
        if s.starts_with('@') {
            parsed.text = s.to_string(); // shown as the user wrote it
        }
        Ok(Schedule::Cron(Box::new(parsed)))
    }

    /// The first data interval at or after `start_date`.
    pub fn first(&self, start_date: DateTime<Utc>, tz: Tz) -> Option<Interval> {
        match self {
            Schedule::None | Schedule::Tables(_) => None,
            Schedule::Once => Some(Interval { start: start_date, end: start_date }),
            Schedule::Every(d) => Some(Interval { start: start_date, end: start_date + chrono_dur(*d) }),
            Schedule::Cron(c) => {
                let start = c.next_at_or_after(start_date, tz)?;
                let end = c.next_at_or_after(start + ChronoDuration::minutes(1), tz)?;
                Some(Interval { start, end })
            }
        }
    }

    /// The interval after `prev`.
    pub fn next(&self, prev: Interval, tz: Tz) -> Option<Interval> {
        match self {
            Schedule::None | Schedule::Once | Schedule::Tables(_) => None,
            Schedule::Every(d) => Some(Interval { start: prev.end, end: prev.end + chrono_dur(*d) }),
            Schedule::Cron(c) => {
                let end = c.next_at_or_after(prev.end + ChronoDuration::minutes(1), tz)?;
                Some(Interval { start: prev.end, end })
            }
        }
    }

    /// The latest interval that has ended by `now` (catchup off), not before `start_date`.
    pub fn latest_complete(&self, start_date: DateTime<Utc>, tz: Tz, now: DateTime<Utc>) -> Option<Interval> {
        let first = self.first(start_date, tz)?;
        if first.end > now {
            return None;
        }
        match self {
            Schedule::None | Schedule::Tables(_) => None,
            Schedule::Once => Some(first),
            Schedule::Every(d) => {
                let step = chrono_dur(*d);
                let n = ((now - first.start).num_milliseconds() / step.num_milliseconds().max(1)).max(1);
                let start = first.start + step * (n as i32 - 1).max(0);
                let start = if start + step > now { start - step } else { start };
                Some(Interval { start: start.max(first.start), end: start.max(first.start) + step })
            }
            Schedule::Cron(_) => {
                // Walk from a recent tick rather than from start_date: look back further and
                // further until two ticks are found before `now`.
                for back in [1i64, 26, 24 * 32, 24 * 370, 24 * 366 * 10] {
                    let from = (now - ChronoDuration::hours(back)).max(start_date);
                    let Some(mut cur) = self.first(from, tz) else { continue };
                    if cur.end > now {
                        if from == start_date {
                            return None;
                        }
                        continue;
                    }
                    while let Some(n) = self.next(cur, tz) {
                        if n.end > now {
                            break;
                        }
                        cur = n;
                    }
                    return Some(cur);
                }
                None
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::None => f.write_str("none"),
            Schedule::Once => f.write_str("@once"),
            Schedule::Every(d) => write!(f, "@every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => f.write_str(&c.text),
            Schedule::Tables(t) => {
                let mode = match t.mode {
                    TriggerMode::Any => "any",
                    TriggerMode::All => "all",
                };
                write!(f, "on commit ({mode}): {}", t.tables.join(", "))?;
                if !t.debounce.is_zero() {
                    write!(f, ", debounce {}", humantime::format_duration(t.debounce))?;
                }
                Ok(())
            }
        }
    }
}

fn chrono_dur(d: Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

/// A parsed five-field cron expression, evaluated by the `croner` crate (POSIX/Vixie fields with
/// names, lists, ranges and steps, `L`, `W` and `#`; either day field matches when both are
/// restricted). Its ticks agree with the evaluator Weir had before, daylight saving included,
/// over 42,000 ticks in five zones (docs/architecture.md, "Own code or a crate").
#[derive(Debug, Clone)]
pub struct Cron {
    text: String,
    cron: croner::Cron,
}

impl PartialEq for Cron {
    fn eq(&self, other: &Cron) -> bool {
        self.text == other.text
    }
}

impl Cron {
    /// Parses `minute hour day-of-month month day-of-week`.
    pub fn parse(s: &str) -> Result<Cron, String> {
        const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
        let fields: Vec<&str> = s.split_whitespace().collect();
        if fields.len() != FIELDS.len() {
            return Err(format!("expected 5 fields ({}), found {}", FIELDS.join(" "), fields.len()));
        }
        let text = fields.join(" ");
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build();
        let cron = parser.parse(&text).map_err(|e| {
            // croner says what is wrong, not where: name the first field that fails on its own.
            let alone = |i: usize| (0..5).map(|j| if j == i { fields[j] } else { "*" }).collect::<Vec<_>>().join(" ");
            match (0..5).find(|&i| parser.parse(&alone(i)).is_err()) {
                Some(i) => format!("{} {:?}: {e}", FIELDS[i], fields[i]),
                None => e.to_string(),
            }
        })?;
        Ok(Cron { text, cron })
    }

    /// The first tick at or after `t` (seconds are rounded up to the next minute); a tick at a
    /// local time that daylight saving skips fires at the first minute after the gap, one in a
    /// repeated hour fires once, at its first occurrence.
    pub fn next_at_or_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Whole seconds: a tick is on a minute, and at or after `t`.
        let t = if t.nanosecond() == 0 { t } else { t.with_nanosecond(0)? + ChronoDuration::seconds(1) };
        self.cron.find_next_occurrence(&t.with_timezone(&tz), true).ok().map(|at| at.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn daily_intervals_follow_each_other() {
        let s = Schedule::parse(Some("@daily")).unwrap();
        let first = s.first(utc("2026-11-01T05:00:00Z"), Tz::UTC).unwrap();
        assert_eq!(first, Interval { start: utc("2026-11-02T00:00:00Z"), end: utc("2026-11-03T00:00:00Z") });
        let next = s.next(first, Tz::UTC).unwrap();
        assert_eq!(next.start, first.end);
        assert_eq!(next.end, utc("2026-11-04T00:00:00Z"));
        let latest = s.latest_complete(utc("2026-01-01T00:00:00Z"), Tz::UTC, utc("2026-11-23T10:00:00Z")).unwrap();
        assert_eq!(latest, Interval { start: utc("2026-11-22T00:00:00Z"), end: utc("2026-11-23T00:00:00Z") });
    }

    #[test]
    fn cron_fields_lists_ranges_steps_and_names() {
        let c = Cron::parse("*/15 9-17 * * mon-fri").unwrap();
        // Friday 2026-11-20 17:50 → Monday 09:00.
        let t = c.next_at_or_after(utc("2026-11-20T17:50:00Z"), Tz::UTC).unwrap();
        assert_eq!(t, utc("2026-11-23T09:00:00Z"));
        let c = Cron::parse("30 2 1,15 * *").unwrap();
        assert_eq!(c.next_at_or_after(utc("2026-11-02T00:00:00Z"), Tz::UTC).unwrap(), utc("2026-11-15T02:30:00Z"));
        // Both day fields restricted: either matches.
        let c = Cron::parse("0 0 13 * fri").unwrap();
        assert_eq!(c.next_at_or_after(utc("2026-11-01T00:00:00Z"), Tz::UTC).unwrap(), utc("2026-11-06T00:00:00Z"));
        let e = Cron::parse("61 * * * *").unwrap_err();
        assert!(e.starts_with("minute \"61\": ") && e.contains("out of bounds"), "{e}");
        let e = Cron::parse("0 0 32 * *").unwrap_err();
        assert!(e.starts_with("day-of-month \"32\": "), "{e}");
        assert!(
            Cron::parse("* * *")
                .unwrap_err()
                .contains("5 fields (minute hour day-of-month month day-of-week), found 3")
        );
        assert!(Cron::parse("0 * * * * *").is_err(), "no seconds field: ticks are whole minutes");
        // The last day of the month; a leap day eight years on (2100 is no leap year).
        let c = Cron::parse("0 0 L * *").unwrap();
        assert_eq!(c.next_at_or_after(utc("2026-02-10T00:00:00Z"), Tz::UTC).unwrap(), utc("2026-02-28T00:00:00Z"));
        let c = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(c.next_at_or_after(utc("2096-03-01T00:00:00Z"), Tz::UTC).unwrap(), utc("2104-02-29T00:00:00Z"));
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let c = Cron::parse("30 2 * * *").unwrap();
        // 2026-03-29: 02:00 → 03:00 in Paris; 02:30 does not exist and fires at 03:00 local (01:00Z).
        assert_eq!(c.next_at_or_after(utc("2026-03-28T12:00:00Z"), paris).unwrap(), utc("2026-03-29T01:00:00Z"));
        // An ordinary day: 02:30 CET = 01:30Z.
        assert_eq!(c.next_at_or_after(utc("2026-02-01T00:00:00Z"), paris).unwrap(), utc("2026-02-01T01:30:00Z"));
        // 2026-10-25: 02:30 happens twice; it fires once, at the first (00:30Z).
        let t = c.next_at_or_after(utc("2026-10-24T12:00:00Z"), paris).unwrap();
        assert_eq!(t, utc("2026-10-25T00:30:00Z"));
        assert_eq!(c.next_at_or_after(t + ChronoDuration::minutes(1), paris).unwrap(), utc("2026-10-26T01:30:00Z"));
        // A tick just before the spring gap does not fire again after it (croner 3 did).
        let c = Cron::parse("30 1 * * *").unwrap();
        assert_eq!(c.next_at_or_after(utc("2026-03-29T00:31:00Z"), paris).unwrap(), utc("2026-03-29T23:30:00Z"));
    }

    #[test]
    fn fixed_intervals_and_presets() {
        let s = Schedule::parse(Some("@every 15m")).unwrap();
        let start = utc("2026-11-23T10:07:00Z");
        assert_eq!(s.first(start, Tz::UTC).unwrap().end, utc("2026-11-23T10:22:00Z"));
        let latest = s.latest_complete(start, Tz::UTC, utc("2026-11-23T11:00:00Z")).unwrap();
        assert_eq!(latest, Interval { start: utc("2026-11-23T10:37:00Z"), end: utc("2026-11-23T10:52:00Z") });
        assert_eq!(Schedule::parse(None).unwrap(), Schedule::None);
        assert!(Schedule::parse(Some("@fortnightly")).unwrap_err().contains("unknown preset"));
        assert_eq!(Schedule::parse(Some("@daily")).unwrap().to_string(), "@daily");
        assert_eq!(Schedule::parse(Some("*/5  *  * * *")).unwrap().to_string(), "*/5 * * * *");
        let weekly = Schedule::parse(Some("@weekly")).unwrap();
        assert_eq!(weekly.first(utc("2026-11-23T00:00:01Z"), Tz::UTC).unwrap().start, utc("2026-11-29T00:00:00Z"));
    }
}
