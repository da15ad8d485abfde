//! What the store holds: exactly the latest version, the slots pinned versions still need,
//! and the reserve of free slots kept for the next publishes — never more — across 1,000
//! publishes of each write pattern with observers pinning and dropping versions; the
//! reserve is never larger than what one of the last few publishes wrote or, while pins
//! hold slots, than what they held at their recent peak (less what they hold now); and once
//! the pins are gone it shrinks back to the writes.
mod common;

use std::collections::{BTreeSet, VecDeque};

use tcasm::sys::page_size;
use tcasm::{Observer, Producer, ProducerOptions, Region, Snapshot, TrackerKind};

const PAGES: usize = 2048;
const PUBLISHES: usize = 1000;
/// Snapshots held at once (an observer may hold 8).
const HELD: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Pattern {
    Strided,
    Random,
    Contiguous,
    Sweep,
}

/// The pages publish `i` writes at `coverage` (0 to 1).
fn pages(pattern: Pattern, coverage: f64, i: usize, rng: &mut common::Rng) -> Vec<usize> {
    let n = ((coverage * PAGES as f64) as usize).clamp(1, PAGES);
    match pattern {
        Pattern::Strided => (0..n).map(|k| k * PAGES / n).collect(),
        Pattern::Random => {
            let set: BTreeSet<usize> = (0..n).map(|_| rng.index(PAGES)).collect();
            set.into_iter().collect()
        }
        Pattern::Contiguous => {
            let start = rng.index(PAGES);
            (start..start + n).map(|p| p % PAGES).collect()
        }
        Pattern::Sweep => {
            let start = i * n.div_ceil(16) % PAGES;
            (start..start + n).map(|p| p % PAGES).collect()
        }
    }
}

/// Slots the pinned versions need beyond the latest: per page, each version of its bytes
/// some pinned snapshot holds that is not the latest's.
fn pinned_slots(held: &VecDeque<Snapshot>, latest: &Snapshot) -> usize {
    let latest_written = written_per_page(latest);
    let mut needed = BTreeSet::new();
    for snap in held {
        for (p, w) in written_per_page(snap).into_iter().enumerate() {
            if w != latest_written[p] {
                needed.insert((p, w));
            }
        }
    }
    needed.len()
}

fn written_per_page(snap: &Snapshot) -> Vec<u64> {
    snap.page_map().runs.iter().flat_map(|r| r.pages().map(move |_| r.written)).collect()
}

fn run(kind: TrackerKind, pattern: Pattern) {
    let page = page_size() as u64;
    let name = format!("memory-{kind}-{pattern:?}");
    let mut producer = Producer::create(&name, ProducerOptions { tracker: kind, ..Default::default() }).unwrap();
    let mut region: Region<u8> = producer.region("r", &[PAGES * page as usize]).unwrap();
    region.fill(1);
    producer.publish().unwrap();
    let observer = Observer::attach(&name).unwrap();
    let mut rng = common::Rng::seeded(0x3e3 ^ kind as u64 ^ (pattern as u64) << 8);
    let mut held: VecDeque<Snapshot> = VecDeque::new();
    let mut recent: VecDeque<u64> = VecDeque::new();
    // Per publish: what pins held then plus the recent writes, if pins held any.
    let mut pin_demand: VecDeque<u64> = VecDeque::new();
    use tcasm::store::writer::{PIN_WINDOW, RESERVE_WINDOW};
    let coverages = [0.01, 0.1, 0.5, 1.0];
    for i in 0..PUBLISHES {
        // A coverage held for 50 publishes at a time, as a simulation's phases.
        let coverage = coverages[(i / 50) % coverages.len()];
        for p in pages(pattern, coverage, i, &mut rng) {
            region[p * page as usize] = (i % 250) as u8 + 2;
        }
        producer.publish().unwrap();
        let stats = producer.stats();
        recent.push_back(stats.last_pages_copied as u64);
        if recent.len() > RESERVE_WINDOW {
            recent.pop_front();
        }
        let latest = observer.latest().unwrap();
        let pinned = pinned_slots(&held, &latest) as u64;
        let most_recent = recent.iter().copied().max().unwrap_or(0);
        pin_demand.push_back(if pinned > 0 { pinned + most_recent } else { 0 });
        if pin_demand.len() > PIN_WINDOW {
            pin_demand.pop_front();
        }
        assert_eq!(
            stats.store_bytes,
            (PAGES as u64 + pinned) * page + stats.reserve_bytes,
            "{kind} {pattern:?}, publish {i}: the store holds the latest ({PAGES} pages), {pinned} pinned pages and a reserve of {} bytes, nothing else",
            stats.reserve_bytes
        );
        let pinned_peak = pin_demand.iter().copied().max().unwrap_or(0);
        let bound = most_recent.max(pinned_peak.saturating_sub(pinned));
        assert!(
            stats.reserve_bytes <= bound * page,
            "{kind} {pattern:?}, publish {i}: reserve {} bytes, more than the {most_recent} pages a recent publish wrote and than the {pinned_peak} pages pins and writes needed at their recent peak less the {pinned} pinned now",
            stats.reserve_bytes
        );
        // Observers take and drop versions at random.
        if rng.below(3) == 0 || held.len() >= HELD {
            held.pop_front();
        }
        if rng.below(2) == 0 {
            held.push_back(latest);
        }
    }
    // Dropping the pins: the next publish frees what they held, and once their peak has
    // left the window the reserve is back to what the writes need.
    held.clear();
    for i in 0..=PIN_WINDOW {
        for p in pages(pattern, 0.01, i, &mut rng) {
            region[p * page as usize] = (i % 250) as u8 + 2;
        }
        producer.publish().unwrap();
        let stats = producer.stats();
        assert_eq!(
            stats.store_bytes,
            PAGES as u64 * page + stats.reserve_bytes,
            "{kind} {pattern:?}: publish {i} after every pin is dropped"
        );
        recent.push_back(stats.last_pages_copied as u64);
        if recent.len() > RESERVE_WINDOW {
            recent.pop_front();
        }
    }
    let stats = producer.stats();
    let most_recent = recent.iter().copied().max().unwrap_or(0);
    assert!(
        stats.reserve_bytes <= most_recent * page,
        "{kind} {pattern:?}: {PIN_WINDOW} publishes after every pin was dropped, the reserve holds {} bytes, more than the {most_recent} pages a recent publish wrote",
        stats.reserve_bytes
    );
}

#[test]
fn store_holds_latest_pinned_and_reserve_only() {
    common::endpoint_dir("memory");
    let mut kinds = vec![TrackerKind::Copy];
    if common::async_tracking_available("store_holds_latest_pinned_and_reserve_only") {
        kinds.push(TrackerKind::Auto);
    }
    for kind in kinds {
        for pattern in [Pattern::Strided, Pattern::Random, Pattern::Contiguous, Pattern::Sweep] {
            run(kind, pattern);
        }
    }
}
