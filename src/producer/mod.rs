//! The producer: names its memory regions, publishes versions of them.
//!
//! ```no_run
//! use tcasm::{Producer, ProducerOptions};
//! let mut p = Producer::create("heat", ProducerOptions::default())?;
//! let mut t = p.region::<f64>("temperature", &[512, 512])?;
//! loop {
//!     t[0] += 1.0;       // the simulation writes its memory as usual
//!     p.publish()?;      // observers can now take this version
//! #   break;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Writes made while `publish()` runs (by other threads of the producer) land in this
//! version or the next; a single-threaded producer's versions are exactly its memory at
//! the moment it called `publish()`.
//!
//! With [`TrackerKind::Deferred`], `publish()` returns before the version is copied (see
//! [`crate::track::deferred`]); it becomes visible to observers moments later, and
//! [`Producer::flush`] waits for that. Every other tracker makes the version visible before
//! `publish()` returns.
mod restart;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::endpoint::Server;
use crate::error::{CreateError, PublishError, RegionError};
use crate::region::{check_name, check_shape, Dtype, Element, Region, RegionInfo};
use crate::store::layout::Layout;
pub use crate::store::writer::Freed;
use crate::store::writer::{Prepared, Published, Source, StoreWriter};
use crate::sys::mem::RegionMemory;
use crate::sys::page_size;
use crate::track::deferred::{self, Deferred, RegionCover};
use crate::track::{self, Changes, Detected, Outcome, Tracker, TrackerKind};

/// How a producer is set up.
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// How written pages are found; `Auto` picks async tracking where the kernel has it.
    pub tracker: TrackerKind,
    /// Most observers attached at once.
    pub max_observers: usize,
    /// Whether slots no version needs are kept for reuse (faster) or given back at once
    /// (leaner); see [`Freed`].
    pub freed: Freed,
    /// Under [`Freed::Reuse`], the most free slots kept allocated for the next publishes,
    /// as a share of the page space (0 to 1; the store keeps as many as recent publishes
    /// wrote, or while observers pin versions what their pins recently held, up to this).
    pub max_reserve: f64,
    /// A group whose members may observe too (by default only this user may; see
    /// [`crate::endpoint`]). They reach the endpoint through `TCASM_DIR`, which must name a
    /// directory they can reach.
    pub group: Option<String>,
    /// Threads that share one publish's comparing and copying (1: the producer's own
    /// thread only). Two copy about 1.4 times as fast as one on a machine whose memory
    /// bandwidth one core does not fill; a publish of few pages uses fewer.
    pub copy_threads: usize,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            tracker: TrackerKind::Auto,
            max_observers: 64,
            freed: Freed::Reuse,
            max_reserve: 1.0,
            group: None,
            copy_threads: 1,
        }
    }
}

/// What the producer has done so far.
#[derive(Clone, Debug, Default)]
pub struct ProducerStats {
    /// Versions published.
    pub versions: u64,
    /// Pages the last publish found changed and copied: exactly those its page map names as
    /// changed.
    pub last_pages_copied: usize,
    /// Pages the last publish compared with the previous version (untracked pages).
    pub last_pages_compared: usize,
    /// Time spent in the last publish, and in all of them.
    pub last_publish: Duration,
    pub total_publish: Duration,
    /// Bytes of memory the snapshot store holds when publish returns (as the kernel counts
    /// them).
    pub store_bytes: u64,
    /// Pins held by live observers at the last publish.
    pub live_pins: usize,
    /// Bytes of free slots the store keeps allocated for the next publishes (part of
    /// `store_bytes`).
    pub reserve_bytes: u64,
    /// Mappings an observer needs for the last version.
    pub mapping_runs: usize,
    /// The pool's size, in copies of the page space (address space, not memory).
    pub planes: usize,
    /// Pages in the page space.
    pub pages: usize,
}

struct ProducerRegion {
    info: RegionInfo,
    bytes: usize,
    memory: Arc<RegionMemory>,
    /// Page-aligned addresses the region's bytes touch.
    cover: Range<usize>,
}

/// A process sharing versioned snapshots of its memory.
pub struct Producer {
    name: String,
    /// The MPI job it is a rank of, when its name held `%r`.
    job: Option<crate::job::Job>,
    kind: TrackerKind,
    tracker: Box<dyn Tracker>,
    deferred: Option<Deferred>,
    detected: Option<Detected>,
    regions: Vec<ProducerRegion>,
    store: Option<StoreWriter>,
    options: ProducerOptions,
    stats: ProducerStats,
    /// What the tracker reported (addresses), and the same as page-space ranges: pages
    /// written, and pages to compare.
    changes: Changes,
    dirty: Vec<Range<usize>>,
    compare: Vec<Range<usize>>,
    /// The version a restart loaded (0: none); the first publish is the one after it.
    restored: u64,
    // Dropped last: observers see the endpoint until the store is closed.
    server: Server,
}

impl Producer {
    /// Takes the endpoint `name` and prepares the tracker. A name holding `%r` (`heat.%r`)
    /// makes a rank producer of an MPI job: `%r` becomes the rank, read with the job's size
    /// from the launcher's environment ([`crate::job`]).
    pub fn create(name: &str, options: ProducerOptions) -> Result<Producer, CreateError> {
        let (name, job) = crate::job::expand_name(name)?;
        let name = name.as_str();
        let (kind, detected) = match options.tracker {
            TrackerKind::Copy => (TrackerKind::Copy, None),
            asked => {
                let d = track::detect();
                let kind = d.resolve(asked).map_err(|reason| CreateError::Tracker { kind: asked, reason })?;
                if kind == TrackerKind::Copy {
                    tracing::warn!("{}; publishing with the copy tracker", d.describe());
                }
                (kind, Some(d))
            }
        };
        let tracker = track::create(kind).map_err(|reason| CreateError::Tracker { kind, reason })?;
        let deferred = match kind {
            TrackerKind::Deferred => Some(
                Deferred::new()
                    .map_err(|source| CreateError::Io { what: "starting the copier thread".into(), source })?,
            ),
            _ => None,
        };
        let server = Server::bind(name, options.group.as_deref())?;
        Ok(Producer {
            name: name.to_string(),
            job,
            kind,
            tracker,
            deferred,
            detected,
            regions: Vec::new(),
            store: None,
            options,
            stats: ProducerStats::default(),
            changes: Changes::default(),
            dirty: Vec::new(),
            compare: Vec::new(),
            restored: 0,
            server,
        })
    }

    /// The MPI job this producer is a rank of (its name held `%r`).
    pub fn job(&self) -> Option<crate::job::Job> {
        self.job
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tracker (and publish path) in use.
    pub fn tracker(&self) -> TrackerKind {
        self.kind
    }

    /// What the kernel probe found, when one was run (not for an explicit copy tracker).
    pub fn detected(&self) -> Option<&Detected> {
        self.detected.as_ref()
    }

    /// The regions, in page-space order.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.regions.iter().map(|r| r.info.clone()).collect()
    }

    /// Allocates a zeroed region of `shape` elements of `T`, page-aligned.
    pub fn region<T: Element>(&mut self, name: &str, shape: &[usize]) -> Result<Region<T>, RegionError> {
        let elements = check_shape(name, shape).map_err(RegionError::Invalid)?;
        let bytes = elements
            .checked_mul(T::DTYPE.size())
            .ok_or_else(|| RegionError::Invalid(format!("region {name:?}: shape {shape:?} is too large")))?;
        let memory = RegionMemory::allocate(bytes.div_ceil(page_size()) * page_size())
            .map_err(|errno| RegionError::Alloc { name: name.to_string(), bytes, errno })?;
        let memory = self.add(name, T::DTYPE, shape, memory, bytes)?;
        Ok(Region::new(memory, elements))
    }

    /// Takes over `data` (any length; its storage need not be page-aligned) as a region of
    /// `shape`.
    pub fn wrap_vec<T: Element>(
        &mut self,
        name: &str,
        data: Vec<T>,
        shape: &[usize],
    ) -> Result<Region<T>, RegionError> {
        let elements = data.len();
        let bytes = std::mem::size_of_val(data.as_slice());
        let memory = self.add(name, T::DTYPE, shape, RegionMemory::from_vec(data), bytes)?;
        Ok(Region::new(memory, elements))
    }

    /// Shares a buffer foreign code owns (C, Fortran) as a region of `shape` elements of `T`,
    /// starting at `ptr`. Head and tail pages shared with other data are handled: only the
    /// buffer's own bytes reach observers.
    ///
    /// # Safety
    /// `ptr` must point to `shape.iter().product()` elements of `T`, and that memory must stay
    /// mapped until this producer is dropped. The caller keeps writing it as usual, except
    /// while [`Producer::restore`] runs, which writes it: no reference into it may be live,
    /// nor another thread use it, during that call.
    #[allow(unsafe_code)]
    pub unsafe fn wrap_raw<T: Element>(&mut self, name: &str, ptr: *mut T, shape: &[usize]) -> Result<(), RegionError> {
        let elements = check_shape(name, shape).map_err(RegionError::Invalid)?;
        let bytes = elements
            .checked_mul(T::DTYPE.size())
            .ok_or_else(|| RegionError::Invalid(format!("region {name:?}: shape {shape:?} is too large")))?;
        // SAFETY: the caller promises the buffer stays mapped for the producer's life.
        let memory = unsafe { RegionMemory::lent(ptr.cast(), bytes) };
        self.add(name, T::DTYPE, shape, memory, bytes).map(drop)
    }

    fn add(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        memory: RegionMemory,
        bytes: usize,
    ) -> Result<Arc<RegionMemory>, RegionError> {
        check_name(name).map_err(RegionError::Invalid)?;
        let elements = check_shape(name, shape).map_err(RegionError::Invalid)?;
        if self.store.is_some() {
            return Err(RegionError::AfterFirstPublish { name: name.to_string() });
        }
        if self.regions.iter().any(|r| r.info.name == name) {
            return Err(RegionError::Duplicate { name: name.to_string() });
        }
        if elements.checked_mul(dtype.size()) != Some(bytes) {
            return Err(RegionError::WrongLength { name: name.to_string(), bytes, shape: shape.to_vec(), dtype });
        }
        let addr = memory.addr();
        if addr == 0 || !addr.is_multiple_of(dtype.size()) {
            return Err(RegionError::Misaligned { name: name.to_string(), addr, dtype, align: dtype.size() });
        }
        if let Some(other) =
            self.regions.iter().find(|r| addr < r.memory.addr() + r.bytes && r.memory.addr() < addr + bytes)
        {
            return Err(RegionError::Invalid(format!(
                "region {name:?} overlaps region {:?}: wrap each buffer once",
                other.info.name
            )));
        }
        let page = page_size();
        let sync = matches!(self.kind, TrackerKind::Sync | TrackerKind::Deferred);
        // Memory the library allocated owns its last page whole even when `bytes` ends early.
        if sync && !(addr.is_multiple_of(page) && memory.len().is_multiple_of(page)) {
            return Err(RegionError::SharesPages { name: name.to_string(), addr, bytes, tracker: self.kind });
        }
        let cover = addr - addr % page..(addr + bytes).div_ceil(page) * page;
        self.tracker.track(cover.clone()).map_err(|errno| match errno {
            nix::Error::EBUSY => RegionError::AlreadyTracked { name: name.to_string(), addr },
            errno => RegionError::CannotTrack { name: name.to_string(), addr, tracker: self.tracker.kind(), errno },
        })?;
        let first_page = self.regions.last().map_or(0, |r| r.info.first_page + r.info.pages);
        let info = RegionInfo {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            first_page,
            pages: (cover.end - cover.start) / page,
            offset: addr % page,
        };
        let memory = Arc::new(memory);
        self.regions.push(ProducerRegion { info, bytes, memory: memory.clone(), cover });
        Ok(memory)
    }

    /// Creates the store at the first publish, when the page space is known.
    fn create_store(&mut self) -> Result<(), PublishError> {
        let page_count = self.regions.iter().map(|r| r.info.pages).sum();
        let layout = Layout {
            page_size: page_size(),
            page_count,
            regions: self.regions(),
            log_words: Layout::log_words_for(page_count),
            pin_slots: self.options.max_observers.clamp(1, crate::store::layout::MAX_PIN_SLOTS),
            job: self.job,
        };
        let sources = self
            .regions
            .iter()
            .map(|r| Source {
                first_page: r.info.first_page,
                pages: r.info.pages,
                offset: r.info.offset,
                bytes: r.bytes,
                memory: r.memory.clone(),
            })
            .collect();
        let mut store = StoreWriter::create(layout, sources, self.options.freed, self.options.max_reserve)?;
        store.start_after(self.restored);
        self.store = Some(store);
        Ok(())
    }

    /// Publishes a new version: finds the pages written since the last publish, copies them
    /// into the store, makes the version visible to observers, and wakes those that wait.
    /// Never waits for an observer. With the deferred tracker the copy and the visibility
    /// come after it returns (see [`Producer::flush`]).
    pub fn publish(&mut self) -> Result<u64, PublishError> {
        let started = Instant::now();
        if self.regions.is_empty() {
            return Err(PublishError::NoRegions);
        }
        if let Some(d) = &mut self.deferred {
            d.flush();
        }
        let first = self.store.as_ref().is_none_or(|s| s.version() == self.restored);
        if self.store.is_none() {
            self.create_store()?;
        }
        let done = if self.deferred.is_some() {
            let prepared = self.publish_deferred(first, started)?;
            Published { prepared, changed: Vec::new(), compare_time: Duration::ZERO }
        } else {
            self.collect_changes(first)?;
            let store = self.store.as_mut().expect("store created above");
            store.publish(&self.dirty, &self.compare, self.options.copy_threads.max(1))?
        };
        let compared = self.compare.iter().map(|r| r.len()).sum();
        self.dirty.clear();
        self.compare.clear();
        let store = self.store.as_ref().expect("store created above");
        if first {
            if let Some(d) = &mut self.deferred {
                // Observers are let in once there is a version to see.
                d.flush();
            }
            let files = store.observer_files().map_err(|e| PublishError::Store {
                what: "open read-only descriptors for observers".into(),
                errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
            self.server.offer(files, store.board());
        }
        let elapsed = started.elapsed();
        let prepared = &done.prepared;
        let mut changed = Vec::new();
        for r in &done.changed {
            addresses(&self.regions, r.clone(), &mut changed);
        }
        track::coalesce(&mut changed);
        self.tracker.published(&Outcome { changed: &changed, compared, compare_time: done.compare_time });
        self.stats = ProducerStats {
            versions: prepared.version,
            last_pages_copied: prepared.dirty_pages,
            last_pages_compared: compared,
            last_publish: elapsed,
            total_publish: self.stats.total_publish + elapsed,
            store_bytes: store.store_bytes(),
            live_pins: prepared.live_pins,
            reserve_bytes: store.reserve_bytes(),
            mapping_runs: prepared.mapping_runs,
            planes: prepared.planes,
            pages: store.layout().page_count,
        };
        Ok(prepared.version)
    }

    /// Adds the pages written since the last publish to `self.dirty` and those to compare
    /// to `self.compare` (which still hold those of a publish that failed: they are not
    /// lost), sorted and merged; all pages, written, for the first version. The scan re-arms
    /// the tracker: a write after it belongs to the next version.
    fn collect_changes(&mut self, first: bool) -> Result<(), PublishError> {
        self.changes.clear();
        self.tracker.take_changes(&mut self.changes).map_err(PublishError::Track)?;
        if first {
            self.dirty.push(0..self.regions.iter().map(|r| r.info.pages).sum());
        } else {
            for r in &self.changes.written {
                dirty_pages(&self.regions, r.start, r.end, &mut self.dirty);
            }
            for r in &self.changes.compare {
                dirty_pages(&self.regions, r.start, r.end, &mut self.compare);
            }
        }
        track::coalesce(&mut self.dirty);
        track::coalesce(&mut self.compare);
        Ok(())
    }

    /// The deferred path: hook the fault handler, re-protect the written pages, choose their
    /// slots, and hand the copies to the copier thread.
    fn publish_deferred(&mut self, first: bool, started: Instant) -> Result<Prepared, PublishError> {
        let store = self.store.as_mut().expect("store created before");
        let deferred = self.deferred.as_mut().expect("deferred path");
        let pending = deferred.begin(store.mapped());
        self.tracker.as_sync().expect("the deferred path runs on the sync tracker").set_first_write(Some(pending));
        let prepared = self
            .collect_changes(first)
            .and_then(|()| self.store.as_mut().expect("store created before").prepare(&self.dirty));
        let deferred = self.deferred.as_mut().expect("deferred path");
        match prepared {
            Ok(prepared) => {
                let covers: Vec<RegionCover> = self
                    .regions
                    .iter()
                    .map(|r| RegionCover { first_page: r.info.first_page, pages: r.info.pages, start: r.cover.start })
                    .collect();
                let pages = deferred::pages_of(&prepared.copies, &covers, page_size());
                deferred.arm(prepared.clone(), started.elapsed(), pages);
                Ok(prepared)
            }
            Err(e) => {
                deferred.abandon();
                Err(e)
            }
        }
    }

    /// Waits until the last published version is visible to observers. Only the deferred
    /// path returns from `publish()` earlier; this finishes its copy on the calling thread,
    /// then frees the slots that version superseded (which the other paths do inside
    /// `publish()`), so that `stats()` shows the memory held from then on.
    pub fn flush(&mut self) {
        if let Some(d) = &mut self.deferred {
            d.flush();
            if let Some(store) = &mut self.store {
                store.settle();
                self.stats.store_bytes = store.store_bytes();
                self.stats.reserve_bytes = store.reserve_bytes();
            }
        }
    }

    /// Sets how many threads share each publish's comparing and copying (at least 1); see
    /// [`ProducerOptions::copy_threads`].
    pub fn set_copy_threads(&mut self, threads: usize) {
        self.options.copy_threads = threads.max(1);
    }

    pub fn stats(&self) -> ProducerStats {
        self.stats.clone()
    }

    /// Observers attached now.
    pub fn observers(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.observers())
    }
}

/// Adds the page-space pages of every region that the written addresses `[start, end)`
/// touch. Regions are in page-space order, which is address order of their covers only
/// by chance, so each is checked (a producer has few regions).
fn dirty_pages(regions: &[ProducerRegion], start: usize, end: usize, out: &mut Vec<Range<usize>>) {
    let page = page_size();
    for r in regions {
        let lo = start.max(r.cover.start);
        let hi = end.min(r.cover.end);
        if lo < hi {
            let first = r.info.first_page + (lo - r.cover.start) / page;
            out.push(first..first + (hi - lo) / page);
        }
    }
}

/// Adds the addresses of page-space pages `pages`, region by region (the inverse of
/// [`dirty_pages`]).
fn addresses(regions: &[ProducerRegion], pages: Range<usize>, out: &mut Vec<Range<usize>>) {
    let page = page_size();
    for r in regions {
        let lo = pages.start.max(r.info.first_page);
        let hi = pages.end.min(r.info.first_page + r.info.pages);
        if lo < hi {
            let at = r.cover.start + (lo - r.info.first_page) * page;
            out.push(at..at + (hi - lo) * page);
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.flush();
        if let Some(store) = &self.store {
            store.close();
        }
    }
}
