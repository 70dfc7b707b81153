//! Window state of one pipeline: per window and key, one accumulator per aggregate. Rows come in
//! with their key (Arrow row-format bytes), event time and aggregate inputs; [`Windows::advance`]
//! closes the windows the watermark has passed and returns their results; windows stay for
//! `allowed_lateness` after their end, so a late row updates and re-emits its window, and a row
//! later than that is refused (the caller dead-letters it).
//!
//! Tumbling and hopping windows are aligned to the epoch (`[start, start + size)`); a session is
//! `[first event, last event + gap)` per key and merges with any session a new row touches.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasherDefault, Hasher},
};

use deltalake::arrow::{
    array::{Array, ArrayRef, Float64Array},
    buffer::NullBuffer,
};
use serde::{Deserialize, Serialize};

use crate::{
    pipeline::{AggFn, Window},
    sketch::{Distinct, Quantiles},
};

/// One aggregate's input column for a batch of rows.
pub enum Column {
    /// `count` without an expression: every row.
    Rows,
    /// `count(expr)`: rows where the value is not null.
    NotNull(ArrayRef),
    /// Numeric inputs (cast to Float64).
    Numbers(Float64Array),
    /// `count_distinct`: a stable hash per row, and which rows are null.
    Hashes(Vec<u64>, Option<NullBuffer>),
}

/// An accumulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    /// Rows or non-null values.
    Count(i64),
    /// Sum and how many values.
    Sum(f64, u64),
    /// Smallest value (+∞ while empty; null in a checkpoint, as JSON has no infinity).
    Min(#[serde(with = "empty_min")] f64),
    /// Largest value (−∞ while empty; null in a checkpoint).
    Max(#[serde(with = "empty_max")] f64),
    /// Sum and count.
    Avg(f64, u64),
    /// Distinct values.
    Distinct(Distinct),
    /// A quantile sketch and the quantile asked for.
    Quantile(Quantiles, f64),
}

/// An extremum as a checkpoint holds it: its value, or null while no value came (JSON has no
/// infinities: written as they were, an empty min or max read back as an error).
macro_rules! extremum_serde {
    ($name:ident, $empty:expr) => {
        mod $name {
            pub fn serialize<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(&x.is_finite().then_some(*x), s)
            }

            pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
                Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or($empty))
            }
        }
    };
}
extremum_serde!(empty_min, f64::INFINITY);
extremum_serde!(empty_max, f64::NEG_INFINITY);

impl Acc {
    fn new(func: AggFn, q: f64) -> Acc {
        match func {
            AggFn::Count => Acc::Count(0),
            AggFn::Sum => Acc::Sum(0.0, 0),
            AggFn::Min => Acc::Min(f64::INFINITY),
            AggFn::Max => Acc::Max(f64::NEG_INFINITY),
            AggFn::Avg => Acc::Avg(0.0, 0),
            AggFn::CountDistinct => Acc::Distinct(Distinct::default()),
            AggFn::Percentile => Acc::Quantile(Quantiles::default(), q),
        }
    }

    fn update(&mut self, column: &Column, row: usize) {
        match (self, column) {
            (Acc::Count(n), Column::Rows) => *n += 1,
            (Acc::Count(n), Column::NotNull(a)) => *n += i64::from(a.is_valid(row)),
            (acc, Column::Numbers(a)) if a.is_valid(row) => {
                let x = a.value(row);
                match acc {
                    Acc::Sum(s, n) | Acc::Avg(s, n) => {
                        *s += x;
                        *n += 1;
                    }
                    Acc::Min(m) => *m = m.min(x),
                    Acc::Max(m) => *m = m.max(x),
                    Acc::Quantile(q, _) => q.add(x),
                    Acc::Count(_) | Acc::Distinct(_) => {}
                }
            }
            (Acc::Distinct(d), Column::Hashes(h, nulls)) if nulls.as_ref().is_none_or(|n| n.is_valid(row)) => {
                d.add(h[row]);
            }
            _ => {}
        }
    }

    fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(s, n), Acc::Sum(s2, n2)) | (Acc::Avg(s, n), Acc::Avg(s2, n2)) => {
                *s += s2;
                *n += n2;
            }
            (Acc::Min(a), Acc::Min(b)) => *a = a.min(*b),
            (Acc::Max(a), Acc::Max(b)) => *a = a.max(*b),
            (Acc::Distinct(a), Acc::Distinct(b)) => a.merge(b),
            (Acc::Quantile(a, _), Acc::Quantile(b, _)) => a.merge(b),
            _ => {}
        }
    }

    /// The result: counts as integers, the rest as floats (`None` when there was no value).
    pub fn value(&self) -> Value {
        match self {
            Acc::Count(n) => Value::Int(*n),
            Acc::Distinct(d) => Value::Int(d.count() as i64),
            Acc::Sum(s, n) => Value::Float((*n > 0).then_some(*s)),
            Acc::Avg(s, n) => Value::Float((*n > 0).then(|| s / *n as f64)),
            Acc::Min(m) | Acc::Max(m) => Value::Float(m.is_finite().then_some(*m)),
            Acc::Quantile(q, at) => Value::Float(q.quantile(*at)),
        }
    }
}

/// A result value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// `count`, `count_distinct`.
    Int(i64),
    /// Every other aggregate.
    Float(Option<f64>),
}

/// The accumulators of one key in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    accs: Vec<Acc>,
    /// Changed since it was last emitted.
    dirty: bool,
    /// Its final result has been emitted (later changes are late updates).
    closed: bool,
}

/// A session of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    start: i64,
    /// Last event + gap.
    end: i64,
    slot: Slot,
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// The key (Arrow row format of the key columns).
    pub key: Box<[u8]>,
    /// Window start, ms since the epoch.
    pub start: i64,
    /// Window end (exclusive), ms since the epoch.
    pub end: i64,
    /// Whether the watermark has passed the end (an early result is `false`).
    pub is_final: bool,
    /// One value per aggregate.
    pub values: Vec<Value>,
}

/// A fast non-cryptographic hasher for keys in memory (FxHash's multiply-rotate).
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type KeyMap<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<FxHasher>>;

/// The state of every open window of one pipeline.
pub struct Windows {
    shape: Window,
    lateness: i64,
    funcs: Vec<(AggFn, f64)>,
    /// Tumbling and hopping windows by start.
    fixed: BTreeMap<i64, KeyMap<Slot>>,
    /// Sessions by key, sorted by start, never overlapping.
    sessions: KeyMap<Vec<Session>>,
    /// A window whose final result is out has changed (a late row within the lateness).
    late_updates: bool,
}

fn ms(d: std::time::Duration) -> i64 {
    d.as_millis() as i64
}

impl Windows {
    /// Empty state for windows of `shape` with these aggregates `(function, quantile)`.
    pub fn new(shape: Window, allowed_lateness: std::time::Duration, funcs: Vec<(AggFn, f64)>) -> Windows {
        Windows {
            shape,
            lateness: ms(allowed_lateness),
            funcs,
            fixed: BTreeMap::new(),
            sessions: KeyMap::default(),
            late_updates: false,
        }
    }

    /// Whether a closed window changed since the last [`Self::advance`] (its result is due again
    /// even if the watermark does not move).
    pub fn has_late_updates(&self) -> bool {
        self.late_updates
    }

    fn slot(&self) -> Slot {
        Slot { accs: self.funcs.iter().map(|&(f, q)| Acc::new(f, q)).collect(), dirty: true, closed: false }
    }

    /// Open windows and keys (for metrics): (windows, key-window pairs).
    pub fn size(&self) -> (usize, usize) {
        let pairs: usize =
            self.fixed.values().map(HashMap::len).sum::<usize>() + self.sessions.values().map(Vec::len).sum::<usize>();
        (self.fixed.len() + self.sessions.len(), pairs)
    }

    /// Whether an event at `t` would still be added at watermark `wm` (some window it belongs to
    /// is open, or closed less than the allowed lateness ago).
    pub fn accepts(&self, t: i64, wm: i64) -> bool {
        let last_end = match self.shape {
            Window::Tumbling(size) => t.div_euclid(ms(size)) * ms(size) + ms(size),
            Window::Hopping { size, slide } => t.div_euclid(ms(slide)) * ms(slide) + ms(size),
            Window::Session { gap } => t + ms(gap),
        };
        last_end + self.lateness > wm
    }

    /// How long before its last window's end an event can lie: the window's length or gap.
    pub fn span(&self) -> i64 {
        match self.shape {
            Window::Tumbling(size) | Window::Hopping { size, .. } | Window::Session { gap: size } => ms(size),
        }
    }

    /// The allowed lateness in ms.
    pub fn lateness(&self) -> i64 {
        self.lateness
    }

    /// Adds row `row` (key bytes `key`, event time `t`) given the current watermark; `false` when
    /// it is too late for every window it belongs to (nothing changes).
    pub fn add(&mut self, key: &[u8], t: i64, columns: &[Column], row: usize, watermark: i64) -> bool {
        match self.shape {
            Window::Tumbling(size) => {
                let size = ms(size);
                let start = t.div_euclid(size) * size;
                self.add_fixed(key, start, size, columns, row, watermark)
            }
            Window::Hopping { size, slide } => {
                let (size, slide) = (ms(size), ms(slide));
                let mut start = t.div_euclid(slide) * slide;
                let mut any = false;
                while start > t - size {
                    any |= self.add_fixed(key, start, size, columns, row, watermark);
                    start -= slide;
                }
                any
            }
            Window::Session { gap } => self.add_session(key, t, ms(gap), columns, row, watermark),
        }
    }

    fn add_fixed(&mut self, key: &[u8], start: i64, size: i64, columns: &[Column], row: usize, wm: i64) -> bool {
        if start + size + self.lateness <= wm {
            return false;
        }
        let fresh = self.slot();
        let keys = self.fixed.entry(start).or_default();
        let slot = match keys.get_mut(key) {
            Some(s) => s,
            None => keys.entry(key.into()).or_insert(fresh),
        };
        for (acc, column) in slot.accs.iter_mut().zip(columns) {
            acc.update(column, row);
        }
        slot.dirty = true;
        self.late_updates |= slot.closed;
        true
    }

    fn add_session(&mut self, key: &[u8], t: i64, gap: i64, columns: &[Column], row: usize, wm: i64) -> bool {
        if t + gap + self.lateness <= wm {
            return false;
        }
        let mut slot = self.slot();
        for (acc, column) in slot.accs.iter_mut().zip(columns) {
            acc.update(column, row);
        }
        let mut new = Session { start: t, end: t + gap, slot };
        let list = match self.sessions.get_mut(key) {
            Some(l) => l,
            None => self.sessions.entry(key.into()).or_default(),
        };
        // Absorb every session the new one overlaps; a merged session counts as changed.
        let mut i = 0;
        while i < list.len() {
            let s = &list[i];
            if s.start < new.end && new.start < s.end {
                let s = list.remove(i);
                self.late_updates |= s.slot.closed;
                new.start = new.start.min(s.start);
                new.end = new.end.max(s.end);
                for (a, b) in new.slot.accs.iter_mut().zip(&s.slot.accs) {
                    a.merge(b);
                }
            } else {
                i += 1;
            }
        }
        let at = list.partition_point(|s| s.start < new.start);
        list.insert(at, new);
        true
    }

    /// Closes what the watermark `wm` has passed: every window ending at or before it that is
    /// new or changed since it was emitted comes out final; windows more than the allowed
    /// lateness behind are dropped.
    pub fn advance(&mut self, wm: i64) -> Vec<Emitted> {
        let mut out = Vec::new();
        let lateness = self.lateness;
        self.late_updates = false;
        match self.shape {
            Window::Tumbling(_) | Window::Hopping { .. } => {
                let size = match self.shape {
                    Window::Tumbling(s) | Window::Hopping { size: s, .. } => ms(s),
                    Window::Session { .. } => unreachable!(),
                };
                for (&start, keys) in self.fixed.range_mut(..=wm - size) {
                    for (key, slot) in keys.iter_mut() {
                        if slot.dirty || !slot.closed {
                            out.push(emit(key, start, start + size, slot, true));
                        }
                    }
                }
                self.fixed.retain(|&start, _| start + size + lateness > wm);
            }
            Window::Session { .. } => {
                for (key, list) in self.sessions.iter_mut() {
                    for s in list.iter_mut().filter(|s| s.end <= wm) {
                        if s.slot.dirty || !s.slot.closed {
                            out.push(emit(key, s.start, s.end, &mut s.slot, true));
                        }
                    }
                    list.retain(|s| s.end + lateness > wm);
                }
                self.sessions.retain(|_, l| !l.is_empty());
            }
        }
        out
    }

    /// Running results of open windows that changed since they were last emitted.
    pub fn early(&mut self) -> Vec<Emitted> {
        let mut out = Vec::new();
        match self.shape {
            Window::Tumbling(s) | Window::Hopping { size: s, .. } => {
                for (&start, keys) in self.fixed.iter_mut() {
                    for (key, slot) in keys.iter_mut().filter(|(_, s)| s.dirty && !s.closed) {
                        out.push(emit(key, start, start + ms(s), slot, false));
                    }
                }
            }
            Window::Session { .. } => {
                for (key, list) in self.sessions.iter_mut() {
                    for s in list.iter_mut().filter(|s| s.slot.dirty && !s.slot.closed) {
                        out.push(emit(key, s.start, s.end, &mut s.slot, false));
                    }
                }
            }
        }
        out
    }

    /// The state as a checkpoint value.
    pub fn snapshot(&self) -> Snapshot {
        use base64::Engine as _;
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        Snapshot {
            fixed: self
                .fixed
                .iter()
                .map(|(&start, keys)| (start, keys.iter().map(|(k, s)| (b64(k), s.clone())).collect()))
                .collect(),
            sessions: self
                .sessions
                .iter()
                .flat_map(|(k, list)| {
                    list.iter().map(|s| SessionSnapshot {
                        key: b64(k),
                        start: s.start,
                        end: s.end,
                        slot: s.slot.clone(),
                    })
                })
                .collect(),
        }
    }

    /// Replaces the state with a checkpoint's.
    pub fn restore(&mut self, snapshot: Snapshot) -> Result<(), String> {
        use base64::Engine as _;
        let key = |k: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .map(Vec::into_boxed_slice)
                .map_err(|e| format!("a checkpointed key is not base64: {e}"))
        };
        self.fixed.clear();
        self.sessions.clear();
        for (start, keys) in snapshot.fixed {
            let map = self.fixed.entry(start).or_default();
            for (k, slot) in keys {
                map.insert(key(&k)?, slot);
            }
        }
        for s in snapshot.sessions {
            self.sessions.entry(key(&s.key)?).or_default().push(Session { start: s.start, end: s.end, slot: s.slot });
        }
        for list in self.sessions.values_mut() {
            list.sort_by_key(|s| s.start);
        }
        Ok(())
    }
}

fn emit(key: &[u8], start: i64, end: i64, slot: &mut Slot, is_final: bool) -> Emitted {
    slot.dirty = false;
    slot.closed |= is_final;
    Emitted { key: key.into(), start, end, is_final, values: slot.accs.iter().map(Acc::value).collect() }
}

/// Window state in a checkpoint (keys in base64).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    fixed: Vec<(i64, Vec<(String, Slot)>)>,
    sessions: Vec<SessionSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SessionSnapshot {
    key: String,
    start: i64,
    end: i64,
    slot: Slot,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Adds (key, time ms, value) rows one by one at watermark `wm`; returns which were taken.
    fn feed(w: &mut Windows, rows: &[(&str, i64, f64)], wm: i64) -> Vec<bool> {
        let values = Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
        let columns = [Column::Rows, Column::Numbers(values)];
        rows.iter().enumerate().map(|(i, (k, t, _))| w.add(k.as_bytes(), *t, &columns, i, wm)).collect()
    }

    fn results(out: &[Emitted]) -> Vec<(String, i64, i64, bool, Vec<Value>)> {
        let mut r: Vec<_> = out
            .iter()
            .map(|e| (String::from_utf8_lossy(&e.key).into_owned(), e.start, e.end, e.is_final, e.values.clone()))
            .collect();
        r.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        r
    }

    fn count_sum() -> Vec<(AggFn, f64)> {
        vec![(AggFn::Count, 0.0), (AggFn::Sum, 0.0)]
    }

    #[test]
    fn an_empty_min_and_max_survive_a_checkpoint() {
        for acc in [Acc::new(AggFn::Min, 0.0), Acc::new(AggFn::Max, 0.0), Acc::Max(2.5)] {
            let text = serde_json::to_string(&acc).unwrap();
            assert_eq!(serde_json::from_str::<Acc>(&text).unwrap(), acc, "{text}");
        }
        assert_eq!(serde_json::to_string(&Acc::new(AggFn::Max, 0.0)).unwrap(), r#"{"Max":null}"#);
    }

    #[test]
    fn tumbling_windows_close_at_the_watermark_and_take_out_of_order_rows() {
        let mut w = Windows::new(Window::Tumbling(secs(60)), Duration::ZERO, count_sum());
        // Out of order within the window; the watermark is still behind the window's end.
        feed(&mut w, &[("a", 59_000, 1.0), ("a", 1_000, 2.0), ("b", 61_000, 5.0), ("a", 30_000, 3.0)], 0);
        assert!(w.advance(59_999).is_empty());
        let out = w.advance(60_000);
        assert_eq!(results(&out), vec![("a".into(), 0, 60_000, true, vec![Value::Int(3), Value::Float(Some(6.0))])]);
        // Lateness 0: the window is gone, a row for it is refused.
        assert_eq!(feed(&mut w, &[("a", 10_000, 1.0)], 60_000), vec![false]);
        let out = w.advance(120_000);
        assert_eq!(
            results(&out),
            vec![("b".into(), 60_000, 120_000, true, vec![Value::Int(1), Value::Float(Some(5.0))])]
        );
        assert!(w.advance(500_000).is_empty());
    }

    #[test]
    fn allowed_lateness_updates_and_re_emits_a_closed_window() {
        let mut w = Windows::new(Window::Tumbling(secs(60)), secs(30), count_sum());
        feed(&mut w, &[("a", 10_000, 1.0)], 0);
        assert_eq!(w.advance(60_000).len(), 1);
        // Late but within the lateness: the window is updated and emitted again.
        assert_eq!(feed(&mut w, &[("a", 20_000, 2.0)], 70_000), vec![true]);
        let out = w.advance(70_000);
        assert_eq!(results(&out), vec![("a".into(), 0, 60_000, true, vec![Value::Int(2), Value::Float(Some(3.0))])]);
        // Nothing new: nothing re-emitted. Past end + lateness: refused and purged.
        assert!(w.advance(80_000).is_empty());
        assert_eq!(feed(&mut w, &[("a", 20_000, 2.0)], 90_000), vec![false]);
        w.advance(90_000);
        assert_eq!(w.size(), (0, 0));
    }

    #[test]
    fn hopping_windows_count_a_row_in_each_window_it_falls_in() {
        let shape = Window::Hopping { size: secs(60), slide: secs(20) };
        let mut w = Windows::new(shape, Duration::ZERO, count_sum());
        feed(&mut w, &[("k", 45_000, 1.0), ("k", 65_000, 10.0)], 0);
        let out = w.advance(120_000);
        let got: Vec<(i64, Value)> = results(&out).into_iter().map(|r| (r.1, r.4[1])).collect();
        assert_eq!(
            got,
            vec![
                (0, Value::Float(Some(1.0))),
                (20_000, Value::Float(Some(11.0))),
                (40_000, Value::Float(Some(11.0))),
                (60_000, Value::Float(Some(10.0))),
            ]
        );
    }

    #[test]
    fn sessions_merge_when_a_row_bridges_them() {
        let mut w = Windows::new(Window::Session { gap: secs(10) }, Duration::ZERO, count_sum());
        feed(&mut w, &[("a", 0, 1.0), ("a", 25_000, 2.0), ("b", 3_000, 7.0)], 0);
        assert_eq!(w.size().1, 3);
        // 9 s extends [0, 10 s) to [0, 19 s); 17 s then touches both sessions: one session.
        feed(&mut w, &[("a", 9_000, 1.0)], 0);
        feed(&mut w, &[("a", 17_000, 1.0)], 0);
        let out = w.advance(100_000);
        assert_eq!(
            results(&out),
            vec![
                ("a".into(), 0, 35_000, true, vec![Value::Int(4), Value::Float(Some(5.0))]),
                ("b".into(), 3_000, 13_000, true, vec![Value::Int(1), Value::Float(Some(7.0))]),
            ]
        );
        assert_eq!(feed(&mut w, &[("a", 50_000, 1.0)], 100_000), vec![false]);
    }

    #[test]
    fn early_results_then_one_final_result() {
        let mut w = Windows::new(Window::Tumbling(secs(60)), Duration::ZERO, count_sum());
        feed(&mut w, &[("a", 1_000, 1.0)], 0);
        let early = w.early();
        assert_eq!(early.len(), 1);
        assert!(!early[0].is_final);
        assert!(w.early().is_empty(), "unchanged windows are not repeated");
        feed(&mut w, &[("a", 2_000, 1.0)], 0);
        assert_eq!(w.early()[0].values[0], Value::Int(2));
        let out = w.advance(60_000);
        assert_eq!(out.len(), 1, "the final result comes even though nothing changed since");
        assert!(out[0].is_final);
    }

    #[test]
    fn state_survives_a_snapshot() {
        let funcs = vec![(AggFn::Count, 0.0), (AggFn::Percentile, 0.5)];
        for shape in [Window::Tumbling(secs(60)), Window::Session { gap: secs(5) }] {
            let mut w = Windows::new(shape, Duration::ZERO, funcs.clone());
            let values = Float64Array::from(vec![1.0, 2.0, 3.0]);
            let columns = [Column::Rows, Column::Numbers(values)];
            for (i, t) in [1_000, 2_000, 3_000].into_iter().enumerate() {
                w.add(b"\x01\xff", t, &columns, i, 0);
            }
            let json = serde_json::to_string(&w.snapshot()).unwrap();
            let mut back = Windows::new(shape, Duration::ZERO, funcs.clone());
            back.restore(serde_json::from_str(&json).unwrap()).unwrap();
            assert_eq!(results(&back.advance(100_000)), results(&w.advance(100_000)));
        }
    }
}
