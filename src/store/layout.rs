//! The shared-memory layout of the control block and the pin table: where each table of
//! the control block starts, and the checks an observer makes of it.
//!
//! Both files are arrays of little-endian 64-bit words accessed only through atomics, and
//! only through the typed views of [`super::control`], which own the offsets of their
//! fields. The control block (written by the producer, read-only for observers):
//!
//! ```text
//! word 0                 header (HEADER_WORDS words, ControlHeader)
//! regions_at             region table: REGION_WORDS words per region
//! versions_at            version ring: VERSION_WORDS words per entry, entry = version % ring
//!                        (VersionEntry)
//! observers_at           observer rows: OBSERVER_WORDS words per observer slot (ObserverRow)
//! log_at .. +log_words   record log: one page-map record per version, written round-robin
//!                        (RecordLog)
//! ```
//!
//! A region entry (REGION_WORDS words, fields in [`reg`]): 8 words of name (NUL-padded
//! UTF-8), dtype code, ndim, MAX_DIMS shape words (unused ones 0), first page, and
//! `pages | offset << 48`. Regions are written once, before any observer gets the file.
//!
//! A pin page (one page, one per attached observer, writable by that observer only; see
//! [`super::pins`] and [`super::control::PinPage`]): magic, slot, waiting count, then
//! PINS_PER_SLOT pin words.
use super::control::{ControlHeader, ObserverRow, RecordLog, VersionRing};
use super::protocol::Word;
use crate::region::{check_name, check_shape, Dtype, RegionInfo, MAX_DIMS};

/// The header's word offsets.
type Header = ControlHeader<'static>;

pub const MAGIC: u64 = u64::from_le_bytes(*b"TCASM\0CB");
pub const PINS_MAGIC: u64 = u64::from_le_bytes(*b"TCASM\0PT");
/// 2: region entries hold 8 shape words (1 held 4); page-map runs name a pool slot (three
/// words a run) instead of a plane; version entries carry the reserve's bytes.
pub const LAYOUT_VERSION: u64 = 2;

pub const HEADER_WORDS: usize = 64;
pub const REGION_WORDS: usize = reg::PLACEMENT + 1;
pub const VERSION_WORDS: usize = 8;
pub const VERSION_RING: usize = 1024;
pub const OBSERVER_WORDS: usize = 16;
/// Snapshots one observer may hold at once.
pub const PINS_PER_SLOT: usize = 8;

/// Words of a region entry, relative to its first.
pub mod reg {
    use crate::region::MAX_DIMS;
    /// 8 words: the name, NUL-padded UTF-8.
    pub const NAME: usize = 0;
    pub const DTYPE: usize = 8;
    pub const NDIM: usize = 9;
    /// MAX_DIMS words: the shape, unused dimensions 0.
    pub const SHAPE: usize = 10;
    pub const FIRST_PAGE: usize = SHAPE + MAX_DIMS;
    /// `pages | offset << 48`.
    pub const PLACEMENT: usize = FIRST_PAGE + 1;
}

pub const STATE_LIVE: u64 = 1;
pub const STATE_CLOSED: u64 = 2;

/// Limits an observer enforces on what it reads, so that a corrupt block cannot make it
/// allocate or map without bound.
pub const MAX_REGIONS: usize = 4096;
pub const MAX_PAGES: u64 = u32::MAX as u64;
pub const MAX_PIN_SLOTS: usize = 1024;

/// Planes a store may need: one per version that can be live at once (the latest, one being
/// published, and each pin), so that pins can delay reclamation but never exhaust slots.
pub fn max_planes(pin_slots: usize) -> usize {
    2 + PINS_PER_SLOT * pin_slots
}

/// Everything fixed about a store once it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub page_size: usize,
    pub page_count: usize,
    pub regions: Vec<RegionInfo>,
    pub log_words: usize,
    pub pin_slots: usize,
    /// The MPI job the producer is a rank of.
    pub job: Option<crate::job::Job>,
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Layout {
    pub fn regions_at(&self) -> usize {
        HEADER_WORDS
    }

    pub fn versions_at(&self) -> usize {
        self.regions_at() + REGION_WORDS * self.regions.len()
    }

    pub fn observers_at(&self) -> usize {
        self.versions_at() + VERSION_WORDS * VERSION_RING
    }

    pub fn log_at(&self) -> usize {
        round_up(self.observers_at() + OBSERVER_WORDS * self.pin_slots, self.page_size / 8)
    }

    pub fn control_words(&self) -> usize {
        self.log_at() + self.log_words
    }

    /// Bytes of a plane: one slot per page of the page space.
    pub fn plane_bytes(&self) -> usize {
        self.page_count * self.page_size
    }

    /// Byte offset of slot `slot` in the pool.
    pub fn slot_offset(&self, slot: u64) -> usize {
        slot as usize * self.page_size
    }

    /// The version ring of the control block `block` of this layout.
    pub fn version_ring<'a, W: Word>(&self, block: &'a [W]) -> VersionRing<'a, W> {
        VersionRing::new(&block[self.versions_at()..self.observers_at()])
    }

    /// The record log of the control block `block` of this layout.
    pub fn record_log<'a, W: Word>(&self, block: &'a [W]) -> RecordLog<'a, W> {
        RecordLog::new(&block[self.log_at()..self.control_words()], &block[ControlHeader::<W>::LOG_MARK])
    }

    /// The row of observer slot `slot` in the control block `block` of this layout.
    pub fn observer_row<'a, W: Word>(&self, block: &'a [W], slot: usize) -> ObserverRow<'a, W> {
        ObserverRow::new(&block[self.observers_at() + slot * OBSERVER_WORDS..])
    }

    /// Words of the largest possible record: one run per page.
    pub fn max_record_words(page_count: usize) -> usize {
        RecordLog::<std::sync::atomic::AtomicU64>::record_words(page_count)
    }

    /// A log that holds at least four largest records and 1 MiB.
    pub fn log_words_for(page_count: usize) -> usize {
        (4 * Self::max_record_words(page_count)).max(1 << 17)
    }

    /// The header and region table as words, for the producer to write.
    pub fn encode(&self, producer_pid: u32) -> Vec<(usize, u64)> {
        let mut w = vec![
            (Header::MAGIC, MAGIC),
            (Header::LAYOUT, LAYOUT_VERSION),
            (Header::PAGE_SIZE, self.page_size as u64),
            (Header::PAGE_COUNT, self.page_count as u64),
            (Header::REGION_COUNT, self.regions.len() as u64),
            (Header::VERSION_RING, VERSION_RING as u64),
            (Header::REGIONS_AT, self.regions_at() as u64),
            (Header::VERSIONS_AT, self.versions_at() as u64),
            (Header::LOG_AT, self.log_at() as u64),
            (Header::LOG_WORDS, self.log_words as u64),
            (Header::PRODUCER_PID, producer_pid as u64),
            (Header::PIN_SLOTS, self.pin_slots as u64),
            (Header::OBSERVERS_AT, self.observers_at() as u64),
            (Header::JOB, crate::job::Job::to_words(self.job)[0]),
            (Header::JOB_LAUNCH, crate::job::Job::to_words(self.job)[1]),
        ];
        for (i, r) in self.regions.iter().enumerate() {
            let at = self.regions_at() + i * REGION_WORDS;
            let mut name = [0u8; 64];
            name[..r.name.len()].copy_from_slice(r.name.as_bytes());
            for k in 0..8 {
                w.push((at + reg::NAME + k, u64::from_le_bytes(name[k * 8..k * 8 + 8].try_into().unwrap())));
            }
            w.push((at + reg::DTYPE, r.dtype as u64));
            w.push((at + reg::NDIM, r.shape.len() as u64));
            for (k, d) in r.shape.iter().enumerate() {
                w.push((at + reg::SHAPE + k, *d as u64));
            }
            w.push((at + reg::FIRST_PAGE, r.first_page as u64));
            w.push((at + reg::PLACEMENT, r.pages as u64 | (r.offset as u64) << 48));
        }
        w
    }

    /// Reads and checks a layout from the words of a control block; `read(i)` loads word `i`
    /// and `len` is the number of words mapped. Every field is checked against the others and
    /// against this machine, because the block is input from another process.
    pub fn decode(read: &dyn Fn(usize) -> u64, len: usize) -> Result<Layout, String> {
        if len < HEADER_WORDS {
            return Err(format!("{len} words is too short for a header"));
        }
        if read(Header::MAGIC) != MAGIC {
            return Err(format!("bad magic {:#x}: not a tcasm control block", read(Header::MAGIC)));
        }
        let layout = read(Header::LAYOUT);
        if layout != LAYOUT_VERSION {
            return Err(format!(
                "layout version {layout}, this build reads {LAYOUT_VERSION}: use the same tcasm release on both sides"
            ));
        }
        let page_size = read(Header::PAGE_SIZE);
        if page_size != crate::sys::page_size() as u64 {
            return Err(format!("page size {page_size} differs from this machine's"));
        }
        let page_count = read(Header::PAGE_COUNT);
        if page_count == 0 || page_count > MAX_PAGES {
            return Err(format!("page count {page_count} out of range"));
        }
        let region_count = read(Header::REGION_COUNT) as usize;
        if region_count == 0 || region_count > MAX_REGIONS {
            return Err(format!("region count {region_count} out of range"));
        }
        if read(Header::VERSION_RING) != VERSION_RING as u64 {
            return Err(format!("version ring of {} entries, expected {VERSION_RING}", read(Header::VERSION_RING)));
        }
        let pin_slots = read(Header::PIN_SLOTS) as usize;
        if pin_slots == 0 || pin_slots > MAX_PIN_SLOTS {
            return Err(format!("pin slot count {pin_slots} out of range"));
        }
        let page_count = page_count as usize;
        let page_size = page_size as usize;
        let log_words = read(Header::LOG_WORDS) as usize;
        if log_words < Self::log_words_for(page_count) || log_words > 4 * Self::log_words_for(page_count) {
            return Err(format!("record log of {log_words} words does not fit {page_count} pages"));
        }
        let mut regions = Vec::with_capacity(region_count);
        let job = crate::job::Job::from_words([read(Header::JOB), read(Header::JOB_LAUNCH)])?;
        let mut l = Layout { page_size, page_count, regions: Vec::new(), log_words, pin_slots, job };
        // The table sizes depend on the region count; check offsets before reading entries.
        l.regions = vec![dummy_region(); region_count];
        for (field, want) in [
            (Header::REGIONS_AT, l.regions_at()),
            (Header::VERSIONS_AT, l.versions_at()),
            (Header::OBSERVERS_AT, l.observers_at()),
            (Header::LOG_AT, l.log_at()),
        ] {
            if read(field) != want as u64 {
                return Err(format!("header word {field} is {}, expected {want}", read(field)));
            }
        }
        if len < l.control_words() {
            return Err(format!("block has {len} words, its header needs {}", l.control_words()));
        }
        let mut pages_seen = 0usize;
        for i in 0..region_count {
            let at = l.regions_at() + i * REGION_WORDS;
            let mut name = Vec::with_capacity(64);
            for k in 0..8 {
                name.extend_from_slice(&read(at + reg::NAME + k).to_le_bytes());
            }
            let end = name.iter().position(|&b| b == 0).unwrap_or(64);
            let name = String::from_utf8(name[..end].to_vec()).map_err(|_| format!("region {i}: name is not UTF-8"))?;
            check_name(&name).map_err(|e| format!("region {i}: {e}"))?;
            let dtype = Dtype::from_code(read(at + reg::DTYPE) as u32)
                .ok_or_else(|| format!("region {name:?}: unknown element type code {}", read(at + reg::DTYPE)))?;
            let ndim = read(at + reg::NDIM) as usize;
            if ndim == 0 || ndim > MAX_DIMS {
                return Err(format!("region {name:?}: {ndim} dimensions"));
            }
            let shape: Vec<usize> = (0..ndim).map(|k| read(at + reg::SHAPE + k) as usize).collect();
            let elements = check_shape(&name, &shape)?;
            let first_page = read(at + reg::FIRST_PAGE) as usize;
            let packed = read(at + reg::PLACEMENT);
            let pages = (packed & ((1 << 48) - 1)) as usize;
            let offset = (packed >> 48) as usize;
            let bytes = elements.checked_mul(dtype.size()).ok_or("region size overflows")?;
            if offset >= page_size
                || !offset.is_multiple_of(dtype.size())
                || first_page != pages_seen
                || pages != (offset + bytes).div_ceil(page_size)
                || first_page + pages > page_count
            {
                return Err(format!(
                    "region {name:?}: placement (first page {first_page}, {pages} pages, offset {offset}) does not fit its {bytes} bytes"
                ));
            }
            if regions.iter().any(|r: &RegionInfo| r.name == name) {
                return Err(format!("region {name:?} appears twice"));
            }
            pages_seen += pages;
            regions.push(RegionInfo { name, dtype, shape, first_page, pages, offset });
        }
        if pages_seen != page_count {
            return Err(format!("regions cover {pages_seen} pages, header says {page_count}"));
        }
        l.regions = regions;
        Ok(l)
    }
}

fn dummy_region() -> RegionInfo {
    RegionInfo { name: String::new(), dtype: Dtype::U8, shape: vec![1], first_page: 0, pages: 0, offset: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Layout {
        let page = crate::sys::page_size();
        Layout {
            page_size: page,
            page_count: 6,
            regions: vec![
                RegionInfo {
                    name: "t".into(),
                    dtype: Dtype::F64,
                    shape: vec![16, 32],
                    first_page: 0,
                    pages: 1,
                    offset: 0,
                },
                RegionInfo {
                    name: "u".into(),
                    dtype: Dtype::I32,
                    shape: vec![4000],
                    first_page: 1,
                    pages: 4,
                    offset: 8,
                },
                RegionInfo {
                    name: "f".into(),
                    dtype: Dtype::F32,
                    shape: vec![2, 1, 3, 1, 2, 1, 2, 2],
                    first_page: 5,
                    pages: 1,
                    offset: 0,
                },
            ],
            log_words: Layout::log_words_for(6),
            pin_slots: 8,
            job: Some(crate::job::Job { rank: 1, size: 3, launch: 99 }),
        }
    }

    fn words_of(l: &Layout) -> Vec<u64> {
        let mut w = vec![0u64; l.control_words()];
        for (i, v) in l.encode(1) {
            w[i] = v;
        }
        w
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let l = sample();
        let w = words_of(&l);
        assert_eq!(Layout::decode(&|i| w[i], w.len()).unwrap(), l);
    }

    #[test]
    fn every_header_field_is_checked() {
        let l = sample();
        for field in [
            Header::MAGIC,
            Header::LAYOUT,
            Header::PAGE_SIZE,
            Header::PAGE_COUNT,
            Header::REGION_COUNT,
            Header::VERSION_RING,
            Header::REGIONS_AT,
            Header::VERSIONS_AT,
            Header::OBSERVERS_AT,
            Header::LOG_AT,
            Header::LOG_WORDS,
            Header::PIN_SLOTS,
        ] {
            let mut w = words_of(&l);
            w[field] = w[field].wrapping_add(1 << 40);
            assert!(Layout::decode(&|i| w[i], w.len()).is_err(), "field {field} not checked");
        }
        let w = words_of(&l);
        assert!(Layout::decode(&|i| w[i], w.len() - 1).is_err(), "truncation not checked");
    }

    #[test]
    fn region_entries_are_checked() {
        let l = sample();
        let at = l.regions_at() + REGION_WORDS;
        for k in [reg::DTYPE, reg::NDIM, reg::SHAPE, reg::FIRST_PAGE, reg::PLACEMENT] {
            let mut w = words_of(&l);
            w[at + k] = w[at + k].wrapping_add(1 << 20);
            assert!(Layout::decode(&|i| w[i], w.len()).is_err(), "region word {k} not checked");
        }
        for name in [*b"bad name", *b"t\0\0\0\0\0\0\0", [0xff; 8]] {
            let mut w = words_of(&l);
            w[at] = u64::from_le_bytes(name);
            assert!(Layout::decode(&|i| w[i], w.len()).is_err(), "region name {name:?} accepted");
        }
    }
}
