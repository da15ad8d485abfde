//! Loom model checks of the store's concurrency protocol (see the module docs of
//! `tcasm::store`), run on the crate's own code: the typed views of `tcasm::store::control`
//! and the reclaim of `tcasm::store::protocol`, over loom's atomics.
//!
//! The shared memory of a real store is too big for a model checker, so the model keeps one
//! page, a version ring of two entries and a record log of two records (so that both wrap
//! while observers read them), and the header and pin pages as they are. What is real: the
//! pin handshake (`PinPage::pin_latest`, `unpin`, `pins`, `ControlHeader::publish`), the
//! producer's `protocol::reclaim`, the version ring's seqlock (`VersionEntry::write`,
//! `read`), the record log's seqlock (`RecordLog::append`, `read`) and the wake-up handshake
//! (`PinPage::wait_begin`, `wait_done`, `is_waiting`, `ControlHeader::announce`). The
//! page's slots are loom `UnsafeCell`s, so loom fails the model on any read of a slot that is
//! not ordered after its write, or any reuse of a slot not ordered after the last read of
//! it; an observer also checks every ring entry and record it reads against what the
//! producer wrote for that version, so a torn seqlock read fails it.
//!
//! Loom treats a `SeqCst` load or store as `AcqRel` (its README), which loses the
//! store-then-load ordering both handshakes rest on: run as they are, correct pins fail.
//! Only `fence(SeqCst)` is modelled in full, so [`LoomWord`] runs a `SeqCst` store as the
//! store then `fence(SeqCst)`, and a `SeqCst` load as `fence(SeqCst)` then the load (the
//! fence mapping of sequentially consistent accesses). Loom's fences order a little more
//! than C11's (everything before one happens before everything after a later one), which
//! could hide a race that only the weaker order shows; the value checks on every read still
//! catch a page overwritten under its reader, and the mutation tests at the end show that
//! the model fails a pin without its re-check, or with acquire/release orderings only, and
//! seqlocks without their fences.
use std::sync::atomic::Ordering;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU64};
use loom::sync::Arc;
use loom::thread;
use tcasm::store::control::{ControlHeader, PinPage, RecordError, RecordLog, VersionInfo, VersionRing};
use tcasm::store::layout::{HEADER_WORDS, PINS_PER_SLOT, VERSION_WORDS};
use tcasm::store::pagemap::Run;
use tcasm::store::protocol::{self, Retired, Word, UNPINNED};

/// A loom atomic standing in for a word of the control block or a pin page.
struct LoomWord(AtomicU64);

impl LoomWord {
    fn new(value: u64) -> LoomWord {
        LoomWord(AtomicU64::new(value))
    }

    /// A read-modify-write, a `SeqCst` one modelled like a `SeqCst` store.
    fn update(&self, order: Ordering, rmw: impl FnOnce(&AtomicU64, Ordering) -> u64) -> u64 {
        let old = rmw(&self.0, order);
        if order == Ordering::SeqCst {
            fence(Ordering::SeqCst);
        }
        old
    }
}

impl Word for LoomWord {
    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        self.update(order, |a, o| a.fetch_add(value, o))
    }
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64 {
        self.update(order, |a, o| a.fetch_sub(value, o))
    }
    fn load(&self, order: Ordering) -> u64 {
        if order == Ordering::SeqCst {
            fence(Ordering::SeqCst);
        }
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order);
        if order == Ordering::SeqCst {
            fence(Ordering::SeqCst);
        }
    }
    fn fence(order: Ordering) {
        fence(order)
    }
}

fn words(n: usize) -> Vec<LoomWord> {
    (0..n).map(|_| LoomWord::new(0)).collect()
}

/// Which of versions 1..=4 write the page. Version 2 keeps version 1's slot, so that slot
/// lives from 1 until 3 and a pin of 2 (not only of 1) must keep it.
const WRITES: [bool; 4] = [true, false, true, true];
const VERSIONS: u64 = WRITES.len() as u64;
/// Entries of the model's version ring, and words of its record log (two one-run records):
/// versions 3 and 4 overwrite the entries and records of 1 and 2.
const RING: usize = 2;
const LOG_WORDS: usize = 10;

/// The version whose write the page holds at version `v`.
fn written_at(v: u64) -> u64 {
    (1..=v).rev().find(|&w| WRITES[w as usize - 1]).expect("version 1 writes the page")
}

/// What the producer writes in version `v`'s ring entry: fields that differ per version,
/// and the record's position (one-run records of 5 words, one per version, from 0).
fn info_of(v: u64) -> VersionInfo {
    VersionInfo {
        version: v,
        record: 5 * (v - 1),
        time_ns: 100 + v,
        dirty_pages: 200 + v,
        reserve_bytes: 300 + v,
        publish_ns: 400 + v,
        mapping_runs: 500 + v,
        store_bytes: 600 + v,
    }
}

/// A one-page store: the control block's header, version ring and record log, one pin page
/// per observer, and the page's slot in each plane, holding the version that wrote it.
struct Store<W = LoomWord> {
    header: Vec<W>,
    ring: Vec<W>,
    log: Vec<W>,
    pins: Vec<Vec<W>>,
    slots: Vec<UnsafeCell<u64>>,
}

impl Store {
    fn new(observers: usize, planes: usize) -> Store {
        Store {
            header: words(HEADER_WORDS),
            ring: words(RING * VERSION_WORDS),
            log: words(LOG_WORDS),
            pins: (0..observers).map(|_| words(<PinPage>::PIN0 + PINS_PER_SLOT)).collect(),
            slots: (0..planes).map(|_| UnsafeCell::new(0)).collect(),
        }
    }
}

impl<W: Word> Store<W> {
    fn header(&self) -> ControlHeader<'_, W> {
        ControlHeader::new(&self.header)
    }

    fn ring(&self) -> VersionRing<'_, W> {
        VersionRing::new(&self.ring)
    }

    fn log(&self) -> RecordLog<'_, W> {
        RecordLog::new(&self.log, &self.header[ControlHeader::<W>::LOG_MARK])
    }

    fn pin_page(&self, observer: usize) -> PinPage<'_, W> {
        PinPage::new(&self.pins[observer])
    }
}

/// The producer: publishes every version as `StoreWriter::publish` does (read every pin,
/// reclaim, write the page into a free plane, append the record, fill the ring entry,
/// publish). Panics when no plane is free.
fn produce<W: Word>(store: &Store<W>) {
    let mut occupied = vec![false; store.slots.len()];
    let mut retired: Vec<Retired> = Vec::new();
    // The slot (plane) of the latest version's page, and the version that wrote it.
    let mut current: Option<(u64, u64)> = None;
    let mut tail = 0;
    for n in 1..=VERSIONS {
        let pins: Vec<u64> = (0..store.pins.len()).flat_map(|i| store.pin_page(i).pins()).collect();
        protocol::reclaim(&mut retired, &pins, |r| occupied[r.slot as usize] = false);
        if WRITES[n as usize - 1] {
            let k = occupied
                .iter()
                .position(|o| !o)
                .unwrap_or_else(|| panic!("no free plane for version {n}: pins {pins:?}"));
            // SAFETY: loom checks this write against every read of the slot.
            store.slots[k].with_mut(|s| unsafe { *s = n });
            if let Some((slot, since)) = current {
                retired.push(Retired { slot, count: 1, since, until: n });
            }
            occupied[k] = true;
            current = Some((k as u64, n));
        }
        let (slot, written) = current.expect("version 1 writes the page");
        let record = store.log().append(&mut tail, n, &[Run { first: 0, count: 1, slot, written }]);
        assert_eq!(record, info_of(n).record);
        store.ring().entry(n).write(&info_of(n));
        store.header().publish(n);
    }
}

/// How an observer pins the latest version in pin word 0 of its page.
type PinLatest = fn(&Store, usize) -> u64;

fn pin_latest(store: &Store, observer: usize) -> u64 {
    store.pin_page(observer).pin_latest(0, &store.header())
}

/// An observer: takes `rounds` snapshots and checks that each shows its version's ring
/// entry, record and page as they were published (an entry or record overwritten since is
/// skipped, as an observer then takes a newer version).
fn observe<W: Word>(store: &Store<W>, observer: usize, rounds: usize, pin: impl Fn() -> u64) {
    let page = store.pin_page(observer);
    for _ in 0..rounds {
        let v = pin();
        if v == UNPINNED {
            continue;
        }
        if let Some(info) = store.ring().entry(v).read(v) {
            assert_eq!(info, info_of(v), "torn ring entry of version {v}");
            match store.log().read(info.record, v, 1) {
                Ok(runs) => {
                    let [run] = runs[..] else { panic!("torn record of version {v}: {runs:?}") };
                    assert_eq!(run.written, written_at(v), "torn record of version {v}: {run:?}");
                    // SAFETY: loom checks that this read is ordered after the producer's
                    // write, and before any later write of the same slot.
                    let held = store.slots[run.slot as usize].with(|s| unsafe { *s });
                    assert_eq!(held, written_at(v), "version {v} shows the page written at {held}");
                }
                Err(RecordError::Overwritten) => {}
                Err(RecordError::Corrupt(what)) => panic!("torn record: {what}"),
            }
        }
        page.unpin(0);
    }
}

/// Runs the producer against `rounds.len()` observers (observer `i` takes `rounds[i]`
/// snapshots) on a store of `planes` planes, in every interleaving loom explores: those with
/// at most 3 preemptions for one observer (loom's docs: 2 or 3 find most bugs; ~30 s here),
/// at most 1 for more (2 takes a minute and a half with two observers, every seqlock word
/// being a scheduling point).
fn check(planes: usize, rounds: &'static [usize], pin: PinLatest) {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(if rounds.len() > 1 { 1 } else { 3 });
    model.check(move || {
        let store = Arc::new(Store::new(rounds.len(), planes));
        let observers: Vec<_> = rounds
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let store = store.clone();
                thread::spawn(move || observe(&*store, i, n, || pin(&store, i)))
            })
            .collect();
        produce(&*store);
        for o in observers {
            o.join().unwrap();
        }
    });
}

/// The message of the panic `f` ends in (it must panic).
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let payload = std::panic::catch_unwind(f).expect_err("the model passed");
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().map_or_else(String::new, |s| s.to_string()),
    }
}

/// With `O` observers, each holding at most one pin, a publish finds at most `O + 1` slots
/// of the page in use (the latest version's and one per pinned version): `O + 2` planes
/// always leave one free.
#[test]
fn one_observer_reads_every_snapshot_whole_with_three_planes() {
    check(3, &[2], pin_latest);
}

#[test]
fn two_observers_read_every_snapshot_whole_with_four_planes() {
    check(4, &[1, 1], pin_latest);
}

/// The bound is tight: with `O + 1` planes an observer pinning an old version leaves the
/// producer without a free plane.
#[test]
fn one_observer_can_exhaust_two_planes() {
    let message = panic_message(|| check(2, &[1], pin_latest));
    assert!(message.contains("no free plane"), "{message}");
}

/// `pin_latest` without its re-check of `latest`: the pin may land after the producer read
/// the pins, and the pinned version's slot is reused under the observer.
fn pin_latest_unchecked(store: &Store, observer: usize) -> u64 {
    let v = store.header().latest();
    if v != UNPINNED {
        store.pins[observer][<PinPage>::PIN0].store(v, Ordering::SeqCst);
    }
    v
}

/// A word whose `SeqCst` accesses are weakened to `Release` stores and `Acquire` loads.
struct AcquireRelease<'a>(&'a LoomWord);

impl Word for AcquireRelease<'_> {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(if order == Ordering::SeqCst { Ordering::Acquire } else { order })
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, if order == Ordering::SeqCst { Ordering::Release } else { order })
    }
    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        self.0.fetch_add(value, if order == Ordering::SeqCst { Ordering::AcqRel } else { order })
    }
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64 {
        self.0.fetch_sub(value, if order == Ordering::SeqCst { Ordering::AcqRel } else { order })
    }
    fn fence(order: Ordering) {
        fence(order)
    }
}

fn acquire_release(words: &[LoomWord]) -> Vec<AcquireRelease<'_>> {
    words.iter().map(AcquireRelease).collect()
}

/// `pin_latest` run on words whose `SeqCst` accesses are acquire/release only.
fn pin_latest_acquire_release(store: &Store, observer: usize) -> u64 {
    let (header, pins) = (acquire_release(&store.header), acquire_release(&store.pins[observer]));
    PinPage::new(&pins).pin_latest(0, &ControlHeader::new(&header))
}

/// Whether a model failure is a snapshot read while its slot was reused.
fn is_overwrite(message: &str) -> bool {
    message.contains("Causality violation") || message.contains("shows the page")
}

/// Mutation checks: the model catches a pin that skips the re-check, and one that makes it
/// with acquire/release orderings only (the store-then-load pair needs `SeqCst`).
#[test]
fn model_catches_a_pin_without_recheck() {
    let message = panic_message(|| check(3, &[1], pin_latest_unchecked));
    assert!(is_overwrite(&message), "{message}");
}

#[test]
fn model_catches_a_pin_without_seqcst() {
    let message = panic_message(|| check(3, &[2], pin_latest_acquire_release));
    assert!(is_overwrite(&message), "{message}");
}

/// A word whose explicit fences do nothing (its `SeqCst` accesses keep theirs): the
/// seqlocks of the version ring and the record log without their fences.
struct Unfenced(LoomWord);

impl Word for Unfenced {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order)
    }
    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        self.0.fetch_add(value, order)
    }
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64 {
        self.0.fetch_sub(value, order)
    }
    fn fence(_: Ordering) {}
}

/// Mutation check: without their fences, the seqlocks let an observer read a ring entry or
/// a record torn by the producer's overwrite of it.
#[test]
fn model_catches_seqlocks_without_fences() {
    let message = panic_message(|| {
        loom::model(|| {
            let unfenced = |n: usize| (0..n).map(|_| Unfenced(LoomWord::new(0))).collect::<Vec<_>>();
            let store = Arc::new(Store {
                header: unfenced(HEADER_WORDS),
                ring: unfenced(RING * VERSION_WORDS),
                log: unfenced(LOG_WORDS),
                pins: vec![unfenced(<PinPage>::PIN0 + PINS_PER_SLOT)],
                slots: (0..3).map(|_| UnsafeCell::new(0)).collect(),
            });
            let s = store.clone();
            let observer = thread::spawn(move || observe(&*s, 0, 1, || s.pin_page(0).pin_latest(0, &s.header())));
            produce(&*store);
            observer.join().unwrap();
        })
    });
    assert!(message.contains("torn"), "{message}");
}

/// The waiter's side of the wake-up handshake: whether it sleeps, on which wake value.
fn waiter<W: Word>(header: &ControlHeader<'_, W>, page: &PinPage<'_, W>) -> Option<u32> {
    let seq = page.wait_begin(header, UNPINNED);
    if seq.is_none() {
        // A sleeper stays counted until it is woken.
        page.wait_done();
    }
    seq
}

/// The publisher's side: publishes version 1; whether it wakes the sleepers.
fn publisher<W: Word>(header: &ControlHeader<'_, W>, page: &PinPage<'_, W>) -> bool {
    header.publish(1);
    header.announce(1);
    page.is_waiting()
}

/// The futex wake-up handshake, as `StoreReader::wait_newer` and `Mapped::wake` run it
/// (`PinPage::wait_begin`, `ControlHeader::announce`, `PinPage::is_waiting`), without the
/// futex: no wake-up is lost. A waiter that decides to sleep read the wake word's old value
/// (so a futex wait with it returns at once, or is woken), and the publisher then sees it
/// waiting and wakes it. `weakened`: with every `SeqCst` access made acquire/release.
fn wake_handshake(weakened: bool) {
    loom::model(move || {
        let store = Arc::new(Store::new(1, 0));
        let s = store.clone();
        let sleeps = thread::spawn(move || match weakened {
            false => waiter(&s.header(), &s.pin_page(0)),
            true => {
                let (header, pins) = (acquire_release(&s.header), acquire_release(&s.pins[0]));
                waiter(&ControlHeader::new(&header), &PinPage::new(&pins))
            }
        });
        let wakes = match weakened {
            false => publisher(&store.header(), &store.pin_page(0)),
            true => {
                let (header, pins) = (acquire_release(&store.header), acquire_release(&store.pins[0]));
                publisher(&ControlHeader::new(&header), &PinPage::new(&pins))
            }
        };
        if let Some(seq) = sleeps.join().unwrap() {
            assert!(seq != 1, "the waiter sleeps on the new wake value");
            assert!(wakes, "the waiter sleeps and the publisher does not wake it");
        }
    });
}

#[test]
fn a_waiter_about_to_sleep_is_always_woken() {
    wake_handshake(false);
}

/// Mutation check: with acquire/release orderings only, the model finds the lost wake-up.
#[test]
fn model_catches_a_wake_handshake_without_seqcst() {
    let message = panic_message(|| wake_handshake(true));
    assert!(message.contains("does not wake it"), "{message}");
}
