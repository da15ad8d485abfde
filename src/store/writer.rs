//! The producer's side of the store: choosing slots, copying pages, writing records,
//! reclaiming slots no live version needs, and giving memory back to the kernel.
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::layout::{self, hdr, obs, ver, Layout, OBSERVER_WORDS};
use super::pagemap::PageMap;
use super::pins::PinBoard;
use super::protocol::{self, retained, UNPINNED};
use crate::error::PublishError;
use crate::sys::futex;
use crate::sys::mem::{Access, Mapping, RegionMemory};
use crate::sys::memfd::SharedFile;

/// Where a region's bytes come from.
pub struct Source {
    pub first_page: usize,
    pub pages: usize,
    pub offset: usize,
    pub bytes: usize,
    pub memory: Arc<RegionMemory>,
}

/// A slot that held a page of some version and was superseded at `until`.
#[derive(Clone, Copy, Debug)]
struct Retired {
    page: u32,
    plane: u16,
    since: u64,
    until: u64,
}

/// What the store does with a slot no live version needs any more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Freed {
    /// Keep it allocated for [`COOLING`] publishes, so that a page written again soon reuses
    /// it without a page fault. A slot can only ever hold its own page, so this pays when the
    /// same pages are written version after version, as simulations do, and when observers'
    /// pins delay reuse by a publish or two. Memory: the latest version, what pinned versions
    /// hold, and at most one more copy of each page written in the last [`COOLING`] versions
    /// (2x the page space for a producer that rewrites everything, like double buffering).
    #[default]
    Reuse,
    /// Return it to the kernel as soon as the version that superseded it is published.
    /// Memory: the latest version plus what pinned versions hold, nothing more; each page a
    /// publish writes then costs a page fault (allocating and zeroing a shared page).
    Release,
}

/// Runs of at least this many pages are populated in one call before they are copied.
const POPULATE_PAGES: usize = 16;

/// Publishes a freed slot stays allocated under [`Freed::Reuse`].
pub const COOLING: u64 = 4;

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
    /// Page-space pages to copy, the plane each run goes to, and whether its slots are
    /// fresh (never written, or given back to the kernel since).
    pub copies: Vec<(Range<usize>, u16, bool)>,
    pub dirty_pages: usize,
    pub mapping_runs: usize,
    pub planes: usize,
    pub live_pins: usize,
    record: u64,
}

/// The shared files of a store and the producer's bookkeeping of its slots.
pub struct StoreWriter {
    mapped: Arc<Mapped>,
    control_file: SharedFile,
    pool_file: SharedFile,
    planes: usize,
    /// Planes the pool may grow to, and the words of a page's occupancy bits.
    max_planes: usize,
    occupancy_words: usize,
    version: u64,
    log_pos: u64,
    /// Per page: plane of the latest version's copy, version that wrote that slot, version
    /// whose publish wrote the bytes, and a bit per plane holding a copy some version needs
    /// (`occupancy_words` words a page).
    plane: Vec<u16>,
    since: Vec<u64>,
    written: Vec<u64>,
    occupied: Vec<u64>,
    /// Per page, a bit per plane (the first 64) whose slot holds memory: written since the
    /// plane was added or the slot last punched.
    populated: Vec<u64>,
    retired: Vec<Retired>,
    /// Slots freed by reclaim, with the version that freed them, oldest first.
    cooling: VecDeque<(u64, u16, u32)>,
    live_pins: Vec<u64>,
    /// Publishes a freed slot stays allocated before it is punched.
    cooling_publishes: u64,
}

fn store_err(what: &str) -> impl Fn(nix::Error) -> PublishError + '_ {
    move |errno| PublishError::Store { what: what.to_string(), errno }
}

fn io_errno(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl StoreWriter {
    /// Creates the control block and the pool for `layout`.
    pub fn create(layout: Layout, sources: Vec<Source>, freed: Freed) -> Result<StoreWriter, PublishError> {
        let page = layout.page_size;
        let control_file = SharedFile::create("tcasm-control").map_err(|e| store_err("create the control block")(io_errno(e)))?;
        let control_bytes = layout.control_words() * 8;
        control_file.set_len(control_bytes as u64).map_err(|e| store_err("size the control block")(io_errno(e)))?;
        let control = Mapping::shared(&control_file, 0, control_bytes, Access::ReadWrite).map_err(store_err("map the control block"))?;
        control_file.seal_for_observers(false).map_err(|e| store_err("seal the control block")(io_errno(e)))?;

        let pool_file = SharedFile::create("tcasm-pool").map_err(|e| store_err("create the pool")(io_errno(e)))?;
        // Map every plane the pool may ever have now: growing it is then only an ftruncate.
        // Pages past the file's end are never touched until it grows over them.
        let plane_bytes = layout.page_count * page;
        let max_planes = layout::max_planes(layout.pin_slots);
        let pool = Mapping::shared(&pool_file, 0, plane_bytes * max_planes, Access::ReadWrite)
            .map_err(store_err("map address space for the pool"))?;
        pool_file.seal_for_observers(true).map_err(|e| store_err("seal the pool")(io_errno(e)))?;

        let n = layout.page_count;
        let words = control.words();
        for (i, v) in layout.encode(std::process::id()) {
            words[i].store(v, Ordering::Relaxed);
        }
        words[hdr::STATE].store(layout::STATE_LIVE, Ordering::Relaxed);
        let occupancy_words = max_planes.div_ceil(64);
        let mut w = StoreWriter {
            mapped: Arc::new(Mapped {
                board: Arc::new(PinBoard::new(layout.pin_slots)),
                layout,
                sources,
                control,
                pool,
                pool_file: pool_file.try_clone().map_err(|e| store_err("duplicate the pool's descriptor")(io_errno(e)))?,
            }),
            control_file,
            pool_file,
            planes: 0,
            max_planes,
            occupancy_words,
            version: 0,
            log_pos: 0,
            plane: vec![0; n],
            since: vec![0; n],
            written: vec![0; n],
            occupied: vec![0; n * occupancy_words],
            populated: vec![0; n],
            retired: Vec::new(),
            cooling: VecDeque::new(),
            live_pins: Vec::new(),
            cooling_publishes: match freed {
                Freed::Reuse => COOLING,
                Freed::Release => 0,
            },
        };
        w.add_plane()?;
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

    fn is_occupied(&self, page: usize, plane: u16) -> bool {
        self.occupied[page * self.occupancy_words + plane as usize / 64] & (1 << (plane % 64)) != 0
    }

    fn set_occupied(&mut self, page: usize, plane: u16, on: bool) {
        let word = &mut self.occupied[page * self.occupancy_words + plane as usize / 64];
        if on {
            *word |= 1 << (plane % 64);
        } else {
            *word &= !(1 << (plane % 64));
        }
    }

    fn plane_bytes(&self) -> usize {
        self.layout().page_count * self.layout().page_size
    }

    fn add_plane(&mut self) -> Result<u16, PublishError> {
        if self.planes == self.max_planes {
            // Unreachable by the protocol: each live version needs one plane at most, and at
            // most max_planes versions are live. Reported rather than assumed.
            return Err(PublishError::Store {
                what: format!("add a plane beyond {}, more than live versions can need", self.max_planes),
                errno: nix::Error::ENOSPC,
            });
        }
        let k = self.planes;
        let needed = ((k + 1) * self.plane_bytes()) as u64;
        // Only ever grow: the file may already be longer (an observer may grow it; shrinking
        // is sealed), and the pool is mapped in full from the start.
        if self.pool_file.size().map_err(|e| store_err("read the pool's size")(io_errno(e)))? < needed {
            self.pool_file.set_len(needed).map_err(|e| store_err("grow the pool")(io_errno(e)))?;
        }
        self.planes += 1;
        // SYNC: Release pairs with the Acquire load in StoreReader::record: an observer that
        // sees a record naming plane k sees a pool large enough to map it.
        self.mapped.control.words()[hdr::PLANES].store(self.planes as u64, Ordering::Release);
        Ok(k as u16)
    }

    /// The pins of attached observers, and their rows in the control block for tools.
    fn read_live_pins(&mut self) {
        self.live_pins.clear();
        let words = self.mapped.control.words();
        let rows = self.mapped.layout.observers_at();
        let mut attached = vec![false; self.mapped.layout.pin_slots];
        let live_pins = &mut self.live_pins;
        self.mapped.board.read(&mut |slot, pid, held| {
            live_pins.extend(held.iter().copied().filter(|&v| v != UNPINNED));
            let row = rows + slot * OBSERVER_WORDS;
            words[row + obs::PID].store(pid.max(1) as u64, Ordering::Relaxed);
            for (k, &v) in held.iter().enumerate() {
                words[row + obs::PIN0 + k].store(v, Ordering::Relaxed);
            }
            attached[slot] = true;
        });
        for (slot, _) in attached.iter().enumerate().filter(|(_, a)| !**a) {
            words[rows + slot * OBSERVER_WORDS + obs::PID].store(0, Ordering::Relaxed);
        }
    }

    /// Frees every retired slot that no live version needs any more.
    fn reclaim(&mut self) {
        self.read_live_pins();
        let pins_held = self.live_pins.len();
        // The latest version is live too. After a complete publish no retired slot can hold
        // one of its pages, but after a publish that failed midway some can.
        self.live_pins.push(self.version);
        let mut retired = std::mem::take(&mut self.retired);
        retired.retain(|r| {
            if retained(r.since, r.until, &self.live_pins) {
                return true;
            }
            self.set_occupied(r.page as usize, r.plane, false);
            self.cooling.push_back((self.version, r.plane, r.page));
            false
        });
        self.retired = retired;
        self.live_pins.truncate(pins_held);
    }

    /// The plane that is free for the most dirty pages, so a publish lands in one plane.
    fn choose_plane(&mut self, dirty: &[Range<usize>]) -> Result<u16, PublishError> {
        let mut conflicts = vec![0usize; self.planes];
        for r in dirty {
            for p in r.clone() {
                let words = &self.occupied[p * self.occupancy_words..(p + 1) * self.occupancy_words];
                for (w, &word) in words.iter().enumerate() {
                    let mut bits = word;
                    while bits != 0 {
                        conflicts[w * 64 + bits.trailing_zeros() as usize] += 1;
                        bits &= bits - 1;
                    }
                }
            }
        }
        let best = (0..self.planes).min_by_key(|&k| (conflicts[k], k)).unwrap_or(0);
        if conflicts[best] > 0 && self.planes < 3 {
            return self.add_plane();
        }
        Ok(best as u16)
    }

    fn free_plane_for(&mut self, page: usize, preferred: u16) -> Result<u16, PublishError> {
        if !self.is_occupied(page, preferred) {
            return Ok(preferred);
        }
        match (0..self.planes as u16).find(|&k| !self.is_occupied(page, k)) {
            Some(k) => Ok(k),
            None => self.add_plane(),
        }
    }

    /// Publishes version `version + 1`: the pages in `dirty` (sorted, disjoint page ranges)
    /// are copied from their regions; every other page keeps its previous slot.
    pub fn publish(&mut self, dirty: &[Range<usize>]) -> Result<Prepared, PublishError> {
        let started = Instant::now();
        let prepared = self.prepare(dirty)?;
        for (pages, plane, fresh) in &prepared.copies {
            self.mapped.copy_pages(pages.clone(), *plane, *fresh);
        }
        self.mapped.release(&prepared, started.elapsed());
        if self.cooling_publishes == 0 {
            // The slots this version superseded are free now unless pinned: give them back.
            self.reclaim();
            self.punch_cooled(prepared.version);
        }
        Ok(prepared)
    }

    /// Prepares version `version + 1` for the pages in `dirty` (sorted, disjoint page
    /// ranges): reclaims what no live version needs, chooses a free slot for each page and
    /// writes the version's record. The caller then copies `copies` (any thread, any order)
    /// and releases it with [`Mapped::release`]; until then observers see the previous
    /// version, and no other version may be prepared.
    pub fn prepare(&mut self, dirty: &[Range<usize>]) -> Result<Prepared, PublishError> {
        let n = self.version + 1;
        self.reclaim();
        let target = self.choose_plane(dirty)?;
        let mut dirty_pages = 0;
        let mut copies = Vec::new();
        for r in dirty {
            let mut p = r.start;
            while p < r.end {
                // A stretch of pages that go to one plane.
                let k = self.free_plane_for(p, target)?;
                let start = p;
                while p < r.end && (p == start || !self.is_occupied(p, k)) {
                    if self.since[p] != 0 {
                        let old = self.plane[p];
                        self.retired.push(Retired { page: p as u32, plane: old, since: self.since[p], until: n });
                    }
                    self.set_occupied(p, k, true);
                    self.plane[p] = k;
                    self.since[p] = n;
                    self.written[p] = n;
                    p += 1;
                }
                let fresh = k >= 64 || self.populated[start] & (1 << k) == 0;
                if k < 64 {
                    self.populated[start..p].iter_mut().for_each(|bits| *bits |= 1 << k);
                }
                copies.push((start..p, k, fresh));
                dirty_pages += p - start;
            }
        }
        let map = PageMap::from_pages(&self.plane, &self.written);
        let mapping_runs = map.mapping_count();
        let record = self.write_record(n, &map);
        self.punch_cooled(n);
        self.version = n;
        Ok(Prepared {
            version: n,
            copies,
            dirty_pages,
            mapping_runs,
            planes: self.planes,
            live_pins: self.live_pins.len(),
            record,
        })
    }

    /// Appends version `n`'s record to the log and returns its position.
    fn write_record(&mut self, n: u64, map: &PageMap) -> u64 {
        let cap = self.layout().log_words as u64;
        let len = 2 + 2 * map.runs.len() as u64;
        let mut pos = self.log_pos;
        if pos % cap + len > cap {
            pos += cap - pos % cap;
        }
        let words = self.mapped.control.words();
        let base = self.layout().log_at();
        if pos + len > cap {
            // SYNC: seqlock writer. The mark says which positions are about to be overwritten;
            // the Release fence orders it before the overwriting stores, and pairs with the
            // Acquire fence in StoreReader::record, which re-reads the mark after copying.
            words[hdr::LOG_MARK].store(pos + len - cap, Ordering::Relaxed);
            fence(Ordering::Release);
        }
        let at = base + (pos % cap) as usize;
        words[at].store(n, Ordering::Relaxed);
        words[at + 1].store(map.runs.len() as u64, Ordering::Relaxed);
        for (i, r) in map.runs.iter().enumerate() {
            let [a, b] = r.encode();
            words[at + 2 + 2 * i].store(a, Ordering::Relaxed);
            words[at + 3 + 2 * i].store(b, Ordering::Relaxed);
        }
        self.log_pos = pos + len;
        pos
    }

    /// Returns to the kernel the slots freed `cooling_publishes` ago that are free now, one
    /// `fallocate` per stretch of free slots in a plane. A slot reused and freed again since
    /// may go early: that costs its next reuse a page fault, never correctness (a free slot
    /// holds no live version's page).
    fn punch_cooled(&mut self, n: u64) {
        let mut due = Vec::new();
        while let Some(&(freed_at, k, p)) = self.cooling.front() {
            if freed_at + self.cooling_publishes > n {
                break;
            }
            self.cooling.pop_front();
            if !self.is_occupied(p as usize, k) {
                due.push((k, p));
            }
        }
        due.sort_unstable();
        due.dedup();
        let mut i = 0;
        while i < due.len() {
            let (k, first) = due[i];
            let mut last = first as usize;
            i += 1;
            while i < due.len() && due[i].0 == k {
                let next = due[i].1 as usize;
                // Bridge the gap if every slot in it is free (a hole or free) in plane k.
                if (last + 1..next).all(|p| !self.is_occupied(p, k)) {
                    last = next;
                    i += 1;
                } else {
                    break;
                }
            }
            let off = self.mapped.slot_offset(k, first as usize) as u64;
            let len = ((last + 1 - first as usize) * self.layout().page_size) as u64;
            if k < 64 {
                self.populated[first as usize..=last].iter_mut().for_each(|bits| *bits &= !(1 << k));
            }
            if let Err(e) = self.pool_file.punch_hole(off, len) {
                // The slots stay allocated and reusable: memory, not correctness.
                tracing::warn!("punching {len} bytes of plane {k} failed: {e}");
            }
        }
    }

    /// Marks the store closed and wakes every waiting observer.
    pub fn close(&self) {
        self.mapped.close();
    }

    /// Bytes of memory the pool holds now.
    pub fn store_bytes(&self) -> u64 {
        self.pool_file.allocated_bytes().unwrap_or(0)
    }

    /// Pins currently held by live observers (as of the last publish).
    pub fn live_pins(&self) -> usize {
        self.live_pins.len()
    }

    /// Observers attached now.
    pub fn observers(&self) -> usize {
        self.mapped.board.observers()
    }

    pub fn planes(&self) -> usize {
        self.planes
    }

}

impl Mapped {
    fn slot_offset(&self, plane: u16, page: usize) -> usize {
        (plane as usize * self.layout.page_count + page) * self.layout.page_size
    }

    /// Copies pages `pages` of the page space from their region(s) into plane `k`; `fresh`
    /// says the slots hold no memory yet, which a long run then allocates in one call.
    pub fn copy_pages(&self, pages: Range<usize>, k: u16, fresh: bool) {
        let page = self.layout.page_size;
        let i = self.sources.partition_point(|s| s.first_page + s.pages <= pages.start);
        for s in &self.sources[i..] {
            if s.first_page >= pages.end {
                break;
            }
            let lo = pages.start.max(s.first_page) - s.first_page;
            let hi = pages.end.min(s.first_page + s.pages) - s.first_page;
            // Page j of the region holds its bytes [j*page - offset, (j+1)*page - offset).
            let from = (lo * page).saturating_sub(s.offset);
            let to = (hi * page - s.offset).min(s.bytes);
            let dst = self.slot_offset(k, s.first_page + lo) + (from + s.offset - lo * page);
            if fresh && hi - lo >= POPULATE_PAGES {
                // Allocating fresh slots in one call costs a third of a fault each.
                self.pool.populate(dst, to - from);
            }
            self.pool.copy_in(dst, &s.memory, from, to - from);
        }
    }

    /// Makes a prepared version, all of whose pages are copied, the latest; wakes waiters.
    /// `spent` is what publishing it cost the producer.
    pub fn release(&self, prepared: &Prepared, spent: Duration) {
        let n = prepared.version;
        self.write_version_entry(n, &[
            (ver::RECORD, prepared.record),
            (ver::TIME_NS, crate::sys::monotonic_ns()),
            (ver::DIRTY_PAGES, prepared.dirty_pages as u64),
            (ver::COPIED_PAGES, prepared.dirty_pages as u64),
            (ver::PUBLISH_NS, spent.as_nanos() as u64),
            (ver::RUNS, prepared.mapping_runs as u64),
            (ver::STORE_BYTES, self.pool_file.allocated_bytes().unwrap_or(0)),
        ]);
        protocol::publish(&self.control.words()[hdr::LATEST], n);
        self.wake(n);
    }

    fn write_version_entry(&self, n: u64, fields: &[(usize, u64)]) {
        let words = self.control.words();
        let at = self.layout.versions_at() + (n as usize % layout::VERSION_RING) * layout::VERSION_WORDS;
        // SYNC: seqlock writer: 0 marks the entry as changing; pairs with the Acquire fence in
        // StoreReader::version_entry.
        words[at + ver::VERSION].store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        for &(f, v) in fields {
            words[at + f].store(v, Ordering::Relaxed);
        }
        // SYNC: Release pairs with the Acquire load of the entry's version word.
        words[at + ver::VERSION].store(n, Ordering::Release);
    }

    fn wake(&self, n: u64) {
        let words = self.control.words();
        // SYNC: Dekker pair with StoreReader::wait_newer, which increments WAITERS then reads
        // WAKE: either the waiter sees the new value, or this load sees the waiter.
        words[hdr::WAKE].store(n & 0xffff_ffff, Ordering::SeqCst);
        if self.board.any_waiting() {
            futex::wake_all(&words[hdr::WAKE]);
        }
    }

    /// Marks the store closed and wakes every waiting observer.
    pub fn close(&self) {
        let words = self.control.words();
        words[hdr::STATE].store(layout::STATE_CLOSED, Ordering::SeqCst);
        words[hdr::WAKE].fetch_add(1, Ordering::SeqCst);
        futex::wake_all(&words[hdr::WAKE]);
    }

}

