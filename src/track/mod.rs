//! Dirty-page trackers: how a producer learns which pages were written since the last
//! publish. One trait, several implementations, one conformance test (`tests/trackers.rs`)
//! that proves they yield byte-identical snapshots.
//!
//! - [`TrackerKind::Async`]: userfaultfd asynchronous write-protect (`WP_ASYNC`) plus
//!   `PAGEMAP_SCAN`. The kernel marks written pages itself (the first write to a page
//!   takes a minor fault, ~0.7 µs here); a publish reads and re-protects them in one ioctl. The fast path.
//! - [`TrackerKind::Sync`]: userfaultfd write-protect faults served by a handler thread
//!   (10–120 µs a fault here): the literal copy-on-first-write mechanism.
//! - [`TrackerKind::Deferred`]: the sync tracker with the deferred publish path: `publish()`
//!   re-protects the written pages and returns; a background thread copies them, and a write
//!   to a page not yet copied makes the handler copy it first ([`deferred`]).
//! - [`TrackerKind::Copy`]: no tracking; every publish compares every page with the copy
//!   the latest version holds and copies only those that differ. Works anywhere; the
//!   baseline.
//! - [`TrackerKind::Auto`]: per chunk of 2 MiB, async tracking or comparison, whichever the
//!   producer's own publishes show is cheaper for what it writes there, and within tracked
//!   chunks, comparison of the pages written version after version ([`auto`]); copy where
//!   the kernel has no async tracking, with the reason.
//!
//! Every tracker gives an exact change set: a version's page map names as changed exactly
//! the pages written (tracked pages: a write counts even if it stored the bytes the page
//! held) or found different (compared pages: only a real change counts) since the previous
//! version. `tests/trackers.rs` checks it against the bytes.
mod async_wp;
pub mod auto;
mod copy;
pub(crate) mod deferred;
mod sync_wp;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

pub use async_wp::AsyncTracker;
pub use auto::AutoTracker;
pub use copy::CopyTracker;
pub use sync_wp::{FirstWrite, SyncTracker};
// For the tests (tests/common): whether a sync tracker can take the kernel's own writes.
#[cfg(feature = "internals")]
pub use sync_wp::kernel_faults_allowed;

/// What changed since the previous publish, as page-aligned address runs.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Pages the kernel saw written: copied as they are. A page rewritten with the bytes it
    /// held counts as written.
    pub written: Vec<Range<usize>>,
    /// Pages not tracked: the publish compares each with the copy the latest version holds
    /// and copies those that differ, so only pages whose bytes changed count.
    pub compare: Vec<Range<usize>>,
}

impl Changes {
    pub fn clear(&mut self) {
        self.written.clear();
        self.compare.clear();
    }
}

/// What the publish that followed a `take_changes` found and cost, for trackers that adapt.
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    /// The compared pages that differed (address runs, sorted).
    pub changed: &'a [Range<usize>],
    /// Pages compared, and the time the comparison took.
    pub compared: usize,
    pub compare_time: Duration,
}

/// Learns which pages of the tracked ranges changed since it last said.
pub trait Tracker: Send {
    fn kind(&self) -> TrackerKind;

    /// Starts tracking the page-aligned address range `range`.
    fn track(&mut self, range: Range<usize>) -> nix::Result<()>;

    /// Adds to `out` the runs of pages written since the previous call (or since `track`,
    /// for the first) and the runs the publish must compare, and starts tracking anew. May
    /// report more than was written, never less: every page a write touched since the
    /// previous call is in one of the two.
    fn take_changes(&mut self, out: &mut Changes) -> nix::Result<()>;

    /// What the publish that followed the last `take_changes` found and cost.
    fn published(&mut self, _outcome: &Outcome<'_>) {}

    /// The sync tracker behind this one, whose fault handler the deferred path hooks.
    fn as_sync(&self) -> Option<&SyncTracker> {
        None
    }
}

/// Sorts `ranges` and merges those that overlap or touch.
pub fn coalesce(ranges: &mut Vec<Range<usize>>) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// Which tracker to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TrackerKind {
    Async,
    Sync,
    Deferred,
    Copy,
    #[default]
    Auto,
}

impl TrackerKind {
    pub const ALL: [TrackerKind; 5] =
        [TrackerKind::Async, TrackerKind::Sync, TrackerKind::Deferred, TrackerKind::Copy, TrackerKind::Auto];
}

impl fmt::Display for TrackerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrackerKind::Async => "async",
            TrackerKind::Sync => "sync",
            TrackerKind::Deferred => "deferred",
            TrackerKind::Copy => "copy",
            TrackerKind::Auto => "auto",
        })
    }
}

impl FromStr for TrackerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TrackerKind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| format!("unknown tracker {s:?}: use async, sync, deferred, copy or auto"))
    }
}

/// What the kernel offers for tracking, and why the fast path is or is not usable.
#[derive(Clone, Debug)]
pub struct Detected {
    /// Whether the async tracker works here (checked end to end on a scratch page).
    pub async_ok: bool,
    /// Why not, when it does not, with what to do about it.
    pub reason: Option<String>,
    /// Whether this process has CAP_SYS_PTRACE (full userfaultfd without the sysctl).
    pub cap_sys_ptrace: bool,
    /// `vm.unprivileged_userfaultfd`, if readable.
    pub unprivileged_userfaultfd: Option<u32>,
}

/// Probes this kernel and process: whether async tracking works here, and if not, why.
pub fn detect() -> Detected {
    Detected::probe()
}

impl Detected {
    fn probe() -> Detected {
        let cap_sys_ptrace =
            caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_PTRACE).unwrap_or(false);
        let unprivileged_userfaultfd =
            std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").ok().and_then(|s| s.trim().parse().ok());
        let reason = async_wp::probe().err();
        Detected { async_ok: reason.is_none(), reason, cap_sys_ptrace, unprivileged_userfaultfd }
    }

    /// The tracker `kind` is built as here: `Auto` becomes `Copy` where async tracking is
    /// unavailable; `Async` there is an error saying why.
    pub fn resolve(&self, kind: TrackerKind) -> Result<TrackerKind, String> {
        match kind {
            TrackerKind::Auto if !self.async_ok => Ok(TrackerKind::Copy),
            TrackerKind::Async if !self.async_ok => Err(self.reason.clone().unwrap_or_default()),
            k => Ok(k),
        }
    }

    /// One line for logs and `tcasm` output.
    pub fn describe(&self) -> String {
        let sysctl = self.unprivileged_userfaultfd.map_or("unreadable".to_string(), |v| v.to_string());
        let access = if self.cap_sys_ptrace {
            "CAP_SYS_PTRACE".to_string()
        } else {
            format!("user-mode-only (vm.unprivileged_userfaultfd={sysctl}, no CAP_SYS_PTRACE)")
        };
        match &self.reason {
            None => format!("async tracking available (WP_ASYNC + PAGEMAP_SCAN, userfaultfd via {access})"),
            Some(r) => format!("async tracking unavailable: {r}"),
        }
    }
}

/// Builds a tracker of a kind resolved with [`Detected::resolve`].
pub fn create(kind: TrackerKind) -> Result<Box<dyn Tracker>, String> {
    match kind {
        TrackerKind::Async => Ok(Box::new(AsyncTracker::new()?)),
        TrackerKind::Sync | TrackerKind::Deferred => Ok(Box::new(SyncTracker::new()?)),
        TrackerKind::Copy => Ok(Box::new(CopyTracker::default())),
        TrackerKind::Auto => Ok(Box::new(AutoTracker::new()?)),
    }
}
