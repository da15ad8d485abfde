//! Observers: attach to a producer by name and take consistent snapshots of its regions.
//!
//! ```no_run
//! use std::time::Duration;
//! use tcasm::Observer;
//! let obs = Observer::attach("heat")?;
//! let mut seen = 0;
//! loop {
//!     let snap = obs.latest()?;                      // pinned: never changes while held
//!     let t: &[f64] = snap.view("temperature")?;
//!     println!("version {}: t[0] = {}", snap.version(), t[0]);
//!     seen = snap.version();
//!     drop(snap);
//!     obs.wait_newer(seen, Duration::from_secs(1))?;
//! }
//! # Ok::<(), tcasm::ReadError>(())
//! ```
//!
//! A snapshot's view is one address range holding the page space, in windows of
//! [`WINDOW`] pages. A window is either *mapped*: each run of pages mapped read-only straight
//! from the producer's pool, no copy; or *private*: its pages copied into the observer's
//! memory. One `mmap` costs as much as copying 7 to 20 pages here
//! (docs/design.md#measured-facts), so a window
//! whose pages lie in many short runs (scattered writes) is cheaper to copy, and mapping every
//! such run would also exhaust `vm.max_map_count`. A window stays mapped while it has at most
//! [`runs_per_window`] runs (a budget that keeps a view far below the limit) and becomes
//! mapped again when its pages come back together (two runs or fewer).
//!
//! Views are reused: taking the next snapshot touches only what changed. In a mapped window
//! a run already mapped from the same slots needs nothing (they hold this version's bytes,
//! the pin guarantees it); in a private window only pages written since are copied.
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::endpoint;
use crate::error::{EndpointError, ReadError};
use crate::region::{Element, RegionInfo};
use crate::store::layout::PINS_PER_SLOT;
use crate::store::pagemap::PageMap;
use crate::store::reader::{RecordError, SlotInfo, StoreReader, VersionInfo};
use crate::sys::mem::{Mapping, PrivateMapping};
use crate::sys::{max_map_count, page_size};
use crate::view::snapshot_slice;

/// How long `attach` waits for a producer's first version by default.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Pages per window of a view: 1 MiB of 4 KiB pages.
pub const WINDOW: usize = 256;

/// A slot value meaning "this page of the view is private memory".
const PRIVATE: u64 = u64::MAX;

/// One address range laid out like the page space, and what each page holds now.
struct View {
    memory: PrivateMapping,
    /// Per page: the pool slot it is mapped from, or PRIVATE.
    slot: Vec<u64>,
    /// Per private page: the version whose bytes it holds (0: none).
    written: Vec<u64>,
    /// Per window: whether it is private.
    private: Vec<bool>,
    map: PageMap,
    version: u64,
}

struct State {
    pins_used: [bool; PINS_PER_SLOT],
    spare: Option<View>,
    pool: Option<(usize, Mapping)>,
}

struct Inner {
    name: String,
    stream: UnixStream,
    reader: StoreReader,
    state: Mutex<State>,
}

/// A connection to one producer.
#[derive(Clone)]
pub struct Observer {
    inner: Arc<Inner>,
}

impl Observer {
    /// Attaches to the producer `name`, waiting up to [`ATTACH_TIMEOUT`] for it to appear
    /// and publish its first version (the rule of every tcasm observer: Python's `attach`,
    /// `tcasm checkpoint`, `top`, `inspect` and `show` wait as long by default). A name no
    /// producer takes within that time is `NotFound`.
    pub fn attach(name: &str) -> Result<Observer, ReadError> {
        Observer::attach_timeout(name, ATTACH_TIMEOUT)
    }

    /// Attaches to the producer `name`, waiting up to `timeout` for it to appear and publish
    /// its first version: for observers started alongside their producer.
    pub fn attach_timeout(name: &str, timeout: Duration) -> Result<Observer, ReadError> {
        let endpoint::Attached { stream, files, slot } = endpoint::attach(name, timeout)?;
        let reader =
            StoreReader::open(files, slot).map_err(|what| ReadError::Corrupt { name: name.to_string(), what })?;
        Ok(Observer {
            inner: Arc::new(Inner {
                name: name.to_string(),
                stream,
                reader,
                state: Mutex::new(State { pins_used: [false; PINS_PER_SLOT], spare: None, pool: None }),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The MPI job the producer is a rank of.
    pub fn job(&self) -> Option<crate::job::Job> {
        self.inner.reader.layout().job
    }

    /// The producer's regions.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.inner.reader.layout().regions
    }

    /// Pages in the page space.
    pub fn pages(&self) -> usize {
        self.inner.reader.layout().page_count
    }

    /// The newest version published (without pinning it).
    pub fn latest_version(&self) -> u64 {
        self.inner.reader.latest()
    }

    /// What the producer recorded of version `v`, while its ring still holds it.
    pub fn version_info(&self, v: u64) -> Option<VersionInfo> {
        self.inner.reader.version_info(v)
    }

    /// The observer slots of the pin table: who is attached and what each pins.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.inner.reader.slots()
    }

    /// The producer's pid.
    pub fn producer_pid(&self) -> u64 {
        self.inner.reader.producer_pid()
    }

    /// Whether the producer has exited (cleanly or not).
    pub fn producer_gone(&self) -> bool {
        self.inner.reader.closed() || endpoint::hung_up(&self.inner.stream)
    }

    /// Whether the producer is gone without closing its store: it was killed or crashed
    /// (`kill -9`, a segfault) instead of dropping its [`crate::Producer`].
    pub fn producer_died(&self) -> bool {
        !self.inner.reader.closed() && endpoint::hung_up(&self.inner.stream)
    }

    fn gone_error(&self) -> ReadError {
        ReadError::ProducerGone { name: self.inner.name.clone(), last_version: self.inner.reader.latest() }
    }

    /// Pins the newest version and returns a snapshot of it. The snapshot's views never
    /// change while it lives; the producer keeps publishing meanwhile.
    pub fn latest(&self) -> Result<Snapshot, ReadError> {
        if self.producer_gone() {
            return Err(self.gone_error());
        }
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let pin = state.pins_used.iter().position(|u| !u).ok_or(ReadError::TooManySnapshots { held: PINS_PER_SLOT })?;
        // A record overwritten while we read it means the producer has published newer
        // versions since: take the newest. The same version overwritten twice cannot happen
        // with an honest producer, and is corruption, not a reason to spin.
        let mut overwritten = 0;
        let (version, map) = loop {
            let v = inner.reader.pin_latest(pin);
            if v == 0 {
                return Err(EndpointError::NotReady { name: inner.name.clone(), waited_ms: 0 }.into());
            }
            let what = match inner.reader.record(v) {
                Ok(map) => break (v, map),
                Err(RecordError::Overwritten) if overwritten != v => {
                    overwritten = v;
                    continue;
                }
                Err(RecordError::Overwritten) => {
                    format!("the record of version {v} is overwritten while it is the latest")
                }
                Err(RecordError::Corrupt(what)) => what,
            };
            inner.reader.unpin(pin);
            return Err(ReadError::Corrupt { name: inner.name.clone(), what });
        };
        state.pins_used[pin] = true;
        let mut view = match state.spare.take() {
            Some(v) => v,
            None => match new_view(inner.reader.layout().page_count) {
                Ok(v) => v,
                Err(e) => {
                    inner.reader.unpin(pin);
                    state.pins_used[pin] = false;
                    return Err(e);
                }
            },
        };
        let planes = inner.reader.planes().map_err(|what| ReadError::Corrupt { name: inner.name.clone(), what });
        if let Err(e) =
            planes.and_then(|planes| update_view(&inner.reader, &mut state.pool, &mut view, version, map, planes))
        {
            inner.reader.unpin(pin);
            state.pins_used[pin] = false;
            return Err(e);
        }
        drop(state);
        Ok(Snapshot { inner: self.inner.clone(), version, pin, view: Some(view) })
    }

    /// Waits until a version newer than `than` exists, or `timeout` passes. Returns the
    /// newest version then (`None` on timeout). A timeout too long for the clock
    /// (`Duration::MAX`) waits until a version arrives. Costs the producer nothing while no one
    /// waits.
    pub fn wait_newer(&self, than: u64, timeout: Duration) -> Result<Option<u64>, ReadError> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        loop {
            // In slices, so that a producer killed without closing the store is noticed by its
            // hang-up within one slice.
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(std::time::Instant::now()));
            let v = self.inner.reader.wait_newer(than, left.min(Duration::from_millis(100)));
            if v > than {
                return Ok(Some(v));
            }
            if self.producer_gone() {
                return Err(self.gone_error());
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }
}

fn new_view(pages: usize) -> Result<View, ReadError> {
    let memory = PrivateMapping::anonymous(pages * page_size()).map_err(ReadError::Map)?;
    Ok(View {
        memory,
        slot: vec![PRIVATE; pages],
        written: vec![0; pages],
        private: vec![true; pages.div_ceil(WINDOW)],
        map: PageMap::default(),
        version: 0,
    })
}

/// The most runs a mapped window may have, so that a whole view needs at most a sixteenth of
/// `vm.max_map_count` mappings (and at most 16: past that, copying the window is cheaper).
pub fn runs_per_window(pages: usize) -> usize {
    let budget = (max_map_count() / 16).clamp(64, 4096);
    (budget / pages.div_ceil(WINDOW)).clamp(1, 16)
}

/// Brings `view` to show version `version`, whose page map is `map`.
/// `planes` is the pool's checked plane count ([`StoreReader::planes`]).
fn update_view(
    reader: &StoreReader,
    pool: &mut Option<(usize, Mapping)>,
    view: &mut View,
    version: u64,
    map: PageMap,
    planes: usize,
) -> Result<(), ReadError> {
    if view.version == version {
        return Ok(());
    }
    let page = page_size();
    let pages = view.slot.len();
    let most_runs = runs_per_window(pages);
    let runs = &map.runs;
    let mut i = 0;
    // This window's runs, clipped to it: (pages, slot of the first, written).
    let mut clipped: Vec<(Range<usize>, u64, u64)> = Vec::new();
    for (w, start) in (0..pages).step_by(WINDOW).enumerate() {
        let end = (start + WINDOW).min(pages);
        clipped.clear();
        while let Some(r) = runs.get(i).filter(|r| r.pages().start < end) {
            let from = r.pages().start.max(start);
            clipped.push((from..r.pages().end.min(end), r.slot_of(from), r.written));
            if r.pages().end > end {
                break; // it goes on in the next window
            }
            i += 1;
        }
        // Merged where contiguous in the pool too: (pages, slot of the first).
        let mut mapped: Vec<(Range<usize>, u64)> = Vec::new();
        for (r, slot, _) in &clipped {
            match mapped.last_mut() {
                Some((m, s)) if *s + m.len() as u64 == *slot => m.end = r.end,
                _ => mapped.push((r.clone(), *slot)),
            }
        }
        let limit = if view.private[w] { 2 } else { most_runs };
        if mapped.len() <= limit {
            for (r, slot) in mapped {
                let slots = slot..slot + r.len() as u64;
                if !view.slot[r.clone()].iter().copied().eq(slots.clone()) {
                    let at = reader.layout().slot_offset(slot) as u64;
                    view.memory
                        .map_file_at(r.start * page, reader.pool_file(), at, r.len() * page)
                        .map_err(ReadError::Map)?;
                    view.slot[r].iter_mut().zip(slots).for_each(|(v, s)| *v = s);
                }
            }
            view.private[w] = false;
            continue;
        }
        if !view.private[w] {
            view.memory.map_anonymous_at(start * page, (end - start) * page).map_err(ReadError::Map)?;
            view.slot[start..end].fill(PRIVATE);
            view.written[start..end].fill(0);
            view.private[w] = true;
        }
        if pool.as_ref().is_none_or(|(n, _)| *n < planes) {
            *pool = Some((planes, reader.map_pool(planes).map_err(ReadError::Map)?));
        }
        let (_, pool_map) = pool.as_ref().expect("pool mapped above");
        for (r, slot, written) in &clipped {
            for (p, s) in r.clone().zip(*slot..) {
                if view.written[p] != *written {
                    view.memory.copy_from(p * page, pool_map, reader.layout().slot_offset(s), page);
                    view.written[p] = *written;
                }
            }
        }
    }
    view.map = map;
    view.version = version;
    Ok(())
}

/// A pinned version: its views stay valid and unchanged while it lives. The views' memory is
/// a mapping of its own, not part of the `Snapshot` value: moving the `Snapshot` (into a
/// `Box`, a Python object, another thread) does not move the bytes a view points to.
pub struct Snapshot {
    inner: Arc<Inner>,
    version: u64,
    pin: usize,
    view: Option<View>,
}

impl Snapshot {
    pub fn version(&self) -> u64 {
        self.version
    }

    fn view_ref(&self) -> &View {
        self.view.as_ref().expect("a live snapshot has its view")
    }

    pub fn regions(&self) -> &[RegionInfo] {
        &self.inner.reader.layout().regions
    }

    fn region(&self, name: &str) -> Result<&RegionInfo, ReadError> {
        self.regions().iter().find(|r| r.name == name).ok_or_else(|| ReadError::NoSuchRegion {
            region: name.to_string(),
            have: self.regions().iter().map(|r| format!("{:?} ({})", r.name, r.dtype)).collect::<Vec<_>>().join(", "),
        })
    }

    /// The elements of region `name`, which must hold `T`.
    pub fn view<T: Element>(&self, name: &str) -> Result<&[T], ReadError> {
        let r = self.region(name)?;
        if r.dtype != T::DTYPE {
            return Err(ReadError::WrongType { region: name.to_string(), actual: r.dtype, asked: T::DTYPE });
        }
        let view = self.view_ref();
        Ok(snapshot_slice::<T>(&view.memory, r.first_page * page_size() + r.offset, r.elements()))
    }

    /// Like [`Snapshot::view`], also checking the number of elements.
    pub fn view_exact<T: Element>(&self, name: &str, len: usize) -> Result<&[T], ReadError> {
        let v = self.view::<T>(name)?;
        if v.len() != len {
            return Err(ReadError::WrongLength { region: name.to_string(), actual: v.len(), asked: len });
        }
        Ok(v)
    }

    /// The raw bytes of region `name`, whatever its type.
    pub fn bytes(&self, name: &str) -> Result<&[u8], ReadError> {
        let r = self.region(name)?;
        let view = self.view_ref();
        Ok(snapshot_slice::<u8>(&view.memory, r.first_page * page_size() + r.offset, r.bytes()))
    }

    /// Page `p` of the page space.
    ///
    /// # Panics
    /// If `p` lies outside the page space, `0..`[`Observer::pages`] (as indexing a slice
    /// does): region and run page numbers read from this snapshot always lie inside it.
    pub fn page(&self, p: usize) -> &[u8] {
        let pages = self.inner.reader.layout().page_count;
        assert!(p < pages, "page {p} is outside the page space 0..{pages}");
        let view = self.view_ref();
        snapshot_slice::<u8>(&view.memory, p * page_size(), page_size())
    }

    /// Pages (of the page space) whose bytes differ between version `since` and this one.
    pub fn changed_since(&self, since: u64) -> Vec<Range<usize>> {
        self.view_ref().map.changed_since(since)
    }

    /// The page map of this version.
    pub fn page_map(&self) -> &PageMap {
        &self.view_ref().map
    }

    /// What the producer recorded of this version, while its ring still holds it.
    pub fn info(&self) -> Option<VersionInfo> {
        self.inner.reader.version_info(self.version)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // SYNC: every read of this version's pages happened before; `unpin` is a Release store.
        self.inner.reader.unpin(self.pin);
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pins_used[self.pin] = false;
        if state.spare.is_none() {
            state.spare = self.view.take();
        }
    }
}
