//! The observer's side of the store: checking the control block, pinning versions in its
//! own pin page, reading their page maps, and waiting for new ones.
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::layout::{self, hdr, obs, pins, ver, Layout, OBSERVER_WORDS, PINS_PER_SLOT};
use super::pagemap::{PageMap, Run, RUN_WORDS};
use super::protocol;
use crate::sys::mem::{Access, Mapping};
use crate::sys::memfd::SharedFile;
use crate::sys::{futex, page_size};

/// What the version ring says of one version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub record: u64,
    pub time_ns: u64,
    pub dirty_pages: u64,
    /// Bytes of free slots the store kept allocated for the next publishes.
    pub reserve_bytes: u64,
    pub publish_ns: u64,
    pub mapping_runs: u64,
    pub store_bytes: u64,
}

/// An attached observer as the producer last saw it (at its last publish), as
/// `tcasm inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: usize,
    pub pid: u64,
    pub pins: Vec<u64>,
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

/// An observer's mapping of a producer's store.
pub struct StoreReader {
    layout: Layout,
    control: Mapping,
    pool_file: SharedFile,
    /// Our own pin page.
    pins: Mapping,
    slot: usize,
    /// Planes the pool file was last seen long enough to hold.
    pool_planes: AtomicUsize,
}

impl StoreReader {
    /// Maps and checks the files an observer received: the control block and the pool
    /// (read-only), and its own pin page for slot `slot`. Errors say what is corrupt.
    pub fn open(files: [SharedFile; 3], slot: usize) -> Result<StoreReader, String> {
        let [control_file, pool_file, pins_file] = files;
        // A file that shrinks under a mapping turns reads into SIGBUS: the producer seals all
        // three against it, and an observer maps nothing that is not sealed so.
        for (file, what) in [(&control_file, "control block"), (&pool_file, "pool"), (&pins_file, "pin page")] {
            if !file.cannot_shrink() {
                return Err(format!("the {what} is not sealed against shrinking"));
            }
        }
        let len = control_file.size().map_err(|e| format!("control block: {e}"))? as usize;
        if len < layout::HEADER_WORDS * 8 || !len.is_multiple_of(8) {
            return Err(format!("control block of {len} bytes"));
        }
        let control = Mapping::shared(&control_file, 0, len, Access::ReadOnly)
            .map_err(|e| format!("mapping the control block: {e}"))?;
        let words = control.words();
        let layout = Layout::decode(&|i| words[i].load(Ordering::Relaxed), words.len())?;
        if slot >= layout.pin_slots {
            return Err(format!("observer slot {slot} of {}", layout.pin_slots));
        }
        let pin_len = pins_file.size().map_err(|e| format!("pin page: {e}"))? as usize;
        if pin_len != page_size() {
            return Err(format!("pin page of {pin_len} bytes"));
        }
        let pins = Mapping::shared(&pins_file, 0, pin_len, Access::ReadWrite)
            .map_err(|e| format!("mapping the pin page: {e}"))?;
        let p = pins.words();
        if p[pins::MAGIC].load(Ordering::Relaxed) != layout::PINS_MAGIC || p[pins::SLOT].load(Ordering::Relaxed) != slot as u64 {
            return Err("the pin page does not belong to this observer slot".into());
        }
        Ok(StoreReader { layout, control, pool_file, pins, slot, pool_planes: AtomicUsize::new(0) })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn words(&self) -> &[AtomicU64] {
        self.control.words()
    }

    fn pin_word(&self, index: usize) -> &AtomicU64 {
        &self.pins.words()[pins::PIN0 + index]
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

    /// Planes the pool holds now, checked against what the layout allows and against the
    /// pool file's size (so that no mapping of it reads past its end).
    pub fn planes(&self) -> Result<usize, String> {
        // SYNC: Acquire pairs with the Release store in StoreWriter::add_plane.
        let planes = self.words()[hdr::PLANES].load(Ordering::Acquire);
        let most = layout::max_planes(self.layout.pin_slots);
        if planes == 0 || planes > most as u64 {
            return Err(format!("the pool claims {planes} planes; at most {most} are possible"));
        }
        let planes = planes as usize;
        if planes > self.pool_planes.load(Ordering::Relaxed) {
            let size = self.pool_file.size().map_err(|e| format!("pool: {e}"))?;
            if size < (planes * self.plane_bytes()) as u64 {
                return Err(format!("the pool holds {size} bytes, not the {planes} planes it claims"));
            }
            self.pool_planes.fetch_max(planes, Ordering::Relaxed);
        }
        Ok(planes)
    }

    fn plane_bytes(&self) -> usize {
        self.layout.page_count * self.layout.page_size
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
            reserve_bytes: f(ver::RESERVE_BYTES),
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
        let room = (cap - pos % cap) as usize;
        if room < 2 {
            return Err(self.unless_overwritten(pos, corrupt("it starts at the end of the log".into())));
        }
        let count = head(1);
        if count > self.layout.page_count as u64 || 2 + RUN_WORDS * count as usize > room {
            return Err(self.unless_overwritten(pos, corrupt(format!("{count} runs do not fit the log"))));
        }
        let count = count as usize;
        let runs: Vec<Run> = (0..count)
            .map(|i| Run::decode(std::array::from_fn(|j| head(2 + RUN_WORDS * i + j))))
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
        let slots = (self.planes().map_err(corrupt)? * self.layout.page_count) as u64;
        map.validate(self.layout.page_count, slots, v).map_err(corrupt)?;
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
    /// `timeout` passes (never, when it is too long for the clock); returns the newest version
    /// then.
    pub fn wait_newer(&self, than: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now().checked_add(timeout);
        let words = self.words();
        let waiters = &self.pins.words()[pins::WAITING];
        loop {
            let latest = self.latest();
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            if latest > than || self.closed() || left.is_zero() {
                return latest;
            }
            // The wake-up handshake with StoreWriter::wake (module docs of `protocol`).
            if let Some(seq) = protocol::wait_begin(&words[hdr::LATEST], &words[hdr::WAKE], waiters, than) {
                if !self.closed() {
                    // Sleep in slices so a producer that dies without closing is noticed.
                    futex::wait(&words[hdr::WAKE], seq, left.min(Duration::from_millis(100)));
                }
            }
            protocol::wait_done(waiters);
        }
    }

    /// The attached observers, as the producer saw them at its last publish.
    pub fn slots(&self) -> Vec<SlotInfo> {
        let words = self.words();
        let rows = self.layout.observers_at();
        (0..self.layout.pin_slots)
            .filter_map(|slot| {
                let row = rows + slot * OBSERVER_WORDS;
                let pid = words[row + obs::PID].load(Ordering::Relaxed);
                (pid != 0).then(|| SlotInfo {
                    slot,
                    pid,
                    pins: (0..PINS_PER_SLOT)
                        .map(|k| words[row + obs::PIN0 + k].load(Ordering::Relaxed))
                        .filter(|&v| v != protocol::UNPINNED)
                        .collect(),
                    ours: slot == self.slot,
                })
            })
            .collect()
    }

    /// A read-only mapping of the pool's first `planes` planes (a count [`Self::planes`]
    /// checked).
    pub fn map_pool(&self, planes: usize) -> Result<Mapping, nix::Error> {
        Mapping::shared(&self.pool_file, 0, planes * self.plane_bytes(), Access::ReadOnly)
    }

    pub fn pool_file(&self) -> &SharedFile {
        &self.pool_file
    }

    /// Byte offset of slot `slot` in the pool.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        slot * self.layout.page_size as u64
    }
}

impl Drop for StoreReader {
    fn drop(&mut self) {
        for k in 0..PINS_PER_SLOT {
            self.unpin(k);
        }
    }
}
