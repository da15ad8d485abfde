//! The versioned snapshot store: a pool of page slots in one memfd, a control block that
//! says where each version's pages are, and a pin table through which observers keep the
//! versions they read alive.
//!
//! # Layout
//! The producer's regions are laid end to end in one *page space* of `P` pages. The pool
//! memfd is an array of page *slots*; it grows by *planes* of `P` slots (address space, not
//! memory) up to [`layout::max_planes`]. Version `v` stores each page that changed since
//! `v - 1` in a free slot — any free slot: a page is not tied to a place — taking them lowest
//! first in page order, so that pages written together stay contiguous in the file; every
//! other page keeps its slot. A version's [`PageMap`] says, run by run, which slot holds
//! each page and at which version its bytes were written ([`pagemap`]). See [`layout`] for
//! the words of each shared file.
//!
//! # Memory
//! Free slots that hold memory form the *reserve* ([`slots`]): a publish writes into them
//! at the price of a copy, where a slot the kernel must first allocate costs ~9 copies
//! (measured: ~2.5 µs a fresh shared page, ~0.3 µs a copy). The reserve is kept at the most
//! pages one of the last [`writer::RESERVE_WINDOW`] publishes changed (capped by
//! `ProducerOptions::max_reserve`), and the rest is punched. So the store holds the latest
//! version, the pages pinned versions still need, and about one version's writes; a
//! producer that writes a moving front (a sweep) reuses the slots its trail freed. While
//! observers pin versions, the reserve also keeps what the pins held at their peak over the
//! last [`writer::PIN_WINDOW`] publishes, less what they hold now, so that the publishes
//! under the next pins find populated slots ([`writer::Freed::Reuse`]).
//!
//! # Protocol
//! Parties: one producer (writes the control block and the pool; reads the pin pages) and
//! any number of observers (read the control block and the pool through read-only
//! descriptors; each writes only its own pin page, [`pins`]).
//!
//! Publishing version `n` (producer, [`writer::StoreWriter::publish`]):
//! 1. *Reclaim*: read every pin (SeqCst). A slot written at version `since` and superseded at
//!    `until` is free when no live version lies in `[since, until)`. Live = the latest version
//!    `n - 1` (never inside: `until <= n - 1`) and every pin of an attached observer. An
//!    observer whose connection hung up (it died) is detached and its pins are ignored.
//! 2. *Copy*: copy each changed page into a free slot, the reserve's first; grow the pool by
//!    a plane when no slot is free. Live versions need at most one page space of slots each
//!    beyond what they share, so [`layout::max_planes`] (2 + one per possible pin) planes
//!    always suffice.
//! 3. *Record*: append the map of `n` to the record log (a seqlock ring: the mark word says
//!    which positions are being overwritten) and fill the version's ring entry (seqlock).
//! 4. *Release*: store `latest = n` (SeqCst, so also Release), then wake futex waiters.
//! 5. *Reclaim again, and trim*: the slots `n` superseded are free now unless a pin holds
//!    `n - 1`; they join the reserve, and what the reserve does not need is punched. Reading
//!    the pins after the store of `latest = n` is what makes this safe: an observer whose
//!    re-check saw `n - 1` stored its pin before that store (SeqCst), so this read sees it.
//!
//! Taking a snapshot (observer, [`reader::StoreReader`]): load `latest` (Acquire), store it in
//! a pin word (SeqCst), reload `latest` (SeqCst) and retry until both agree
//! ([`control::PinPage::pin_latest`]); then read the version's record, map its pages read-only. The
//! store/load pairs make it impossible for the producer's reclaim to miss a pin that the
//! observer's re-check accepted: the observer's re-check precedes the store of `n + 1`,
//! which precedes the reclaim after the release of `n + 1`, the first that could free a
//! page of `n`.
//! Releasing a pin is a Release store after the observer's last read of its pages.
//!
//! The producer never waits for an observer: it never takes a lock an observer holds, reads
//! pins without blocking, and an observer that stalls only keeps memory (at most the pages
//! changed since its pinned version). Observers never trust the control block: every field,
//! run and version number is checked before it is used.
//!
//! The protocol's atomics go through the typed views of [`control`], generic over the
//! atomic word ([`protocol::Word`]), which `tests/model.rs` runs under loom.
//!
//! # Fragmentation
//! Scattered writes scatter a version's pages over the pool, and a view needs one mapping
//! per run. A producer-side cleaner could copy stale pages next to fresh ones to keep runs
//! long; measured here, one `mmap` of a page costs 2.5–7.5 µs and copying a page 0.35 µs, so
//! the cheaper place to pay is the observer: it maps only runs long enough to be worth a
//! mapping and copies the rest into private memory, raising the bar until the mapped runs fit
//! a budget far below `vm.max_map_count` (see [`crate::observer`]). The producer's publish
//! cost stays proportional to what it changed, and the lowest-first placement keeps the pool
//! packed: memory is bounded by the reserve's trimming, not by moving live pages.
//!
//! The producer's own copies want long runs too: one copy a run, with non-temporal stores
//! (`Mapping::stream_in`), runs at memory bandwidth, while the same pages copied one by one
//! run at about half of it. Slots freed by scattered writes can leave a reserve of short
//! extents that would cut a later contiguous write into pieces (a simulation going from
//! updating every other page to updating everything). The writer counts the cuts; once they
//! outnumber an eighth of a publish's pages since the last time, that publish punches the
//! reserve and takes one stretch of fresh slots instead (a fault a page, once), and the
//! versions after it alternate between long stretches again.
//!
//! # Who may do what
//! Observers get the control block and the pool through read-only descriptors and map them
//! `PROT_READ`; both files are mode 0400 and sealed against shrinking (so no mapping loses its
//! pages) and against further seals; the control block also against growing and against any
//! new writable mapping (`F_SEAL_FUTURE_WRITE`). The pool cannot take that seal: the kernel
//! counts a hole punch as a write, and the pool returns memory by punching. An observer of
//! the same uid could still `fchmod` the pool and reopen it for writing through /proc — as it
//! could ptrace the producer — so the boundary against hostile code is the uid, enforced by
//! the endpoint (directory mode 0700, peer credentials); within it the read-only paths make a
//! buggy observer fault instead of corrupting snapshots. An observer writes only its own pin
//! page: by scribbling on it, it can delay reclamation (memory, at most one copy of the page
//! space per pin word), not change another observer's snapshot or stop the producer.
pub mod control;
pub mod layout;
pub mod pagemap;
pub mod pins;
pub mod protocol;
pub mod reader;
pub mod slots;
pub mod writer;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::layout::{Layout, PINS_PER_SLOT};
    use super::reader::StoreReader;
    use super::writer::{Freed, Source, StoreWriter};
    use crate::region::{Dtype, Region, RegionInfo};
    use crate::sys::mem::RegionMemory;
    use crate::sys::memfd::SharedFile;
    use crate::sys::page_size;

    use crate::test_rng::Rng;

    fn store(pages: usize, freed: Freed) -> (StoreWriter, Region<u8>) {
        let page = page_size();
        let memory = Arc::new(RegionMemory::allocate(pages * page).unwrap());
        let layout = Layout {
            page_size: page,
            page_count: pages,
            regions: vec![RegionInfo {
                name: "r".into(),
                dtype: Dtype::U8,
                shape: vec![pages * page],
                first_page: 0,
                pages,
                offset: 0,
            }],
            log_words: Layout::log_words_for(pages),
            pin_slots: 4,
            job: None,
        };
        let source = Source { first_page: 0, pages, offset: 0, bytes: pages * page, memory: memory.clone() };
        (StoreWriter::create(layout, vec![source], freed, 1.0).unwrap(), Region::new(memory, pages * page))
    }

    /// The byte every page of a pinned version holds, per page, read from the pool.
    fn read_version(reader: &StoreReader, v: u64) -> Vec<u8> {
        let map = reader.record(v).unwrap_or_else(|e| panic!("record of pinned version {v}: {e:?}"));
        let pool = reader.map_pool(reader.planes().unwrap()).unwrap();
        let page = page_size();
        let mut bytes = Vec::new();
        for (p, slot) in map.slots().into_iter().enumerate() {
            let at = reader.layout().slot_offset(slot) / 8;
            let words = &pool.words()[at..at + page / 8];
            let first = words[0].load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                words.iter().all(|w| w.load(std::sync::atomic::Ordering::Relaxed) == first),
                "page {p} of version {v} is torn"
            );
            bytes.push(first as u8);
        }
        bytes
    }

    /// Random writes, random pins: every pinned version reads back exactly as it was
    /// published, however many versions and slot reuses pass, and once every pin is gone the
    /// store holds one page per page: after one publish with `Freed::Release`, with
    /// `Freed::Reuse` once `PIN_WINDOW` publishes (more than `RESERVE_WINDOW`) have written
    /// nothing and pinned nothing.
    #[test]
    fn pinned_versions_never_change_and_memory_returns() {
        use super::writer::{PIN_WINDOW, RESERVE_WINDOW};
        pinned_versions_check(Freed::Reuse, PIN_WINDOW.max(RESERVE_WINDOW) as u64);
        pinned_versions_check(Freed::Release, 1);
    }

    fn pinned_versions_check(freed: Freed, settle: u64) {
        let pages = 64;
        let page = page_size();
        let (mut writer, mut region) = store(pages, freed);
        let (slot, pins) = writer.board().admit(1).unwrap().expect("a free observer slot");
        let [control, pool]: [SharedFile; 2] = writer.observer_files().unwrap();
        let reader = StoreReader::open([control, pool, pins], slot).unwrap();
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut expected: Vec<Vec<u8>> = vec![Vec::new()];
        let mut held: [Option<u64>; PINS_PER_SLOT] = [None; PINS_PER_SLOT];
        let mut current = vec![0u8; pages];
        for round in 0..400u64 {
            let mut dirty = Vec::new();
            let value = (round % 250 + 1) as u8;
            let (first, len) = if round == 0 { (0, pages) } else { (rng.below(pages), 1 + rng.below(8)) };
            for p in first..(first + len).min(pages) {
                region[p * page..(p + 1) * page].fill(value);
                current[p] = value;
            }
            dirty.push(first..(first + len).min(pages));
            if rng.below(3) == 0 {
                let p = rng.below(pages);
                region[p * page..(p + 1) * page].fill(value);
                current[p] = value;
                dirty.push(p..p + 1);
            }
            crate::track::coalesce(&mut dirty);
            let v = writer.publish(&dirty, &[], 1).unwrap().prepared.version;
            expected.push(current.clone());
            let k = rng.below(PINS_PER_SLOT);
            match held[k] {
                Some(_) if rng.below(2) == 0 => {
                    reader.unpin(k);
                    held[k] = None;
                }
                None => held[k] = Some(reader.pin_latest(k)),
                _ => {}
            }
            for pinned in held.iter().flatten() {
                assert_eq!(
                    read_version(&reader, *pinned),
                    expected[*pinned as usize],
                    "version {pinned} changed at version {v}"
                );
            }
        }
        for (k, h) in held.iter_mut().enumerate() {
            if h.take().is_some() {
                reader.unpin(k);
            }
        }
        for _ in 0..settle {
            writer.publish(&[], &[], 1).unwrap();
        }
        assert_eq!(writer.store_bytes(), (pages * page) as u64, "{freed:?}: memory held after every pin is gone");
        assert_eq!(read_version(&reader, reader.pin_latest(0)), current);
    }
}
