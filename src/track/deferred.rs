//! The deferred publish path (copy on first write): `publish()` write-protects the pages
//! written since the last version and returns without copying them; a background thread
//! copies them into the new version's slots while the producer runs on; a producer write to
//! a page not yet copied is caught by the sync tracker's fault handler, which copies that
//! page first (its bytes are still the version's, the page being protected) and then lets
//! the write go on. The version becomes visible when its last page is copied.
//!
//! One version is in flight at a time: `publish()` called while the previous copy runs first
//! finishes it, copying the remaining pages itself, so the producer waits for its own
//! bytes, never for an observer. [`Deferred::flush`] does the same on demand.
//!
//! Ordering with the handler: the hook is installed before the written pages are
//! re-protected, and starts *unarmed*: a fault it sees before the version's slots are chosen
//! waits until they are (only another producer thread writing during `publish()` can fault
//! then). Each page goes from pending to copying to copied exactly once, by whichever thread
//! claims it first; a thread that needs a page another is copying waits for it.
//!
//! A tracker kind of its own ([`super::TrackerKind::Deferred`]) built on the sync tracker's
//! [`FirstWrite`] hook; unlike the other trackers it also copies, so it drives the store's
//! copies ([`crate::store::writer`]) itself.
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::writer::{Mapped, PageCopy, Prepared};
use crate::track::FirstWrite;

/// One page of a deferred version. Ordered by address first (`first_write` looks pages up
/// by the address that faulted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DeferredPage {
    /// The producer's address of the page.
    pub addr: usize,
    /// Its page in the page space.
    pub page: usize,
    /// The pool slot the version stores it in.
    pub slot: u64,
}

/// Where a region's pages are: its first page in the page space, how many it has, and the
/// page-aligned start address of the producer memory that covers them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RegionCover {
    pub first_page: usize,
    pub pages: usize,
    pub start: usize,
}

const PENDING: u8 = 0;
const COPYING: u8 = 1;
const COPIED: u8 = 2;

/// What one deferred version must copy.
struct Work {
    prepared: Prepared,
    /// What publishing cost the producer (the time inside `publish()`).
    spent: Duration,
    /// Sorted by address.
    pages: Vec<DeferredPage>,
    state: Vec<AtomicU8>,
    remaining: AtomicUsize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preparing,
    Copying,
    Done,
}

/// A version in flight.
pub(crate) struct Pending {
    mapped: Arc<Mapped>,
    work: OnceLock<Work>,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Pending {
    fn new(mapped: Arc<Mapped>) -> Pending {
        Pending { mapped, work: OnceLock::new(), phase: Mutex::new(Phase::Preparing), changed: Condvar::new() }
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        self.changed.notify_all();
    }

    /// The version's slots are chosen: copying may start.
    fn arm(&self, prepared: Prepared, spent: Duration, mut pages: Vec<DeferredPage>) {
        pages.sort_unstable();
        let n = pages.len();
        let work = Work {
            prepared,
            spent,
            state: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            remaining: AtomicUsize::new(n),
            pages,
        };
        if self.work.set(work).is_err() {
            unreachable!("a pending version is armed once");
        }
        self.set_phase(Phase::Copying);
        if n == 0 {
            self.release();
        }
    }

    /// Preparing failed: there is no version to copy.
    fn abandon(&self) {
        self.set_phase(Phase::Done);
    }

    fn wait_until(&self, ready: impl Fn(Phase) -> bool) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        while !ready(*phase) {
            phase = self.changed.wait(phase).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self) {
        let work = self.work.get().expect("released after arming");
        self.mapped.release(&work.prepared, work.spent);
        self.set_phase(Phase::Done);
    }

    /// Makes sure page `i` is copied, copying it if no one has claimed it.
    fn copy(&self, work: &Work, i: usize) {
        match work.state[i].compare_exchange(PENDING, COPYING, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                let DeferredPage { page, slot, .. } = work.pages[i];
                // SAFETY: page `i` is one page of the version's copies, which is released
                // only once every page is COPIED; the exchange above made this thread its
                // only copier.
                #[allow(unsafe_code)]
                unsafe {
                    self.mapped.copy_pages(&PageCopy { pages: page..page + 1, slot, fresh: false })
                };
                // SYNC: Release pairs with the Acquire loads below and in `release`'s caller:
                // the copy is complete before anyone sees COPIED.
                work.state[i].store(COPIED, Ordering::Release);
                if work.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.release();
                }
            }
            Err(_) => {
                while work.state[i].load(Ordering::Acquire) != COPIED {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Copies every page not copied yet.
    fn copy_all(&self) {
        if let Some(work) = self.work.get() {
            for i in 0..work.pages.len() {
                self.copy(work, i);
            }
        }
    }
}

impl FirstWrite for Pending {
    fn first_write(&self, page: usize) {
        self.wait_until(|p| p != Phase::Preparing);
        let Some(work) = self.work.get() else { return };
        // A producer page may be a page of two regions (a shared head/tail page).
        let from = work.pages.partition_point(|p| p.addr < page);
        for i in from..work.pages.len() {
            if work.pages[i].addr != page {
                break;
            }
            self.copy(work, i);
        }
    }
}

/// The deferred path's state in a producer: the version in flight and the copier thread.
pub(crate) struct Deferred {
    in_flight: Option<Arc<Pending>>,
    copier: Option<(Sender<Arc<Pending>>, JoinHandle<()>)>,
}

impl Deferred {
    pub fn new() -> std::io::Result<Deferred> {
        let (tx, rx) = channel::<Arc<Pending>>();
        let thread = std::thread::Builder::new().name("tcasm-copier".into()).spawn(move || {
            for pending in rx {
                pending.copy_all();
            }
        })?;
        Ok(Deferred { in_flight: None, copier: Some((tx, thread)) })
    }

    /// Starts a version: the hook to install in the fault handler before re-protecting.
    pub fn begin(&mut self, mapped: Arc<Mapped>) -> Arc<Pending> {
        debug_assert!(self.in_flight.is_none(), "flush before beginning a version");
        let pending = Arc::new(Pending::new(mapped));
        self.in_flight = Some(pending.clone());
        pending
    }

    /// The version's slots are chosen: hands it to the copier.
    pub fn arm(&mut self, prepared: Prepared, spent: Duration, pages: Vec<DeferredPage>) {
        let pending = self.in_flight.as_ref().expect("begin before arm");
        pending.arm(prepared, spent, pages);
        if let Some((tx, _)) = &self.copier {
            // If the copier is gone, `flush` copies on this thread instead.
            let _ = tx.send(pending.clone());
        }
    }

    /// Preparing failed: forgets the version.
    pub fn abandon(&mut self) {
        if let Some(p) = self.in_flight.take() {
            p.abandon();
        }
    }

    /// Finishes the version in flight, helping the copier, and waits until it is visible.
    pub fn flush(&mut self) {
        if let Some(p) = self.in_flight.take() {
            p.copy_all();
            p.wait_until(|phase| phase == Phase::Done);
        }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.flush();
        if let Some((tx, thread)) = self.copier.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// The producer address of page-space page `page`, given the regions sorted by first page.
fn page_address(regions: &[RegionCover], page: usize, page_size: usize) -> usize {
    let i = regions.partition_point(|r| r.first_page + r.pages <= page);
    let r = regions[i];
    r.start + (page - r.first_page) * page_size
}

/// Every page of `copies` with its producer address.
pub(crate) fn pages_of(copies: &[PageCopy], regions: &[RegionCover], page_size: usize) -> Vec<DeferredPage> {
    copies
        .iter()
        .flat_map(|c| c.pages.clone().map(move |p| (p, c.slot_of(p))))
        .map(|(page, slot)| DeferredPage { addr: page_address(regions, page, page_size), page, slot })
        .collect()
}
