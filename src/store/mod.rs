//! The versioned snapshot store: a pool of page slots in one memfd, a control block that
//! says where each version's pages are, and a pin table through which observers keep the
//! versions they read alive.
//!
//! # Layout
//! The producer's regions are laid end to end in one *page space* of `P` pages. The pool is
//! a sequence of *planes*, each a full-size sparse stretch of the pool memfd: page `p` of
//! plane `k` sits at byte `(k * P + p) * PAGE`. Version `v` stores each page written since
//! `v - 1` in a free slot, preferring one plane for the whole publish so that contiguous
//! written pages stay contiguous in the file; every other page keeps its slot. A version's
//! [`PageMap`] says, run by run, in which plane each page lives and at which version its
//! bytes were written ([`pagemap`]). See [`layout`] for the words of each shared file.
//!
//! # Protocol
//! Parties: one producer (writes the control block and the pool; reads the pin table) and
//! any number of observers (read the control block and the pool through read-only
//! descriptors; each writes only its own slot of the pin table).
//!
//! Publishing version `n` (producer, [`writer::StoreWriter::publish`]):
//! 1. *Reclaim*: read every pin (SeqCst). A slot written at version `since` and superseded at
//!    `until` is free when no live version lies in `[since, until)`. Live = the latest version
//!    `n - 1` (never inside: `until <= n - 1`) and every pin of a live observer. A pin slot
//!    whose OFD lock no process holds belongs to a dead observer and is ignored.
//! 2. *Copy*: copy each written page into a free slot of the chosen plane; grow the pool by a
//!    plane when no slot is free (at most [`layout::MAX_PLANES`]).
//! 3. *Record*: append the map of `n` to the record log (a seqlock ring: the mark word says
//!    which positions are being overwritten) and fill the version's ring entry (seqlock).
//! 4. *Release*: store `latest = n` (SeqCst, so also Release), then wake futex waiters.
//! 5. *Punch*: return freed slots that this publish did not reuse to the kernel.
//!
//! Taking a snapshot (observer, [`reader::StoreReader`]): load `latest` (Acquire), store it in
//! a pin word (SeqCst), reload `latest` (SeqCst) and retry until both agree
//! ([`protocol::pin_latest`]); then read the version's record, map its pages read-only. The
//! store/load pairs make it impossible for the producer's reclaim to miss a pin that the
//! observer's re-check accepted: the observer's re-check precedes the store of `n + 1`,
//! which precedes the reclaim of publish `n + 2`, the first that could free a page of `n`.
//! Releasing a pin is a Release store after the observer's last read of its pages.
//!
//! The producer never waits for an observer: it never takes a lock an observer holds, reads
//! pins without blocking, and an observer that stalls only keeps memory (at most the pages
//! changed since its pinned version). Observers never trust the control block: every field,
//! run and version number is checked before it is used.
//!
//! The protocol's atomics go through [`protocol`], which `tests/model.rs` runs under loom.
pub mod layout;
pub mod pagemap;
pub mod protocol;
pub mod reader;
pub mod writer;

pub use pagemap::PageMap;
