//! The publish / pin / reclaim protocol, written once over an abstract atomic word so that
//! the same functions run on shared memory in production and under the loom model checker in
//! `tests/model.rs`.
//!
//! Words involved (see the module docs of [`crate::store`] for the whole picture):
//! - `latest`: the newest published version, written only by the producer.
//! - `pin`: one word per held snapshot in the pin table, written only by its observer.
//!
//! The guarantee: if [`pin_latest`] returns `v`, every later [`read_pin`] of the producer
//! that decides which slots to reuse sees `v` (or a later value of that observer's pin), so no
//! page of `v` is overwritten while the observer holds it. It is a hazard-pointer handshake:
//! the observer stores its pin then re-reads `latest`; the producer stores `latest` then (in a
//! later publish) reads the pins. Both pairs are `SeqCst`, so at least one side sees the other.
use std::sync::atomic::Ordering;

/// A 64-bit atomic word, in shared memory or in a model.
pub trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
}

impl Word for std::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        std::sync::atomic::AtomicU64::store(self, value, order)
    }
}

/// The pin value of a free pin word.
pub const UNPINNED: u64 = 0;

/// Observer: pins the newest version and returns it (0 when nothing is published yet, in
/// which case nothing is pinned).
pub fn pin_latest(latest: &impl Word, pin: &impl Word) -> u64 {
    // SYNC: pairs with the Release (SeqCst) store in `publish`: the version's pages and
    // record are visible once its number is.
    let mut v = latest.load(Ordering::Acquire);
    loop {
        if v == UNPINNED {
            return UNPINNED;
        }
        // SYNC: store-then-load against the producer's store-then-load (`publish`, then
        // `read_pin`): SeqCst on all four makes at least one side see the other.
        pin.store(v, Ordering::SeqCst);
        let now = latest.load(Ordering::SeqCst);
        if now == v {
            return v;
        }
        v = now;
    }
}

/// Observer: gives a pin back. Every read of the pinned pages happens before this store.
pub fn unpin(pin: &impl Word) {
    // SYNC: Release pairs with the SeqCst load in `read_pin`: the producer reuses the slots
    // only after the observer's reads of them are done.
    pin.store(UNPINNED, Ordering::Release);
}

/// Producer: makes version `v` the newest, after its pages and record are written.
pub fn publish(latest: &impl Word, v: u64) {
    // SYNC: pairs with the Acquire/SeqCst loads in `pin_latest`.
    latest.store(v, Ordering::SeqCst);
}

/// Producer: reads one pin word before deciding which slots are free.
pub fn read_pin(pin: &impl Word) -> u64 {
    // SYNC: pairs with the SeqCst store in `pin_latest` and the Release store in `unpin`.
    pin.load(Ordering::SeqCst)
}

/// Whether a slot written at version `since` and superseded at version `until` holds a
/// page of some live version: the latest (always `>= until`, so never inside) or a pinned one.
pub fn retained(since: u64, until: u64, pins: &[u64]) -> bool {
    pins.iter().any(|&p| p != UNPINNED && since <= p && p < until)
}
