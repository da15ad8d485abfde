//! The auto tracker: async tracking that decides, publish by publish, whether tracking pays.
//!
//! Tracking a version with coverage `c` (share of pages written) costs the producer a
//! first-write fault on each written page (the kernel's async write-protect path) and a
//! publish that scans and copies those pages: `c * pages * (fault + tracked)`, where
//! `tracked` is what a tracked publish costs per page copied (scattered pages copy at half
//! the speed of a sequential stretch, and the scan is in it). Copying every page without
//! scanning costs `pages * full` and no faults, because pages not re-protected stay
//! writable. So tracking pays below `c* = full / (fault + tracked)`. Measured on this kind of
//! machine (full ~0.35 µs, tracked ~0.4–0.75 µs, fault ~0.65 µs a page) that is 0.25–0.35.
//! `full` and `tracked` are learnt from the producer's own publishes, each from its kind (a
//! copy timed on scratch pages runs from the cache and is several times too cheap); `fault`
//! is measured once at start on scratch pages (the trap costs the same cached or not).
//!
//! The prices are learnt to fall fast and rise slowly: a publish into slots the kernel must
//! first allocate costs several times the steady price, and must not set it. A full copy's
//! price is learnt only from full publishes, so while coverage is high enough to matter (a
//! fifth of the pages or more) and auto keeps tracking, every [`PROBE_EVERY`]th such version
//! is followed by one full publish, to keep that price current.
//!
//! States: *tracked* publishes scan and measure `c`. When `c >= c*`, the write protection
//! of the whole region is lifted (one ioctl) and the next `streak` publishes copy everything
//! (*full*) without scanning: the producer's writes cost no fault. Then one *re-arm* publish scans (to
//! write-protect again what was written) while still copying everything, and the next
//! tracked publish measures the coverage of one version. `streak` doubles while coverage
//! stays high (8 to 64 publishes), so a steady full-coverage producer pays the re-arm's
//! faults once every 64 versions, and a producer whose coverage drops is back to tracking
//! within `streak + 2` publishes.
use std::ops::Range;
use std::time::{Duration, Instant};

use super::{AsyncTracker, Tracker, TrackerKind};
use crate::sys::mem::{Mapping, RegionMemory};
use crate::sys::page_size;

const STREAK_MIN: u32 = 8;
/// Tracked versions of high coverage between two full publishes that re-learn their price.
const PROBE_EVERY: u32 = 8;
const STREAK_MAX: u32 = 64;
/// Scratch pages for the start-up measurements.
const CALIBRATION_PAGES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Tracked,
    Full { left: u32 },
    Rearm,
}

pub struct AutoTracker {
    inner: AsyncTracker,
    ranges: Vec<Range<usize>>,
    pages: usize,
    mode: Mode,
    streak: u32,
    /// Costs of one page: in a publish that copies everything, in a tracked publish (both
    /// learnt from publishes; zero until one of the kind is seen), and a first write while
    /// protected.
    full: Duration,
    tracked: Duration,
    fault: Duration,
    /// Whether the last `take_written` copies everything, for `published` to learn from.
    last_full: bool,
    /// Tracked versions of high coverage since the last full publish.
    since_full: u32,
    /// The first scan reports whatever was written before the first version (filling the
    /// region), not what a version writes, and the first publish pays for creating the store:
    /// neither teaches anything.
    first: bool,
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Measures what a first write to a write-protected page costs here, more than a plain
/// write: the fastest of five tries of each, on scratch pages.
fn calibrate_fault() -> Result<Duration, String> {
    let page = page_size();
    let bytes = CALIBRATION_PAGES * page;
    let source = RegionMemory::allocate(page).map_err(|e| format!("calibration memory: {e}"))?;
    let target = Mapping::anonymous(bytes).map_err(|e| format!("calibration memory: {e}"))?;
    target.zero(0, bytes);

    let mut tracker = AsyncTracker::new()?;
    let start = target.as_ptr() as usize;
    tracker.track(start..start + bytes).map_err(|e| format!("calibration: {e}"))?;
    let touch = || {
        for p in 0..CALIBRATION_PAGES {
            target.copy_in(p * page, &source, 0, 1);
        }
    };
    let (mut protected, mut plain) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        tracker.take_written(&mut |_, _| {}).map_err(|e| format!("calibration scan: {e}"))?;
        protected = protected.min(timed(touch));
        plain = plain.min(timed(touch));
    }
    Ok(protected.saturating_sub(plain) / CALIBRATION_PAGES as u32)
}

impl AutoTracker {
    pub fn new() -> Result<AutoTracker, String> {
        let fault = calibrate_fault()?;
        tracing::debug!("auto tracker: a first-write fault costs {fault:?} a page");
        Ok(AutoTracker {
            inner: AsyncTracker::new()?,
            ranges: Vec::new(),
            pages: 0,
            mode: Mode::Tracked,
            streak: 0,
            full: Duration::ZERO,
            tracked: Duration::ZERO,
            fault,
            last_full: false,
            since_full: 0,
            first: true,
        })
    }

    /// The coverage above which copying everything is cheaper than tracking (1 until a
    /// publish has shown what copying costs; a price not learnt yet is taken to be the
    /// other's).
    pub fn threshold(&self) -> f64 {
        let (full, tracked) = match (self.full.is_zero(), self.tracked.is_zero()) {
            (true, true) => return 1.0,
            (true, false) => (self.tracked, self.tracked),
            (false, true) => (self.full, self.full),
            (false, false) => (self.full, self.tracked),
        };
        (full.as_secs_f64() / (tracked + self.fault).as_secs_f64()).clamp(0.0, 1.0)
    }

    /// Whether the next publish will copy everything.
    pub fn copies_everything(&self) -> bool {
        self.mode != Mode::Tracked
    }

    fn report_all(&self, found: &mut dyn FnMut(usize, usize)) {
        for r in &self.ranges {
            found(r.start, r.end);
        }
    }

    fn scan(&mut self, found: &mut dyn FnMut(usize, usize)) -> nix::Result<usize> {
        let page = page_size();
        let mut written = 0;
        self.inner.take_written(&mut |s, e| {
            written += (e - s) / page;
            found(s, e);
        })?;
        Ok(written)
    }
}

impl Tracker for AutoTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::Auto
    }

    fn track(&mut self, range: Range<usize>) -> nix::Result<()> {
        self.inner.track(range.clone())?;
        self.pages += (range.end - range.start) / page_size();
        self.ranges.push(range);
        Ok(())
    }

    fn take_written(&mut self, found: &mut dyn FnMut(usize, usize)) -> nix::Result<()> {
        match self.mode {
            Mode::Tracked => {
                let written = self.scan(found)?;
                self.last_full = written == self.pages;
                if self.first {
                    return Ok(());
                }
                if written * 5 >= self.pages {
                    self.since_full += 1;
                }
                if written as f64 >= self.threshold() * self.pages as f64 && written > 0 {
                    self.streak = (self.streak * 2).clamp(STREAK_MIN, STREAK_MAX);
                    self.mode = Mode::Full { left: self.streak };
                } else {
                    self.streak = 0;
                    if self.since_full >= PROBE_EVERY || (self.full.is_zero() && self.since_full > 0) {
                        // What would a full copy cost now? One full publish says.
                        self.mode = Mode::Full { left: 1 };
                    }
                }
                if self.mode != Mode::Tracked {
                    self.inner.unprotect_all()?;
                }
            }
            Mode::Full { left } => {
                self.report_all(found);
                self.last_full = true;
                self.mode = if left > 1 { Mode::Full { left: left - 1 } } else { Mode::Rearm };
            }
            Mode::Rearm => {
                self.scan(&mut |_, _| {})?;
                self.report_all(found);
                self.last_full = true;
                self.mode = Mode::Tracked;
            }
        }
        Ok(())
    }

    /// Learns what a page costs in a publish of each kind, from publishes that copied
    /// enough pages to tell: an average over recent ones (weight 1/4 to the newest).
    /// Learns what a page costs in a publish of each kind: at once when it is cheaper than
    /// believed, by an eighth when dearer.
    fn published(&mut self, copied: usize, took: Duration) {
        if std::mem::take(&mut self.first) || copied < 64 {
            return;
        }
        if self.last_full {
            self.since_full = 0;
        }
        let per_page = took / copied as u32;
        let learnt = if self.last_full { &mut self.full } else { &mut self.tracked };
        *learnt = if learnt.is_zero() || per_page < *learnt { per_page } else { (*learnt * 7 + per_page) / 8 };
    }
}
