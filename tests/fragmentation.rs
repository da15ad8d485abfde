//! The fragmentation guard: the most scattered write pattern there is (every other page,
//! alternating between versions) must not make an observer's view need more mappings than a
//! budget far below `vm.max_map_count`, and the view must still read exactly what was
//! published.
mod common;

use tcasm::{Observer, Producer, ProducerOptions, TrackerKind};

fn mappings_of_this_process() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().count()
}

#[test]
fn scattered_writes_keep_views_far_below_the_mapping_limit() {
    common::endpoint_dir("fragmentation");
    if !common::async_tracking_available("scattered_writes_keep_views_far_below_the_mapping_limit") {
        return;
    }
    let options = ProducerOptions { tracker: TrackerKind::Async, ..ProducerOptions::default() };
    let mut producer = Producer::create("fragmented", options).unwrap();
    let page = tcasm::sys::page_size();
    let pages = 32_768; // 128 MiB of 4 KiB pages: every other page is 16,384 runs
    let mut region = producer.region::<u8>("r", &[pages * page]).unwrap();
    producer.publish().unwrap();
    let observer = Observer::attach("fragmented").unwrap();
    let before = mappings_of_this_process();
    let mut worst = 0;
    for v in 0..6u8 {
        for p in ((v as usize % 2)..pages).step_by(2) {
            region[p * page] = v + 1;
        }
        let version = producer.publish().unwrap();
        let runs = producer.stats().mapping_runs;
        let snap = observer.latest().unwrap();
        assert_eq!(snap.version(), version);
        let bytes = snap.bytes("r").unwrap();
        for p in 0..pages {
            assert_eq!(bytes[p * page], region[p * page], "page {p} of version {version}");
        }
        worst = worst.max(mappings_of_this_process() - before);
        eprintln!(
            "version {version}: {runs} runs in the page map, {} mappings added",
            mappings_of_this_process() - before
        );
    }
    // The documented bound (`tcasm::observer`, README): a view needs at most a sixteenth of
    // `vm.max_map_count`, whatever the code's budget works out to.
    let limit = tcasm::sys::max_map_count();
    assert!(worst <= limit / 16, "views added {worst} mappings, more than a sixteenth of vm.max_map_count = {limit}");
}
