//! `tcasm bench`: measurements users decide from. `bench checkpoint` (in `checkpoint.rs`)
//! measures how fast a checkpointer drains versions; `bench coverage` ([`coverage`]) what
//! publishing costs the producer against the share of pages it writes, next to the
//! snapshotting a user would write instead.
//!
//! This module holds what a measurement needs whatever it measures: which pages an iteration
//! writes ([`Pattern`]), the writes themselves, plain page-aligned buffers to write the same
//! pages untracked, medians, and a one-line description of the machine.
use std::fmt;
use std::time::{Duration, Instant};

use tcasm::page_size;

use crate::rng::Rng;

pub mod checkpoint;
pub mod coverage;
mod plot;
pub mod restart;
mod shm;

/// Which pages an iteration writes, for a coverage `c` (share of the pages, 0–1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// `c * pages` pages spread evenly (every 100th page at 1 %), the same every iteration:
    /// TCASM's experiment.
    Strided,
    /// `c * pages` pages drawn at random, a new draw every iteration.
    Random,
    /// One run of `c * pages` pages from a random start (wrapping), a new start every iteration.
    Contiguous,
    /// One run of `c * pages` pages that moves forward by a sixteenth of its length every
    /// iteration (wrapping): a front sweeping the domain, as a simulation's active zone.
    Sweep,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pattern::Strided => "strided",
            Pattern::Random => "random",
            Pattern::Contiguous => "contiguous",
            Pattern::Sweep => "sweep",
        })
    }
}

/// Chooses the pages iterations write.
pub struct Pages {
    pattern: Pattern,
    pages: usize,
    seed: u64,
    /// Scratch for the random draws: a permutation of all pages.
    shuffled: Vec<u32>,
}

impl Pages {
    pub fn new(pattern: Pattern, pages: usize, seed: u64) -> Pages {
        assert!(u32::try_from(pages).is_ok(), "page numbers fit in u32");
        Pages { pattern, pages, seed, shuffled: Vec::new() }
    }

    /// Sets `out` to the pages iteration `iteration` writes at `coverage`, sorted. The same
    /// arguments always give the same pages.
    pub fn choose(&mut self, coverage: f64, iteration: u64, out: &mut Vec<u32>) {
        out.clear();
        let n = ((coverage * self.pages as f64).round() as usize).min(self.pages);
        if n == 0 {
            return;
        }
        let mut rng = Rng::new(self.seed ^ iteration.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ coverage.to_bits());
        match self.pattern {
            Pattern::Strided => out.extend((0..n).map(|k| (k * self.pages / n) as u32)),
            Pattern::Contiguous | Pattern::Sweep => {
                let start = if self.pattern == Pattern::Sweep {
                    (iteration as usize).wrapping_mul(n.div_ceil(16)) % self.pages
                } else {
                    rng.below(self.pages)
                };
                out.extend((start..start + n).map(|p| (p % self.pages) as u32));
                out.sort_unstable();
            }
            Pattern::Random => {
                // From the identity each time, so that a draw depends only on the arguments.
                self.shuffled.clear();
                self.shuffled.extend(0..self.pages as u32);
                // A partial Fisher-Yates shuffle: the first n entries become a uniform draw.
                for i in 0..n {
                    let j = i + rng.below(self.pages - i);
                    self.shuffled.swap(i, j);
                }
                out.extend_from_slice(&self.shuffled[..n]);
                out.sort_unstable();
            }
        }
    }
}

/// How an iteration writes a page it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Write {
    /// One 8-byte word at the start of the page: enough to dirty it, so the measurement is
    /// the tracking and the copying, not the producer's own work.
    Word,
    /// The whole page (a `memset` of 4 KiB).
    Page,
}

/// Writes `pages` of `memory` the way `how` says, with a value that differs each iteration.
/// Returns how long the writes took.
pub fn write_pages(memory: &mut [u8], pages: &[u32], how: Write, value: u64) -> Duration {
    let page = page_size();
    let started = Instant::now();
    match how {
        Write::Word => {
            for &p in pages {
                let at = p as usize * page;
                memory[at..at + 8].copy_from_slice(&value.to_ne_bytes());
            }
        }
        Write::Page => {
            for &p in pages {
                let at = p as usize * page;
                memory[at..at + page].fill(value as u8);
            }
        }
    }
    std::hint::black_box(&mut *memory);
    started.elapsed()
}

/// Page-aligned private anonymous memory written through `&mut [u8]`, like the memory the
/// library allocates for a region (a large `Vec` is its own `mmap`), every page touched once
/// so that no measured write takes a first-touch fault.
pub struct Plain {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Plain {
    pub fn new(len: usize) -> Plain {
        let page = page_size();
        let storage = vec![0u8; len + page];
        let start = storage.as_ptr().align_offset(page);
        let mut plain = Plain { storage, start, len };
        plain.fill(1);
        plain
    }

    pub fn addr(&self) -> usize {
        self.storage.as_ptr() as usize + self.start
    }
}

impl std::ops::Deref for Plain {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Plain {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// What the numbers came from: cores, CPU model, kernel, load.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), kernel {kernel}, load average {load}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_what_they_say() {
        for pattern in [Pattern::Strided, Pattern::Random, Pattern::Contiguous, Pattern::Sweep] {
            let mut pages = Pages::new(pattern, 1000, 7);
            let mut out = Vec::new();
            for (coverage, n) in [(0.01, 10), (0.1, 100), (0.5, 500), (1.0, 1000), (0.0, 0)] {
                pages.choose(coverage, 3, &mut out);
                assert_eq!(out.len(), n, "{pattern} at {coverage}");
                assert!(out.windows(2).all(|w| w[0] < w[1]), "{pattern}: sorted and distinct");
                assert!(out.iter().all(|&p| p < 1000));
                let again = out.clone();
                pages.choose(coverage, 3, &mut out);
                assert_eq!(out, again, "{pattern}: the same pages for the same iteration");
            }
        }
        let mut strided = Pages::new(Pattern::Strided, 1000, 1);
        let mut out = Vec::new();
        strided.choose(0.01, 0, &mut out);
        assert_eq!(out, (0..10).map(|k| k * 100).collect::<Vec<u32>>());
        // The sweep moves by a sixteenth of its length an iteration, wrapping.
        let mut sweep = Pages::new(Pattern::Sweep, 1000, 1);
        sweep.choose(0.16, 2, &mut out);
        assert_eq!(out, (20..180).collect::<Vec<u32>>());
        sweep.choose(0.16, 3, &mut out);
        assert_eq!(out, (30..190).collect::<Vec<u32>>());
        sweep.choose(0.5, 31, &mut out);
        assert_eq!(out, (0..492).chain(992..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
