//! Snapshots seen from another process than the producer's: a held snapshot never changes,
//! the memory it holds is given back once it is dropped, and every misuse has its error.
//!
//! The producer runs in a child process: this test binary re-executed as the one test that
//! needs it, with `TCASM_TEST_ROLE=producer`, which makes that test serve as the producer
//! instead ([`serve_producer`]). The test drives it line by line through its stdin ("publish
//! COUNT SPAN") and reads its answers ("producer: version V") from its stdout, so each step is
//! deterministic; a producer that does not answer in time is killed.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use tcasm::sys::page_size;
use tcasm::{CreateError, EndpointError, Freed, Observer, Producer, ProducerOptions, ReadError, TrackerKind};

const ROLE: &str = "TCASM_TEST_ROLE";
const PRODUCER_NAME: &str = "TCASM_TEST_PRODUCER";
const TRACKER: &str = "TCASM_TEST_TRACKER";
const FREED: &str = "TCASM_TEST_FREED";
/// The producer's one region: `PAGES` pages of u64.
const REGION: &str = "field";
const PAGES: usize = 1024;
/// How long the producer may take to answer one command, and to exit.
const ANSWER_LIMIT: Duration = Duration::from_secs(20);

/// The endpoint directory of this test process (one for all its tests: `TCASM_DIR` is
/// process-wide, so tests running in parallel must agree on it).
fn dir() -> PathBuf {
    common::endpoint_dir("snapshots")
}

fn words_per_page() -> usize {
    page_size() / 8
}

/// Word `i` of page `page` as version `version` writes it: all three can be read back.
fn word(page: usize, version: u64, i: usize) -> u64 {
    version << 40 | (page as u64) << 16 | i as u64
}

/// Whether version `v` writes page `p`: every page when `span` is 0, else alternate blocks
/// of `span` pages, the other half at the next version.
fn writes(v: u64, p: usize, span: usize) -> bool {
    span == 0 || (p / span) as u64 % 2 == v % 2
}

/// Checks that `field` holds version `v` after at least two versions of the same `span`:
/// each page is then as the last of them that wrote it left it.
fn assert_field(field: &[u64], v: u64, span: usize, what: &str) {
    let words = words_per_page();
    assert_eq!(field.len(), PAGES * words, "{what}: length");
    for (p, page) in field.chunks_exact(words).enumerate() {
        let writer = if writes(v, p, span) { v } else { v - 1 };
        if let Some(i) = (0..words).find(|&i| page[i] != word(p, writer, i)) {
            panic!(
                "{what}: page {p} word {i} is {:#x} (version {}), expected the bytes of version {writer}",
                page[i],
                page[i] >> 40
            );
        }
    }
}

/// The trackers to run a test with: copy everywhere, async where the kernel has it.
fn trackers(test: &str) -> Vec<TrackerKind> {
    let mut kinds = vec![TrackerKind::Copy];
    if common::async_tracking_available(test) {
        kinds.push(TrackerKind::Async);
    }
    kinds
}

/// When this process is a re-executed producer, serves as one and returns true.
fn serving_as_producer() -> bool {
    if std::env::var_os(ROLE).is_none() {
        return false;
    }
    serve_producer();
    true
}

/// The producer's side: publishes version 1 (every page), then the versions asked on stdin,
/// answering each command with the last version published and the bytes its store holds.
/// Exits at the end of stdin.
fn serve_producer() {
    let name = std::env::var(PRODUCER_NAME).unwrap();
    let tracker: TrackerKind = std::env::var(TRACKER).unwrap().parse().unwrap();
    let freed = match std::env::var(FREED).as_deref() {
        Ok("release") => Freed::Release,
        _ => Freed::Reuse,
    };
    let mut producer = Producer::create(&name, ProducerOptions { tracker, freed, ..Default::default() }).unwrap();
    let words = words_per_page();
    let mut field = producer.region::<u64>(REGION, &[PAGES * words]).unwrap();
    let mut publish = |span: usize| {
        let v = producer.stats().versions + 1;
        for (p, page) in field.chunks_exact_mut(words).enumerate().filter(|(p, _)| writes(v, *p, span)) {
            for (i, w) in page.iter_mut().enumerate() {
                *w = word(p, v, i);
            }
        }
        assert_eq!(producer.publish().unwrap(), v);
        (v, producer.stats().store_bytes)
    };
    let (v, bytes) = publish(0);
    println!("producer: version {v} bytes {bytes}");
    for line in std::io::stdin().lines() {
        let line = line.unwrap();
        let args: Vec<usize> = line.strip_prefix("publish ").unwrap().split(' ').map(|a| a.parse().unwrap()).collect();
        let [count, span] = args[..] else { panic!("bad command {line:?}") };
        let (v, bytes) = (0..count).map(|_| publish(span)).last().unwrap();
        println!("producer: version {v} bytes {bytes}");
    }
}

/// A producer in a child process, driven through its stdin.
struct RemoteProducer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
    /// Store bytes after the last version the producer reported.
    bytes: u64,
}

impl RemoteProducer {
    /// Starts the producer `name` as test `test` of this binary and waits for version 1.
    fn start(test: &str, name: &str, tracker: TrackerKind) -> RemoteProducer {
        Self::start_with(test, name, tracker, Freed::Reuse)
    }

    fn start_with(test: &str, name: &str, tracker: TrackerKind, freed: Freed) -> RemoteProducer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "producer")
            .env(PRODUCER_NAME, name)
            .env(TRACKER, tracker.to_string())
            .env(FREED, if freed == Freed::Release { "release" } else { "reuse" })
            .env("TCASM_DIR", dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, answers) = mpsc::channel();
        // The test harness prints too, even at the start of the producer's first line.
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some((_, answer)) = line.split_once("producer: ") {
                    if tx.send(answer.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        let mut producer = RemoteProducer { name: name.to_string(), child, stdin, answers, bytes: 0 };
        assert_eq!(producer.answer(), 1);
        producer
    }

    /// The version the producer's next answer names (keeping its store bytes), or a panic if
    /// none comes in time.
    fn answer(&mut self) -> u64 {
        let answer = match self.answers.recv_timeout(ANSWER_LIMIT) {
            Ok(a) => a,
            Err(e) => panic!("producer {:?} did not answer within {ANSWER_LIMIT:?} ({e}): killed", self.name),
        };
        let fields: Vec<&str> = answer.split(' ').collect();
        let ["version", v, "bytes", b] = fields[..] else { panic!("producer {:?} answered {answer:?}", self.name) };
        self.bytes = b.parse().unwrap();
        v.parse().unwrap()
    }

    /// Publishes `count` versions writing pages as [`writes`] says; returns the last one.
    fn publish(&mut self, count: usize, span: usize) -> u64 {
        writeln!(self.stdin.as_mut().unwrap(), "publish {count} {span}").unwrap();
        self.answer()
    }

    /// Closes its stdin and waits for a clean exit.
    fn finish(mut self) {
        self.stdin = None;
        let status = common::wait_with_watchdog(&mut self.child, ANSWER_LIMIT, &format!("producer {:?}", self.name));
        assert!(status.success(), "producer {:?}: {status}", self.name);
    }
}

impl Drop for RemoteProducer {
    /// A failing test leaves no producer behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn held_snapshot_never_changes() {
    if serving_as_producer() {
        return;
    }
    for tracker in trackers("held_snapshot_never_changes") {
        let name = format!("held-{tracker}");
        let mut producer = RemoteProducer::start("held_snapshot_never_changes", &name, tracker);
        // Scattered versions first, so the pinned version's pages lie in several planes.
        let v0 = producer.publish(3, 1);
        let observer = Observer::attach(&name).unwrap();
        let held = observer.latest().unwrap();
        assert_eq!(held.version(), v0);
        let pinned = held.view::<u64>(REGION).unwrap().to_vec();
        assert_field(&pinned, v0, 1, "the pinned version");

        // 100 versions, each writing half the pages: scattered, then in blocks of 64.
        producer.publish(50, 1);
        let v = producer.publish(50, 64);
        assert_eq!(v, v0 + 100);
        assert!(held.view::<u64>(REGION).unwrap() == &pinned[..], "{tracker}: the held snapshot changed");

        let fresh = observer.latest().unwrap();
        assert_eq!(fresh.version(), v);
        assert_field(fresh.view::<u64>(REGION).unwrap(), v, 64, "the latest version");
        assert_eq!(fresh.changed_since(v0), vec![0..PAGES]);
        assert!(held.view::<u64>(REGION).unwrap() == &pinned[..], "{tracker}: the held snapshot changed");
        drop((held, fresh));
        producer.finish();
    }
}

/// While a snapshot is held, the pages it needs stay on top of the producer's usual memory;
/// once it is dropped the same writes leave the store as before. `Freed::Release` gives the
/// memory back exactly; `Freed::Reuse` within its bound (two regions' worth here).
#[test]
fn pinned_memory_returns_to_baseline() {
    if serving_as_producer() {
        return;
    }
    let region_bytes = (PAGES * page_size()) as u64;
    for tracker in trackers("pinned_memory_returns_to_baseline") {
        for freed in [Freed::Release, Freed::Reuse] {
            let what = format!("{tracker}, {freed:?}");
            let name = format!("memory-{tracker}-{freed:?}");
            let mut producer = RemoteProducer::start_with("pinned_memory_returns_to_baseline", &name, tracker, freed);
            let observer = Observer::attach(&name).unwrap();
            producer.publish(6, 1);
            let baseline = producer.bytes;
            assert!(baseline >= region_bytes, "{what}: {baseline} bytes cannot hold the latest version");

            // Every page of the pinned version is superseded: all of it stays on top.
            let held = observer.latest().unwrap();
            let mut pinned = 0;
            for _ in 0..3 {
                producer.publish(2, 0);
                pinned = producer.bytes;
                assert!(
                    pinned >= baseline + region_bytes,
                    "{what}: {pinned} bytes with a pinned version, baseline {baseline}"
                );
            }
            drop(held);
            producer.publish(6, 1);
            match freed {
                Freed::Release => assert_eq!(producer.bytes, baseline, "{what}: memory after the pin was dropped"),
                Freed::Reuse => assert!(
                    producer.bytes < pinned && producer.bytes <= 2 * region_bytes,
                    "{what}: {} bytes after the pin was dropped ({pinned} while pinned)",
                    producer.bytes
                ),
            }
            producer.finish();
        }
    }
}

/// The memory bound (docs/design.md#the-store-protocol): memory held = the latest version +
/// the pages changed since each pinned version.
/// With no pin and `Freed::Release`, that is one region's worth after every publish; the
/// default `Freed::Reuse` keeps at most one more copy of what recent versions wrote.
#[test]
fn unpinned_store_holds_the_latest_version_and_what_it_may_reuse() {
    if serving_as_producer() {
        return;
    }
    let region_bytes = (PAGES * page_size()) as u64;
    for tracker in trackers("unpinned_store_holds_the_latest_version_and_what_it_may_reuse") {
        for freed in [Freed::Release, Freed::Reuse] {
            let name = format!("one-copy-{tracker}-{freed:?}");
            let test = "unpinned_store_holds_the_latest_version_and_what_it_may_reuse";
            let mut producer = RemoteProducer::start_with(test, &name, tracker, freed);
            for span in [0, 1, 64] {
                let v = producer.publish(3, span);
                let bytes = producer.bytes;
                let what =
                    format!("{tracker}, {freed:?}: store bytes after version {v} (span {span}) with no pin held");
                match freed {
                    Freed::Release => assert_eq!(bytes, region_bytes, "{what}"),
                    Freed::Reuse => assert!((region_bytes..=2 * region_bytes).contains(&bytes), "{what}: {bytes}"),
                }
            }
            producer.finish();
        }
    }
}

/// The one wait rule: `attach` waits for a producer started after its observer.
#[test]
fn attach_waits_for_a_producer_that_starts_later() {
    if serving_as_producer() {
        return;
    }
    dir();
    let name = "starts-later";
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let mut p =
            Producer::create(name, ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
        let _r = p.region::<u64>("r", &[16]).unwrap();
        p.publish().unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    let observer = Observer::attach(name).expect("attach waits for the producer to appear");
    assert!(observer.latest_version() >= 1);
    producer.join().unwrap();
}

#[test]
fn attaching_to_a_missing_name_is_not_found() {
    if serving_as_producer() {
        return;
    }
    dir();
    match Observer::attach_timeout("no-such-producer", Duration::ZERO) {
        Err(ReadError::Endpoint(EndpointError::NotFound { name, .. })) => assert_eq!(name, "no-such-producer"),
        other => panic!("expected NotFound, got {:?}", other.map(|o| o.name().to_string())),
    }
}

#[test]
fn views_check_region_type_and_length() {
    if serving_as_producer() {
        return;
    }
    let name = "views";
    let producer = RemoteProducer::start("views_check_region_type_and_length", name, TrackerKind::Copy);
    let observer = Observer::attach(name).unwrap();
    let snapshot = observer.latest().unwrap();
    let len = PAGES * words_per_page();
    assert_eq!(snapshot.view_exact::<u64>(REGION, len).unwrap().len(), len);
    assert!(matches!(snapshot.view::<f64>(REGION), Err(ReadError::WrongType { .. })));
    assert!(matches!(
        snapshot.view_exact::<u64>(REGION, len + 1),
        Err(ReadError::WrongLength { actual, asked, .. }) if actual == len && asked == len + 1
    ));
    assert!(matches!(snapshot.view::<u64>("nowhere"), Err(ReadError::NoSuchRegion { .. })));
    assert!(matches!(snapshot.bytes("nowhere"), Err(ReadError::NoSuchRegion { .. })));
    drop(snapshot);
    producer.finish();
}

#[test]
fn a_live_name_cannot_be_taken() {
    if serving_as_producer() {
        return;
    }
    let name = "taken";
    let producer = RemoteProducer::start("a_live_name_cannot_be_taken", name, TrackerKind::Copy);
    let options = ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() };
    match Producer::create(name, options) {
        Err(CreateError::Endpoint(EndpointError::NameInUse { pid, .. })) => assert_eq!(pid as u32, producer.child.id()),
        Err(e) => panic!("expected NameInUse, got {e}"),
        Ok(_) => panic!("a second producer took the live name {name:?}"),
    }
    producer.finish();
}

#[test]
fn a_killed_producer_is_replaced_and_snapshots_stay_readable() {
    if serving_as_producer() {
        return;
    }
    let name = "killed";
    let test = "a_killed_producer_is_replaced_and_snapshots_stay_readable";
    let mut producer = RemoteProducer::start(test, name, TrackerKind::Copy);
    let v = producer.publish(2, 1);
    let observer = Observer::attach(name).unwrap();
    let snapshot = observer.latest().unwrap();
    let before = snapshot.view::<u64>(REGION).unwrap().to_vec();
    assert_field(&before, v, 1, "before the kill");

    producer.child.kill().unwrap();
    producer.child.wait().unwrap();
    assert!(matches!(observer.latest(), Err(ReadError::ProducerGone { last_version, .. }) if last_version == v));
    assert!(snapshot.view::<u64>(REGION).unwrap() == &before[..], "the snapshot changed when its producer died");

    // The dead producer's lock is free: a new producer takes the name, and new observers
    // reach it, while the old observer stays with the old store.
    let mut successor =
        Producer::create(name, ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
    let mut other = successor.region::<u32>("other", &[16]).unwrap();
    other[3] = 7;
    successor.publish().unwrap();
    let fresh = Observer::attach(name).unwrap().latest().unwrap();
    assert_eq!(fresh.view::<u32>("other").unwrap()[3], 7);
    assert!(matches!(observer.latest(), Err(ReadError::ProducerGone { .. })));
    assert!(snapshot.view::<u64>(REGION).unwrap() == &before[..]);
}

/// A timeout too long for the clock (`Duration::MAX`) waits until a version arrives: it
/// neither overflows the deadline nor returns at once.
#[test]
fn wait_newer_without_a_deadline_returns_when_a_version_arrives() {
    let name = "no-deadline";
    common::endpoint_dir(name);
    let mut producer =
        Producer::create(name, ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
    let mut field: tcasm::Region<u64> = producer.region(REGION, &[512]).unwrap();
    assert_eq!(producer.publish().unwrap(), 1);
    let observer = Observer::attach(name).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(observer.wait_newer(1, Duration::MAX)));
    std::thread::sleep(Duration::from_millis(200));
    assert!(rx.try_recv().is_err(), "wait_newer returned before a newer version was published");
    field.fill(2);
    assert_eq!(producer.publish().unwrap(), 2);
    match rx.recv_timeout(ANSWER_LIMIT) {
        Ok(Ok(Some(2))) => {}
        other => panic!("wait_newer(1, Duration::MAX) after version 2 was published gave {other:?}"),
    }
}

/// `Snapshot::page` takes a page of the page space, and names that range when given another.
#[test]
#[should_panic(expected = "page 1 is outside the page space 0..1")]
fn a_page_outside_the_page_space_panics_naming_the_range() {
    let name = "outside";
    common::endpoint_dir(name);
    let mut producer =
        Producer::create(name, ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
    let _field: tcasm::Region<u64> = producer.region(REGION, &[words_per_page()]).unwrap();
    producer.publish().unwrap();
    let snapshot = Observer::attach(name).unwrap().latest().unwrap();
    assert_eq!(snapshot.page(0).len(), page_size());
    snapshot.page(1);
}

/// An observer holds at most `PINS_PER_SLOT` (8) snapshots: the next `latest()` is refused
/// with `TooManySnapshots`, saying what to do, until one is dropped; the ones held stay as
/// they were.
#[test]
fn an_observer_holds_at_most_eight_snapshots() {
    common::endpoint_dir("too-many");
    let mut producer =
        Producer::create("too-many", ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
    let mut field: tcasm::Region<u64> = producer.region("field", &[512]).unwrap();
    let mut held = Vec::new();
    let mut observer = None;
    for v in 1..=tcasm::store::layout::PINS_PER_SLOT as u64 {
        field.fill(v);
        assert_eq!(producer.publish().unwrap(), v);
        let o = observer.get_or_insert_with(|| Observer::attach("too-many").unwrap());
        held.push(o.latest().unwrap());
    }
    let observer = observer.unwrap();
    field.fill(99);
    producer.publish().unwrap();
    match observer.latest() {
        Err(e @ tcasm::ReadError::TooManySnapshots { held: 8 }) => {
            assert!(e.to_string().contains("drop one first"), "{e}")
        }
        Err(e) => panic!("expected TooManySnapshots, got {e}"),
        Ok(s) => panic!("a ninth snapshot, of version {}", s.version()),
    }
    for (v, snap) in (1..).zip(&held) {
        assert_eq!(snap.version(), v);
        assert!(snap.view::<u64>("field").unwrap().iter().all(|&x| x == v), "version {v} changed while held");
    }
    drop(held.remove(3));
    let ninth = observer.latest().unwrap();
    assert_eq!((ninth.version(), ninth.view::<u64>("field").unwrap()[0]), (9, 99));
}

/// Two producers cannot track the same memory: the second is told that another producer
/// already wraps it, not that the tracker cannot track such memory.
#[test]
fn wrapping_memory_another_producer_wraps_names_the_cause() {
    if serving_as_producer() {
        return;
    }
    dir();
    if !common::async_tracking_available("wrapping_memory_another_producer_wraps_names_the_cause") {
        return;
    }
    let options = || ProducerOptions { tracker: TrackerKind::Async, ..Default::default() };
    let mut buffer = vec![0.0f64; 4096];
    let mut first = Producer::create("wraps-first", options()).unwrap();
    let mut second = Producer::create("wraps-second", options()).unwrap();
    // SAFETY: `buffer` outlives both producers (dropped at the end of the test, after them)
    // and is not touched while they live.
    unsafe { first.wrap_raw("t", buffer.as_mut_ptr(), &[4096]) }.unwrap();
    // SAFETY: as above.
    let err = unsafe { second.wrap_raw("t", buffer.as_mut_ptr(), &[4096]) }.unwrap_err().to_string();
    assert!(err.contains("already tracked"), "{err}");
    assert!(!err.contains("Producer::region"), "{err}");
    drop((first, second));
    drop(buffer);
}
