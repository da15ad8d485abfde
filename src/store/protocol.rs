//! The publish / pin / reclaim protocol, written once over an abstract atomic word so that
//! the same code runs on shared memory in production and under the loom model checker in
//! `tests/model.rs`.
//!
//! Words involved (see the module docs of [`crate::store`] for the whole picture):
//! - `latest`: the newest published version, written only by the producer
//!   ([`ControlHeader::publish`]).
//! - `pin`: one word per held snapshot in an observer's pin page, written only by its
//!   observer ([`PinPage::pin_latest`], [`PinPage::unpin`]) and read by the producer
//!   ([`PinPage::pins`]) before it [`reclaim`]s.
//!
//! The guarantee: if `pin_latest` returns `v`, every later read of the pins by the producer
//! that decides which slots to reuse sees `v` (or a later value of that observer's pin), so
//! no page of `v` is overwritten while the observer holds it. It is a hazard-pointer
//! handshake: the observer stores its pin then re-reads `latest`; the producer stores
//! `latest` then (in a later publish) reads the pins. Both pairs are `SeqCst`, so at least
//! one side sees the other.
//!
//! The wake-up handshake is the same shape: an observer about to sleep on the futex word
//! `wake` counts itself in its `waiting` word, then reads `wake`, then re-checks `latest`
//! ([`PinPage::wait_begin`]); the producer stores `latest`, then `wake`
//! ([`ControlHeader::announce`]), then reads the `waiting` words ([`PinPage::is_waiting`]).
//! A sleeper either read the new `wake` (so its futex wait returns at once) or is seen
//! waiting and woken: no wake-up is lost.
//!
//! The version ring's entries and the record log are seqlocks ([`VersionEntry`],
//! [`RecordLog`]): an observer reads a record or an entry of a version it pinned, and the
//! producer may overwrite it meanwhile (the pin keeps the version's pages, not its record);
//! the reader then sees that it was overwritten and takes a newer version.
//!
//! [`ControlHeader::publish`]: super::control::ControlHeader::publish
//! [`ControlHeader::announce`]: super::control::ControlHeader::announce
//! [`PinPage::pin_latest`]: super::control::PinPage::pin_latest
//! [`PinPage::unpin`]: super::control::PinPage::unpin
//! [`PinPage::pins`]: super::control::PinPage::pins
//! [`PinPage::wait_begin`]: super::control::PinPage::wait_begin
//! [`PinPage::is_waiting`]: super::control::PinPage::is_waiting
//! [`VersionEntry`]: super::control::VersionEntry
//! [`RecordLog`]: super::control::RecordLog
use std::sync::atomic::Ordering;

/// A 64-bit atomic word, in shared memory or in a model, and the fences that order accesses
/// to such words.
pub trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fetch_add(&self, value: u64, order: Ordering) -> u64;
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64;
    /// A fence of the memory model these words live in.
    fn fence(order: Ordering);
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
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

/// The pin value of a free pin word.
pub const UNPINNED: u64 = 0;

/// Whether a slot written at version `since` and superseded at version `until` holds a
/// page of some live version: the latest (always `>= until`, so never inside) or a pinned one.
pub fn retained(since: u64, until: u64, pins: &[u64]) -> bool {
    pins.iter().any(|&p| p != UNPINNED && since <= p && p < until)
}

/// Consecutive slots that held pages `since` wrote and that version `until` superseded.
#[derive(Clone, Copy, Debug)]
pub struct Retired {
    pub slot: u64,
    pub count: u64,
    pub since: u64,
    pub until: u64,
}

/// Producer: frees (calls `free` on, and forgets) every retired stretch that no live version
/// needs: `live` holds the pins read after the last publish (and may hold the latest
/// version).
pub fn reclaim(retired: &mut Vec<Retired>, live: &[u64], mut free: impl FnMut(&Retired)) {
    retired.retain(|r| {
        if retained(r.since, r.until, live) {
            return true;
        }
        free(r);
        false
    });
}
