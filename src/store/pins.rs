//! Pin pages: how observers tell the producer which versions they hold.
//!
//! Each attached observer gets a one-page memfd of its own, created by the producer's
//! endpoint thread when the observer connects, sealed against resizing, and handed to that
//! observer only. So no observer can touch another's pins: in one table for all, which every
//! observer could write, a hostile or buggy observer could clear another's pin and have the
//! producer reuse the slots of a snapshot still being read (docs/design.md#threat-model).
//!
//! The observer writes its pins and its waiting count; the producer only reads them. An
//! observer's liveness is its connection: when it hangs up (exits, crashes, is killed) the
//! endpoint thread calls [`PinBoard::leave`] and its pins stop counting at the next publish.
//! A stopped observer (SIGSTOP) keeps its connection and its pins: it holds memory, at most
//! one copy of the page space per version it pins, never more planes than
//! [`super::layout::max_planes`].
use std::sync::Mutex;

use super::control::PinPage;
use super::layout::PINS_PER_SLOT;
use crate::sys::mem::{Access, Mapping};
use crate::sys::memfd::SharedFile;
use crate::sys::page_size;

/// An attached observer: its pin page, mapped, and its process.
struct Attached {
    mapping: Mapping,
    pid: u32,
}

impl Attached {
    fn page(&self) -> PinPage<'_> {
        PinPage::new(self.mapping.words())
    }
}

/// The pin pages of the attached observers, by slot.
pub struct PinBoard {
    pages: Mutex<Vec<Option<Attached>>>,
}

impl PinBoard {
    pub fn new(slots: usize) -> PinBoard {
        PinBoard { pages: Mutex::new((0..slots).map(|_| None).collect()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Attached>>> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pin page for a new observer (process `pid`): its slot and the file to hand it,
    /// or `None` when every slot is taken.
    pub fn admit(&self, pid: u32) -> std::io::Result<Option<(usize, SharedFile)>> {
        let mut pages = self.lock();
        let Some(slot) = pages.iter().position(Option::is_none) else { return Ok(None) };
        let file = SharedFile::create("tcasm-pins")?;
        file.set_len(page_size() as u64)?;
        let mapping = Mapping::shared(&file, 0, page_size(), Access::ReadWrite).map_err(std::io::Error::from)?;
        file.seal_size()?;
        PinPage::new(mapping.words()).init(slot);
        pages[slot] = Some(Attached { mapping, pid });
        Ok(Some((slot, file)))
    }

    /// The observer in `slot` hung up: its pins no longer count.
    pub fn leave(&self, slot: usize) {
        if let Some(page) = self.lock().get_mut(slot) {
            *page = None;
        }
    }

    /// Calls `row(slot, pid, pins)` for every attached observer, `pins` being its pinned
    /// versions (0 for a free pin word), read as [`PinPage::pins`] reads them.
    pub fn read(&self, row: &mut dyn FnMut(usize, u32, &[u64; PINS_PER_SLOT])) {
        for (slot, attached) in self.lock().iter().enumerate() {
            let Some(attached) = attached else { continue };
            row(slot, attached.pid, &attached.page().pins());
        }
    }

    /// Whether some observer sleeps in `wait_newer`.
    pub fn any_waiting(&self) -> bool {
        // The wake-up handshake with StoreReader::wait_newer (PinPage::wait_begin).
        self.lock().iter().flatten().any(|a| a.page().is_waiting())
    }

    /// Observers attached now.
    pub fn observers(&self) -> usize {
        self.lock().iter().flatten().count()
    }
}
