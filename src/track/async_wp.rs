//! The async tracker: userfaultfd `WP_ASYNC` marks written pages, `PAGEMAP_SCAN` collects
//! and re-protects them.
use std::ops::Range;

use super::{Changes, Tracker, TrackerKind};
use crate::sys::mem::PrivateMapping;
use crate::sys::page_size;
use crate::sys::scan::Scanner;
use crate::sys::uffd::{self, Uffd};

pub struct AsyncTracker {
    uffd: Uffd,
    scanner: Scanner,
    /// Tracked ranges, sorted and merged, so a page shared by two regions is scanned once.
    ranges: Vec<Range<usize>>,
}

const FEATURES: u64 = uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED;

fn open_uffd() -> Result<Uffd, String> {
    // User-mode-only is enough: in async mode the kernel resolves write-protect faults
    // itself, whoever writes (the producer's threads or the kernel on its behalf).
    uffd::open(FEATURES, true).map_err(|e| match e {
        uffd::OpenError::Unavailable(nix::Error::ENOSYS) => {
            "the kernel has no userfaultfd (CONFIG_USERFAULTFD); use the copy tracker".to_string()
        }
        uffd::OpenError::Unavailable(errno) => format!(
            "userfaultfd(UFFD_USER_MODE_ONLY) failed ({errno}): a seccomp filter or container \
             policy forbids the system call; allow it, or use the copy tracker"
        ),
        uffd::OpenError::FeaturesRefused { errno, offered } => {
            let missing: Vec<&str> =
                [(uffd::FEATURE_WP_ASYNC, "WP_ASYNC"), (uffd::FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED")]
                    .into_iter()
                    .filter(|(bit, _)| offered & bit == 0)
                    .map(|(_, name)| name)
                    .collect();
            format!(
                "the kernel refuses UFFD_FEATURE_WP_ASYNC|WP_UNPOPULATED ({errno}; missing: {}); \
                 Linux 6.7 or later is needed; use the copy tracker",
                if missing.is_empty() { "none reported".to_string() } else { missing.join(", ") }
            )
        }
    })
}

/// Checks the whole async path on a scratch page: open, register, protect, write, scan.
pub fn probe() -> Result<(), String> {
    let mut t = AsyncTracker::new()?;
    let page = page_size();
    let mut scratch = PrivateMapping::anonymous(page).map_err(|e| format!("scratch page: {e}"))?;
    let start = scratch.as_ptr() as usize;
    t.track(start..start + page).map_err(|e| format!("registering anonymous memory for write-protect failed ({e})"))?;
    scratch.zero(0, 1);
    let mut seen = 0;
    t.scan(&mut |s, e| seen += e - s).map_err(|e| match e {
        nix::Error::ENOTTY | nix::Error::EINVAL => {
            format!("the kernel has no PAGEMAP_SCAN ({e}); Linux 6.7 or later is needed; use the copy tracker")
        }
        e => format!("PAGEMAP_SCAN failed ({e}); use the copy tracker"),
    })?;
    if seen != page {
        return Err(format!("PAGEMAP_SCAN saw {seen} written bytes of one written page; use the copy tracker"));
    }
    Ok(())
}

impl AsyncTracker {
    pub fn new() -> Result<AsyncTracker, String> {
        Ok(AsyncTracker {
            uffd: open_uffd()?,
            scanner: Scanner::open().map_err(|e| format!("opening /proc/self/pagemap: {e}"))?,
            ranges: Vec::new(),
        })
    }
}

impl AsyncTracker {
    /// The tracked ranges, sorted and merged.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Reports the runs written in every tracked range and re-protects them.
    pub fn scan(&mut self, found: &mut dyn FnMut(usize, usize)) -> nix::Result<()> {
        for r in &self.ranges {
            self.scanner.take_written(r.start, r.end, found)?;
        }
        Ok(())
    }

    /// Reports the runs written in `[start, end)`, a part of a tracked range, and
    /// re-protects them.
    pub fn scan_range(&mut self, start: usize, end: usize, found: &mut dyn FnMut(usize, usize)) -> nix::Result<()> {
        self.scanner.take_written(start, end, found)
    }

    /// Reports the runs written in `[start, end)`, a part of a tracked range, and leaves
    /// them writable: they are reported again by every scan until protected again.
    pub fn scan_range_open(
        &mut self,
        start: usize,
        end: usize,
        found: &mut dyn FnMut(usize, usize),
    ) -> nix::Result<()> {
        self.scanner.written(start, end, found)
    }

    /// Lifts the write protection of `[start, end)`, a part of a tracked range: writes there
    /// stop costing a fault, and scans stop reporting them.
    pub fn unprotect(&mut self, start: usize, end: usize) -> nix::Result<()> {
        uffd::unprotect(&self.uffd, start, end - start)
    }

    /// Write-protects `[start, end)` again: the next scan reports what is written after.
    pub fn protect(&mut self, start: usize, end: usize) -> nix::Result<()> {
        uffd::write_protect(&self.uffd, start, end - start)
    }
}

impl Tracker for AsyncTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::Async
    }

    fn track(&mut self, range: Range<usize>) -> nix::Result<()> {
        let len = range.end - range.start;
        uffd::register_wp(&self.uffd, range.start, len)?;
        if let Err(e) = uffd::write_protect(&self.uffd, range.start, len) {
            let _ = uffd::unregister(&self.uffd, range.start, len);
            return Err(e);
        }
        self.ranges.push(range);
        super::coalesce(&mut self.ranges);
        Ok(())
    }

    fn take_changes(&mut self, out: &mut Changes) -> nix::Result<()> {
        self.scan(&mut |s, e| out.written.push(s..e))
    }
}
