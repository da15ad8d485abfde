//! Everything an observer reads from a producer is input from another process: a buggy or
//! hostile producer (or a stray process that bound the endpoint's socket) must get an error
//! from `Observer::attach` or `latest()`, never a panic, a read outside a mapping, a SIGBUS or
//! a hang.
//!
//! Three levels, each run on random and mutated input:
//! - `Layout::decode` and `PageMap::validate` alone (proptest): never panic, never read a
//!   word past the block, and what they accept keeps every use of it in bounds.
//! - A whole store forged by hand ([`Forge`]: a control block from `Layout::encode` plus the
//!   words of one published version, a pool, a pin page), mutated and read through
//!   `StoreReader` in this process (proptest).
//! - End to end: this test process binds an endpoint socket itself and plays the producer,
//!   handing an observer crafted files and handshakes ([`CASES`]). Each observer runs in a
//!   child process (this binary re-executed with `TCASM_TEST_ROLE=observer`) under a
//!   watchdog, so a hang, a panic or a crash fails its case instead of the test runner.
mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tcasm::endpoint::HELLO;
use tcasm::store::control::{ControlHeader, PinPage, VersionEntry};
use tcasm::store::layout::{
    Layout, HEADER_WORDS, LAYOUT_VERSION, MAGIC, PINS_MAGIC, REGION_WORDS, STATE_LIVE, VERSION_WORDS,
};
use tcasm::store::pagemap::{PageMap, Run, RUN_WORDS};
use tcasm::store::reader::StoreReader;
use tcasm::sys::fdpass;
use tcasm::sys::memfd::SharedFile;
use tcasm::sys::page_size;
use tcasm::{Dtype, Observer, ReadError, RegionInfo};

const ROLE: &str = "TCASM_TEST_ROLE";
const NAME: &str = "TCASM_TEST_NAME";
/// Pages of the forged store's one region, `REGION` (u64).
const PAGES: usize = 64;
const REGION: &str = "field";
/// How long one case's observer may take (a deadline that only catches a hang: a case takes
/// milliseconds), and how long it waits for a handshake: long enough that a busy machine's
/// hostile producer answers in time, since only the "no answer" case waits it out.
const CASE_LIMIT: Duration = Duration::from_secs(60);
const ATTACH_WAIT: Duration = Duration::from_secs(5);

fn layout() -> Layout {
    let page = page_size();
    Layout {
        page_size: page,
        page_count: PAGES,
        regions: vec![RegionInfo {
            name: REGION.into(),
            dtype: Dtype::U64,
            shape: vec![PAGES * page / 8],
            first_page: 0,
            pages: PAGES,
            offset: 0,
        }],
        log_words: Layout::log_words_for(PAGES),
        pin_slots: 2,
        job: None,
    }
}

/// Version 1's page map: `n` runs of equal length alternating between planes 0 and 1 (a
/// page `p` of plane `k` is slot `k * PAGES + p`). Two runs are mapped into a view; four or
/// more make the observer copy the window instead.
fn alternating(n: usize) -> Vec<Run> {
    let len = PAGES / n;
    (0..n).map(|i| run(i * len, len, i % 2, 1)).collect()
}

/// A run of `count` pages from `first`, in plane `plane`'s slots for them.
fn run(first: usize, count: usize, plane: usize, written: u64) -> Run {
    Run { first: first as u32, count: count as u32, slot: (plane * PAGES + first) as u64, written }
}

/// What every word of page `page` of plane `plane` holds in a forged pool.
fn pool_word(plane: u16, page: usize) -> u64 {
    u64::from(plane) << 32 | page as u64
}

/// The words of a store made by hand, as a producer would leave them after publishing
/// version 1 with page map `runs` (record at log position 0) into a pool of two planes.
struct Forge {
    layout: Layout,
    words: Vec<u64>,
}

impl Forge {
    fn new(runs: &[Run]) -> Forge {
        let layout = layout();
        let mut words = vec![0; layout.control_words()];
        for (i, v) in layout.encode(1) {
            words[i] = v;
        }
        words[<ControlHeader>::STATE] = STATE_LIVE;
        words[<ControlHeader>::PLANES] = 2;
        words[<ControlHeader>::LATEST] = 1;
        words[<ControlHeader>::WAKE] = 1;
        let mut forge = Forge { layout, words };
        forge.set_entry(<VersionEntry>::VERSION, 1);
        forge.set_entry(<VersionEntry>::RECORD, 0);
        forge.set_record(0, 1);
        forge.set_record(1, runs.len() as u64);
        for (i, r) in runs.iter().enumerate() {
            for (j, w) in r.encode().into_iter().enumerate() {
                forge.set_record(2 + RUN_WORDS * i + j, w);
            }
        }
        forge
    }

    /// Sets word `i` of version 1's ring entry, or of its record.
    fn set_entry(&mut self, i: usize, value: u64) {
        let at = self.layout.versions_at() + VERSION_WORDS + i;
        self.words[at] = value;
    }

    fn set_record(&mut self, i: usize, value: u64) {
        let at = self.layout.log_at() + i;
        self.words[at] = value;
    }

    fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

/// A memfd holding `bytes`.
fn memfd(name: &str, bytes: &[u8]) -> SharedFile {
    let file = SharedFile::create(name).unwrap();
    file.set_len(bytes.len() as u64).unwrap();
    file.try_clone().unwrap().into_file().write_all_at(bytes, 0).unwrap();
    file
}

/// A pool of `planes` full planes, each page filled with its `pool_word`.
fn pool(planes: u16) -> SharedFile {
    let page = page_size();
    let mut bytes = Vec::with_capacity(planes as usize * PAGES * page);
    for k in 0..planes {
        for p in 0..PAGES {
            bytes.extend((0..page / 8).flat_map(|_| pool_word(k, p).to_le_bytes()));
        }
    }
    memfd("forged-pool", &bytes)
}

/// A pin page for observer slot `slot`.
fn pin_page(slot: u64) -> SharedFile {
    let mut words = vec![0u64; page_size() / 8];
    words[<PinPage>::MAGIC] = PINS_MAGIC;
    words[<PinPage>::SLOT] = slot;
    memfd("forged-pins", &words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<_>>())
}

/// The three files of a forged store, sealed as a producer seals them unless `sealed` is
/// false; the producer's own (writable) descriptors.
struct Files {
    control: SharedFile,
    pool: SharedFile,
    pins: SharedFile,
}

impl Files {
    fn new(control: &[u8], pool_planes: u16, sealed: bool) -> Files {
        let files = Files { control: memfd("forged-control", control), pool: pool(pool_planes), pins: pin_page(0) };
        if sealed {
            files.control.seal_for_observers(false).unwrap();
            files.pool.seal_for_observers(true).unwrap();
            files.pins.seal_size().unwrap();
        }
        files
    }

    /// What an observer receives: the control block and pool read-only, its pin page.
    fn for_observer(&self) -> [SharedFile; 3] {
        [self.control.reopen(false).unwrap(), self.pool.reopen(false).unwrap(), self.pins.try_clone().unwrap()]
    }
}

// ---- Level 1: the validation functions alone ----

/// Values that sit on the edges of what a field may hold.
fn edgy() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..=300u64,
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1),
        Just(1 << 32),
        Just((1 << 48) - 1),
        Just(1 << 48),
        Just(page_size() as u64),
        (0..4u32).prop_map(|k| 1u64 << (60 + k)),
    ]
}

/// Decodes the first `len` of `words`; a read past them is a failure (a panic here).
fn decode(words: &[u64], len: usize) -> Result<Layout, String> {
    Layout::decode(&|i| *words[..len].get(i).unwrap_or_else(|| panic!("decode read word {i} of {len}")), len)
}

/// What an accepted layout promises its users: regions end to end inside the page space,
/// each big enough for its elements, and a block long enough for every table.
fn check_accepted(l: &Layout, len: usize) {
    assert!(l.control_words() <= len, "accepted a block of {len} words needing {}", l.control_words());
    let mut next = 0;
    for r in &l.regions {
        assert_eq!(r.first_page, next);
        assert!(r.offset < l.page_size && r.offset + r.bytes() <= r.pages * l.page_size, "{r:?}");
        next += r.pages;
    }
    assert_eq!(next, l.page_count);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random words (with the right magic and layout version half the time, so that the
    /// checks past them run) are refused, or decode to a layout that keeps its promises.
    #[test]
    fn decode_survives_random_words(words in prop::collection::vec(edgy(), 0..120), magic in any::<bool>()) {
        let mut words = words;
        if magic && words.len() > <ControlHeader>::LAYOUT {
            words[<ControlHeader>::MAGIC] = MAGIC;
            words[<ControlHeader>::LAYOUT] = LAYOUT_VERSION;
        }
        if let Ok(l) = decode(&words, words.len()) {
            check_accepted(&l, words.len());
        }
    }

    /// Random runs are refused, or make a map every consumer can use within bounds.
    #[test]
    fn validate_survives_random_runs(
        runs in prop::collection::vec((0..80u32, 0..80u32, 0..400u64, 0..12u64), 0..12),
        pages in 1..70usize,
        slots in 1..300u64,
        version in 1..10u64,
    ) {
        let map = PageMap { runs: runs.into_iter().map(|(first, count, slot, written)| Run { first, count, slot, written }).collect() };
        if map.validate(pages, slots, version).is_ok() {
            assert_eq!(map.slots().len(), pages);
            for (r, slot) in map.mapping_runs() {
                assert!(r.end <= pages && slot + r.len() as u64 <= slots);
            }
            assert!(map.changed_since(0).iter().all(|r| r.end <= pages));
        }
    }

    /// Maps a producer builds are accepted; any one field of a run changed to break the map
    /// (a gap, an overlap, a slot the pool lacks, a version not in `1..=5`) is refused.
    #[test]
    fn validate_accepts_real_maps_and_refuses_mutants(
        pages in prop::collection::vec((0..3u16, 1..6u64), 1..50),
        run in any::<prop::sample::Index>(),
        field in 0..4usize,
        value in edgy(),
    ) {
        let n = pages.len() as u64;
        let slot: Vec<u64> = pages.iter().enumerate().map(|(p, &(plane, _))| u64::from(plane) * n + p as u64).collect();
        let written: Vec<u64> = pages.iter().map(|&(_, w)| w).collect();
        let mut map = PageMap::from_pages(&slot, &written);
        prop_assert!(map.validate(pages.len(), 3 * n, 5).is_ok());
        let i = run.index(map.runs.len());
        let r = &mut map.runs[i];
        match field {
            0 => r.first += 1 + value as u32 % 1000,
            1 => r.count += 1 + value as u32 % 1000,
            2 => r.slot = 3 * n + value % (1 << 40),
            _ => r.written = if value % 2 == 0 { 0 } else { 6 + value % (1 << 40) },
        }
        prop_assert!(map.validate(pages.len(), 3 * n, 5).is_err(), "{:?}", map);
    }
}

/// A layout a producer could have made: one to four regions of any element type, shape and
/// in-page offset, end to end.
fn valid_layout() -> impl Strategy<Value = Layout> {
    let region = (0..Dtype::ALL.len(), prop::collection::vec(1..300usize, 1..4), 0..64usize);
    prop::collection::vec(region, 1..5).prop_map(|specs| {
        let page = page_size();
        let mut regions = Vec::new();
        let mut first_page = 0;
        for (i, (dtype, shape, at)) in specs.into_iter().enumerate() {
            let dtype = Dtype::ALL[dtype];
            let offset = at * 56 / dtype.size() * dtype.size();
            let bytes = shape.iter().product::<usize>() * dtype.size();
            let pages = (offset + bytes).div_ceil(page);
            regions.push(RegionInfo { name: format!("r{i}"), dtype, shape, first_page, pages, offset });
            first_page += pages;
        }
        Layout {
            page_size: page,
            page_count: first_page,
            regions,
            log_words: Layout::log_words_for(first_page),
            pin_slots: 8,
            job: None,
        }
    })
}

/// A change to one word: one more, one less, a bit flipped, or an edge value.
fn mutation() -> impl Strategy<Value = (usize, u64)> {
    (0..4usize, edgy())
}

fn mutate(word: u64, (kind, value): (usize, u64)) -> u64 {
    match kind {
        0 => word.wrapping_add(1),
        1 => word.wrapping_sub(1),
        2 => word ^ 1 << (value % 64),
        _ => value,
    }
}

/// Valid layouts with header or region words changed, maybe cut short: each unmutated block
/// decodes to its layout; the mutants are refused or keep the promises of an accepted layout.
/// Both must happen: mutations this small leave many blocks valid (a process id, a log size,
/// an element type of the same size, a name), so the accepted branch is taken, and counted.
#[test]
fn decode_survives_mutations_of_valid_layouts() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (accepted, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 1024, ..ProptestConfig::default() });
    let cases = (
        valid_layout(),
        prop::collection::vec((0..HEADER_WORDS + 4 * REGION_WORDS, mutation()), 1..4),
        prop::option::weighted(0.1, 0..4000usize),
    );
    runner
        .run(&cases, |(layout, edits, cut)| {
            let mut words = vec![0; layout.control_words()];
            for (i, v) in layout.encode(1) {
                words[i] = v;
            }
            let decoded = decode(&words, words.len())
                .map_err(|e| TestCaseError::fail(format!("a valid layout is refused: {e}")))?;
            prop_assert_eq!(&decoded.regions, &layout.regions);
            for (i, m) in edits {
                words[i] = mutate(words[i], m);
            }
            let len = cut.map_or(words.len(), |c| c.min(words.len()));
            match decode(&words, len) {
                Ok(l) => {
                    check_accepted(&l, len);
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
        .unwrap();
    let (accepted, refused) = (accepted.into_inner(), refused.into_inner());
    eprintln!("decode_survives_mutations_of_valid_layouts: {accepted} mutants accepted, {refused} refused");
    assert!(accepted > 0 && refused > 0, "{accepted} mutants accepted, {refused} refused: the test misses a branch");
}

// ---- Level 2: a forged store through StoreReader, in this process ----

/// Words worth mutating in a forged store: the header, version 1's ring entry, and the
/// first words of its record.
fn interesting_word() -> impl Strategy<Value = usize> {
    let l = layout();
    let (entry, record) = (l.versions_at() + VERSION_WORDS, l.log_at());
    prop_oneof![0..HEADER_WORDS, entry..entry + VERSION_WORDS, record..record + 10]
}

/// An unmutated forge opens, and version 1 reads back as forged: the mutants below start
/// from a store an observer accepts.
fn assert_forge_opens(runs: usize) {
    let files = Files::new(&Forge::new(&alternating(runs)).bytes(), 2, true);
    let reader = StoreReader::open(files.for_observer(), 0)
        .unwrap_or_else(|e| panic!("the unmutated forge of {runs} runs: {e}"));
    assert_eq!(reader.pin_latest(0), 1);
    let map = reader.record(1).unwrap_or_else(|e| panic!("the unmutated forge of {runs} runs: {e:?}"));
    assert_eq!(map.runs, alternating(runs));
    assert_eq!(reader.planes().unwrap(), 2);
    reader.unpin(0);
}

/// Everything an observer reads of a store with mutated words (the files themselves sealed
/// and full-size) is an error or in bounds; some mutants still give a version whose record
/// validates (counted: the test must take that branch too).
#[test]
fn store_reader_survives_mutated_blocks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for runs in [1, 2, 4, 8] {
        assert_forge_opens(runs);
    }
    let (valid, invalid) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 256, ..ProptestConfig::default() });
    let cases =
        (prop::collection::vec((interesting_word(), mutation()), 1..5), prop::sample::select(vec![1usize, 2, 4, 8]));
    runner
        .run(&cases, |(edits, runs)| {
            let mut forge = Forge::new(&alternating(runs));
            for (i, m) in edits {
                forge.words[i] = mutate(forge.words[i], m);
            }
            let files = Files::new(&forge.bytes(), 2, true);
            let mut read = false;
            if let Ok(reader) = StoreReader::open(files.for_observer(), 0) {
                let v = reader.pin_latest(0);
                let _ = reader.version_info(v);
                if let Ok(map) = reader.record(v) {
                    let planes = reader.planes().expect("a record that validated names checked planes");
                    assert!(map
                        .mapping_runs()
                        .all(|(r, s)| r.end <= PAGES && s + r.len() as u64 <= (planes * PAGES) as u64));
                    let _ = reader.map_pool(planes);
                    read = true;
                }
                let _ = reader.slots();
                reader.wait_newer(v, Duration::ZERO);
                reader.unpin(0);
            }
            (if read { &valid } else { &invalid }).fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    let (valid, invalid) = (valid.into_inner(), invalid.into_inner());
    eprintln!("store_reader_survives_mutated_blocks: {valid} mutants read a valid record, {invalid} did not");
    assert!(
        valid > 0 && invalid > 0,
        "{valid} mutants read a valid record, {invalid} did not: the test misses a branch"
    );
}

// ---- Level 3: end to end, a hostile producer and an observer process per case ----

/// What a hostile producer does in one case.
struct Case {
    name: &'static str,
    offer: fn() -> Offer,
    expect: Expect,
}

/// Whether the observer must succeed (and read the forged pages back) or fail with one of
/// these errors: `ReadError` variants, `Endpoint::` and the variant for `EndpointError`s.
enum Expect {
    Ok,
    Error(&'static [&'static str]),
}

const CORRUPT: Expect = Expect::Error(&["Corrupt", "Endpoint::Protocol"]);

/// A handshake message (none: never answer) with the descriptors it carries, the forged
/// store behind them, and what to do to the store's files once the observer has attached.
struct Offer {
    message: Vec<u8>,
    fds: Vec<std::fs::File>,
    files: Option<Files>,
    after_attach: Option<fn(&Files)>,
}

fn hello(status: u32, slot: u32) -> Vec<u8> {
    let mut m = HELLO.to_vec();
    m.extend_from_slice(&status.to_le_bytes());
    m.extend_from_slice(&slot.to_le_bytes());
    m
}

impl Offer {
    /// The store's files as a producer hands them to the observer of slot 0.
    fn of(files: Files) -> Offer {
        let fds = files.for_observer().map(SharedFile::into_file).into();
        Offer { message: hello(0, 0), fds, files: Some(files), after_attach: None }
    }

    /// A forged store of `runs` runs with `edit` applied to its words, sealed and full-size.
    fn forged(runs: usize, edit: fn(&mut Forge)) -> Offer {
        let mut forge = Forge::new(&alternating(runs));
        edit(&mut forge);
        Offer::of(Files::new(&forge.bytes(), 2, true))
    }

    fn message(message: Vec<u8>) -> Offer {
        Offer { message, fds: Vec::new(), files: None, after_attach: None }
    }

    /// A store whose files are not sealed, which `shrink` shrinks once the observer has
    /// attached.
    fn shrunk_after_attach(shrink: fn(&Files)) -> Offer {
        Offer { after_attach: Some(shrink), ..Offer::of(Files::new(&Forge::new(&alternating(2)).bytes(), 2, false)) }
    }
}

/// The words of a control block, pseudo-random.
fn random_block() -> Vec<u8> {
    let mut rng = common::Rng::seeded(0x2545_f491_4f6c_dd1d);
    (0..layout().control_words()).flat_map(|_| rng.below(u64::MAX).to_le_bytes()).collect()
}

const CASES: &[Case] = &[
    Case { name: "valid store, copied window", offer: || Offer::forged(4, |_| {}), expect: Expect::Ok },
    Case { name: "valid store, mapped runs", offer: || Offer::forged(2, |_| {}), expect: Expect::Ok },
    Case { name: "random words", offer: || Offer::of(Files::new(&random_block(), 2, true)), expect: CORRUPT },
    Case { name: "empty control block", offer: || Offer::of(Files::new(&[], 2, true)), expect: CORRUPT },
    Case {
        name: "control block cut after its header",
        offer: || Offer::of(Files::new(&Forge::new(&alternating(2)).bytes()[..page_size()], 2, true)),
        expect: CORRUPT,
    },
    Case {
        name: "layout from a future release",
        offer: || Offer::forged(2, |f| f.words[<ControlHeader>::LAYOUT] = LAYOUT_VERSION + 1),
        expect: CORRUPT,
    },
    Case {
        name: "run past the page space",
        offer: || Offer::forged(2, |f| f.set_record(2 + RUN_WORDS, run(32, 33, 1, 1).encode()[0])),
        expect: CORRUPT,
    },
    Case {
        name: "run in slots the pool does not have",
        offer: || Offer::forged(2, |f| f.set_record(3 + RUN_WORDS, run(32, 32, 2, 1).encode()[1])),
        expect: CORRUPT,
    },
    Case {
        name: "run written by a future version",
        offer: || Offer::forged(2, |f| f.set_record(4 + RUN_WORDS, run(32, 32, 1, 2).encode()[2])),
        expect: CORRUPT,
    },
    Case {
        name: "record that would overrun the log",
        offer: || {
            Offer::forged(2, |f| {
                let end = f.layout.log_words - 3;
                f.set_entry(<VersionEntry>::RECORD, end as u64);
                f.set_record(end, 1);
                f.set_record(end + 1, 2);
            })
        },
        expect: CORRUPT,
    },
    Case {
        name: "record at the log's last word",
        offer: || Offer::forged(2, |f| f.set_entry(<VersionEntry>::RECORD, f.layout.log_words as u64 - 1)),
        expect: CORRUPT,
    },
    Case { name: "record of 2^64-1 runs", offer: || Offer::forged(2, |f| f.set_record(1, u64::MAX)), expect: CORRUPT },
    Case { name: "record of another version", offer: || Offer::forged(2, |f| f.set_record(0, 7)), expect: CORRUPT },
    Case {
        name: "latest version absent from the ring",
        offer: || Offer::forged(2, |f| f.words[<ControlHeader>::LATEST] = 7),
        expect: CORRUPT,
    },
    Case {
        name: "log mark past every record",
        offer: || Offer::forged(2, |f| f.words[<ControlHeader>::LOG_MARK] = u64::MAX),
        expect: CORRUPT,
    },
    Case {
        name: "2^52+1 planes, copied window",
        offer: || Offer::forged(4, |f| f.words[<ControlHeader>::PLANES] = (1 << 52) + 1),
        expect: Expect::Error(&["Corrupt", "Endpoint::Protocol", "Map"]),
    },
    Case {
        name: "pool shorter than its planes, mapped runs",
        offer: || Offer::of(Files::new(&Forge::new(&alternating(2)).bytes(), 1, true)),
        expect: CORRUPT,
    },
    Case {
        name: "pool shorter than its planes, copied window",
        offer: || Offer::of(Files::new(&Forge::new(&alternating(4)).bytes(), 1, true)),
        expect: CORRUPT,
    },
    Case {
        name: "control block shrunk after attach",
        offer: || Offer::shrunk_after_attach(|f| f.control.set_len(0).unwrap()),
        expect: CORRUPT,
    },
    Case {
        name: "pool shrunk after attach",
        offer: || Offer::shrunk_after_attach(|f| f.pool.set_len(0).unwrap()),
        expect: CORRUPT,
    },
    Case {
        name: "pin page of two pages",
        offer: || {
            let files = Files::new(&Forge::new(&alternating(2)).bytes(), 2, false);
            files.pins.set_len(2 * page_size() as u64).unwrap();
            Offer::of(files)
        },
        expect: CORRUPT,
    },
    Case {
        name: "pin page of another slot",
        offer: || Offer { message: hello(0, 1), ..Offer::forged(2, |_| {}) },
        expect: CORRUPT,
    },
    Case {
        name: "slot beyond the pin slots",
        offer: || Offer { message: hello(0, 999), ..Offer::forged(2, |_| {}) },
        expect: CORRUPT,
    },
    Case {
        name: "not a tcasm handshake",
        offer: || Offer::message(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
        expect: CORRUPT,
    },
    Case { name: "handshake without files", offer: || Offer::message(hello(0, 0)), expect: CORRUPT },
    Case { name: "unknown status", offer: || Offer::message(hello(77, 0)), expect: CORRUPT },
    Case {
        name: "a pipe for every file",
        offer: || {
            let (r, w) = std::io::pipe().unwrap();
            let (r, w) = (
                std::fs::File::from(std::os::fd::OwnedFd::from(r)),
                std::fs::File::from(std::os::fd::OwnedFd::from(w)),
            );
            Offer { fds: vec![r.try_clone().unwrap(), r, w], ..Offer::message(hello(0, 0)) }
        },
        expect: CORRUPT,
    },
    Case { name: "no answer", offer: || Offer::message(Vec::new()), expect: Expect::Error(&["Endpoint::NotReady"]) },
];

/// Marks of the observer's lines on stdout (the test harness prints there too).
const ATTACHED: &str = "observer attached";
const OUTCOME: &str = "observer outcome: ";

/// The observer's side of a case: attaches, tells the parent, waits for its go, takes a
/// snapshot and checks every page of it; prints one outcome line.
fn observe() {
    let name = std::env::var(NAME).unwrap();
    let outcome = match Observer::attach_timeout(&name, ATTACH_WAIT) {
        Err(e) => format!("attach {}: {e}", class(&e)),
        Ok(observer) => {
            println!("{ATTACHED}");
            std::io::stdin().lines().next();
            match observer.latest() {
                Err(e) => format!("latest {}: {e}", class(&e)),
                Ok(snapshot) => {
                    let slots = snapshot.page_map().slots();
                    let words = snapshot.view::<u64>(REGION).unwrap();
                    let mut pages = words.chunks_exact(page_size() / 8).enumerate();
                    let expected = |p: usize| pool_word((slots[p] as usize / PAGES) as u16, slots[p] as usize % PAGES);
                    match pages.find(|(p, page)| page.iter().any(|&w| w != expected(*p))) {
                        Some((p, _)) => format!("wrong page {p}"),
                        None => "ok".to_string(),
                    }
                }
            }
        }
    };
    println!("{OUTCOME}{outcome}");
}

/// An error's variant: `Endpoint::` and the inner variant for endpoint errors.
fn class(e: &ReadError) -> String {
    let debug = format!("{e:?}");
    let mut parts = debug.split(|c: char| !c.is_alphanumeric()).filter(|s| !s.is_empty());
    match parts.next() {
        Some("Endpoint") => format!("Endpoint::{}", parts.next().unwrap_or_default()),
        first => first.unwrap_or_default().to_string(),
    }
}

/// Runs one case: starts its observer, answers its connection with the case's offer, and
/// says what went wrong, if anything.
fn run_case(case: &Case, listener: &UnixListener, dir: &Path) -> Option<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, "observer")
        .env(NAME, ENDPOINT)
        .env("TCASM_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::lines_of(child.stdout.take().unwrap());
    let offer = (case.offer)();
    let deadline = Instant::now() + CASE_LIMIT;
    let connected = loop {
        match listener.accept() {
            Ok((stream, _)) => break Some(stream),
            Err(_) if Instant::now() > deadline || child.try_wait().unwrap().is_some() => break None,
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    // An empty message: the producer never answers.
    if let Some(stream) = connected.as_ref().filter(|_| !offer.message.is_empty()) {
        let fds: Vec<RawFd> = offer.fds.iter().map(|f| f.as_raw_fd()).collect();
        stream.set_nonblocking(false).unwrap();
        fdpass::send(stream, &offer.message, &fds).unwrap();
    }
    drop(offer.fds); // the observer has its own descriptors now
    let mut outcome = None;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.ends_with(ATTACHED) {
            if let (Some(act), Some(files)) = (offer.after_attach, &offer.files) {
                act(files);
            }
            let _ = writeln!(child.stdin.as_mut().unwrap(), "go");
        }
        if let Some((_, o)) = line.split_once(OUTCOME) {
            outcome = Some(o.to_string());
            break;
        }
    }
    let status = common::wait_or_kill(&mut child, deadline.saturating_duration_since(Instant::now()));
    drop(connected);
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    let failed = |why: String| Some(format!("{}: {why}\n{}", case.name, stderr.trim_end()));
    match (status, outcome) {
        (None, _) => failed(format!("the observer hung: killed after {CASE_LIMIT:?}")),
        (Some(s), _) if !s.success() => failed(format!("the observer died: {s}")),
        (_, None) => failed("the observer reported nothing".into()),
        (_, Some(o)) => {
            // "STAGE CLASS: message" for an error.
            let class = o.split_once(": ").and_then(|(head, _)| head.split_once(' ')).map(|(_, class)| class);
            match case.expect {
                Expect::Ok if o == "ok" => None,
                Expect::Error(classes) if class.is_some_and(|c| classes.contains(&c)) => None,
                _ => failed(format!("unexpected outcome {o:?}")),
            }
        }
    }
}

const TEST: &str = "hostile_producers_get_errors_not_crashes";
const ENDPOINT: &str = "hostile";

#[test]
fn hostile_producers_get_errors_not_crashes() {
    if std::env::var_os(ROLE).is_some() {
        return observe();
    }
    let dir = common::private_dir("hostile");
    let listener = UnixListener::bind(dir.join(format!("{ENDPOINT}.sock"))).unwrap();
    listener.set_nonblocking(true).unwrap();
    let failures: Vec<String> = CASES.iter().filter_map(|case| run_case(case, &listener, &dir)).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n\n"));
}
