//! Typed views of the shared words: the control block's header, its version ring, its record
//! log and its observer rows, and an observer's pin page. Each view wraps the words it owns
//! (a slice of [`Word`]s), knows the offsets of its fields, and does the atomic work of the
//! protocol on them (module docs of [`crate::store`] and [`super::protocol`]): the seqlocks
//! of the version ring and of the record log, the pin handshake, the wake-up handshake.
//!
//! The views are generic over the word so that `tests/model.rs` runs this code, not a copy
//! of it, under loom; production uses [`AtomicU64`] words of a shared mapping. The field
//! offsets are public for tools and tests that forge or inspect raw blocks; the crate reads
//! and writes fields only through the methods.
use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::{HEADER_WORDS, PINS_MAGIC, PINS_PER_SLOT, STATE_CLOSED, STATE_LIVE, VERSION_WORDS};
use super::pagemap::{Run, RUN_WORDS};
use super::protocol::{Word, UNPINNED};

/// The header of the control block: its first [`HEADER_WORDS`] words. Fields up to
/// [`ControlHeader::PIN_SLOTS`] are set once ([`super::layout::Layout::encode`]), before any
/// observer gets the file; the rest change while the producer runs.
pub struct ControlHeader<'a, W = AtomicU64> {
    words: &'a [W],
}

impl<W> ControlHeader<'_, W> {
    pub const MAGIC: usize = 0;
    pub const LAYOUT: usize = 1;
    pub const PAGE_SIZE: usize = 2;
    pub const PAGE_COUNT: usize = 3;
    pub const REGION_COUNT: usize = 4;
    pub const VERSION_RING: usize = 5;
    pub const REGIONS_AT: usize = 6;
    pub const VERSIONS_AT: usize = 7;
    pub const LOG_AT: usize = 8;
    pub const LOG_WORDS: usize = 9;
    pub const PRODUCER_PID: usize = 10;
    pub const PIN_SLOTS: usize = 11;
    pub const OBSERVERS_AT: usize = 12;
    /// The MPI job the producer is a rank of ([`crate::job::Job::to_word`]; 0: none).
    pub const JOB: usize = 13;
    /// Which launch of the job (0: none known).
    pub const JOB_LAUNCH: usize = 14;
    /// Planes the pool holds now; grows.
    pub const PLANES: usize = 16;
    /// [`STATE_LIVE`] or [`STATE_CLOSED`].
    pub const STATE: usize = 17;
    /// Futex word: the low 32 bits of the latest version.
    pub const WAKE: usize = 18;
    /// The newest published version; 0 before the first.
    pub const LATEST: usize = 19;
    /// Log positions below this mark may be overwritten (the record log's seqlock word).
    pub const LOG_MARK: usize = 21;
}

impl<'a, W: Word> ControlHeader<'a, W> {
    /// The header of a control block whose words start with `block` (at least
    /// [`HEADER_WORDS`] of them).
    pub fn new(block: &'a [W]) -> Self {
        ControlHeader { words: &block[..HEADER_WORDS] }
    }

    /// The newest published version (0 before the first).
    pub fn latest(&self) -> u64 {
        // SYNC: Acquire pairs with the SeqCst store in `publish`: the version's pages and
        // record are visible once its number is.
        self.words[Self::LATEST].load(Ordering::Acquire)
    }

    /// Producer: makes version `v` the newest, after its pages and record are written.
    pub fn publish(&self, v: u64) {
        // SYNC: pairs with the Acquire/SeqCst loads in `PinPage::pin_latest` (store then
        // load against the producer's store here then `PinPage::pins`) and the Acquire load
        // in `latest`.
        self.words[Self::LATEST].store(v, Ordering::SeqCst);
    }

    /// Producer, after [`Self::publish`] of version `v`: changes the futex word, so that an
    /// observer about to sleep on its old value does not.
    pub fn announce(&self, v: u64) {
        // SYNC: the store of the store-then-load pair with `PinPage::wait_begin` (then
        // `PinPage::is_waiting`).
        self.words[Self::WAKE].store(v & 0xffff_ffff, Ordering::SeqCst);
    }

    /// The futex word observers sleep on.
    pub fn wake(&self) -> &'a W {
        &self.words[Self::WAKE]
    }

    /// Producer: the store is open, before any observer gets the file.
    pub fn mark_live(&self) {
        self.words[Self::STATE].store(STATE_LIVE, Ordering::Relaxed);
    }

    /// Producer: marks the store closed and changes the futex word; the caller then wakes
    /// every sleeper.
    pub fn close(&self) {
        // SYNC: pairs with the Acquire load in `closed`; the change of the futex word makes a
        // sleeper's futex wait on its old value return.
        self.words[Self::STATE].store(STATE_CLOSED, Ordering::SeqCst);
        self.words[Self::WAKE].fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the producer closed the store (or the state word is not a live one).
    pub fn closed(&self) -> bool {
        self.words[Self::STATE].load(Ordering::Acquire) != STATE_LIVE
    }

    /// Producer: the pool holds `planes` planes now.
    pub fn set_planes(&self, planes: u64) {
        // SYNC: Release pairs with the Acquire load in `planes`: an observer that sees a
        // record naming a slot of the newest plane sees a pool large enough to map it.
        self.words[Self::PLANES].store(planes, Ordering::Release);
    }

    /// Planes the pool holds, as the producer says (unchecked).
    pub fn planes(&self) -> u64 {
        // SYNC: Acquire pairs with the Release store in `set_planes`.
        self.words[Self::PLANES].load(Ordering::Acquire)
    }

    pub fn producer_pid(&self) -> u64 {
        self.words[Self::PRODUCER_PID].load(Ordering::Relaxed)
    }
}

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

/// The version ring: [`VERSION_WORDS`] words per entry, the entry of version `v` at
/// `v % entries`.
pub struct VersionRing<'a, W = AtomicU64> {
    words: &'a [W],
}

impl<'a, W: Word> VersionRing<'a, W> {
    /// The ring held by `words`, a whole number of entries.
    pub fn new(words: &'a [W]) -> Self {
        debug_assert!(!words.is_empty() && words.len().is_multiple_of(VERSION_WORDS));
        VersionRing { words }
    }

    /// The entry version `v` is written to.
    pub fn entry(&self, v: u64) -> VersionEntry<'a, W> {
        let at = (v % (self.words.len() / VERSION_WORDS) as u64) as usize * VERSION_WORDS;
        VersionEntry { words: &self.words[at..at + VERSION_WORDS] }
    }
}

/// One entry of the version ring, a seqlock: its version word is 0 while the producer
/// rewrites it.
pub struct VersionEntry<'a, W = AtomicU64> {
    words: &'a [W],
}

impl<W> VersionEntry<'_, W> {
    /// The seqlock word: the entry's version, 0 while it changes.
    pub const VERSION: usize = 0;
    pub const RECORD: usize = 1;
    /// The publish time, CLOCK_MONOTONIC ns.
    pub const TIME_NS: usize = 2;
    pub const DIRTY_PAGES: usize = 3;
    pub const RESERVE_BYTES: usize = 4;
    /// How long the publish took, ns.
    pub const PUBLISH_NS: usize = 5;
    pub const RUNS: usize = 6;
    /// The pool's memory when the version was released.
    pub const STORE_BYTES: usize = 7;
}

impl<W: Word> VersionEntry<'_, W> {
    /// Producer: writes `info` (the entry of version `info.version`).
    pub fn write(&self, info: &VersionInfo) {
        let w = self.words;
        // SYNC: seqlock writer: 0 marks the entry as changing; the Release fence orders it
        // before the field stores and pairs with the Acquire fence in `read`.
        w[Self::VERSION].store(0, Ordering::Relaxed);
        W::fence(Ordering::Release);
        for (field, value) in [
            (Self::RECORD, info.record),
            (Self::TIME_NS, info.time_ns),
            (Self::DIRTY_PAGES, info.dirty_pages),
            (Self::RESERVE_BYTES, info.reserve_bytes),
            (Self::PUBLISH_NS, info.publish_ns),
            (Self::RUNS, info.mapping_runs),
            (Self::STORE_BYTES, info.store_bytes),
        ] {
            w[field].store(value, Ordering::Relaxed);
        }
        // SYNC: Release pairs with the Acquire load of the version word in `read`.
        w[Self::VERSION].store(info.version, Ordering::Release);
    }

    /// Reads the entry if it holds version `v` from start to end (`None` when it holds
    /// another version, or was being rewritten while read).
    pub fn read(&self, v: u64) -> Option<VersionInfo> {
        let w = self.words;
        // SYNC: seqlock reader; the Acquire load pairs with the Release store that completes
        // the entry in `write`, the fence with its Release fence.
        if w[Self::VERSION].load(Ordering::Acquire) != v {
            return None;
        }
        let f = |i: usize| w[i].load(Ordering::Relaxed);
        let info = VersionInfo {
            version: v,
            record: f(Self::RECORD),
            time_ns: f(Self::TIME_NS),
            dirty_pages: f(Self::DIRTY_PAGES),
            reserve_bytes: f(Self::RESERVE_BYTES),
            publish_ns: f(Self::PUBLISH_NS),
            mapping_runs: f(Self::RUNS),
            store_bytes: f(Self::STORE_BYTES),
        };
        W::fence(Ordering::Acquire);
        (w[Self::VERSION].load(Ordering::Relaxed) == v).then_some(info)
    }
}

/// Why a version's page map could not be read.
#[derive(Debug)]
pub enum RecordError {
    /// The producer overwrote it while we read: take a newer version.
    Overwritten,
    /// It is not a valid map: the control block is corrupt.
    Corrupt(String),
}

/// The record log: one page-map record per version (version, run count, then
/// [`RUN_WORDS`] words per run), appended round-robin at growing positions (a position is
/// a word index that keeps counting past the log's end; the record at `pos` sits at word
/// `pos % capacity`). A seqlock: the mark word says below which position records are
/// (about to be) overwritten.
pub struct RecordLog<'a, W = AtomicU64> {
    words: &'a [W],
    mark: &'a W,
}

impl<'a, W: Word> RecordLog<'a, W> {
    /// The log held by `words`, with its seqlock word `mark` (the header's
    /// [`ControlHeader::LOG_MARK`]).
    pub fn new(words: &'a [W], mark: &'a W) -> Self {
        RecordLog { words, mark }
    }

    /// Words a record of `runs` runs takes.
    pub fn record_words(runs: usize) -> usize {
        2 + RUN_WORDS * runs
    }

    /// Producer: appends version `version`'s record of `runs` after position `tail` (the
    /// end of the last record; a record does not wrap, so it may start at the log's next
    /// lap) and returns its position; `tail` moves to its end.
    pub fn append(&self, tail: &mut u64, version: u64, runs: &[Run]) -> u64 {
        let cap = self.words.len() as u64;
        let len = Self::record_words(runs.len()) as u64;
        let mut pos = *tail;
        if pos % cap + len > cap {
            pos += cap - pos % cap;
        }
        if pos + len > cap {
            // SYNC: seqlock writer. The mark says which positions are about to be overwritten;
            // the Release fence orders it before the overwriting stores, and pairs with the
            // Acquire fence in `read`, which re-reads the mark after copying.
            self.mark.store(pos + len - cap, Ordering::Relaxed);
            W::fence(Ordering::Release);
        }
        let at = (pos % cap) as usize;
        let w = &self.words[at..at + len as usize];
        w[0].store(version, Ordering::Relaxed);
        w[1].store(runs.len() as u64, Ordering::Relaxed);
        for (i, r) in runs.iter().enumerate() {
            for (j, word) in r.encode().into_iter().enumerate() {
                w[2 + RUN_WORDS * i + j].store(word, Ordering::Relaxed);
            }
        }
        *tail = pos + len;
        pos
    }

    /// Observer: the runs of the record at position `pos`, which must be version `v`'s and
    /// hold at most `max_runs` runs. What is read is checked (the log is input), but a
    /// record that does not check out because it was being overwritten is
    /// [`RecordError::Overwritten`], not corrupt.
    pub fn read(&self, pos: u64, v: u64, max_runs: usize) -> Result<Vec<Run>, RecordError> {
        let cap = self.words.len() as u64;
        let corrupt = |what: String| RecordError::Corrupt(format!("record of version {v}: {what}"));
        let at = (pos % cap) as usize;
        let head = |i: usize| self.words[at + i].load(Ordering::Relaxed);
        let room = (cap - pos % cap) as usize;
        if room < 2 {
            return Err(self.unless_overwritten(pos, corrupt("it starts at the end of the log".into())));
        }
        let count = head(1);
        if count > max_runs as u64 || Self::record_words(count as usize) > room {
            return Err(self.unless_overwritten(pos, corrupt(format!("{count} runs do not fit the log"))));
        }
        let runs: Vec<Run> =
            (0..count as usize).map(|i| Run::decode(std::array::from_fn(|j| head(2 + RUN_WORDS * i + j)))).collect();
        let version = head(0);
        if self.overwritten(pos) {
            return Err(RecordError::Overwritten);
        }
        if version != v {
            return Err(corrupt(format!("holds version {version}")));
        }
        Ok(runs)
    }

    /// Whether the record at `pos` may have been overwritten while this thread read it.
    fn overwritten(&self, pos: u64) -> bool {
        // SYNC: seqlock reader: pairs with the Release fence in `append`. If the mark has not
        // passed our position, nothing we copied was being overwritten.
        W::fence(Ordering::Acquire);
        self.mark.load(Ordering::Relaxed) > pos
    }

    fn unless_overwritten(&self, pos: u64, e: RecordError) -> RecordError {
        if self.overwritten(pos) {
            RecordError::Overwritten
        } else {
            e
        }
    }
}

/// An observer row of the control block, for tools to show: the observer's pid (0 for a
/// free slot) and the pins it held at the producer's last publish. Informative only; the
/// producer reclaims by the pin pages.
pub struct ObserverRow<'a, W = AtomicU64> {
    words: &'a [W],
}

impl<W> ObserverRow<'_, W> {
    pub const PID: usize = 0;
    /// [`PINS_PER_SLOT`] words from here: the pins.
    pub const PIN0: usize = 1;
}

impl<'a, W: Word> ObserverRow<'a, W> {
    /// The row whose words start with `words`.
    pub fn new(words: &'a [W]) -> Self {
        ObserverRow { words: &words[..Self::PIN0 + PINS_PER_SLOT] }
    }

    /// Producer: shows observer `pid` (0 is shown as 1) holding `pins`.
    pub fn show(&self, pid: u32, pins: &[u64; PINS_PER_SLOT]) {
        self.words[Self::PID].store(pid.max(1) as u64, Ordering::Relaxed);
        for (word, &v) in self.words[Self::PIN0..].iter().zip(pins) {
            word.store(v, Ordering::Relaxed);
        }
    }

    /// Producer: shows the slot free.
    pub fn clear(&self) {
        self.words[Self::PID].store(0, Ordering::Relaxed);
    }

    /// The observer's pid, 0 for a free slot.
    pub fn pid(&self) -> u64 {
        self.words[Self::PID].load(Ordering::Relaxed)
    }

    /// The versions the observer pinned.
    pub fn pins(&self) -> Vec<u64> {
        self.words[Self::PIN0..].iter().map(|w| w.load(Ordering::Relaxed)).filter(|&v| v != UNPINNED).collect()
    }
}

/// An observer's pin page (one page, one per attached observer, writable by that observer
/// only; see [`super::pins`]): magic, slot, waiting count, then [`PINS_PER_SLOT`] pin words.
/// The observer writes its pins and its waiting count; the producer only reads them.
pub struct PinPage<'a, W = AtomicU64> {
    words: &'a [W],
}

impl<W> PinPage<'_, W> {
    pub const MAGIC: usize = 0;
    pub const SLOT: usize = 1;
    /// Threads of this observer sleeping in `wait_newer`.
    pub const WAITING: usize = 2;
    /// [`PINS_PER_SLOT`] words from here: the pins, [`UNPINNED`] when free.
    pub const PIN0: usize = 8;
}

impl<'a, W: Word> PinPage<'a, W> {
    /// The pin page whose words start with `words`.
    pub fn new(words: &'a [W]) -> Self {
        PinPage { words: &words[..Self::PIN0 + PINS_PER_SLOT] }
    }

    /// Producer: a new page, for observer slot `slot`.
    pub fn init(&self, slot: usize) {
        self.words[Self::MAGIC].store(PINS_MAGIC, Ordering::Relaxed);
        self.words[Self::SLOT].store(slot as u64, Ordering::Relaxed);
    }

    /// Observer: whether this is the pin page the producer made for slot `slot`.
    pub fn belongs_to(&self, slot: usize) -> bool {
        self.words[Self::MAGIC].load(Ordering::Relaxed) == PINS_MAGIC
            && self.words[Self::SLOT].load(Ordering::Relaxed) == slot as u64
    }

    fn pin(&self, index: usize) -> &W {
        &self.words[Self::PIN0..][index]
    }

    /// Observer: pins the newest version of `header`'s store in pin word `index`
    /// (0..PINS_PER_SLOT) and returns it (0 when nothing is published yet, in which case
    /// nothing is pinned).
    ///
    /// The guarantee: if this returns `v`, every later [`Self::pins`] of the producer that
    /// decides which slots to reuse sees `v` (or a later value of this pin), so no page of
    /// `v` is overwritten while the observer holds it. A hazard-pointer handshake: the
    /// observer stores its pin then re-reads `latest`; the producer stores `latest` then (in
    /// a later publish) reads the pins.
    pub fn pin_latest(&self, index: usize, header: &ControlHeader<'_, W>) -> u64 {
        let latest = &header.words[ControlHeader::<W>::LATEST];
        let pin = self.pin(index);
        // SYNC: pairs with the Release (SeqCst) store in `ControlHeader::publish`: the
        // version's pages and record are visible once its number is.
        let mut v = latest.load(Ordering::Acquire);
        loop {
            if v == UNPINNED {
                return UNPINNED;
            }
            // SYNC: store-then-load against the producer's store-then-load
            // (`ControlHeader::publish`, then `pins`): SeqCst on all four makes at least one
            // side see the other.
            pin.store(v, Ordering::SeqCst);
            let now = latest.load(Ordering::SeqCst);
            if now == v {
                return v;
            }
            v = now;
        }
    }

    /// Observer: gives pin `index` back. Every read of the pinned pages happens before this
    /// store.
    pub fn unpin(&self, index: usize) {
        // SYNC: Release pairs with the SeqCst load in `pins`: the producer reuses the slots
        // only after the observer's reads of them are done.
        self.pin(index).store(UNPINNED, Ordering::Release);
    }

    /// Producer: the pinned versions ([`UNPINNED`] for a free pin word), read before
    /// deciding which slots are free.
    pub fn pins(&self) -> [u64; PINS_PER_SLOT] {
        // SYNC: pairs with the SeqCst store in `pin_latest` and the Release store in `unpin`.
        std::array::from_fn(|k| self.pin(k).load(Ordering::SeqCst))
    }

    /// Observer, before sleeping until a version newer than `than`: counts itself waiting,
    /// reads the futex word, and re-checks `latest`. Returns the value of the futex word to
    /// sleep on (a futex wait with it returns at once if a publish changed it since), or
    /// `None` when a newer version is there already. Either way [`Self::wait_done`] follows.
    ///
    /// The wake-up handshake: the producer stores `latest`, then the futex word
    /// ([`ControlHeader::announce`]), then reads the waiting counts ([`Self::is_waiting`]).
    /// A sleeper either read the new futex word (so its futex wait returns at once) or is
    /// seen waiting and woken: no wake-up is lost.
    pub fn wait_begin(&self, header: &ControlHeader<'_, W>, than: u64) -> Option<u32> {
        // SYNC: store-then-load against the producer's store-then-load (`announce`, then
        // `is_waiting`): SeqCst on all four makes at least one side see the other.
        self.words[Self::WAITING].fetch_add(1, Ordering::SeqCst);
        let seq = header.wake().load(Ordering::SeqCst) as u32;
        // SYNC: pairs with the SeqCst store in `ControlHeader::publish`, which comes before
        // `announce`.
        (header.latest() <= than).then_some(seq)
    }

    /// Observer: no longer sleeping (woken, timed out, or never slept).
    pub fn wait_done(&self) {
        self.words[Self::WAITING].fetch_sub(1, Ordering::SeqCst);
    }

    /// Producer, after [`ControlHeader::announce`]: whether this observer may sleep and must
    /// be woken.
    pub fn is_waiting(&self) -> bool {
        // SYNC: the load of the store-then-load pair with `wait_begin`.
        self.words[Self::WAITING].load(Ordering::SeqCst) != 0
    }
}
