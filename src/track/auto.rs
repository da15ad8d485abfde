//! The auto tracker: tracking decided chunk by chunk, from prices the producer's own
//! publishes teach.
//!
//! The tracked address ranges are cut into chunks of [`CHUNK_PAGES`] pages. A chunk is
//! either *tracked* (write-protected with `WP_ASYNC`: the first write to a page costs a
//! fault, and the publish's `PAGEMAP_SCAN` names exactly the pages written) or *untracked*
//! (writable: writes cost nothing, and the publish compares every page of the chunk with the
//! copy the latest version holds, copying those that differ). For a chunk of `n` pages of
//! which `w` were written, the producer pays
//!
//! - tracked: `w × (fault + copy)`;
//! - untracked: `(n − w) × compare + w × copy` (a changed page's comparison stops at its
//!   first differing byte, so it costs little more than its copy),
//!
//! so leaving a chunk untracked pays when `w / n > compare / (fault + compare)`, the
//! [`AutoTracker::threshold`]. `fault` is measured once at start on scratch pages (a trap
//! costs the same whatever the data); `compare` is learnt from the publishes' own compare
//! passes (a comparison timed on scratch pages runs from the cache and is several times too
//! cheap). Measured on this kind of machine (fault ~0.7 µs, compare ~0.3 µs a page) the
//! threshold is about 0.3.
//!
//! A tracked chunk whose scan finds a written share at or above the threshold is
//! write-unprotected at once and compared from the next publish on. An untracked chunk whose
//! comparison finds a changed share below half the threshold (the gap keeps a chunk near the
//! threshold from switching every version) goes back to tracking: the next publish first
//! write-protects it, then compares it once more, so that a write made before the protection
//! is caught by that comparison and a write after it by the following scan. Both kinds give
//! the exact set of pages written, so no publish ever reports a page it did not find written
//! or changed, and no publish is a probe that costs a whole version.
//!
//! A comparison cannot tell pages left alone from pages rewritten with the bytes they held,
//! which a scan counts as written. A simulation that rewrites a whole zone every step while
//! few values change (converged cells stored again) would send its chunks back to tracking
//! only to find them written whole at the next scan. So a chunk found written whole at the
//! first scan after it went back stays untracked longer the next time: 1, 2, 4 ... up to
//! [`MAX_BACKOFF`] publishes before it is tried again; a return that holds resets it.
use std::ops::Range;
use std::time::{Duration, Instant};

use super::{AsyncTracker, Changes, Outcome, Tracker, TrackerKind};
use crate::sys::mem::{PrivateMapping, RegionMemory};
use crate::sys::page_size;

/// Pages of a chunk: 2 MiB of 4 KiB pages, the unit the kernel's page tables group.
pub const CHUNK_PAGES: usize = 512;
/// Scratch pages for the start-up measurement of a fault.
const CALIBRATION_PAGES: usize = 256;
/// Pages a comparison must have found unchanged for its time to teach the compare price.
const LEARN_PAGES: usize = 64;
/// Most publishes a chunk that went back to tracking in vain stays untracked next time.
const MAX_BACKOFF: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Tracked,
    Untracked,
    /// Untracked, to be write-protected (and compared once more) at the next publish.
    Rearm,
}

#[derive(Clone, Debug)]
struct Chunk {
    range: Range<usize>,
    state: State,
    /// Whether the last publish compared this chunk (so its outcome speaks of it).
    compared: bool,
    /// Whether it went back to tracking at the last publish (so its next scan tells whether
    /// that was right).
    returned: bool,
    /// Publishes it stays untracked after going untracked, and how many of them are left.
    backoff: u32,
    stay: u32,
}

pub struct AutoTracker {
    inner: AsyncTracker,
    chunks: Vec<Chunk>,
    /// A first-write fault, and comparing one unchanged page (learnt; a guess until then).
    fault: Duration,
    compare: Duration,
    /// The first scan reports whatever was written before the first version (filling the
    /// regions), not what a version writes: it teaches nothing.
    first: bool,
    /// Pages found written per chunk by the last scan (scratch, kept to reuse its memory).
    written: Vec<usize>,
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
    let mut target = PrivateMapping::anonymous(bytes).map_err(|e| format!("calibration memory: {e}"))?;
    target.zero(0, bytes);

    let mut tracker = AsyncTracker::new()?;
    let start = target.as_ptr() as usize;
    tracker.track(start..start + bytes).map_err(|e| format!("calibration: {e}"))?;
    let mut touch = || {
        for p in 0..CALIBRATION_PAGES {
            target.copy_in(p * page, &source, 0, 1);
        }
    };
    let (mut protected, mut plain) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        tracker.scan(&mut |_, _| {}).map_err(|e| format!("calibration scan: {e}"))?;
        protected = protected.min(timed(&mut touch));
        plain = plain.min(timed(&mut touch));
    }
    Ok(protected.saturating_sub(plain) / CALIBRATION_PAGES as u32)
}

/// Adds, for each chunk, the pages of the sorted address runs `runs` that fall in it.
fn count_per_chunk(chunks: &[Chunk], runs: impl IntoIterator<Item = (usize, usize)>, counts: &mut [usize]) {
    let page = page_size();
    let mut c = 0;
    for (start, end) in runs {
        c += chunks[c..].partition_point(|k| k.range.end <= start);
        let mut i = c;
        while let Some(k) = chunks.get(i).filter(|k| k.range.start < end) {
            let overlap = end.min(k.range.end).saturating_sub(start.max(k.range.start));
            counts[i] += overlap / page;
            i += 1;
        }
    }
}

impl AutoTracker {
    pub fn new() -> Result<AutoTracker, String> {
        let fault = calibrate_fault()?;
        tracing::debug!("auto tracker: a first-write fault costs {fault:?} a page");
        Ok(AutoTracker {
            inner: AsyncTracker::new()?,
            chunks: Vec::new(),
            fault,
            compare: fault / 2,
            first: true,
            written: Vec::new(),
        })
    }

    /// The share of a chunk's pages written per version above which comparing the chunk
    /// costs less than tracking it.
    fn threshold(&self) -> f64 {
        let compare = self.compare.as_secs_f64();
        (compare / (self.fault.as_secs_f64() + compare)).clamp(0.02, 0.9)
    }

    fn rebuild_chunks(&mut self) {
        let bytes = CHUNK_PAGES * page_size();
        self.chunks.clear();
        for r in self.inner.ranges() {
            let mut at = r.start;
            while at < r.end {
                let end = (at + bytes).min(r.end);
                self.chunks.push(Chunk {
                    range: at..end,
                    state: State::Tracked,
                    compared: false,
                    returned: false,
                    backoff: 0,
                    stay: 0,
                });
                at = end;
            }
        }
    }
}

impl Tracker for AutoTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::Auto
    }

    fn track(&mut self, range: Range<usize>) -> nix::Result<()> {
        self.inner.track(range)?;
        // Regions are added before the first publish, while every chunk is tracked.
        self.rebuild_chunks();
        Ok(())
    }

    fn take_changes(&mut self, out: &mut Changes) -> nix::Result<()> {
        for c in self.chunks.iter_mut().filter(|c| c.state == State::Rearm) {
            self.inner.protect(c.range.start, c.range.end)?;
        }
        self.written.clear();
        self.written.resize(self.chunks.len(), 0);
        let mut i = 0;
        while i < self.chunks.len() {
            let c = &mut self.chunks[i];
            c.compared = c.state != State::Tracked;
            if c.compared {
                match out.compare.last_mut() {
                    Some(last) if last.end == c.range.start => last.end = c.range.end,
                    _ => out.compare.push(c.range.clone()),
                }
                if c.state == State::Rearm {
                    c.state = State::Tracked;
                    c.returned = true;
                }
                i += 1;
                continue;
            }
            // One scan for a stretch of adjacent tracked chunks.
            let mut j = i + 1;
            while j < self.chunks.len()
                && self.chunks[j].state == State::Tracked
                && self.chunks[j].range.start == self.chunks[j - 1].range.end
            {
                self.chunks[j].compared = false;
                j += 1;
            }
            let from = out.written.len();
            self.inner.scan_range(self.chunks[i].range.start, self.chunks[j - 1].range.end, &mut |s, e| {
                out.written.push(s..e)
            })?;
            let runs = out.written[from..].iter().map(|r| (r.start, r.end));
            count_per_chunk(&self.chunks[i..j], runs, &mut self.written[i..j]);
            i = j;
        }
        if std::mem::take(&mut self.first) {
            return Ok(());
        }
        let threshold = self.threshold();
        let page = page_size();
        for (c, &w) in self.chunks.iter_mut().zip(&self.written) {
            if c.state != State::Tracked || c.compared {
                continue;
            }
            let n = (c.range.end - c.range.start) / page;
            let dense = w > 0 && w as f64 >= threshold * n as f64;
            if std::mem::take(&mut c.returned) {
                c.backoff = if dense { (c.backoff * 2).clamp(1, MAX_BACKOFF) } else { 0 };
            }
            if dense {
                self.inner.unprotect(c.range.start, c.range.end)?;
                c.state = State::Untracked;
                c.stay = c.backoff;
            }
        }
        Ok(())
    }

    /// Learns the compare price and sends untracked chunks whose pages mostly stayed the
    /// same back to tracking.
    fn published(&mut self, outcome: &Outcome<'_>) {
        let page = page_size();
        let changed: usize = outcome.changed.iter().map(|r| (r.end - r.start) / page).sum();
        let unchanged = outcome.compared.saturating_sub(changed);
        if unchanged >= LEARN_PAGES {
            let per_page = outcome.compare_time / unchanged as u32;
            // Fall at once, rise by an eighth: a pass slowed by the machine's other work must
            // not make tracking look cheaper for long.
            self.compare = if per_page < self.compare { per_page } else { (self.compare * 7 + per_page) / 8 };
        }
        self.written.clear();
        self.written.resize(self.chunks.len(), 0);
        count_per_chunk(&self.chunks, outcome.changed.iter().map(|r| (r.start, r.end)), &mut self.written);
        let back = self.threshold() / 2.0;
        for (c, &w) in self.chunks.iter_mut().zip(&self.written) {
            let n = (c.range.end - c.range.start) / page;
            if c.state == State::Untracked && c.compared && (w as f64) < back * n as f64 {
                if c.stay > 0 {
                    c.stay -= 1;
                } else {
                    c.state = State::Rearm;
                }
            }
        }
    }
}
