//! Loom model checks of the store's concurrency protocol (see the module docs of
//! `tcasm::store`), run on the crate's own functions in `tcasm::store::protocol`.
//!
//! The shared memory of a real store is too big for a model checker, so the model keeps one
//! page and the few words the protocol is about. What stays real: `pin_latest`, `unpin`,
//! `publish`, `read_pin`, `retained` and the wake-up handshake (`wait_begin`, `wait_done`,
//! `announce`, `is_waiting`), each run on loom's atomics, and the producer's
//! reclaim loop as `StoreWriter` runs it (read every pin, free what no live version needs,
//! write into a free plane, record, publish). The page's slots and the version records are
//! loom `UnsafeCell`s, so loom fails the model on any read of a slot that is not ordered
//! after its write, or any reuse of a slot not ordered after the last read of it.
//!
//! Loom treats a `SeqCst` load or store as `AcqRel` (its README), which loses the
//! store-then-load ordering both handshakes rest on: run as they are, correct pins fail.
//! Only `fence(SeqCst)` is modelled in full, so [`LoomWord`] runs a `SeqCst` store as the
//! store then `fence(SeqCst)`, and a `SeqCst` load as `fence(SeqCst)` then the load (the
//! fence mapping of sequentially consistent accesses). Loom's fences order a little more
//! than C11's (everything before one happens before everything after a later one), which
//! could hide a race that only the weaker order shows; the value check on every read still
//! catches a page overwritten under its reader, and the mutation tests at the end show that
//! the model fails a pin without its re-check, or with acquire/release orderings only.
use std::sync::atomic::Ordering;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU64};
use loom::sync::Arc;
use loom::thread;
use tcasm::store::protocol::{self, retained, Word, UNPINNED};

/// A loom atomic standing in for a word of the control block or the pin table.
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
}

/// Which of versions 1..=4 write the page. Version 2 keeps version 1's slot, so that slot
/// lives from 1 until 3 and a pin of 2 (not only of 1) must keep it.
const WRITES: [bool; 4] = [true, false, true, true];
const VERSIONS: u64 = WRITES.len() as u64;

/// The version whose write the page holds at version `v`.
fn written_at(v: u64) -> u64 {
    (1..=v).rev().find(|&w| WRITES[w as usize - 1]).expect("version 1 writes the page")
}

/// A one-page store: `latest`, one pin word per observer, per version the plane of its page
/// (written before `latest` names the version: the store's record log), and the page's slot
/// in each plane, holding the version that wrote it.
struct Store {
    latest: LoomWord,
    pins: Vec<LoomWord>,
    records: Vec<UnsafeCell<usize>>,
    slots: Vec<UnsafeCell<u64>>,
}

impl Store {
    fn new(observers: usize, planes: usize) -> Store {
        Store {
            latest: LoomWord::new(UNPINNED),
            pins: (0..observers).map(|_| LoomWord::new(UNPINNED)).collect(),
            records: (0..VERSIONS).map(|_| UnsafeCell::new(0)).collect(),
            slots: (0..planes).map(|_| UnsafeCell::new(0)).collect(),
        }
    }
}

/// A slot superseded at `until`, as in `StoreWriter`.
struct Retired {
    plane: usize,
    since: u64,
    until: u64,
}

/// The producer: publishes every version, reclaiming as `StoreWriter::publish` does. Panics
/// when no plane is free.
fn produce(store: &Store) {
    let mut occupied = vec![false; store.slots.len()];
    let mut retired: Vec<Retired> = Vec::new();
    // The plane of the latest version's page, and the version that wrote it.
    let mut current: Option<(usize, u64)> = None;
    for n in 1..=VERSIONS {
        let pins: Vec<u64> = store.pins.iter().map(protocol::read_pin).collect();
        retired.retain(|r| {
            let keep = retained(r.since, r.until, &pins);
            if !keep {
                occupied[r.plane] = false;
            }
            keep
        });
        if WRITES[n as usize - 1] {
            let k = occupied
                .iter()
                .position(|o| !o)
                .unwrap_or_else(|| panic!("no free plane for version {n}: pins {pins:?}"));
            // SAFETY: loom checks this write against every read of the slot.
            store.slots[k].with_mut(|s| unsafe { *s = n });
            if let Some((plane, since)) = current {
                retired.push(Retired { plane, since, until: n });
            }
            occupied[k] = true;
            current = Some((k, n));
        }
        let (plane, _) = current.expect("version 1 writes the page");
        // SAFETY: each record is written once, here; loom checks it against the reads.
        store.records[n as usize - 1].with_mut(|r| unsafe { *r = plane });
        protocol::publish(&store.latest, n);
    }
}

/// An observer: takes `rounds` snapshots in pin word `pin` and checks that each shows its
/// version's page as it was published.
fn observe(store: &Store, pin: &LoomWord, rounds: usize, pin_latest: PinLatest) {
    for _ in 0..rounds {
        let v = pin_latest(&store.latest, pin);
        if v == UNPINNED {
            continue;
        }
        // SAFETY: loom checks that these reads are ordered after the producer's writes, and
        // before any later write of the same slot.
        let plane = store.records[v as usize - 1].with(|r| unsafe { *r });
        // SAFETY: as above.
        let page = store.slots[plane].with(|s| unsafe { *s });
        assert_eq!(page, written_at(v), "version {v} shows the page written at {page}");
        protocol::unpin(pin);
    }
}

type PinLatest = fn(&LoomWord, &LoomWord) -> u64;

/// Runs the producer against `rounds.len()` observers (observer `i` takes `rounds[i]`
/// snapshots) on a store of `planes` planes, in every interleaving loom explores: all of
/// them for one observer (seconds), those with at most 3 preemptions for more (loom's docs:
/// 2 or 3 find most bugs; two observers take seconds at 3, half a minute at 4).
fn check(planes: usize, rounds: &'static [usize], pin_latest: PinLatest) {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = (rounds.len() > 1).then_some(3);
    model.check(move || {
        let store = Arc::new(Store::new(rounds.len(), planes));
        let observers: Vec<_> = rounds
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let store = store.clone();
                thread::spawn(move || observe(&store, &store.pins[i], n, pin_latest))
            })
            .collect();
        produce(&store);
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
    check(3, &[2], protocol::pin_latest);
}

#[test]
fn two_observers_read_every_snapshot_whole_with_four_planes() {
    check(4, &[1, 1], protocol::pin_latest);
}

/// The bound is tight: with `O + 1` planes an observer pinning an old version leaves the
/// producer without a free plane.
#[test]
fn one_observer_can_exhaust_two_planes() {
    let message = panic_message(|| check(2, &[1], protocol::pin_latest));
    assert!(message.contains("no free plane"), "{message}");
}

/// `pin_latest` without its re-check of `latest`: the pin may land after the producer read
/// the pins, and the pinned version's slot is reused under the observer.
fn pin_latest_unchecked(latest: &LoomWord, pin: &LoomWord) -> u64 {
    let v = latest.load(Ordering::Acquire);
    if v != UNPINNED {
        pin.store(v, Ordering::SeqCst);
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
    let message = panic_message(|| {
        check(3, &[2], |latest, pin| protocol::pin_latest(&AcquireRelease(latest), &AcquireRelease(pin)))
    });
    assert!(is_overwrite(&message), "{message}");
}

/// The waiter's side of the wake-up handshake: whether it sleeps, on which wake value.
fn waiter(latest: &impl Word, wake: &impl Word, waiting: &impl Word) -> Option<u32> {
    let seq = protocol::wait_begin(latest, wake, waiting, UNPINNED);
    if seq.is_none() {
        // A sleeper stays counted until it is woken.
        protocol::wait_done(waiting);
    }
    seq
}

/// The publisher's side: publishes version 1; whether it wakes the sleepers.
fn publisher(latest: &impl Word, wake: &impl Word, waiting: &impl Word) -> bool {
    protocol::publish(latest, 1);
    protocol::announce(wake, 1);
    protocol::is_waiting(waiting)
}

/// The futex wake-up handshake, as `StoreReader::wait_newer` and `StoreWriter::wake` run it
/// (`protocol::wait_begin`, `announce`, `is_waiting`), without the futex: no wake-up is lost.
/// A waiter that decides to sleep read the wake word's old value (so a futex wait with it
/// returns at once, or is woken), and the publisher then sees it waiting and wakes it.
/// `weakened`: with every `SeqCst` access made acquire/release.
fn wake_handshake(weakened: bool) {
    loom::model(move || {
        let words = Arc::new([LoomWord::new(UNPINNED), LoomWord::new(0), LoomWord::new(0)]);
        let w = words.clone();
        let sleeps = thread::spawn(move || match weakened {
            false => waiter(&w[0], &w[1], &w[2]),
            true => waiter(&AcquireRelease(&w[0]), &AcquireRelease(&w[1]), &AcquireRelease(&w[2])),
        });
        let w = &words;
        let wakes = match weakened {
            false => publisher(&w[0], &w[1], &w[2]),
            true => publisher(&AcquireRelease(&w[0]), &AcquireRelease(&w[1]), &AcquireRelease(&w[2])),
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
