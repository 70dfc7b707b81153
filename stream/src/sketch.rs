//! Mergeable summaries for windowed aggregates: a log-bucket quantile sketch (relative error
//! bounded, like DDSketch) and a distinct counter that is exact for small sets and becomes a
//! HyperLogLog past them. Both serialise into checkpoints and merge (session windows merge).

use serde::{Deserialize, Serialize};

/// Relative accuracy of [`Quantiles`]: an estimate is within 1 % of a value of the right rank.
const ALPHA: f64 = 0.01;

/// A quantile sketch over f64 values: each value counts in the bucket `ceil(log_γ |x|)` with
/// γ = (1 + α) / (1 − α), so the bucket's representative is within α of every value in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Positive values: (bucket, count), sorted by bucket.
    pos: Vec<(i32, u64)>,
    /// Negative values by the bucket of their magnitude, sorted by bucket.
    neg: Vec<(i32, u64)>,
    zeros: u64,
    count: u64,
}

fn gamma_ln() -> f64 {
    ((1.0 + ALPHA) / (1.0 - ALPHA)).ln()
}

fn bucket(x: f64) -> i32 {
    (x.ln() / gamma_ln()).ceil() as i32
}

fn representative(b: i32) -> f64 {
    let gamma = (1.0 + ALPHA) / (1.0 - ALPHA);
    2.0 * gamma.powi(b) / (gamma + 1.0)
}

fn add_to(bins: &mut Vec<(i32, u64)>, b: i32, n: u64) {
    match bins.binary_search_by_key(&b, |&(k, _)| k) {
        Ok(i) => bins[i].1 += n,
        Err(i) => bins.insert(i, (b, n)),
    }
}

impl Quantiles {
    /// Counts one value (NaN is ignored; values below 1e-300 in magnitude count as zero).
    pub fn add(&mut self, x: f64) {
        if x.is_nan() {
            return;
        }
        self.count += 1;
        if x.abs() < 1e-300 {
            self.zeros += 1;
        } else if x > 0.0 {
            add_to(&mut self.pos, bucket(x), 1);
        } else {
            add_to(&mut self.neg, bucket(-x), 1);
        }
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &Quantiles) {
        for &(b, n) in &other.pos {
            add_to(&mut self.pos, b, n);
        }
        for &(b, n) in &other.neg {
            add_to(&mut self.neg, b, n);
        }
        self.zeros += other.zeros;
        self.count += other.count;
    }

    /// The estimated `q` quantile (nearest rank), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).round() as u64;
        let mut seen = 0;
        for &(b, n) in self.neg.iter().rev() {
            seen += n;
            if seen > rank {
                return Some(-representative(b));
            }
        }
        seen += self.zeros;
        if seen > rank {
            return Some(0.0);
        }
        for &(b, n) in &self.pos {
            seen += n;
            if seen > rank {
                return Some(representative(b));
            }
        }
        self.pos.last().map(|&(b, _)| representative(b))
    }
}

/// Registers of the HyperLogLog: 2^12, a standard error of 1.04/√4096 ≈ 1.6 %.
const P: u32 = 12;
/// Distinct hashes kept exactly before switching to registers (the same 4 KiB of memory).
const EXACT_LIMIT: usize = 512;

/// Counts distinct values by their 64-bit hashes: exact up to 512 distinct values, a
/// HyperLogLog after that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Distinct {
    /// Sorted distinct hashes.
    Exact(Vec<u64>),
    /// HyperLogLog registers.
    Registers(Vec<u8>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(Vec::new())
    }
}

impl Distinct {
    /// Counts the value with this hash.
    pub fn add(&mut self, hash: u64) {
        match self {
            Distinct::Exact(hashes) => {
                if let Err(i) = hashes.binary_search(&hash) {
                    hashes.insert(i, hash);
                    if hashes.len() > EXACT_LIMIT {
                        let mut registers = vec![0u8; 1 << P];
                        for &h in hashes.iter() {
                            register_add(&mut registers, h);
                        }
                        *self = Distinct::Registers(registers);
                    }
                }
            }
            Distinct::Registers(r) => register_add(r, hash),
        }
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Exact(hashes) => hashes.iter().for_each(|&h| self.add(h)),
            Distinct::Registers(theirs) => {
                if let Distinct::Exact(hashes) = self {
                    let mut registers = vec![0u8; 1 << P];
                    hashes.iter().for_each(|&h| register_add(&mut registers, h));
                    *self = Distinct::Registers(registers);
                }
                if let Distinct::Registers(mine) = self {
                    mine.iter_mut().zip(theirs).for_each(|(m, t)| *m = (*m).max(*t));
                }
            }
        }
    }

    /// The (estimated) number of distinct values.
    pub fn count(&self) -> u64 {
        match self {
            Distinct::Exact(hashes) => hashes.len() as u64,
            Distinct::Registers(r) => {
                let m = r.len() as f64;
                let sum: f64 = r.iter().map(|&x| 2f64.powi(-i32::from(x))).sum();
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                let raw = alpha * m * m / sum;
                let zeros = r.iter().filter(|&&x| x == 0).count();
                // Linear counting while the registers are sparse (the small-range correction).
                let estimate = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
                estimate.round() as u64
            }
        }
    }
}

fn register_add(registers: &mut [u8], hash: u64) {
    let index = (hash >> (64 - P)) as usize;
    let rest = (hash << P) | (1 << (P - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    registers[index] = registers[index].max(rank);
}

/// A 64-bit hash of bytes that is the same in every process and release (checkpointed sketches
/// and keys depend on it): FNV-1a, then a SplitMix64 finaliser to spread the bits.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut s = Quantiles::default();
        for i in 1..=10_000 {
            s.add(f64::from(i));
        }
        for q in [0.01, 0.5, 0.95, 0.99] {
            let exact = (q * 9_999.0_f64).round() + 1.0;
            let got = s.quantile(q).unwrap();
            assert!((got - exact).abs() / exact <= 0.0101, "q {q}: {got} vs {exact}");
        }
        assert_eq!(Quantiles::default().quantile(0.5), None);
    }

    #[test]
    fn quantiles_handle_signs_and_merge() {
        let (mut a, mut b) = (Quantiles::default(), Quantiles::default());
        for i in -50..=0 {
            a.add(f64::from(i));
        }
        for i in 1..=50 {
            b.add(f64::from(i));
        }
        a.merge(&b);
        assert_eq!(a.quantile(0.5), Some(0.0));
        assert!((a.quantile(0.0).unwrap() + 50.0).abs() <= 0.5);
        assert!((a.quantile(1.0).unwrap() - 50.0).abs() <= 0.5);
    }

    #[test]
    fn distinct_is_exact_when_small_and_close_when_large() {
        let mut d = Distinct::default();
        for i in 0..300u64 {
            d.add(stable_hash(&(i % 100).to_le_bytes()));
        }
        assert_eq!(d.count(), 100);
        let mut big = Distinct::default();
        let mut other = Distinct::default();
        for i in 0..100_000u64 {
            let h = stable_hash(&i.to_le_bytes());
            if i % 2 == 0 { big.add(h) } else { other.add(h) }
        }
        big.merge(&other);
        let n = big.count() as f64;
        assert!((n - 100_000.0).abs() / 100_000.0 < 0.05, "{n}");
        let mut small = Distinct::default();
        small.add(1);
        small.merge(&big);
        assert!(matches!(small, Distinct::Registers(_)));
    }
}
