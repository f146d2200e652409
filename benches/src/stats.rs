//! Summaries of samples, and durations printed with a sensible unit.

use std::fmt;
use std::time::Duration;

/// The `q`-quantile (0 ≤ q ≤ 1) of `samples`, interpolated linearly
/// between the two nearest ranks (numpy's default), so that with 50
/// samples p99 lies between the largest two instead of being the maximum.
/// `None` for no samples.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// The arithmetic mean; `None` for no samples.
pub fn mean(samples: &[f64]) -> Option<f64> {
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}

/// The largest sample; `None` for no samples.
pub fn max(samples: &[f64]) -> Option<f64> {
    samples.iter().copied().max_by(f64::total_cmp)
}

/// Median, p99 and maximum of durations, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// The median.
    pub p50: f64,
    /// The 99th percentile (interpolated).
    pub p99: f64,
    /// The maximum.
    pub max: f64,
}

impl Summary {
    /// The summary of `samples` (seconds); `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        Some(Summary {
            n: samples.len(),
            p50: quantile(samples, 0.5)?,
            p99: quantile(samples, 0.99)?,
            max: max(samples)?,
        })
    }
}

/// A duration in seconds, printed in µs or ms as fits.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Secs(pub f64);

impl From<Duration> for Secs {
    fn from(d: Duration) -> Self {
        Secs(d.as_secs_f64())
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let text = if s >= 0.1 {
            format!("{:.1} ms", s * 1e3)
        } else if s >= 1e-3 {
            format!("{:.3} ms", s * 1e3)
        } else {
            format!("{:.1} µs", s * 1e6)
        };
        f.pad(&text)
    }
}

/// `ours / theirs`, printed as `0.42×`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Ratio(pub f64);

impl Ratio {
    /// `ours / theirs`.
    pub fn of(ours: f64, theirs: f64) -> Ratio {
        Ratio(ours / theirs)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:.3}×", self.0))
    }
}

/// "met" or "NOT met", for a target line.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// How many rounds a benchmark runs: `HANDOFF_BENCH_ROUNDS` if it is a
/// positive number, else `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var("HANDOFF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(25.5));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(50.0));
        let p99 = quantile(&v, 0.99).unwrap();
        assert!(p99 > 49.0 && p99 < 50.0, "{p99}");
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
    }

    #[test]
    fn durations_print_with_a_fitting_unit() {
        assert_eq!(Secs(0.000_012_34).to_string(), "12.3 µs");
        assert_eq!(Secs(0.001_5).to_string(), "1.500 ms");
        assert_eq!(Secs(0.25).to_string(), "250.0 ms");
        assert_eq!(Ratio::of(1.0, 4.0).to_string(), "0.250×");
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
    }
}
