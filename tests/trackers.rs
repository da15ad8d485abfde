//! Tracker conformance (docs/design.md#trackers: one test, run against every kind): the same
//! deterministic writes, published after each batch, must give every tracker and publish path
//! (async, sync, deferred, copy, auto) byte-identical snapshots, equal to the producer's
//! memory at each publish. Each version is checked after the next batch of writes, which
//! under the deferred path race the background copy and must be caught by the fault handler.
//!
//! The writes cover what a tracker can get wrong: scattered and contiguous pages, pages that
//! several threads write between two publishes, memory the kernel writes for the producer
//! (`read(2)`), batches that write nothing, and buffers that neither start nor end on a page
//! boundary, whose head and tail pages hold other data that must never reach observers. Each
//! snapshot is also held across the next publish and checked again: it must not change.
mod common;

use std::alloc::Layout;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::ptr::NonNull;

use tcasm::sys::page_size;
use tcasm::{Observer, Producer, ProducerOptions, Region, Snapshot, TrackerKind};

/// Pages of the allocated region.
const GRID_PAGES: usize = 24;
/// Length of the wrapped `Vec<u8>`: odd, so its tail page is shared with other heap data.
const VEC_BYTES: usize = 3 * 4096 + 777;
/// Pages of the block a raw buffer is wrapped in.
const BLOCK_PAGES: usize = 4;
/// Batches of writes after the first version; every fourth writes nothing.
const BATCHES: u64 = 8;

/// Where the regions sit. The sync and deferred trackers accept only regions that own their
/// pages whole (they would block other data's writes), so every tracker runs `WholePages`;
/// the others also run `Shared`, where two regions share head and tail pages with other data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    WholePages,
    Shared,
}

impl Placement {
    /// Where the raw buffer starts in its block, and its `f64`s.
    fn raw(self) -> (usize, usize) {
        match self {
            Placement::WholePages => (0, BLOCK_PAGES * page_size() / 8),
            Placement::Shared => (200, 1000),
        }
    }
}

/// Per version, each region's bytes as an observer saw them (in `Snapshot::regions` order).
type Versions = Vec<Vec<Vec<u8>>>;

/// Page-aligned memory that only raw pointers touch, as a C or Fortran buffer would be.
struct RawBlock {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl RawBlock {
    fn new(len: usize) -> RawBlock {
        let layout = Layout::from_size_align(len, page_size()).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).expect("allocation failed");
        RawBlock { ptr, layout }
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.layout.size());
        // SAFETY: in bounds (checked above); no reference to the block exists, and the
        // producer reads it only inside publish(), on this thread.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(at), bytes.len()) }
    }

    fn read(&self, at: usize, len: usize) -> Vec<u8> {
        assert!(at + len <= self.layout.size());
        // SAFETY: in bounds (checked above), initialized (allocated zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(at), len) }.to_vec()
    }
}

impl Drop for RawBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A `Vec<u8>` whose storage does not start on a page boundary.
fn unaligned_vec(len: usize) -> Vec<u8> {
    // Heap allocations this small are never page-aligned in practice; keep the rare
    // exception alive so the next allocation lands elsewhere.
    let mut aligned = Vec::new();
    loop {
        let v = vec![0u8; len];
        if v.as_ptr() as usize & (page_size() - 1) != 0 {
            return v;
        }
        aligned.push(v);
    }
}

/// Each region's bytes in `snap`, after checking that the bytes its pages hold outside the
/// region (other data sharing the head and tail pages) are zero.
fn read_snapshot(snap: &Snapshot) -> Vec<Vec<u8>> {
    let page = page_size();
    snap.regions()
        .iter()
        .map(|r| {
            let head = &snap.page(r.first_page)[..r.offset];
            let end = r.offset + r.bytes() - (r.pages - 1) * page;
            let tail = &snap.page(r.first_page + r.pages - 1)[end..];
            assert!(
                head.iter().chain(tail).all(|&b| b == 0),
                "version {}: bytes next to region {:?} reached the observer",
                snap.version(),
                r.name
            );
            snap.bytes(&r.name).unwrap().to_vec()
        })
        .collect()
}

fn as_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Runs the write sequence under tracker `kind`; checks each version against the producer's
/// memory at its publish and returns what the observer saw.
fn run(kind: TrackerKind, placement: Placement) -> Versions {
    let page = page_size();
    let (raw_offset, raw_count) = placement.raw();
    // Declared before the producer, so dropped after it: the buffer it wraps stays mapped.
    let block = RawBlock::new(BLOCK_PAGES * page);
    let name = format!("trackers-{kind}-{placement:?}");
    let mut producer = Producer::create(&name, ProducerOptions { tracker: kind, ..Default::default() }).unwrap();
    assert_eq!(producer.tracker(), kind);

    let mut grid: Region<u64> = producer.region("grid", &[GRID_PAGES * page / 8]).unwrap();
    let mut bytes: Region<u8> = match placement {
        Placement::WholePages => producer.region("bytes", &[VEC_BYTES]).unwrap(),
        Placement::Shared => producer.wrap_vec("bytes", unaligned_vec(VEC_BYTES), &[VEC_BYTES]).unwrap(),
    };
    // SAFETY: raw_count f64s from raw_offset lie inside the block (8-aligned), which outlives
    // the producer.
    unsafe { producer.wrap_raw("raw", block.ptr.as_ptr().add(raw_offset).cast::<f64>(), &[raw_count]).unwrap() };
    let raw_end = raw_offset + raw_count * 8;
    let (pipe_out, pipe_in) = nix::unistd::pipe().unwrap();
    let (mut pipe_out, mut pipe_in) = (File::from(pipe_out), File::from(pipe_in));

    // Deterministic: every tracker sees the same writes.
    let mut rng = common::Rng::seeded(0x9e37_79b9_7f4a_7c15);
    let mut seen = Versions::new();
    let mut observer: Option<Observer> = None;
    let mut held: Option<(Snapshot, Vec<Vec<u8>>)> = None;
    // The last version published and the producer's memory then, checked only after the
    // next batch of writes: with the deferred tracker those writes race its copy.
    let mut unchecked: Option<(u64, Vec<Vec<u8>>)> = None;
    let mut check = |producer: &mut Producer, version: u64, expected: Vec<Vec<u8>>| {
        producer.flush();
        let observer = observer.get_or_insert_with(|| Observer::attach(&name).unwrap());
        let snap = observer.latest().unwrap();
        assert_eq!(snap.version(), version);
        let got = read_snapshot(&snap);
        assert!(got == expected, "{kind}: version {version} differs from the producer's memory at its publish");
        if let Some((old, old_bytes)) = held.take() {
            assert!(read_snapshot(&old) == old_bytes, "{kind}: version {} changed while held", old.version());
        }
        seen.push(got.clone());
        held = Some((snap, got));
    };
    for batch in 0..=BATCHES {
        let mark = batch * 1000;
        if batch % 4 != 3 {
            // Scattered words, and a contiguous stretch over three and a half pages.
            for i in 0..20 {
                let at = rng.index(grid.len());
                grid[at] = mark + i;
            }
            let start = rng.index(grid.len() - 4 * page / 8);
            grid[start..start + 7 * page / 16].fill(mark + 1);
            // Three threads, each on its own chunk; chunk borders fall inside pages, so two
            // threads write some of the same pages.
            let third = grid.len() / 3;
            let (a, rest) = grid.split_at_mut(third + 5);
            let (b, c) = rest.split_at_mut(rest.len() / 2 + 3);
            std::thread::scope(|s| {
                for (t, chunk) in [a, b, c].into_iter().enumerate() {
                    s.spawn(move || {
                        for i in (t * 7..chunk.len()).step_by(61 + t) {
                            chunk[i] = mark + 100 + t as u64;
                        }
                    });
                }
            });
            // The kernel writes the Vec's memory: a read(2) across a page boundary.
            let len = page + rng.index(page);
            let at = rng.index(VEC_BYTES - len);
            let data: Vec<u8> = (0..len).map(|i| (i as u64 + mark) as u8 | 1).collect();
            pipe_in.write_all(&data).unwrap();
            pipe_out.read_exact(&mut bytes[at..at + len]).unwrap();
            bytes[0] = batch as u8;
            bytes[VEC_BYTES - 1] = batch as u8;
            // The raw buffer: its first, last and one random element, and every byte around
            // it in its block, which must not reach observers.
            for i in [0, raw_count - 1, rng.index(raw_count)] {
                block.write(raw_offset + i * 8, &(mark as f64 + i as f64).to_ne_bytes());
            }
            block.write(0, &vec![0xa0 | batch as u8; raw_offset]);
            block.write(raw_end, &vec![0xa0 | batch as u8; BLOCK_PAGES * page - raw_end]);
        }
        if let Some((version, expected)) = unchecked.take() {
            check(&mut producer, version, expected);
        }
        let version = producer.publish().unwrap();
        unchecked = Some((version, vec![as_bytes(&grid), bytes.to_vec(), block.read(raw_offset, raw_count * 8)]));
    }
    let (version, expected) = unchecked.take().unwrap();
    check(&mut producer, version, expected);
    seen
}

/// Runs every tracker this process can use, in each placement it accepts, and compares what
/// their observers saw. `sync`: the sync trackers too (a skip where they cannot run).
fn trackers_agree(test: &str, sync: bool) {
    common::endpoint_dir(test);
    let mut kinds = vec![TrackerKind::Copy];
    if common::async_tracking_available(test) {
        kinds.extend([TrackerKind::Async, TrackerKind::Auto]);
    }
    // The sync trackers need to take the kernel's own writes (the read(2) below).
    let sync_kinds = [TrackerKind::Sync, TrackerKind::Deferred];
    if sync && common::kernel_faults_allowed(test) {
        kinds.extend(sync_kinds);
    }
    for placement in [Placement::WholePages, Placement::Shared] {
        let runs: Vec<(TrackerKind, Versions)> = kinds
            .iter()
            .filter(|k| placement == Placement::WholePages || !sync_kinds.contains(k))
            .map(|&k| (k, run(k, placement)))
            .collect();
        let (first, reference) = &runs[0];
        for (kind, seen) in &runs[1..] {
            assert_eq!(seen.len(), reference.len());
            for (v, (a, b)) in seen.iter().zip(reference).enumerate() {
                assert!(a == b, "{placement:?}, version {}: {kind} and {first} snapshots differ", v + 1);
            }
        }
    }
}

/// The sync trackers refuse a buffer that shares a page with other data, saying why.
#[test]
fn sync_trackers_refuse_shared_pages() {
    common::endpoint_dir("sync-refuse");
    if !tcasm::track::kernel_faults_allowed() && !common::async_tracking_available("sync_trackers_refuse_shared_pages")
    {
        return;
    }
    for kind in [TrackerKind::Sync, TrackerKind::Deferred] {
        let mut producer =
            Producer::create(&format!("refuse-{kind}"), ProducerOptions { tracker: kind, ..Default::default() })
                .unwrap();
        let err = producer.wrap_vec("v", unaligned_vec(100), &[100]).map(drop).unwrap_err();
        assert!(matches!(err, tcasm::RegionError::SharesPages { .. }), "{kind}: {err}");
        assert!(err.to_string().contains("async tracker"), "{err}");
    }
}

#[test]
fn trackers_give_identical_snapshots_equal_to_memory() {
    trackers_agree("trackers", true);
}

/// Set in the child that `unprivileged_trackers_agree_too` starts.
const UNPRIVILEGED: &str = "TCASM_TEST_UNPRIVILEGED";

/// The same as an unprivileged user, when the tests run as root. With `UFFD_USER_MODE_ONLY`,
/// userfaultfd works for any user (docs/design.md#measured-facts), so async tracking must
/// not need root; the user-mode-only descriptor must also see the kernel's `read(2)` writes.
#[test]
fn unprivileged_trackers_agree_too() {
    const TEST: &str = "unprivileged_trackers_agree_too";
    if std::env::var_os(UNPRIVILEGED).is_some() {
        // The sync trackers are the root run's: without CAP_SYS_PTRACE they cannot take the
        // kernel's writes, as documented.
        return trackers_agree("trackers-unprivileged", false);
    }
    if !nix::unistd::geteuid().is_root() {
        // Not a skip: the other test already runs unprivileged.
        eprintln!("{TEST}: not root, so trackers_give_identical_snapshots_equal_to_memory ran unprivileged");
        return;
    }
    // The build directory may not be reachable for uid 65534 (a checkout under /root): run a
    // copy of this binary from a directory anyone may enter.
    let dir = std::env::temp_dir().join(format!("tcasm-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("trackers");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = std::process::Command::new(&exe);
    child.args(["--exact", TEST, "--nocapture"]).env(UNPRIVILEGED, "1").uid(65534).gid(65534);
    if common::async_tracking_available(TEST) {
        child.env("TCASM_REQUIRE_KERNEL", "1");
    }
    let out = child.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "as uid 65534: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The copy-on-first-write race at full size: right after a deferred publish the producer
/// rewrites every page of a 32 MiB region from the last page down, while the copier works
/// from the first page up, so half the pages reach the fault handler before the copier,
/// and the handler must copy each before letting its write through. Every version must hold
/// exactly the bytes it was published with.
#[test]
fn deferred_versions_survive_writes_racing_their_copy() {
    common::endpoint_dir("deferred-race");
    let mut producer =
        Producer::create("deferred-race", ProducerOptions { tracker: TrackerKind::Deferred, ..Default::default() })
            .unwrap();
    let mut data: Region<u64> = producer.region("data", &[32 << 17]).unwrap();
    data.fill(1);
    producer.publish().unwrap();
    let observer = Observer::attach("deferred-race").unwrap();
    for round in 2..8u64 {
        data.fill(round);
        let version = producer.publish().unwrap();
        for page in data.chunks_mut(page_size() / 8).rev() {
            page.fill(round + 100);
        }
        producer.flush();
        let snap = observer.latest().unwrap();
        assert_eq!(snap.version(), version);
        let seen = snap.view::<u64>("data").unwrap();
        if let Some(i) = seen.iter().position(|&x| x != round) {
            panic!("version {version}: element {i} is {}, published as {round}", seen[i]);
        }
    }
}

/// Publishes split over copy threads: each version writes thousands of pages of a 35 MiB
/// region (the whole of it, scattered pages, a moving front, pages rewritten with their own
/// bytes), so its copies and comparisons are cut into shares for three threads. Every
/// snapshot must equal the producer's memory at its publish and stay unchanged while held,
/// and its change set must name every page that changed (exactly those under `copy`, which
/// compares every page; no page that was not written under the trackers).
#[test]
fn copy_threads_give_snapshots_equal_to_memory() {
    const TEST: &str = "copy_threads_give_snapshots_equal_to_memory";
    const PAGES: usize = 9000;
    common::endpoint_dir("copy-threads");
    let page = page_size();
    let mut kinds = vec![TrackerKind::Copy];
    if common::async_tracking_available(TEST) {
        kinds.extend([TrackerKind::Auto, TrackerKind::Async]);
    }
    for kind in kinds {
        let name = format!("copy-threads-{kind}");
        let options = ProducerOptions { tracker: kind, copy_threads: 3, ..Default::default() };
        let mut producer = Producer::create(&name, options).unwrap();
        let mut data: Region<u8> = producer.region("data", &[PAGES * page]).unwrap();
        let mut rng = common::Rng::seeded(0xc0b1 + kind as u64);
        let mut held: Option<(Snapshot, Vec<u8>)> = None;
        let mut observer: Option<Observer> = None;
        for v in 1..=7u64 {
            // (pages whose bytes change, pages rewritten with the bytes they hold)
            let (changed, same): (BTreeSet<usize>, BTreeSet<usize>) = match v {
                1 | 5 => ((0..PAGES).collect(), BTreeSet::new()),
                2 => ((0..5000).map(|_| rng.index(PAGES)).collect(), BTreeSet::new()),
                3 => ((0..6000).map(|i| (1500 + i) % PAGES).collect(), BTreeSet::new()),
                4 => {
                    let changed: BTreeSet<usize> = (0..100).map(|_| rng.index(PAGES)).collect();
                    (changed.clone(), (0..5000).filter(|p| !changed.contains(p)).collect())
                }
                6 => (BTreeSet::new(), BTreeSet::new()),
                _ => ((0..PAGES).filter(|p| p % 3 != 0).collect(), BTreeSet::new()),
            };
            for &p in &changed {
                // One byte at a random offset, the page's last byte every seventh time.
                let at = p * page + if rng.below(7) == 0 { page - 1 } else { rng.index(page) };
                data[at] = data[at].wrapping_add(1 + rng.below(254) as u8);
            }
            for &p in &same {
                let copy = std::hint::black_box(data[p * page..(p + 1) * page].to_vec());
                data[p * page..(p + 1) * page].copy_from_slice(&copy);
            }
            assert_eq!(producer.publish().unwrap(), v);
            let observer = observer.get_or_insert_with(|| Observer::attach(&name).unwrap());
            let snap = observer.latest().unwrap();
            assert_eq!(snap.version(), v);
            let bytes = snap.bytes("data").unwrap().to_vec();
            assert!(bytes == data[..], "{kind}: version {v} differs from the producer's memory at its publish");
            if v > 1 {
                let named: BTreeSet<usize> = snap.changed_since(v - 1).into_iter().flatten().collect();
                assert!(
                    changed.is_subset(&named),
                    "{kind}: v{v}: changed pages {:?} not named",
                    changed.difference(&named).take(5).collect::<Vec<_>>()
                );
                if kind == TrackerKind::Copy {
                    assert!(named == changed, "{kind}: v{v}: {} pages named, {} changed", named.len(), changed.len());
                } else {
                    let written: BTreeSet<usize> = changed.union(&same).copied().collect();
                    assert!(
                        named.is_subset(&written),
                        "{kind}: v{v}: pages {:?} named but not written",
                        named.difference(&written).take(5).collect::<Vec<_>>()
                    );
                }
            }
            if let Some((old, old_bytes)) = held.take() {
                assert!(
                    old.bytes("data").unwrap() == &old_bytes[..],
                    "{kind}: version {} changed while held",
                    old.version()
                );
            }
            held = Some((snap, bytes));
        }
    }
}
