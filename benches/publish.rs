//! What a publish costs, next to what it is measured against: one `memcpy` of the whole
//! region into a shared memfd mapping, which is what a producer without tracking pays every
//! time. The trackers and memcpy share the group `publish_64MiB`, so its report shows the
//! ratios (async at 1 % coverage against memcpy is the point of the crate). The group
//! `latest_64MiB` is what an observer pays to take the latest version, with and without a
//! change since its previous one.
//!
//! Coverage is the share of the region's pages written (one byte each, spread evenly) between
//! two publishes; in `publish_64MiB` the writes are not timed. Tracking also makes the
//! producer's writes dearer (first-write faults), which only the group `producer_64MiB`
//! shows: it times the writes and the publish together, for the same writes untracked
//! (`untracked`: the writes alone), the async tracker and the deferred path, whose publish
//! returns before the copy and whose cost is almost all in the writes (a synchronous fault
//! per first write). `tcasm bench coverage` makes the full comparison, with observers.
//! `cargo bench --bench publish` takes about two minutes; endpoints go to a temporary
//! `TCASM_DIR`.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use tcasm::sys::mem::{Access, Mapping, RegionMemory};
use tcasm::sys::memfd::SharedFile;
use tcasm::sys::page_size;
use tcasm::track;
use tcasm::{Observer, Producer, ProducerOptions, Region, TrackerKind};

const REGION_BYTES: usize = 64 << 20;
/// Page strides for each coverage: every 100th page, every page.
const COVERAGES: [(&str, usize); 2] = [("1%", 100), ("100%", 1)];

/// A producer of one 64 MiB region, every page written and published once.
fn producer(kind: TrackerKind) -> (Producer, Region<u8>) {
    let mut p =
        Producer::create(&format!("bench-{kind}"), ProducerOptions { tracker: kind, ..Default::default() }).unwrap();
    let mut region = p.region::<u8>("data", &[REGION_BYTES]).unwrap();
    region.fill(1);
    p.publish().unwrap();
    (p, region)
}

/// Writes one byte in every `stride`-th page of `region`.
fn touch(region: &mut [u8], stride: usize, value: u8) {
    for at in (0..region.len()).step_by(stride * page_size()) {
        region[at] = value;
    }
}

/// The time `measured` takes over `iters` rounds, each after an untimed `prepare`.
fn timed(iters: u64, mut prepare: impl FnMut(), mut measured: impl FnMut()) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        prepare();
        let start = Instant::now();
        measured();
        spent += start.elapsed();
    }
    spent
}

/// The trackers this machine has, async (and auto, which is async deciding per publish)
/// only where the kernel offers it.
fn trackers() -> Vec<TrackerKind> {
    let detected = track::detect();
    if detected.async_ok {
        vec![TrackerKind::Async, TrackerKind::Copy, TrackerKind::Auto]
    } else {
        eprintln!("skipping the async and auto trackers: {}", detected.describe());
        vec![TrackerKind::Copy]
    }
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_64MiB");
    {
        let source = RegionMemory::from_vec(vec![1u8; REGION_BYTES]);
        let file = SharedFile::create("bench-memcpy").unwrap();
        file.set_len(REGION_BYTES as u64).unwrap();
        let target = Mapping::shared(&file, 0, REGION_BYTES, Access::ReadWrite).unwrap();
        group.bench_function(BenchmarkId::new("memcpy", "100%"), |b| {
            // SAFETY: the bench's own memfd, mapped by no one else.
            b.iter(|| unsafe { target.copy_in(0, &source, 0, REGION_BYTES) })
        });
    }
    for kind in trackers() {
        let (mut producer, mut region) = producer(kind);
        for (coverage, stride) in COVERAGES {
            let mut value = 0u8;
            group.bench_function(BenchmarkId::new(kind.to_string(), coverage), |b| {
                b.iter_custom(|iters| {
                    timed(
                        iters,
                        || {
                            value = value.wrapping_add(1);
                            touch(&mut region, stride, value);
                        },
                        || {
                            producer.publish().unwrap();
                        },
                    )
                })
            });
        }
    }
    group.finish();
}

/// Writes and publish together: what a version costs the producer.
fn producer_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("producer_64MiB");
    {
        let mut plain = vec![1u8; REGION_BYTES];
        for (coverage, stride) in COVERAGES {
            let mut value = 0u8;
            group.bench_function(BenchmarkId::new("untracked", coverage), |b| {
                b.iter(|| {
                    value = value.wrapping_add(1);
                    touch(&mut plain, stride, value);
                    std::hint::black_box(&mut plain);
                })
            });
        }
    }
    let detected = track::detect();
    let kinds = if detected.async_ok {
        vec![TrackerKind::Async, TrackerKind::Deferred]
    } else {
        eprintln!("skipping the async and deferred trackers: {}", detected.describe());
        Vec::new()
    };
    for kind in kinds {
        let (mut producer, mut region) = producer(kind);
        for (coverage, stride) in COVERAGES {
            let mut value = 0u8;
            group.bench_function(BenchmarkId::new(kind.to_string(), coverage), |b| {
                b.iter(|| {
                    value = value.wrapping_add(1);
                    touch(&mut region, stride, value);
                    producer.publish().unwrap();
                })
            });
        }
    }
    group.finish();
}

fn latest(c: &mut Criterion) {
    let mut group = c.benchmark_group("latest_64MiB");
    let kind = trackers()[0];
    let (mut producer, mut region) = producer(kind);
    let observer = Observer::attach(producer.name()).unwrap();
    group.bench_function("unchanged", |b| b.iter(|| drop(observer.latest().unwrap())));
    let (coverage, stride) = COVERAGES[0];
    let mut value = 0u8;
    group.bench_function(BenchmarkId::new(format!("changed_{kind}"), coverage), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || {
                    value = value.wrapping_add(1);
                    touch(&mut region, stride, value);
                    producer.publish().unwrap();
                },
                || drop(observer.latest().unwrap()),
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = publish, producer_cost, latest
}

fn main() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tcasm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("TCASM_DIR", &dir);
    benches();
    Criterion::default().configure_from_args().final_summary();
    let _ = std::fs::remove_dir_all(&dir);
}
