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
//!
//! The wake-up handshake is the same shape: an observer about to sleep on the futex word
//! `wake` counts itself in its `waiting` word, then reads `wake`, then re-checks `latest`
//! ([`wait_begin`]); the producer stores `latest`, then `wake` ([`announce`]), then reads the
//! `waiting` words ([`is_waiting`]). A sleeper either read the new `wake` (so its futex wait
//! returns at once) or is seen waiting and woken: no wake-up is lost.
use std::sync::atomic::Ordering;

/// A 64-bit atomic word, in shared memory or in a model.
pub trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fetch_add(&self, value: u64, order: Ordering) -> u64;
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64;
}

impl Word for std::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        std::sync::atomic::AtomicU64::store(self, value, order)
    }
    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::fetch_add(self, value, order)
    }
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::fetch_sub(self, value, order)
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

/// Observer, before sleeping until a version newer than `than`: counts itself in `waiting`,
/// reads the futex word `wake`, and re-checks `latest`. Returns the value of `wake` to sleep
/// on (a futex wait with it returns at once if a publish changed it since), or `None` when a
/// newer version is there already. Either way [`wait_done`] follows.
pub fn wait_begin(latest: &impl Word, wake: &impl Word, waiting: &impl Word, than: u64) -> Option<u32> {
    // SYNC: store-then-load against the producer's store-then-load (`announce`, then
    // `is_waiting`): SeqCst on all four makes at least one side see the other.
    waiting.fetch_add(1, Ordering::SeqCst);
    let seq = wake.load(Ordering::SeqCst) as u32;
    // SYNC: pairs with the SeqCst store in `publish`, which comes before `announce`.
    (latest.load(Ordering::Acquire) <= than).then_some(seq)
}

/// Observer: no longer sleeping (woken, timed out, or never slept).
pub fn wait_done(waiting: &impl Word) {
    waiting.fetch_sub(1, Ordering::SeqCst);
}

/// Producer, after [`publish`] of version `v`: changes the futex word, so that an observer
/// about to sleep on its old value does not.
pub fn announce(wake: &impl Word, v: u64) {
    // SYNC: the store of the store-then-load pair with `wait_begin` (then `is_waiting`).
    wake.store(v & 0xffff_ffff, Ordering::SeqCst);
}

/// Producer, after [`announce`]: whether the observer of this `waiting` word may sleep and
/// must be woken.
pub fn is_waiting(waiting: &impl Word) -> bool {
    // SYNC: the load of the store-then-load pair with `wait_begin`.
    waiting.load(Ordering::SeqCst) != 0
}
