//! The producer's side of the store: choosing slots, copying pages, writing records,
//! reclaiming slots no live version needs, and giving memory back to the kernel.
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{ControlHeader, VersionInfo};
use super::layout::{self, Layout};
use super::pagemap::{PageMap, Run};
use super::pins::PinBoard;
use super::protocol::{self, Retired, UNPINNED};
use super::slots::{FreeSlots, Stretch};
use crate::error::PublishError;
use crate::sys::futex;
use crate::sys::mem::{store_fence, Access, Mapping, RegionMemory};
use crate::sys::memfd::SharedFile;

/// Where a region's bytes come from.
pub struct Source {
    pub first_page: usize,
    pub pages: usize,
    pub offset: usize,
    pub bytes: usize,
    pub memory: Arc<RegionMemory>,
}

/// Where a region's bytes in one of its pages are: bytes `[from, to)` of the region's
/// memory, at byte `at` of the page.
#[derive(Clone, Copy, Debug)]
struct PageBytes {
    from: usize,
    to: usize,
    at: usize,
}

impl Source {
    /// Page `j` of the region (a region that does not start on a page boundary has its first
    /// page's bytes at its offset, and every later page's at 0).
    fn page_bytes(&self, j: usize, page: usize) -> PageBytes {
        let from = (j * page).saturating_sub(self.offset);
        let to = ((j + 1) * page - self.offset).min(self.bytes);
        PageBytes { from, to, at: from + self.offset - j * page }
    }
}

/// What the store does with a slot no live version needs any more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Freed {
    /// Keep a *reserve* of such slots allocated, as many as the most pages one of the last
    /// [`RESERVE_WINDOW`] publishes wrote (at most `ProducerOptions::max_reserve` of the page
    /// space), for the next publishes to write into without a page fault; give the rest back
    /// to the kernel. Any page may take any reserve slot. Memory: the latest version, what
    /// pinned versions still need, and the reserve (about one version's writes). While
    /// observers pin versions the reserve also keeps what their pins held at the peak of the
    /// last [`PIN_WINDOW`] publishes: observers that come back for versions every few
    /// publishes then find the slots their last pins freed, instead of making each publish
    /// under a pin fault fresh pages (~2.5 µs each) that the next trim punches again.
    #[default]
    Reuse,
    /// Return every such slot to the kernel as soon as it is free. Memory: the latest
    /// version plus what pinned versions need, nothing more; each page a publish writes then
    /// costs a page fault (allocating and zeroing a shared page, ~9 copies' worth).
    Release,
}

/// Runs of at least this many pages are populated in one call before they are copied.
const POPULATE_PAGES: usize = 16;

/// Publishes of fewer pages than this never defragment: their runs are short anyway.
const DEFRAG_MIN_PAGES: usize = 256;
/// A publish defragments once the runs of written pages were cut into pieces, since the
/// last time, more than a `DEFRAG_SHARE`th of its pages times: a fresh page costs ~9 copies,
/// a cut a few, so the debt a defragment clears must be of that order.
const DEFRAG_SHARE: usize = 8;

/// Where the slots `stretches` cut the runs of pages `dirty` (both in order, as many
/// slots as pages): how many more pieces than runs.
fn splits(dirty: &[Range<usize>], stretches: &[Stretch]) -> usize {
    let mut cuts = 0;
    let mut stretch_end = 0u64; // pages taken up to the end of the current stretch
    let mut stretches = stretches.iter();
    let mut at = 0u64;
    for r in dirty {
        let end = at + r.len() as u64;
        while stretch_end < end {
            if stretch_end > at {
                cuts += 1;
            }
            match stretches.next() {
                Some(s) => stretch_end += s.count,
                None => break,
            }
        }
        at = end;
    }
    cuts
}

/// How many pages ahead a comparison asks for the next pages' first lines.
const PREFETCH_PAGES: usize = 16;

/// Publishes whose writes size the reserve under [`Freed::Reuse`].
pub const RESERVE_WINDOW: usize = 4;
/// Publishes over which the slots pinned versions held size the reserve, under
/// [`Freed::Reuse`]: long enough to span the gaps between observers' visits.
pub const PIN_WINDOW: usize = 64;

/// The store's shared files as the producer maps them, and the regions pages are copied
/// from: what any thread needs to fill a prepared version and release it. The producer's
/// thread prepares versions ([`StoreWriter::prepare`]); the copies and the release may
/// happen on other threads (the deferred publish path).
pub struct Mapped {
    layout: Layout,
    sources: Vec<Source>,
    control: Mapping,
    pool: Mapping,
    /// The observers' pins (and whether they wait).
    board: Arc<PinBoard>,
    /// To measure the memory the pool holds when a version is released.
    pool_file: SharedFile,
}

/// A version whose slots are chosen and whose record is written, but whose pages may not
/// be copied yet and which observers cannot see yet.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub version: u64,
    /// The runs of pages to copy.
    pub copies: Vec<PageCopy>,
    pub dirty_pages: usize,
    pub mapping_runs: usize,
    /// The pool's size, in planes of one page space each.
    pub planes: usize,
    pub live_pins: usize,
    /// Bytes of free slots the store keeps allocated for the next publishes.
    pub reserve_bytes: u64,
    record: u64,
}

/// Page-space pages to copy into consecutive slots from `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCopy {
    pub pages: Range<usize>,
    pub slot: u64,
    /// Whether the slots hold no memory yet (never written, or given back to the kernel).
    pub fresh: bool,
}

/// A version published by [`StoreWriter::publish`], and what publishing it found.
#[derive(Debug)]
pub struct Published {
    pub prepared: Prepared,
    /// The compared pages that differed from the previous version (page ranges).
    pub changed: Vec<Range<usize>>,
    /// The time spent comparing.
    pub compare_time: Duration,
}

/// Publishes of fewer pages than this per thread run on the calling thread alone. Measured
/// (`bench coverage --pattern sweep --copy-threads 2`, 2-core VM): split over two threads,
/// 655 pages took 200 µs longer than on one, 3,277 pages as long, 6,554 pages 290 µs less;
/// starting and joining a thread costs about as much as copying 1,500 pages.
const PAGES_PER_THREAD: usize = 2048;

/// Work on a run of pages that can be cut in two.
trait Pages: Sized {
    fn pages(&self) -> usize;
    /// The first `n` pages, and the rest.
    fn cut(self, n: usize) -> (Self, Self);
}

impl Pages for Range<usize> {
    fn pages(&self) -> usize {
        self.len()
    }

    fn cut(self, n: usize) -> (Self, Self) {
        (self.start..self.start + n, self.start + n..self.end)
    }
}

impl PageCopy {
    /// The slot page `p` of the run goes to.
    pub fn slot_of(&self, p: usize) -> u64 {
        self.slot + (p - self.pages.start) as u64
    }
}

impl Pages for PageCopy {
    fn pages(&self) -> usize {
        self.pages.len()
    }

    fn cut(self, n: usize) -> (Self, Self) {
        let (head, tail) = self.pages.cut(n);
        (PageCopy { pages: head, ..self }, PageCopy { pages: tail, slot: self.slot + n as u64, fresh: self.fresh })
    }
}

/// Cuts runs into at most `parts` consecutive shares of about equal page counts, each at
/// least [`PAGES_PER_THREAD`] pages; `None` when that makes one share.
fn shares<T: Pages + Clone>(runs: &[T], parts: usize) -> Option<Vec<Vec<T>>> {
    let total: usize = runs.iter().map(Pages::pages).sum();
    let parts = parts.min(total / PAGES_PER_THREAD).max(1);
    if parts == 1 {
        return None;
    }
    let each = total.div_ceil(parts);
    let mut out = vec![Vec::new()];
    let mut room = each;
    for run in runs {
        let mut run = run.clone();
        while run.pages() > 0 {
            if room == 0 {
                out.push(Vec::new());
                room = each;
            }
            let take = run.pages().min(room);
            let (head, tail) = run.cut(take);
            out.last_mut().expect("one share at least").push(head);
            run = tail;
            room -= take;
        }
    }
    Some(out)
}

/// Runs `work` on `runs` cut into [`shares`] for `threads` threads: the first share on the
/// calling thread and the others on threads of their own; the results in share order. One
/// thread's worth of work runs as it is, uncut and uncopied.
fn on_threads<T: Pages + Clone + Sync, R: Send>(runs: &[T], threads: usize, work: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let Some(shares) = shares(runs, threads) else { return vec![work(runs)] };
    std::thread::scope(|scope| {
        let mut shares = shares.iter();
        let first = shares.next();
        let handles: Vec<_> = shares.map(|share| scope.spawn(|| work(share))).collect();
        let mut out: Vec<R> = first.into_iter().map(|s| work(s)).collect();
        // A copy or comparison does not panic but on a broken invariant; pass it on.
        out.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
        out
    })
}

/// The shared files of a store and the producer's bookkeeping of its slots.
pub struct StoreWriter {
    mapped: Arc<Mapped>,
    control_file: SharedFile,
    pool_file: SharedFile,
    /// The pool's size in planes (a plane is one page space of slots), and the most it may
    /// grow to.
    planes: usize,
    max_planes: usize,
    version: u64,
    log_pos: u64,
    /// Per page: the slot of the latest version's copy, and the version that wrote it; and
    /// the same as the latest version's page map.
    slot: Vec<u64>,
    written: Vec<u64>,
    map: PageMap,
    retired: Vec<Retired>,
    free: FreeSlots,
    /// Pages written by the last [`RESERVE_WINDOW`] publishes, newest last.
    recent: VecDeque<usize>,
    /// Slots in `retired`; and as many as of the last reclaim, when only pinned versions
    /// still needed them.
    retired_slots: u64,
    held_for_pins: u64,
    /// For each of the last [`PIN_WINDOW`] publishes, once released: the slots pins held
    /// then plus the reserve the writes needed (0 when no pin held any); newest last.
    pin_demand: VecDeque<u64>,
    /// Most free slots kept allocated.
    max_reserve: u64,
    /// Pieces the slots taken cut runs of written pages into, since the last defragment.
    split_debt: usize,
    live_pins: Vec<u64>,
}

fn store_err(what: &str) -> impl Fn(nix::Error) -> PublishError + '_ {
    move |errno| PublishError::Store { what: what.to_string(), errno }
}

fn io_errno(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl StoreWriter {
    /// Creates the control block and the pool for `layout`. Under [`Freed::Reuse`] at most
    /// `max_reserve` of the page space (0 to 1) stays allocated in free slots.
    pub fn create(
        layout: Layout,
        sources: Vec<Source>,
        freed: Freed,
        max_reserve: f64,
    ) -> Result<StoreWriter, PublishError> {
        let control_file =
            SharedFile::create("tcasm-control").map_err(|e| store_err("create the control block")(io_errno(e)))?;
        let control_bytes = layout.control_words() * 8;
        control_file.set_len(control_bytes as u64).map_err(|e| store_err("size the control block")(io_errno(e)))?;
        let control = Mapping::shared(&control_file, 0, control_bytes, Access::ReadWrite)
            .map_err(store_err("map the control block"))?;
        control_file.seal_for_observers(false).map_err(|e| store_err("seal the control block")(io_errno(e)))?;
        // Fault the whole block in now. Otherwise every record written into a page of the
        // log not yet touched costs that publish a fresh page (~2.5 µs; a record of a
        // scattered version spans several pages) until the log has gone round once.
        control.populate(0, control_bytes);

        let pool_file = SharedFile::create("tcasm-pool").map_err(|e| store_err("create the pool")(io_errno(e)))?;
        // Map every plane the pool may ever have now: growing it is then only an ftruncate.
        // Pages past the file's end are never touched until it grows over them.
        let max_planes = layout::max_planes(layout.pin_slots);
        let pool = Mapping::shared(&pool_file, 0, layout.plane_bytes() * max_planes, Access::ReadWrite)
            .map_err(store_err("map address space for the pool"))?;
        pool_file.seal_for_observers(true).map_err(|e| store_err("seal the pool")(io_errno(e)))?;

        let n = layout.page_count;
        let words = control.words();
        for (i, v) in layout.encode(std::process::id()) {
            words[i].store(v, Ordering::Relaxed);
        }
        ControlHeader::new(words).mark_live();
        let max_reserve = match freed {
            Freed::Reuse => (max_reserve.clamp(0.0, 1.0) * n as f64).ceil() as u64,
            Freed::Release => 0,
        };
        let mut w = StoreWriter {
            mapped: Arc::new(Mapped {
                board: Arc::new(PinBoard::new(layout.pin_slots)),
                layout,
                sources,
                control,
                pool,
                pool_file: pool_file
                    .try_clone()
                    .map_err(|e| store_err("duplicate the pool's descriptor")(io_errno(e)))?,
            }),
            control_file,
            pool_file,
            planes: 0,
            max_planes,
            version: 0,
            log_pos: 0,
            slot: vec![0; n],
            written: vec![0; n],
            map: PageMap::default(),
            retired: Vec::new(),
            free: FreeSlots::default(),
            recent: VecDeque::new(),
            retired_slots: 0,
            held_for_pins: 0,
            pin_demand: VecDeque::new(),
            max_reserve,
            split_debt: 0,
            live_pins: Vec::new(),
        };
        w.add_plane()?;
        Ok(w)
    }

    pub fn layout(&self) -> &Layout {
        &self.mapped.layout
    }

    /// What other threads need to fill and release prepared versions.
    pub fn mapped(&self) -> Arc<Mapped> {
        self.mapped.clone()
    }

    /// Numbers the first version `version + 1`: a producer restarted from checkpoint `version`
    /// continues its numbering, so observers and checkpointers stay monotone. Only before
    /// the first version is prepared.
    pub fn start_after(&mut self, version: u64) {
        if self.version == 0 {
            self.version = version;
        }
    }

    /// The last version prepared (and, once it is released, the latest).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The files every observer receives, both read-only: the control block and the pool.
    pub fn observer_files(&self) -> std::io::Result<[SharedFile; 2]> {
        Ok([self.control_file.reopen(false)?, self.pool_file.reopen(false)?])
    }

    /// Where observers' pin pages are kept; the endpoint adds and removes them.
    pub fn board(&self) -> Arc<PinBoard> {
        self.mapped.board.clone()
    }

    /// Grows the pool by a plane of holes.
    fn add_plane(&mut self) -> Result<(), PublishError> {
        if self.planes == self.max_planes {
            // Unreachable by the protocol: each live version needs one plane at most, and at
            // most max_planes versions are live. Reported rather than assumed.
            return Err(PublishError::Store {
                what: format!("add a plane beyond {}, more than live versions can need", self.max_planes),
                errno: nix::Error::ENOSPC,
            });
        }
        let k = self.planes;
        let needed = ((k + 1) * self.layout().plane_bytes()) as u64;
        // Only ever grow: the file may already be longer (an observer may grow it; shrinking
        // is sealed), and the pool is mapped in full from the start.
        if self.pool_file.size().map_err(|e| store_err("read the pool's size")(io_errno(e)))? < needed {
            self.pool_file.set_len(needed).map_err(|e| store_err("grow the pool")(io_errno(e)))?;
        }
        self.planes += 1;
        let per_plane = self.layout().page_count as u64;
        self.free.add_holes(k as u64 * per_plane, per_plane);
        // After the pool grew: see ControlHeader::set_planes.
        self.mapped.header().set_planes(self.planes as u64);
        Ok(())
    }

    /// The pins of attached observers, and their rows in the control block for tools.
    fn read_live_pins(&mut self) {
        self.live_pins.clear();
        let (layout, words) = (&self.mapped.layout, self.mapped.control.words());
        let mut attached = vec![false; layout.pin_slots];
        let live_pins = &mut self.live_pins;
        self.mapped.board.read(&mut |slot, pid, held| {
            live_pins.extend(held.iter().copied().filter(|&v| v != UNPINNED));
            layout.observer_row(words, slot).show(pid, held);
            attached[slot] = true;
        });
        for (slot, _) in attached.iter().enumerate().filter(|(_, a)| !**a) {
            layout.observer_row(words, slot).clear();
        }
    }

    /// Frees every retired slot that no live version needs any more.
    fn reclaim(&mut self) {
        self.read_live_pins();
        let pins_held = self.live_pins.len();
        // The latest version is live too. After a complete publish no retired slot can hold
        // one of its pages, but after a publish that failed midway some can.
        self.live_pins.push(self.version);
        let (free, retired_slots) = (&mut self.free, &mut self.retired_slots);
        protocol::reclaim(&mut self.retired, &self.live_pins, |r| {
            free.free(r.slot, r.count);
            *retired_slots -= r.count;
        });
        self.live_pins.truncate(pins_held);
        self.held_for_pins = self.retired_slots;
    }

    /// After the latest version is released: the slots it superseded are free now unless
    /// pinned; they join the reserve, and what the reserve does not need goes back to the
    /// kernel. (Safe right after the release: see the protocol in the module docs.)
    pub fn settle(&mut self) {
        self.reclaim();
        let writes = self.recent_writes();
        self.pin_demand.push_back(if self.held_for_pins > 0 { self.held_for_pins + writes } else { 0 });
        if self.pin_demand.len() > PIN_WINDOW {
            self.pin_demand.pop_front();
        }
        self.trim_reserve();
    }

    /// The most pages one of the last [`RESERVE_WINDOW`] publishes wrote.
    fn recent_writes(&self) -> u64 {
        self.recent.iter().copied().max().unwrap_or(0) as u64
    }

    /// Gives back to the kernel the free slots beyond the reserve the next publishes need:
    /// the most pages one of the last [`RESERVE_WINDOW`] publishes wrote or, if more, what
    /// pins held at their peak over the last [`PIN_WINDOW`] publishes (with the writes then)
    /// less what they hold now; at most `max_reserve`.
    fn trim_reserve(&mut self) {
        let pinned_peak = self.pin_demand.iter().copied().max().unwrap_or(0);
        let keep = self.recent_writes().max(pinned_peak.saturating_sub(self.held_for_pins)).min(self.max_reserve);
        let page = self.layout().page_size as u64;
        for (slot, count) in self.free.trim(keep) {
            if let Err(e) = self.pool_file.punch_hole(slot * page, count * page) {
                // The slots stay allocated, as holes that need no fault: memory, not
                // correctness.
                tracing::warn!("punching {count} slots of the pool failed: {e}");
            }
        }
    }

    /// Publishes version `version + 1`. The pages in `written` (sorted, disjoint page
    /// ranges) are copied from their regions; each page in `compare` is compared with the
    /// latest version's copy and copied only when it differs; every other page keeps its
    /// previous slot. `threads` threads share the comparing and the copying.
    pub fn publish(
        &mut self,
        written: &[Range<usize>],
        compare: &[Range<usize>],
        threads: usize,
    ) -> Result<Published, PublishError> {
        let started = Instant::now();
        let changed = if self.version == 0 {
            // No version to compare with: everything is new.
            compare.to_vec()
        } else {
            self.mapped.changed_pages(compare, &self.slot, threads)
        };
        let compare_time = started.elapsed();
        let mut dirty: Vec<Range<usize>> = written.iter().chain(&changed).cloned().collect();
        crate::track::coalesce(&mut dirty);
        let prepared = self.prepare(&dirty)?;
        // SAFETY: `prepared` was prepared just now and is released only below; its copies
        // are its own slots, each once.
        #[allow(unsafe_code)]
        unsafe {
            self.mapped.copy_all(&prepared.copies, threads)
        };
        self.mapped.release(&prepared, started.elapsed());
        self.settle();
        Ok(Published { prepared, changed, compare_time })
    }

    /// Prepares version `version + 1` for the pages in `dirty` (sorted, disjoint page
    /// ranges): reclaims what no live version needs, takes a free slot for each page (the
    /// reserve's first, lowest first, in page order, so pages written together stay
    /// together) and writes the version's record. The caller then copies `copies` (any
    /// thread, any order) and releases it with [`Mapped::release`]; until then observers see
    /// the previous version, and no other version may be prepared.
    pub fn prepare(&mut self, dirty: &[Range<usize>]) -> Result<Prepared, PublishError> {
        let n = self.version + 1;
        self.reclaim();
        let dirty_pages: usize = dirty.iter().map(|r| r.len()).sum();
        let mut stretches = Vec::new();
        let mut found = self.free.take(dirty_pages as u64, &mut stretches);
        while found < dirty_pages as u64 {
            self.add_plane()?;
            found += self.free.take(dirty_pages as u64 - found, &mut stretches);
        }
        self.split_debt += splits(dirty, &stretches);
        if dirty_pages >= DEFRAG_MIN_PAGES && self.split_debt * DEFRAG_SHARE >= dirty_pages {
            stretches = self.defragment(stretches, dirty_pages as u64)?;
        }
        let mut copies = Vec::new();
        let mut stretches = stretches.into_iter();
        let mut stretch = Stretch { start: 0, count: 0, fresh: false };
        for r in dirty {
            let mut p = r.start;
            while p < r.end {
                if stretch.count == 0 {
                    stretch = stretches.next().expect("as many slots taken as pages written");
                }
                let take = (r.end - p).min(stretch.count as usize);
                copies.push(PageCopy { pages: p..p + take, slot: stretch.start, fresh: stretch.fresh });
                for (i, q) in (p..p + take).enumerate() {
                    self.retire(q, n);
                    self.slot[q] = stretch.start + i as u64;
                    self.written[q] = n;
                }
                stretch.start += take as u64;
                stretch.count -= take as u64;
                p += take;
            }
        }
        self.recent.push_back(dirty_pages);
        if self.recent.len() > RESERVE_WINDOW {
            self.recent.pop_front();
        }
        self.trim_reserve();
        let pieces: Vec<Run> = copies
            .iter()
            .map(|c| Run { first: c.pages.start as u32, count: c.pages.len() as u32, slot: c.slot, written: n })
            .collect();
        let map = self.map.overwrite(&pieces);
        let mapping_runs = map.mapping_count();
        let record = self.write_record(n, &map);
        self.map = map;
        self.version = n;
        Ok(Prepared {
            version: n,
            copies,
            dirty_pages,
            mapping_runs,
            planes: self.planes,
            live_pins: self.live_pins.len(),
            reserve_bytes: self.free.reserve_slots() * self.layout().page_size as u64,
            record,
        })
    }

    /// Trades the slots taken for this publish, which cut its runs of written pages into
    /// pieces, for one stretch of holes: the reserve is punched and the written pages go to
    /// fresh, consecutive slots. The fresh pages cost this publish a fault each (~9 copies);
    /// the versions after it copy long runs again (one `memcpy` a run, non-temporal stores)
    /// into the slots this one and the one before it free. Falls back to `taken` when the
    /// pool cannot grow that far.
    fn defragment(&mut self, taken: Vec<Stretch>, want: u64) -> Result<Vec<Stretch>, PublishError> {
        self.split_debt = 0;
        self.free.untake(&taken);
        let page = self.layout().page_size as u64;
        for (slot, count) in self.free.trim(0) {
            if let Err(e) = self.pool_file.punch_hole(slot * page, count * page) {
                tracing::warn!("punching {count} slots of the pool failed: {e}");
            }
        }
        loop {
            if let Some(stretch) = self.free.take_contiguous(want) {
                return Ok(vec![stretch]);
            }
            if self.planes == self.max_planes {
                let mut stretches = Vec::new();
                self.free.take(want, &mut stretches);
                return Ok(stretches);
            }
            self.add_plane()?;
        }
    }

    /// Retires the slot page `p` held (if it held one), superseded by version `n`: joins
    /// the last retired stretch when it continues it.
    fn retire(&mut self, p: usize, n: u64) {
        let (slot, since) = (self.slot[p], self.written[p]);
        if since == 0 {
            return;
        }
        self.retired_slots += 1;
        match self.retired.last_mut() {
            Some(r) if r.until == n && r.since == since && r.slot + r.count == slot => r.count += 1,
            _ => self.retired.push(Retired { slot, count: 1, since, until: n }),
        }
    }

    /// Appends version `n`'s record to the log and returns its position.
    fn write_record(&mut self, n: u64, map: &PageMap) -> u64 {
        let log = self.mapped.layout.record_log(self.mapped.control.words());
        log.append(&mut self.log_pos, n, &map.runs)
    }

    /// Marks the store closed and wakes every waiting observer.
    pub fn close(&self) {
        self.mapped.close();
    }

    /// Bytes of memory the pool holds now.
    pub fn store_bytes(&self) -> u64 {
        self.pool_file.allocated_bytes().unwrap_or(0)
    }

    /// Bytes of free slots kept allocated for the next publishes.
    pub fn reserve_bytes(&self) -> u64 {
        self.free.reserve_slots() * self.layout().page_size as u64
    }

    /// Observers attached now.
    pub fn observers(&self) -> usize {
        self.mapped.board.observers()
    }
}

impl Mapped {
    fn header(&self) -> ControlHeader<'_> {
        ControlHeader::new(self.control.words())
    }

    /// Copies pages `copy.pages` of the page space from their region(s) into consecutive
    /// slots from `copy.slot`; fresh slots of a long run are allocated in one call. A slot
    /// may last have held any page, so the part of a region's first and last page that is
    /// not the region's (other data shares that page in the producer) is zeroed, unless the
    /// slot is fresh (zero already): observers see only the region's own bytes. The copy is
    /// ordered before this thread's next store.
    ///
    /// # Safety
    /// `copy` is one of the `copies` of a version [`StoreWriter::prepare`] gave and that is
    /// not released yet, or a part of one, and no other thread copies any of its pages
    /// meanwhile: then no observer can read its slots (no version that holds them is
    /// visible) and no one else writes them.
    #[allow(unsafe_code)]
    pub unsafe fn copy_pages(&self, copy: &PageCopy) {
        // SAFETY: the caller's contract is this one.
        unsafe { self.copy_unfenced(copy) };
        store_fence();
    }

    /// [`Mapped::copy_pages`] without the store fence that orders the copy before the
    /// caller's next store.
    ///
    /// # Safety
    /// As [`Mapped::copy_pages`].
    #[allow(unsafe_code)]
    unsafe fn copy_unfenced(&self, copy: &PageCopy) {
        let page = self.layout.page_size;
        for (s, own) in self.sources_of(copy.pages.clone()) {
            let PageBytes { from, at, .. } = s.page_bytes(own.start, page);
            let last = s.page_bytes(own.end - 1, page);
            let to = last.to;
            let start = self.layout.slot_offset(copy.slot_of(s.first_page + own.start));
            let dst = start + at;
            if copy.fresh && own.len() >= POPULATE_PAGES {
                // Allocating fresh slots in one call costs a third of a fault each.
                self.pool.populate(dst, to - from);
            }
            // SAFETY: the slots of `copy` are claimed by a version not yet released, and
            // no other thread copies them (the caller's contract).
            unsafe { self.pool.stream_in(dst, &s.memory, from, to - from) };
            if !copy.fresh {
                // A reused slot still holds an old page: clear what the region does not cover
                // (nothing, for the whole pages of a page-aligned region).
                let end =
                    self.layout.slot_offset(copy.slot_of(s.first_page + own.end - 1)) + last.at + (last.to - last.from);
                for (offset, len) in [(start, at), (end, start + own.len() * page - end)] {
                    if len > 0 {
                        // SAFETY: inside the first or last slot of `copy`, as above.
                        unsafe { self.pool.zero(offset, len) };
                    }
                }
            }
        }
    }

    /// Asks for the first line of page-space page `p` in its region.
    fn prefetch_source(&self, p: usize) {
        let page = self.layout.page_size;
        if let Some((s, own)) = self.sources_of(p..p + 1).next() {
            s.memory.prefetch(s.page_bytes(own.start, page).from);
        }
    }

    /// The regions that pages `pages` of the page space fall in, each with the range of
    /// its own pages that `pages` covers.
    fn sources_of(&self, pages: Range<usize>) -> impl Iterator<Item = (&Source, Range<usize>)> {
        let i = self.sources.partition_point(|s| s.first_page + s.pages <= pages.start);
        self.sources[i..].iter().take_while(move |s| s.first_page < pages.end).map(move |s| {
            let lo = pages.start.max(s.first_page) - s.first_page;
            let hi = pages.end.min(s.first_page + s.pages) - s.first_page;
            (s, lo..hi)
        })
    }

    /// Copies every run of `copies`, shared over `threads` threads.
    ///
    /// # Safety
    /// `copies` are (some of) the `copies` of a version [`StoreWriter::prepare`] gave and
    /// that is not released yet, and no other thread copies any of them meanwhile.
    #[allow(unsafe_code)]
    pub unsafe fn copy_all(&self, copies: &[PageCopy], threads: usize) {
        on_threads(copies, threads, |share| {
            for (i, copy) in share.iter().enumerate() {
                // Short runs scattered over the regions: start loading the first line of
                // a run a few ahead, as the comparison does.
                if let Some(ahead) = share.get(i + PREFETCH_PAGES) {
                    self.prefetch_source(ahead.pages.start);
                }
                // SAFETY: the caller's contract; the shares are disjoint.
                unsafe { self.copy_unfenced(copy) };
            }
            store_fence();
        });
    }

    /// The pages of `compare` (sorted page ranges) whose bytes differ from the latest
    /// version's copy, in slot `slot[p]`, as sorted ranges; `threads` threads share the
    /// comparing.
    fn changed_pages(&self, compare: &[Range<usize>], slot: &[u64], threads: usize) -> Vec<Range<usize>> {
        let mut changed: Vec<Range<usize>> = on_threads(compare, threads, |share| {
            let mut out = Vec::new();
            for pages in share {
                self.changed_in(pages.clone(), slot, &mut out);
            }
            out
        })
        .concat();
        crate::track::coalesce(&mut changed);
        changed
    }

    /// Adds to `out` the pages of `pages` whose bytes differ from their copy in slot
    /// `slot[p]`. Only a region's own bytes are compared: the rest of a page it shares with
    /// other data is never copied, so never differs.
    fn changed_in(&self, pages: Range<usize>, slot: &[u64], out: &mut Vec<Range<usize>>) {
        let page = self.layout.page_size;
        for (s, own) in self.sources_of(pages) {
            for j in own.clone() {
                // The lines a few pages ahead, so that their loads overlap this comparison.
                let ahead = j + PREFETCH_PAGES;
                if ahead < own.end {
                    s.memory.prefetch(ahead * page);
                    self.pool.prefetch(self.layout.slot_offset(slot[s.first_page + ahead]));
                }
                let PageBytes { from, to, at } = s.page_bytes(j, page);
                let p = s.first_page + j;
                if !self.pool.equals(self.layout.slot_offset(slot[p]) + at, &s.memory, from, to - from) {
                    match out.last_mut() {
                        Some(r) if r.end == p => r.end = p + 1,
                        _ => out.push(p..p + 1),
                    }
                }
            }
        }
    }

    /// Makes a prepared version, all of whose pages are copied, the latest; wakes waiters.
    /// `spent` is what publishing it cost the producer.
    pub fn release(&self, prepared: &Prepared, spent: Duration) {
        let n = prepared.version;
        let entry = self.layout.version_ring(self.control.words()).entry(n);
        entry.write(&VersionInfo {
            version: n,
            record: prepared.record,
            time_ns: crate::sys::monotonic_ns(),
            dirty_pages: prepared.dirty_pages as u64,
            reserve_bytes: prepared.reserve_bytes,
            publish_ns: spent.as_nanos() as u64,
            mapping_runs: prepared.mapping_runs as u64,
            store_bytes: self.pool_file.allocated_bytes().unwrap_or(0),
        });
        self.header().publish(n);
        self.wake(n);
    }

    fn wake(&self, n: u64) {
        let header = self.header();
        // The wake-up handshake with StoreReader::wait_newer (PinPage::wait_begin).
        header.announce(n);
        if self.board.any_waiting() {
            futex::wake_all(header.wake());
        }
    }

    /// Marks the store closed and wakes every waiting observer.
    pub fn close(&self) {
        let header = self.header();
        header.close();
        futex::wake_all(header.wake());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cut_runs_evenly_and_keep_their_slots() {
        // Runs of 2,400 pages: more than one thread's worth (PAGES_PER_THREAD), less than two.
        assert_eq!(PAGES_PER_THREAD, 2048);
        let copies = [
            PageCopy { pages: 0..2400, slot: 1000, fresh: false },
            PageCopy { pages: 4000..6400, slot: 7, fresh: true },
        ];
        assert_eq!(shares(&copies, 1), None);
        assert_eq!(shares(&copies[..1], 2), None, "2,400 pages are one thread's worth");
        let two = shares(&copies, 2).unwrap();
        assert_eq!(
            two,
            [
                vec![PageCopy { pages: 0..2400, slot: 1000, fresh: false }],
                vec![PageCopy { pages: 4000..6400, slot: 7, fresh: true }],
            ]
        );
        // One run of 7,200 pages, cut into three shares of one run each.
        let one_run: &[Range<usize>] = std::slice::from_ref(&(0..7200));
        let three: Vec<Vec<Range<usize>>> = shares(one_run, 3).unwrap();
        let firsts: Vec<(usize, usize)> = three.iter().flatten().map(|r| (r.start, r.end)).collect();
        assert_eq!(
            (three.iter().map(Vec::len).collect::<Vec<_>>(), firsts),
            (vec![1, 1, 1], vec![(0, 2400), (2400, 4800), (4800, 7200)])
        );
        let cut = shares(&[PageCopy { pages: 10..4810, slot: 40, fresh: false }], 2).unwrap();
        assert_eq!(cut[1], [PageCopy { pages: 2410..4810, slot: 2440, fresh: false }]);
    }

    #[test]
    fn splits_count_the_cuts_inside_runs() {
        let s =
            |counts: &[u64]| counts.iter().map(|&count| Stretch { start: 0, count, fresh: false }).collect::<Vec<_>>();
        // Runs of 4, 1 and 5 pages.
        let dirty = [0..4, 10..11, 20..25];
        assert_eq!(splits(&dirty, &s(&[10])), 0);
        assert_eq!(splits(&dirty, &s(&[4, 1, 5])), 0);
        assert_eq!(splits(&dirty, &s(&[2, 2, 1, 1, 4])), 2);
        assert_eq!(splits(&dirty, &s(&[1; 10])), 3 + 4);
        assert_eq!(splits(&dirty, &s(&[3, 7])), 1);
    }
}
