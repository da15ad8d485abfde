//! The observer's side of the store: checking the control block, claiming a pin slot,
//! pinning versions, reading their page maps, and waiting for new ones.
use std::ops::Range;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::layout::{self, hdr, pins, ver, Layout, PINS_PER_SLOT, SLOT_WORDS};
use super::pagemap::{PageMap, Run};
use super::protocol;
use crate::sys::mem::{Access, Mapping};
use crate::sys::memfd::SharedFile;
use crate::sys::{futex, lock};

/// What the version ring says of one version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub record: u64,
    pub time_ns: u64,
    pub dirty_pages: u64,
    pub copied_pages: u64,
    pub publish_ns: u64,
    pub mapping_runs: u64,
    pub store_bytes: u64,
}

/// One observer slot of the pin table, as `tcasm inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: usize,
    pub pid: u64,
    pub pins: Vec<u64>,
    /// Whether a live process holds the slot (ours counts).
    pub alive: bool,
    /// Whether it is the slot of the observer asking.
    pub ours: bool,
}

/// Why a version's page map could not be read.
#[derive(Debug)]
pub enum RecordError {
    /// The producer overwrote it while we read: take a newer version.
    Overwritten,
    /// It is not a valid map: the control block is corrupt.
    Corrupt(String),
}

/// Why a store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// What was received is not a valid store.
    Corrupt(String),
    /// Every observer slot of the pin table is taken.
    NoFreeSlot(usize),
}

/// An observer's mapping of a producer's store.
pub struct StoreReader {
    layout: Layout,
    control: Mapping,
    pool_file: SharedFile,
    pins_file: SharedFile,
    pins: Mapping,
    slot: usize,
}

impl StoreReader {
    /// Maps and checks the files an observer received, and claims a free pin slot.
    ///
    /// `files` are the control block (read-only), the pool (read-only) and the pin table.
    pub fn open(files: [SharedFile; 3]) -> Result<StoreReader, OpenError> {
        Self::open_files(files)?.claim()
    }

    fn open_files(files: [SharedFile; 3]) -> Result<StoreReader, OpenError> {
        let corrupt = OpenError::Corrupt;
        let [control_file, pool_file, pins_shared] = files;
        let len = control_file.size().map_err(|e| corrupt(format!("control block: {e}")))? as usize;
        if len < layout::HEADER_WORDS * 8 || !len.is_multiple_of(8) {
            return Err(corrupt(format!("control block of {len} bytes")));
        }
        let control = Mapping::shared(&control_file, 0, len, Access::ReadOnly)
            .map_err(|e| corrupt(format!("mapping the control block: {e}")))?;
        let words = control.words();
        let layout = Layout::decode(&|i| words[i].load(Ordering::Relaxed), words.len()).map_err(corrupt)?;
        // A description of our own, so that our slot lock is ours and not the producer's.
        let pins_file = pins_shared.reopen(true).map_err(|e| corrupt(format!("reopening the pin table: {e}")))?;
        drop(pins_shared);
        let pin_len = pins_file.size().map_err(|e| corrupt(format!("pin table: {e}")))? as usize;
        if pin_len != layout.pin_words() * 8 {
            return Err(corrupt(format!("pin table of {pin_len} bytes, expected {}", layout.pin_words() * 8)));
        }
        let pins = Mapping::shared(&pins_file, 0, pin_len, Access::ReadWrite)
            .map_err(|e| corrupt(format!("mapping the pin table: {e}")))?;
        let p = pins.words();
        if p[pins::MAGIC].load(Ordering::Relaxed) != layout::PINS_MAGIC
            || p[pins::SLOTS].load(Ordering::Relaxed) != layout.pin_slots as u64
        {
            return Err(corrupt("pin table header does not match the control block".into()));
        }
        Ok(StoreReader { layout, control, pool_file, pins_file, pins, slot: usize::MAX })
    }

    fn slot_bytes(slot: usize) -> (u64, u64) {
        ((Layout::slot_at(slot) * 8) as u64, (SLOT_WORDS * 8) as u64)
    }

    /// Takes the first free observer slot: the one whose lock we get.
    fn claim(mut self) -> Result<StoreReader, OpenError> {
        for slot in 0..self.layout.pin_slots {
            let (at, len) = Self::slot_bytes(slot);
            let locked = lock::try_lock(&self.pins_file, at, len)
                .map_err(|e| OpenError::Corrupt(format!("locking a pin slot: {e}")))?;
            if locked {
                let w = &self.pins.words()[Layout::slot_at(slot)..];
                for k in 0..PINS_PER_SLOT {
                    protocol::unpin(&w[pins::PIN0 + k]);
                }
                w[pins::PID].store(std::process::id() as u64, Ordering::Relaxed);
                w[pins::GENERATION].fetch_add(1, Ordering::Relaxed);
                self.slot = slot;
                return Ok(self);
            }
        }
        Err(OpenError::NoFreeSlot(self.layout.pin_slots))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn words(&self) -> &[AtomicU64] {
        self.control.words()
    }

    fn pin_word(&self, index: usize) -> &AtomicU64 {
        &self.pins.words()[Layout::slot_at(self.slot) + pins::PIN0 + index]
    }

    /// Pins the newest version in pin word `index` (0..PINS_PER_SLOT); 0 if none yet.
    pub fn pin_latest(&self, index: usize) -> u64 {
        protocol::pin_latest(&self.words()[hdr::LATEST], self.pin_word(index))
    }

    pub fn unpin(&self, index: usize) {
        protocol::unpin(self.pin_word(index));
    }

    pub fn latest(&self) -> u64 {
        self.words()[hdr::LATEST].load(Ordering::Acquire)
    }

    pub fn closed(&self) -> bool {
        self.words()[hdr::STATE].load(Ordering::Acquire) != layout::STATE_LIVE
    }

    pub fn planes(&self) -> usize {
        // SYNC: Acquire pairs with the Release store in StoreWriter::add_plane.
        self.words()[hdr::PLANES].load(Ordering::Acquire) as usize
    }

    pub fn producer_pid(&self) -> u64 {
        self.words()[hdr::PRODUCER_PID].load(Ordering::Relaxed)
    }

    /// The ring entry of version `v`, if the ring still holds it.
    pub fn version_info(&self, v: u64) -> Option<VersionInfo> {
        let words = self.words();
        let at = self.layout.versions_at() + (v as usize % layout::VERSION_RING) * layout::VERSION_WORDS;
        // SYNC: seqlock reader; the Acquire load pairs with the Release store that completes
        // the entry in StoreWriter::write_version_entry, the fence with its Release fence.
        if words[at + ver::VERSION].load(Ordering::Acquire) != v {
            return None;
        }
        let f = |i: usize| words[at + i].load(Ordering::Relaxed);
        let info = VersionInfo {
            version: v,
            record: f(ver::RECORD),
            time_ns: f(ver::TIME_NS),
            dirty_pages: f(ver::DIRTY_PAGES),
            copied_pages: f(ver::COPIED_PAGES),
            publish_ns: f(ver::PUBLISH_NS),
            mapping_runs: f(ver::RUNS),
            store_bytes: f(ver::STORE_BYTES),
        };
        fence(Ordering::Acquire);
        (words[at + ver::VERSION].load(Ordering::Relaxed) == v).then_some(info)
    }

    /// Reads and checks the page map of version `v`, which the caller has pinned.
    pub fn record(&self, v: u64) -> Result<PageMap, RecordError> {
        let info = self.version_info(v).ok_or(RecordError::Overwritten)?;
        let words = self.words();
        let cap = self.layout.log_words as u64;
        let pos = info.record;
        let at = self.layout.log_at() + (pos % cap) as usize;
        let corrupt = |what: String| RecordError::Corrupt(format!("record of version {v}: {what}"));
        let head = |i: usize| words[at + i].load(Ordering::Relaxed);
        let count = head(1) as usize;
        if (pos % cap) as usize + 2 + 2 * count > cap as usize || count > self.layout.page_count {
            return Err(self.unless_overwritten(pos, corrupt(format!("{count} runs do not fit the log"))));
        }
        let runs: Vec<Run> = (0..count)
            .map(|i| Run::decode([head(2 + 2 * i), head(3 + 2 * i)]))
            .collect();
        let version = head(0);
        // SYNC: seqlock reader: pairs with the Release fence in StoreWriter::write_record.
        // If the mark has not passed our position, nothing we copied was being overwritten.
        fence(Ordering::Acquire);
        if words[hdr::LOG_MARK].load(Ordering::Relaxed) > pos {
            return Err(RecordError::Overwritten);
        }
        if version != v {
            return Err(corrupt(format!("holds version {version}")));
        }
        let map = PageMap { runs };
        map.validate(self.layout.page_count, self.planes(), v).map_err(corrupt)?;
        Ok(map)
    }

    fn unless_overwritten(&self, pos: u64, e: RecordError) -> RecordError {
        fence(Ordering::Acquire);
        if self.words()[hdr::LOG_MARK].load(Ordering::Relaxed) > pos {
            RecordError::Overwritten
        } else {
            e
        }
    }

    /// Sleeps until a version newer than `than` is published, the store is closed, or
    /// `timeout` passes; returns the newest version then.
    pub fn wait_newer(&self, than: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let words = self.words();
        let waiters = &self.pins.words()[pins::WAITERS];
        loop {
            let latest = self.latest();
            let now = Instant::now();
            if latest > than || self.closed() || now >= deadline {
                return latest;
            }
            // SYNC: Dekker pair with StoreWriter::wake (store WAKE, then load WAITERS).
            waiters.fetch_add(1, Ordering::SeqCst);
            let seq = words[hdr::WAKE].load(Ordering::SeqCst) as u32;
            if self.latest() <= than && !self.closed() {
                // Sleep in slices so a producer that dies without closing is noticed.
                futex::wait(&words[hdr::WAKE], seq, (deadline - now).min(Duration::from_millis(100)));
            }
            waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The pin table's occupied slots.
    pub fn slots(&self) -> Vec<SlotInfo> {
        let words = self.pins.words();
        (0..self.layout.pin_slots)
            .filter_map(|slot| {
                let at = Layout::slot_at(slot);
                let (b, len) = Self::slot_bytes(slot);
                let alive = slot == self.slot || lock::is_locked_by_other(&self.pins_file, b, len).unwrap_or(false);
                let pins: Vec<u64> = (0..PINS_PER_SLOT)
                    .map(|k| words[at + pins::PIN0 + k].load(Ordering::Relaxed))
                    .filter(|&v| v != protocol::UNPINNED)
                    .collect();
                (alive || !pins.is_empty()).then(|| SlotInfo {
                    slot,
                    pid: words[at + pins::PID].load(Ordering::Relaxed),
                    pins,
                    alive,
                    ours: slot == self.slot,
                })
            })
            .collect()
    }

    /// A read-only mapping of the whole pool as it is now.
    pub fn map_pool(&self) -> Result<Mapping, nix::Error> {
        let bytes = self.planes() * self.layout.page_count * self.layout.page_size;
        Mapping::shared(&self.pool_file, 0, bytes, Access::ReadOnly)
    }

    pub fn pool_file(&self) -> &SharedFile {
        &self.pool_file
    }

    /// Byte offset of page `page` of plane `plane` in the pool.
    pub fn slot_offset(&self, plane: u16, page: usize) -> u64 {
        ((plane as usize * self.layout.page_count + page) * self.layout.page_size) as u64
    }

    /// The pages of the page space a region covers.
    pub fn region_pages(&self, region: usize) -> Range<usize> {
        let r = &self.layout.regions[region];
        r.first_page..r.first_page + r.pages
    }
}

impl Drop for StoreReader {
    fn drop(&mut self) {
        if self.slot == usize::MAX {
            return;
        }
        for k in 0..PINS_PER_SLOT {
            self.unpin(k);
        }
        let (at, len) = Self::slot_bytes(self.slot);
        // Closing the description drops the lock anyway; unlocking first just says so early.
        let _ = lock::unlock(&self.pins_file, at, len);
    }
}
