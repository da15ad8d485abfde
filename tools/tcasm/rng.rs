//! SplitMix64: the one source of pseudo-random choices of the tools (the pages `bench`
//! writes, the write schedule and the chaos of `stress`), deterministic from a seed so that
//! every tracker gets the same pages and a failing run can be repeated.
use std::ops::Range;
use std::time::Duration;

/// SplitMix64's finalizer: a well-mixed function of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A SplitMix64 stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0), close enough for a schedule.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in `ms` milliseconds.
    pub fn millis(&mut self, ms: &Range<u64>) -> Duration {
        Duration::from_millis(ms.start + self.below((ms.end - ms.start) as usize) as u64)
    }

    /// Uniform in [0, 1).
    pub fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
