//! The observer's side of the store: checking the control block, pinning versions in its
//! own pin page, reading their page maps, and waiting for new ones.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::control::{ControlHeader, PinPage};
pub use super::control::{RecordError, VersionInfo};
use super::layout::{self, Layout, PINS_PER_SLOT};
use super::pagemap::PageMap;
use crate::sys::mem::{Access, Mapping};
use crate::sys::memfd::SharedFile;
use crate::sys::{futex, page_size};

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
        if !PinPage::new(pins.words()).belongs_to(slot) {
            return Err("the pin page does not belong to this observer slot".into());
        }
        Ok(StoreReader { layout, control, pool_file, pins, slot, pool_planes: AtomicUsize::new(0) })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn header(&self) -> ControlHeader<'_> {
        ControlHeader::new(self.control.words())
    }

    fn pin_page(&self) -> PinPage<'_> {
        PinPage::new(self.pins.words())
    }

    /// Pins the newest version in pin word `index` (0..PINS_PER_SLOT); 0 if none yet.
    pub fn pin_latest(&self, index: usize) -> u64 {
        self.pin_page().pin_latest(index, &self.header())
    }

    pub fn unpin(&self, index: usize) {
        self.pin_page().unpin(index);
    }

    pub fn latest(&self) -> u64 {
        self.header().latest()
    }

    pub fn closed(&self) -> bool {
        self.header().closed()
    }

    /// Planes the pool holds now, checked against what the layout allows and against the
    /// pool file's size (so that no mapping of it reads past its end).
    pub fn planes(&self) -> Result<usize, String> {
        let planes = self.header().planes();
        let most = layout::max_planes(self.layout.pin_slots);
        if planes == 0 || planes > most as u64 {
            return Err(format!("the pool claims {planes} planes; at most {most} are possible"));
        }
        let planes = planes as usize;
        if planes > self.pool_planes.load(Ordering::Relaxed) {
            let size = self.pool_file.size().map_err(|e| format!("pool: {e}"))?;
            if size < (planes * self.layout.plane_bytes()) as u64 {
                return Err(format!("the pool holds {size} bytes, not the {planes} planes it claims"));
            }
            self.pool_planes.fetch_max(planes, Ordering::Relaxed);
        }
        Ok(planes)
    }

    pub fn producer_pid(&self) -> u64 {
        self.header().producer_pid()
    }

    /// The ring entry of version `v`, if the ring still holds it.
    pub fn version_info(&self, v: u64) -> Option<VersionInfo> {
        self.layout.version_ring(self.control.words()).entry(v).read(v)
    }

    /// Reads and checks the page map of version `v`, which the caller has pinned.
    pub fn record(&self, v: u64) -> Result<PageMap, RecordError> {
        let info = self.version_info(v).ok_or(RecordError::Overwritten)?;
        let log = self.layout.record_log(self.control.words());
        let map = PageMap { runs: log.read(info.record, v, self.layout.page_count)? };
        let corrupt = |what: String| RecordError::Corrupt(format!("record of version {v}: {what}"));
        let slots = (self.planes().map_err(corrupt)? * self.layout.page_count) as u64;
        map.validate(self.layout.page_count, slots, v).map_err(corrupt)?;
        Ok(map)
    }

    /// Sleeps until a version newer than `than` is published, the store is closed, or
    /// `timeout` passes (never, when it is too long for the clock); returns the newest version
    /// then.
    pub fn wait_newer(&self, than: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now().checked_add(timeout);
        let header = self.header();
        let pins = self.pin_page();
        loop {
            let latest = self.latest();
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            if latest > than || self.closed() || left.is_zero() {
                return latest;
            }
            // The wake-up handshake with Mapped::wake (PinPage::wait_begin).
            if let Some(seq) = pins.wait_begin(&header, than) {
                if !self.closed() {
                    // Sleep in slices so a producer that dies without closing is noticed.
                    futex::wait(header.wake(), seq, left.min(Duration::from_millis(100)));
                }
            }
            pins.wait_done();
        }
    }

    /// The attached observers, as the producer saw them at its last publish.
    pub fn slots(&self) -> Vec<SlotInfo> {
        (0..self.layout.pin_slots)
            .filter_map(|slot| {
                let row = self.layout.observer_row(self.control.words(), slot);
                let pid = row.pid();
                (pid != 0).then(|| SlotInfo { slot, pid, pins: row.pins(), ours: slot == self.slot })
            })
            .collect()
    }

    /// A read-only mapping of the pool's first `planes` planes (a count [`Self::planes`]
    /// checked).
    pub fn map_pool(&self, planes: usize) -> Result<Mapping, nix::Error> {
        Mapping::shared(&self.pool_file, 0, planes * self.layout.plane_bytes(), Access::ReadOnly)
    }

    pub fn pool_file(&self) -> &SharedFile {
        &self.pool_file
    }
}

impl Drop for StoreReader {
    fn drop(&mut self) {
        for k in 0..PINS_PER_SLOT {
            self.unpin(k);
        }
    }
}
