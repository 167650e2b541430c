//! Peak-EWMA latency estimate (Finagle's / tower's `load::PeakEwma`): a slower observation is
//! taken at once, faster ones decay in with time constant `DECAY`. Lock-free; racing updates
//! may lose one observation, which an estimate tolerates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const DECAY: Duration = Duration::from_secs(10);
const INITIAL_RTT: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub struct PeakEwma {
    base: Instant,
    /// Estimate in nanoseconds, as f64 bits.
    estimate: AtomicU64,
    /// Nanoseconds since `base` of the last update.
    stamp: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            base: Instant::now(),
            estimate: AtomicU64::new((INITIAL_RTT.as_nanos() as f64).to_bits()),
            stamp: AtomicU64::new(0),
        }
    }
}

impl PeakEwma {
    pub fn observe(&self, rtt: Duration) {
        let now = self.base.elapsed().as_nanos() as u64;
        let last = self.stamp.swap(now, Ordering::Relaxed);
        let old = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let rtt = rtt.as_nanos() as f64;
        let next = if rtt > old {
            rtt
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            old * w + rtt * (1.0 - w)
        };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Expected cost of one more request given `in_flight` outstanding ones. Like tower's
    /// `PeakEwma`, an estimate not refreshed by new observations decays with time, so a replica
    /// that was slow once is tried again instead of being starved.
    pub fn cost(&self, in_flight: u32) -> f64 {
        let now = self.base.elapsed().as_nanos() as u64;
        let idle = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        let decayed = f64::from_bits(self.estimate.load(Ordering::Relaxed))
            * (-idle / DECAY.as_nanos() as f64).exp();
        decayed * f64::from(in_flight + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_taken_at_once_and_cost_grows_with_load() {
        let e = PeakEwma::default();
        e.observe(Duration::from_millis(50));
        let c0 = e.cost(0);
        assert!((c0 - 50e6).abs() < 50e6 * 0.01, "{c0}");
        assert!(e.cost(3) > 3.9 * c0);
        // A fast observation right after decays in only a little.
        e.observe(Duration::from_millis(1));
        assert!(e.cost(0) > 40e6);
    }
}
