//! Exact change sets under every tracker: a version's page map names as changed the pages
//! whose bytes changed since the version before it, and `changed_since(v)` the pages whose
//! bytes differ between `v` and the latest.
//!
//! - Compared pages (the `copy` tracker everywhere, `auto`'s untracked chunks) count only a
//!   real change: a page rewritten with the bytes it held is not changed.
//! - Tracked pages (`async`, `sync`, `deferred`, `auto`'s tracked chunks) count every page
//!   written, identical bytes or not; never one that was not written.
//!
//! The writes change one byte at a random offset of a page (the last byte included), rewrite
//! whole chunks for several versions (so that `auto` stops tracking them), rewrite pages with
//! the bytes they hold, and leave chunks alone for several versions (so that `auto` tracks
//! them again).
mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use tcasm::sys::page_size;
use tcasm::{Observer, Producer, ProducerOptions, Region, TrackerKind};

/// Pages of the region: four chunks of the auto tracker and a part of a fifth.
const PAGES: usize = 4 * tcasm::track::auto::CHUNK_PAGES + 100;
const VERSIONS: usize = 48;
/// The first of chunk 3's pages written version after version.
const HOT_FIRST: usize = 3 * tcasm::track::auto::CHUNK_PAGES + 7;

fn page_hashes(region: &[u8]) -> Vec<u64> {
    region
        .chunks(page_size())
        .map(|p| {
            let mut h = DefaultHasher::new();
            p.hash(&mut h);
            h.finish()
        })
        .collect()
}

fn pages_of(ranges: &[std::ops::Range<usize>]) -> BTreeSet<usize> {
    ranges.iter().flat_map(|r| r.clone()).collect()
}

/// What one version writes: `(pages written, pages rewritten with their own bytes)`.
fn writes(v: usize, rng: &mut common::Rng) -> (Vec<usize>, Vec<usize>) {
    let chunk = tcasm::track::auto::CHUNK_PAGES;
    let mut changed = Vec::new();
    let mut same = Vec::new();
    // Chunk 0: rewritten whole for 12 versions, then rewritten whole with the bytes it holds
    // for 4, then left alone.
    match v {
        1..=12 => changed.extend(0..chunk),
        13..=16 => same.extend(0..chunk),
        _ => {}
    }
    // Chunk 1: a few scattered pages every version, some rewritten with their own bytes.
    for _ in 0..8 {
        changed.push(chunk + rng.index(chunk));
    }
    same.push(chunk + rng.index(chunk));
    // Chunk 2: half its pages from version 20 on.
    if v >= 20 {
        changed.extend((2 * chunk..3 * chunk).filter(|_| rng.below(2) == 0));
    }
    // Chunk 3: sixteen scattered pages written every version (`auto` leaves such pages
    // writable and compares them: hot), rewritten with their own bytes for four versions
    // (two unchanged comparisons send them back to tracking), written again, left alone for
    // two versions and written in the very publish that protects them again, then left
    // alone, written every other version, and every version.
    let hot = (0..16).map(|i| HOT_FIRST + 31 * i);
    match v {
        24..=27 => same.extend(hot),
        2..=30 | 33 | 44.. => changed.extend(hot),
        39..=43 if v % 2 == 1 => changed.extend(hot),
        _ => {}
    }
    // The rest: now and then a page, the last page of the region included.
    if v.is_multiple_of(5) {
        changed.extend([3 * chunk + rng.index(PAGES - 3 * chunk), PAGES - 1]);
    }
    changed.sort_unstable();
    changed.dedup();
    same.retain(|p| changed.binary_search(p).is_err());
    (changed, same)
}

fn run(kind: TrackerKind) {
    let page = page_size();
    let name = format!("change-sets-{kind}");
    let mut producer = Producer::create(&name, ProducerOptions { tracker: kind, ..Default::default() }).unwrap();
    let mut region: Region<u8> = producer.region("r", &[PAGES * page]).unwrap();
    let mut rng = common::Rng::seeded(0x5eed_0000 + kind as u64);
    for (i, b) in region.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    producer.publish().unwrap();
    let observer = Observer::attach(&name).unwrap();
    let compares_all = kind == TrackerKind::Copy;
    let tracks_all = matches!(kind, TrackerKind::Async | TrackerKind::Sync | TrackerKind::Deferred);
    // Per version: page hashes, and the pages written (identical bytes or not) since v1.
    let mut hashes = vec![Vec::new(), page_hashes(&region)];
    let mut touched: Vec<BTreeSet<usize>> = vec![BTreeSet::new(), BTreeSet::new()];
    let mut identical_skipped = 0;
    let (mut hot_rewrites, mut hot_skipped) = (0, 0);
    for v in 2..=VERSIONS + 1 {
        let (changed, same) = writes(v - 1, &mut rng);
        for &p in &changed {
            // One byte at a random offset, the page's last byte every seventh time.
            let at = if rng.below(7) == 0 { page - 1 } else { rng.index(page) };
            region[p * page + at] = region[p * page + at].wrapping_add(1 + rng.below(254) as u8);
        }
        for &p in &same {
            // Every byte stored again, through black_box so the compiler keeps the stores.
            let copy = std::hint::black_box(region[p * page..(p + 1) * page].to_vec());
            region[p * page..(p + 1) * page].copy_from_slice(&copy);
        }
        assert_eq!(producer.publish().unwrap(), v as u64);
        producer.flush();
        hashes.push(page_hashes(&region));
        touched.push(changed.iter().chain(&same).copied().collect());

        let snap = observer.latest().unwrap();
        assert_eq!(snap.version(), v as u64);
        assert_eq!(
            producer.stats().last_pages_copied,
            pages_of(&snap.changed_since(v as u64 - 1)).len(),
            "{kind}: v{v}: the stats count what the page map names"
        );
        // Against every earlier version the ring still holds.
        for since in (v.saturating_sub(6).max(1)..v).rev() {
            let got = pages_of(&snap.changed_since(since as u64));
            let differ: BTreeSet<usize> = (0..PAGES).filter(|&p| hashes[since][p] != hashes[v][p]).collect();
            // Pages that changed in some version after `since` (a page changed and changed
            // back differs from none, and is still named: the map records each version's
            // changes, not a comparison with every older version).
            let changed_after: BTreeSet<usize> = (since + 1..=v)
                .flat_map(|u| (0..PAGES).filter(|&p| hashes[u - 1][p] != hashes[u][p]).collect::<Vec<_>>())
                .collect();
            let written: BTreeSet<usize> = touched[since + 1..=v].iter().flatten().copied().collect();
            assert!(
                differ.is_subset(&got),
                "{kind}: v{v} since v{since}: pages {:?} differ but are not named",
                differ.difference(&got).take(5).collect::<Vec<_>>()
            );
            assert!(
                got.is_subset(&written),
                "{kind}: v{v} since v{since}: pages {:?} named but never written",
                got.difference(&written).take(5).collect::<Vec<_>>()
            );
            if compares_all {
                assert_eq!(
                    got, changed_after,
                    "{kind}: v{v} since v{since}: compared pages must name exactly the changed ones"
                );
            }
            if tracks_all {
                assert!(got == written, "{kind}: v{v} since v{since}: tracked pages name every page written: named, not written {:?}; written, not named {:?}", got.difference(&written).take(8).collect::<Vec<_>>(), written.difference(&got).take(8).collect::<Vec<_>>());
            }
        }
        let this = pages_of(&snap.changed_since(v as u64 - 1));
        identical_skipped += same.iter().filter(|p| !this.contains(p)).count();
        let hot_same = same.iter().filter(|&&p| (HOT_FIRST..HOT_FIRST + 16 * 31).contains(&p));
        hot_rewrites += hot_same.clone().count();
        hot_skipped += hot_same.filter(|p| !this.contains(p)).count();
    }
    // Auto stops tracking chunk 0 while it is rewritten whole, so its identical rewrites
    // are compared away; copy compares them all away; tracked pages always count.
    let chunk = tcasm::track::auto::CHUNK_PAGES;
    match kind {
        TrackerKind::Copy => assert!(
            identical_skipped >= 4 * chunk,
            "{kind}: only {identical_skipped} identical rewrites were found unchanged"
        ),
        TrackerKind::Auto => assert!(
            identical_skipped >= chunk,
            "{kind}: only {identical_skipped} identical rewrites were found unchanged"
        ),
        _ => assert_eq!(identical_skipped, 0, "{kind}: a tracked page written counts as changed"),
    }
    // Chunk 3's pages written every version are compared under auto once hot: their first
    // two identical rewrites at least are found unchanged.
    match kind {
        TrackerKind::Copy => assert_eq!(hot_skipped, hot_rewrites, "{kind}: identical rewrites of chunk 3's pages"),
        TrackerKind::Auto => assert!(hot_skipped >= 24, "{kind}: only {hot_skipped} identical rewrites of chunk 3's pages written every version were found unchanged: are they still tracked?"),
        _ => assert_eq!(hot_skipped, 0, "{kind}: a tracked page written counts as changed"),
    }
}

#[test]
fn change_sets_are_exact_under_every_tracker() {
    common::endpoint_dir("change-sets");
    let mut kinds = vec![TrackerKind::Copy];
    if common::async_tracking_available("change_sets_are_exact_under_every_tracker") {
        // The sync trackers need userfaultfd too; only the producer's own writes here.
        kinds.extend([TrackerKind::Async, TrackerKind::Auto, TrackerKind::Sync, TrackerKind::Deferred]);
    }
    for kind in kinds {
        run(kind);
    }
}
