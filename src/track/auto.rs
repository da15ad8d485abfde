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
//! Within a tracked chunk, a page found written [`PROMOTE_AFTER`] versions in a row becomes
//! *hot*: it is left writable and compared at each publish, like an untracked chunk's pages
//! but one page at a time, so a simulation that rewrites the same scattered pages every step
//! (a strided or indexed update, a boundary layer) stops paying a fault a page a version:
//! such a page costs its copy and a comparison that stops at the first changed byte. A chunk
//! holding hot pages is scanned *open* (`PAGEMAP_SCAN` without `PM_SCAN_WP_MATCHING`): its
//! hot pages stay writable, and the other pages the scan reports written are protected again
//! one run at a time before the publish copies them (a write before the protection is in the
//! copy, one after it in the next scan). That costs an ioctl a run, about a fault's worth, so
//! a chunk is scanned open only while its hot pages outnumber the runs of its other writes;
//! otherwise its scan protects all it reports, hot pages included, as before. A hot page
//! found unchanged [`DEMOTE_AFTER`] publishes in a row is protected again at the next
//! publish, which compares it once more. Hot pages are compared, so, like untracked ones,
//! they count only real changes.
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
/// Versions in a row a page of a tracked chunk must be found written to become hot.
const PROMOTE_AFTER: u8 = 2;
/// Publishes in a row a hot page must be found unchanged to be tracked again.
const DEMOTE_AFTER: u8 = 2;
/// In a page's state: left writable and compared at each publish.
const HOT: u8 = 0x80;

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
    /// Where its pages start in [`AutoTracker::pages`].
    first_page: usize,
    /// Its hot pages, and the runs of other pages its last scan found written.
    hot: usize,
    cold_runs: usize,
}

impl Chunk {
    /// Whether its scan leaves what it reports writable (its hot pages stay hot; the other
    /// pages written are protected again one run at a time) rather than protecting it all.
    /// Open, each hot page saves a fault and each run of other pages written costs an ioctl,
    /// about a fault's worth (~1 µs here: 655 of them added 0.66 ms to a publish).
    fn scanned_open(&self) -> bool {
        open_pays(self.hot, self.cold_runs)
    }
}

/// Whether a chunk with `hot` hot pages whose other writes make `cold_runs` runs is better
/// scanned open (see [`Chunk::scanned_open`]).
fn open_pays(hot: usize, cold_runs: usize) -> bool {
    hot > 0 && cold_runs <= hot
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
    /// Per page of the tracked ranges, chunk after chunk: [`HOT`] and a streak (versions in
    /// a row found written while tracked; publishes in a row found unchanged while hot).
    pages: Vec<u8>,
    /// Per page: the publish that last found it written.
    last_written: Vec<u32>,
    /// Publishes so far (wrapping).
    publishes: u32,
    /// Address runs: reported by the last scans (scratch); to protect again, or to leave
    /// writable, before this publish copies; hot pages to protect (and compare once more) at
    /// the next publish.
    found: Vec<Range<usize>>,
    reprotect: Vec<Range<usize>>,
    cold: Vec<Range<usize>>,
    promote: Vec<Range<usize>>,
    /// Pages as (chunk, index in `pages`, address): those the last scan found written
    /// [`PROMOTE_AFTER`] versions in a row (scratch), and the hot pages this publish compares.
    candidates: Vec<(usize, usize, usize)>,
    hot_compared: Vec<(usize, usize, usize)>,
    demote: Vec<Range<usize>>,
}

/// Appends the page run `[start, end)` to `runs`, joining the last run when they touch.
fn push_run(runs: &mut Vec<Range<usize>>, start: usize, end: usize) -> bool {
    match runs.last_mut() {
        Some(r) if r.end == start => {
            r.end = end;
            false
        }
        _ => {
            runs.push(start..end);
            true
        }
    }
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
            pages: Vec::new(),
            last_written: Vec::new(),
            publishes: 0,
            found: Vec::new(),
            reprotect: Vec::new(),
            cold: Vec::new(),
            promote: Vec::new(),
            candidates: Vec::new(),
            hot_compared: Vec::new(),
            demote: Vec::new(),
        })
    }

    /// The share of a chunk's pages written per version above which comparing the chunk
    /// costs less than tracking it.
    fn threshold(&self) -> f64 {
        let compare = self.compare.as_secs_f64();
        (compare / (self.fault.as_secs_f64() + compare)).clamp(0.02, 0.9)
    }

    fn rebuild_chunks(&mut self) {
        let page = page_size();
        let bytes = CHUNK_PAGES * page;
        self.chunks.clear();
        let mut first_page = 0;
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
                    first_page,
                    hot: 0,
                    cold_runs: 0,
                });
                first_page += (end - at) / page;
                at = end;
            }
        }
        self.pages = vec![0; first_page];
        self.last_written = vec![0; first_page];
    }

    /// Sorts the pages the scan of chunks `chunks` reported (in `found`): a hot page is
    /// compared (and, if the scan protected it, `open` false, tracked again); another page
    /// was written, and counts towards its promotion. A page written [`PROMOTE_AFTER`]
    /// versions in a row becomes hot: left writable (lifting the protection the scan put
    /// back, unless `open`). The other pages an open scan reported are protected again.
    /// Chunks about to go untracked (`dense`) take no streaks: their pages are all left
    /// writable anyway.
    fn sort_found(&mut self, chunks: Range<usize>, open: bool, dense: &[bool], out: &mut Changes) {
        let page = page_size();
        let now = self.publishes;
        let mut k = chunks.start;
        for c in &mut self.chunks[chunks.clone()] {
            c.cold_runs = 0;
        }
        for r in &self.found {
            let mut a = r.start;
            while a < r.end {
                while self.chunks[k].range.end <= a {
                    k += 1;
                }
                let c = &mut self.chunks[k];
                let p = c.first_page + (a - c.range.start) / page;
                if self.pages[p] & HOT != 0 {
                    // Hot: reported whether written or not; the comparison tells.
                    push_run(&mut out.compare, a, a + page);
                    self.hot_compared.push((k, p, a));
                    if !open || dense[k - chunks.start] {
                        self.pages[p] = 0;
                        c.hot -= 1;
                    }
                } else {
                    push_run(&mut out.written, a, a + page);
                    let streak = if self.last_written[p] == now.wrapping_sub(1) {
                        (self.pages[p] + 1).min(PROMOTE_AFTER)
                    } else {
                        1
                    };
                    self.last_written[p] = now;
                    if dense[k - chunks.start] || self.first {
                        self.pages[p] = 0;
                    } else if streak >= PROMOTE_AFTER {
                        self.candidates.push((k, p, a));
                    } else {
                        self.pages[p] = streak;
                        if push_run(&mut self.cold, a, a + page) {
                            c.cold_runs += 1;
                        }
                    }
                }
                a += page;
            }
        }
        // Pages written version after version become hot, unless the chunk's other writes
        // are so scattered that scanning it open would not pay: its next scan would protect
        // them again.
        for group in self.candidates.chunk_by(|x, y| x.0 == y.0) {
            let c = &mut self.chunks[group[0].0];
            let promote = open_pays(c.hot + group.len(), c.cold_runs);
            for &(_, p, a) in group {
                if promote {
                    self.pages[p] = HOT;
                    c.hot += 1;
                    if !open {
                        push_run(&mut self.promote, a, a + page);
                    }
                } else {
                    self.pages[p] = PROMOTE_AFTER - 1;
                    if push_run(&mut self.cold, a, a + page) {
                        c.cold_runs += 1;
                    }
                }
            }
        }
        self.candidates.clear();
        if open {
            self.reprotect.append(&mut self.cold);
        }
        self.cold.clear();
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
        self.publishes = self.publishes.wrapping_add(1);
        for c in self.chunks.iter_mut().filter(|c| c.state == State::Rearm) {
            self.inner.protect(c.range.start, c.range.end)?;
        }
        // Hot pages found unchanged long enough: protected again, and compared this once
        // more, so that a write before the protection is caught by the comparison and a
        // write after it by the next scan.
        for r in self.demote.drain(..) {
            self.inner.protect(r.start, r.end)?;
            out.compare.push(r);
        }
        self.written.clear();
        self.written.resize(self.chunks.len(), 0);
        self.hot_compared.clear();
        let threshold = self.threshold();
        let page = page_size();
        let mut dense = Vec::new();
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
            // One scan for a stretch of adjacent tracked chunks scanned the same way.
            let open = c.scanned_open();
            let mut j = i + 1;
            while j < self.chunks.len()
                && self.chunks[j].state == State::Tracked
                && self.chunks[j].range.start == self.chunks[j - 1].range.end
                && self.chunks[j].scanned_open() == open
            {
                self.chunks[j].compared = false;
                j += 1;
            }
            let (start, end) = (self.chunks[i].range.start, self.chunks[j - 1].range.end);
            self.found.clear();
            let found = &mut self.found;
            if open {
                self.inner.scan_range_open(start, end, &mut |s, e| found.push(s..e))?;
            } else {
                self.inner.scan_range(start, end, &mut |s, e| found.push(s..e))?;
            }
            let runs = self.found.iter().map(|r| (r.start, r.end));
            count_per_chunk(&self.chunks[i..j], runs, &mut self.written[i..j]);
            // The first scan reports whatever was written before the first version
            // (filling the regions), not what a version writes: it teaches nothing.
            dense.clear();
            dense.extend(self.chunks[i..j].iter().zip(&self.written[i..j]).map(|(c, &w)| {
                let n = (c.range.end - c.range.start) / page;
                !self.first && w > 0 && w as f64 >= threshold * n as f64
            }));
            self.sort_found(i..j, open, &dense, out);
            for (k, &d) in (i..j).zip(&dense) {
                let c = &mut self.chunks[k];
                if std::mem::take(&mut c.returned) {
                    c.backoff = if d { (c.backoff * 2).clamp(1, MAX_BACKOFF) } else { 0 };
                }
                if d {
                    self.inner.unprotect(c.range.start, c.range.end)?;
                    c.state = State::Untracked;
                    c.stay = c.backoff;
                    c.hot = 0;
                    self.pages[c.first_page..c.first_page + (c.range.end - c.range.start) / page].fill(0);
                }
            }
            i = j;
        }
        self.first = false;
        // Before the publish copies: what an open scan left writable and is not hot is
        // protected again (a write before that is in the copy, one after it in the next
        // scan); what a protecting scan found hot again is left writable.
        for r in self.reprotect.drain(..) {
            self.inner.protect(r.start, r.end)?;
        }
        for r in self.promote.drain(..) {
            self.inner.unprotect(r.start, r.end)?;
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
        // Hot pages the comparison found unchanged: a streak, and at [`DEMOTE_AFTER`] back
        // to tracking at the next publish.
        let mut changed = outcome.changed.iter().peekable();
        for &(k, p, a) in &self.hot_compared {
            while changed.peek().is_some_and(|r| r.end <= a) {
                changed.next();
            }
            let differs = changed.peek().is_some_and(|r| r.start <= a);
            if self.pages[p] & HOT == 0 {
                continue;
            }
            let unchanged = if differs { 0 } else { (self.pages[p] & !HOT) + 1 };
            if unchanged >= DEMOTE_AFTER {
                self.pages[p] = 0;
                self.chunks[k].hot -= 1;
                push_run(&mut self.demote, a, a + page);
            } else {
                self.pages[p] = HOT | unchanged;
            }
        }
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
