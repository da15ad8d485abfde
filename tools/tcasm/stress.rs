//! `tcasm stress`: one producer (this process) and N observer processes that check every byte
//! of every snapshot they take, so that a torn page, a stale page, a slot reused while pinned
//! or a change that `changed_since` forgets shows up as a failure.
//!
//! Everything can be checked because the data is a pure function ([`Pattern`]): which pages
//! version `v` writes depends only on (seed, `v`), and a page's bytes only on (page, version
//! that last wrote it). An observer replays the schedule from its previous snapshot's version
//! to the new one, so it knows who last wrote each page, then compares the whole snapshot with
//! what those writes produce. Versions write scattered pages, contiguous runs, both, nothing or
//! everything, at coverages spread over 0–100 %, so every publish path of the store is taken.
//!
//! The producer never waits for observers: it publishes as fast as it can for `--seconds`,
//! then drops its endpoint; each observer then gets `ProducerGone` and exits. Observers report
//! their running totals after every snapshot (a JSON line, `crate::harness`); the producer
//! keeps the last report of each under a watchdog (stragglers are killed and count as failed), and its
//! last stdout line is `stress: versions=V acquisitions=A verified_pages=P torn=T`; it fails
//! when a snapshot was torn or an observer failed. Progress goes to stderr.
//!
//! With `--chaos`, observers are also SIGKILLed at random (and replaced by fresh ones) or
//! SIGSTOPped for a random while, as a crashing or stalled analysis would be. A killed
//! observer is no failure, and the snapshots it verified before it died count. The producer
//! frees slots at once (`Freed::Release`), so that its memory is exact: at the end the
//! observers are told to exit (their stdin closes) while the producer lives, it publishes a
//! few more versions, and whatever its store holds beyond the latest version is
//! `leaked_bytes`, which must be 0; the last line then ends with `leaked_bytes=L`.
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tcasm::page_size;
use tcasm::{Freed, Observer, Producer, ProducerOptions, ReadError, Region, Snapshot, TrackerKind};

use crate::harness::{report, ChildProcess};
use crate::rng::{mix, Rng};

/// The one region the producer shares.
const REGION: &str = "stress";
/// How long observers get to notice the producer's end and report, before they are killed.
const OBSERVER_GRACE: Duration = Duration::from_secs(30);
/// Mismatches an observer describes on stderr before it only counts them.
const REPORTED_MISMATCHES: u64 = 5;
/// How long chaos waits between two blows, and how long it stops an observer, in ms.
const CHAOS_PAUSE_MS: Range<u64> = 100..1000;
const CHAOS_STOP_MS: Range<u64> = 100..2000;
/// Versions published once the observers are gone, before the store's memory is measured.
const SETTLE_VERSIONS: usize = 2;

#[derive(clap::Args)]
pub struct Args {
    /// Observer processes.
    #[arg(long, default_value_t = 4)]
    observers: usize,
    /// How long the producer publishes.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Bytes of the producer's region, a multiple of the page size (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = crate::parse_size)]
    size: usize,
    /// How the producer finds written pages: auto, async, sync, deferred or copy.
    #[arg(long, default_value_t = TrackerKind::Auto)]
    tracker: TrackerKind,
    /// Endpoint name (default: stress-PID).
    #[arg(long)]
    name: Option<String>,
    /// Seed of the write schedule (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Kill, stop and restart observers at random meanwhile, and report the memory the store
    /// holds beyond the latest version at the end (`leaked_bytes`).
    #[arg(long)]
    chaos: bool,
}

#[derive(clap::Args)]
pub struct ObserverArgs {
    /// The stress producer's endpoint name.
    #[arg(long)]
    name: String,
    /// The seed of its write schedule.
    #[arg(long)]
    seed: u64,
    /// Which observer this is, for messages.
    #[arg(long, default_value_t = 0)]
    index: usize,
}

/// Distance between consecutive words of a page: word `i` is `base + i * WORD_STEP`.
const WORD_STEP: u64 = 0xD6E8_FEB8_6659_FD93;

/// The data of a run: which pages each version writes, and what a written page holds.
#[derive(Clone, Copy)]
struct Pattern {
    seed: u64,
    pages: usize,
}

impl Pattern {
    /// Sets `out` to the page ranges version `v` writes (they may overlap). Version 1 writes
    /// every page, so every page of every version has a known writer.
    fn schedule(&self, v: u64, out: &mut Vec<Range<usize>>) {
        out.clear();
        let mut rng = Rng::new(mix(self.seed ^ mix(v)));
        let coverage = rng.fraction();
        match if v == 1 { 1 } else { rng.below(8) } {
            0 => {}
            1 => out.push(0..self.pages),
            2 | 3 => self.runs(&mut rng, coverage, out),
            4 | 5 => self.scattered(&mut rng, coverage, out),
            _ => {
                self.runs(&mut rng, coverage / 2.0, out);
                self.scattered(&mut rng, coverage / 2.0, out);
            }
        }
    }

    /// One to eight contiguous runs covering about `coverage` of the pages together.
    fn runs(&self, rng: &mut Rng, coverage: f64, out: &mut Vec<Range<usize>>) {
        let count = 1 + rng.below(8);
        let len = (coverage * self.pages as f64 / count as f64) as usize;
        for _ in 0..count {
            let start = rng.below(self.pages - len + 1);
            out.push(start..start + len);
        }
    }

    /// Each page with probability `coverage`.
    fn scattered(&self, rng: &mut Rng, coverage: f64, out: &mut Vec<Range<usize>>) {
        let threshold = (coverage * u64::MAX as f64) as u64;
        for p in 0..self.pages {
            if rng.next() < threshold {
                match out.last_mut() {
                    Some(last) if last.end == p => last.end += 1,
                    _ => out.push(p..p + 1),
                }
            }
        }
    }

    /// The first word of page `page` as version `version` writes it.
    fn base(&self, page: usize, version: u64) -> u64 {
        mix(self.seed ^ mix(page as u64 ^ mix(version)))
    }

    fn fill(page: &mut [u8], base: u64) {
        let mut word = base;
        for bytes in page.chunks_exact_mut(8) {
            bytes.copy_from_slice(&word.to_ne_bytes());
            word = word.wrapping_add(WORD_STEP);
        }
    }

    /// Whether `page` holds exactly what `fill(page, base)` writes. One branch-free pass the
    /// compiler vectorizes: this loop is most of an observer's time.
    fn holds(page: &[u8], base: u64) -> bool {
        let (mut expected, mut diff) = (base, 0);
        for bytes in page.chunks_exact(8) {
            diff |= u64::from_ne_bytes(bytes.try_into().expect("chunks of 8 bytes")) ^ expected;
            expected = expected.wrapping_add(WORD_STEP);
        }
        diff == 0
    }
}

/// What observers counted: an observer's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Totals {
    acquisitions: u64,
    verified_pages: u64,
    /// Snapshots with any mismatch.
    torn: u64,
    /// Pages whose bytes were not those of their last writer.
    bad_pages: u64,
    /// Written pages that `changed_since` did not report.
    missing_changes: u64,
    /// Microseconds spent in `latest()` (pinning and mapping) and in checking snapshots.
    latest_us: u64,
    check_us: u64,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.acquisitions += o.acquisitions;
        self.verified_pages += o.verified_pages;
        self.torn += o.torn;
        self.bad_pages += o.bad_pages;
        self.missing_changes += o.missing_changes;
        self.latest_us += o.latest_us;
        self.check_us += o.check_us;
    }
}

pub fn run(args: Args) -> crate::Result {
    let page = page_size();
    if args.size == 0 || !args.size.is_multiple_of(page) {
        return Err(format!("--size {} is not a positive multiple of the page size ({page})", args.size).into());
    }
    if !(args.seconds >= 0.0 && args.seconds < 1e9) {
        return Err(format!("--seconds {} is not a duration", args.seconds).into());
    }
    let name = args.name.unwrap_or_else(|| format!("stress-{}", std::process::id()));
    let seed = args.seed.unwrap_or_else(clock_seed);
    let pattern = Pattern { seed, pages: args.size / page };
    let options = ProducerOptions {
        tracker: args.tracker,
        max_observers: ProducerOptions::default().max_observers.max(args.observers),
        freed: if args.chaos { Freed::Release } else { Freed::Reuse },
        ..ProducerOptions::default()
    };
    let mut producer = Producer::create(&name, options)?;
    let region = producer.region::<u8>(REGION, &[args.size])?;
    eprintln!(
        "stress: producer {name:?}: {} pages, {} tracker, {} observers{}, {} s, seed {seed}",
        pattern.pages,
        producer.tracker(),
        args.observers,
        if args.chaos { " under chaos" } else { "" },
        args.seconds
    );
    let mut writer = Writer { producer, region, pattern, schedule: Vec::new() };
    writer.publish_next()?;
    let observers =
        (0..args.observers).map(|i| ObserverProcess::spawn(&name, seed, i)).collect::<std::io::Result<Vec<_>>>()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let (published, observers, mut results) = if args.chaos {
        let chaos = Chaos::start(observers, &name, seed);
        let published = writer.publish_for(duration);
        let (observers, killed) = chaos.stop();
        (published, observers, killed)
    } else {
        (writer.publish_for(duration), observers, Vec::new())
    };
    let stats = writer.producer.stats();
    eprintln!(
        "stress: producer done: {} versions, {:.2} ms per publish",
        stats.versions,
        stats.total_publish.as_secs_f64() * 1e3 / stats.versions as f64
    );
    let leaked = if args.chaos {
        // The observers finish while the producer lives on, to measure what it keeps.
        results.extend(collect(observers, OBSERVER_GRACE));
        Some(writer.leaked_bytes()?)
    } else {
        drop(writer); // observers now see ProducerGone
        results.extend(collect(observers, OBSERVER_GRACE));
        None
    };

    let mut sum = Totals::default();
    let mut failed = 0;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(t) => sum.add(t),
            Err(why) => {
                failed += 1;
                eprintln!("stress: observer {i} failed: {why}");
            }
        }
    }
    published?;
    let each = |us: u64| us as f64 / 1e3 / sum.acquisitions.max(1) as f64;
    eprintln!(
        "stress: observers spent {:.2} ms per snapshot in latest() and {:.2} ms checking it",
        each(sum.latest_us),
        each(sum.check_us)
    );
    if sum.torn > 0 {
        eprintln!(
            "stress: {} torn snapshots: {} pages with wrong bytes, {} written pages missing from changed_since",
            sum.torn, sum.bad_pages, sum.missing_changes
        );
    }
    println!(
        "stress: versions={} acquisitions={} verified_pages={} torn={}{}",
        stats.versions,
        sum.acquisitions,
        sum.verified_pages,
        sum.torn,
        leaked.map(|l| format!(" leaked_bytes={l}")).unwrap_or_default()
    );
    if sum.torn > 0 || failed > 0 || leaked.is_some_and(|l| l > 0) {
        return Err(format!(
            "{} torn snapshots, {failed} observers failed, {} bytes leaked",
            sum.torn,
            leaked.unwrap_or(0)
        )
        .into());
    }
    Ok(())
}

fn clock_seed() -> u64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    mix(now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32))
}

/// The producer's side: its region and the schedule it follows.
struct Writer {
    producer: Producer,
    region: Region<u8>,
    pattern: Pattern,
    schedule: Vec<Range<usize>>,
}

impl Writer {
    /// Writes the pages of the next version and publishes it.
    fn publish_next(&mut self) -> crate::Result {
        let v = self.producer.stats().versions + 1;
        let page = page_size();
        self.pattern.schedule(v, &mut self.schedule);
        for p in self.schedule.iter().flat_map(|r| r.clone()) {
            Pattern::fill(&mut self.region[p * page..(p + 1) * page], self.pattern.base(p, v));
        }
        let published = self.producer.publish()?;
        if published != v {
            return Err(format!("publish() made version {published}, expected {v}").into());
        }
        Ok(())
    }

    /// Once every observer has exited: publishes a few more versions and returns the bytes
    /// the store holds beyond the latest version (with `Freed::Release`, it holds exactly
    /// that version when no observer pins one).
    fn leaked_bytes(&mut self) -> crate::Result<u64> {
        let deadline = Instant::now() + OBSERVER_GRACE;
        while self.producer.observers() > 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} observers still attached {OBSERVER_GRACE:?} after they exited",
                    self.producer.observers()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..SETTLE_VERSIONS {
            self.publish_next()?;
        }
        self.producer.flush();
        let latest = (self.pattern.pages * page_size()) as u64;
        Ok(self.producer.stats().store_bytes.saturating_sub(latest))
    }

    /// Publishes as fast as it can for `duration`, with a progress line a second on stderr.
    fn publish_for(&mut self, duration: Duration) -> crate::Result {
        let started = Instant::now();
        let mut next_report = started + Duration::from_secs(1);
        while started.elapsed() < duration {
            self.publish_next()?;
            if Instant::now() >= next_report {
                next_report += Duration::from_secs(1);
                let s = self.producer.stats();
                eprintln!(
                    "stress: {:5.1} s  version {}  last copied {} pages  store {} MiB in {} planes  pins {}  observers {}",
                    started.elapsed().as_secs_f64(),
                    s.versions,
                    s.last_pages_copied,
                    s.store_bytes >> 20,
                    s.planes,
                    s.live_pins,
                    self.producer.observers()
                );
            }
        }
        Ok(())
    }
}

/// An observer's totals, or why it failed.
type Report = Result<Totals, String>;

/// An observer process. It reports its totals after every snapshot, and its last report
/// is kept, so that what an observer killed by chaos verified still counts. Closing its
/// stdin tells it to finish.
struct ObserverProcess {
    child: ChildProcess<Totals>,
}

impl ObserverProcess {
    fn spawn(name: &str, seed: u64, index: usize) -> std::io::Result<ObserverProcess> {
        let args = ["stress-observer".to_string(), "--name".into(), name.into()].into_iter().chain([
            "--seed".into(),
            seed.to_string(),
            "--index".into(),
            index.to_string(),
        ]);
        Ok(ObserverProcess { child: ChildProcess::start(args, true, &format!("stress-observer {index}"))? })
    }

    fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Its totals, once it has exited with `status`; chaos `killed` it, or it had to succeed.
    fn result(self, status: std::process::ExitStatus, killed: bool) -> Report {
        let report = self.child.remaining().pop();
        if !killed && !status.success() {
            return Err(format!("exited with {status}"));
        }
        match report {
            Some(t) => Ok(t),
            None if killed => Ok(Totals::default()),
            None => Err("printed nothing".into()),
        }
    }

    /// SIGKILLs it (chaos) and returns what it verified until then; one that had already
    /// exited is judged by how it exited.
    fn kill(mut self) -> Report {
        if let Ok(Some(status)) = self.child.try_wait() {
            return self.result(status, false);
        }
        let status = self.child.kill().map_err(|e| format!("waiting for it: {e}"))?;
        self.result(status, true)
    }
}

/// Closes every observer's stdin, waits for them all, at most `grace` in all, kills those
/// still running then, and returns each one's totals or why it failed.
fn collect(mut observers: Vec<ObserverProcess>, grace: Duration) -> Vec<Report> {
    observers.iter_mut().for_each(|o| o.child.close_stdin());
    let deadline = Instant::now() + grace;
    let mut results = Vec::new();
    while !observers.is_empty() {
        let late = Instant::now() > deadline;
        let mut i = 0;
        while i < observers.len() {
            let result = match observers[i].child.try_wait() {
                Ok(Some(status)) => Some(observers.swap_remove(i).result(status, false)),
                Ok(None) if late => {
                    let _ = observers.swap_remove(i).kill();
                    Some(Err(format!("still running {grace:?} after the run ended: killed")))
                }
                Ok(None) => None,
                Err(e) => {
                    let _ = observers.swap_remove(i).kill();
                    Some(Err(format!("waiting for it: {e}")))
                }
            };
            match result {
                Some(r) => results.push(r),
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    results
}

/// Blows dealt to observers while the producer publishes, one at a time at random: SIGKILL
/// (and a fresh observer in its place) or SIGSTOP for a while (then SIGCONT).
struct Chaos {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<ObserverProcess>, Vec<Report>)>,
}

impl Chaos {
    fn start(observers: Vec<ObserverProcess>, name: &str, seed: u64) -> Chaos {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, name) = (stop.clone(), name.to_string());
            std::thread::spawn(move || chaos(observers, &name, seed, &stop))
        };
        Chaos { stop, thread }
    }

    /// Ends the chaos; returns the observers running then, and what the killed ones verified.
    fn stop(self) -> (Vec<ObserverProcess>, Vec<Report>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the chaos thread does not panic")
    }
}

fn chaos(
    mut observers: Vec<ObserverProcess>,
    name: &str,
    seed: u64,
    stop: &AtomicBool,
) -> (Vec<ObserverProcess>, Vec<Report>) {
    let mut rng = Rng::new(mix(seed ^ 0xC4A0_5C4A_05C4_A05C));
    let (mut killed, mut stops, mut next) = (Vec::new(), 0, observers.len());
    loop {
        pause(rng.millis(&CHAOS_PAUSE_MS), stop);
        if stop.load(Ordering::Relaxed) || observers.is_empty() {
            break;
        }
        let i = rng.below(observers.len());
        if rng.below(2) == 0 {
            match ObserverProcess::spawn(name, seed, next) {
                Ok(fresh) => {
                    next += 1;
                    killed.push(std::mem::replace(&mut observers[i], fresh).kill());
                }
                Err(e) => eprintln!("stress: chaos could not start an observer: {e}"),
            }
        } else {
            observers[i].signal(Signal::SIGSTOP);
            pause(rng.millis(&CHAOS_STOP_MS), stop);
            observers[i].signal(Signal::SIGCONT);
            stops += 1;
        }
    }
    eprintln!("stress: chaos: {} observers killed, {stops} stopped", killed.len());
    (observers, killed)
}

/// Sleeps for `d`, or less if `stop` is set meanwhile.
fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn observe(args: ObserverArgs) -> crate::Result {
    // The producer closes our stdin when it wants us to finish while it lives on.
    let finish = Arc::new(AtomicBool::new(false));
    {
        let finish = finish.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            finish.store(true, Ordering::Relaxed);
        });
    }
    let observer = Observer::attach(&args.name)?;
    let region =
        observer.regions().iter().find(|r| r.name == REGION && r.first_page == 0 && r.offset == 0).ok_or_else(
            || format!("producer {:?} is not a stress producer: no region {REGION:?} at page 0", args.name),
        )?;
    let pattern = Pattern { seed: args.seed, pages: region.pages };
    let mut checker = Checker {
        index: args.index,
        pattern,
        version: 0,
        last_written: vec![0; pattern.pages],
        schedule: Vec::new(),
        totals: Totals::default(),
    };
    while !finish.load(Ordering::Relaxed) {
        match observer.wait_newer(checker.version, Duration::from_millis(100)) {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(ReadError::ProducerGone { .. }) => break,
            Err(e) => return Err(e.into()),
        }
        let asked = Instant::now();
        match observer.latest() {
            Ok(snapshot) => {
                checker.totals.latest_us += asked.elapsed().as_micros() as u64;
                checker.check(&snapshot)?;
                report(&checker.totals)?;
            }
            Err(ReadError::ProducerGone { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    report(&checker.totals)?;
    Ok(())
}

/// An observer's knowledge of the run: the version it checked last and who last wrote each
/// page by then.
struct Checker {
    index: usize,
    pattern: Pattern,
    version: u64,
    last_written: Vec<u64>,
    schedule: Vec<Range<usize>>,
    totals: Totals,
}

impl Checker {
    fn check(&mut self, snapshot: &Snapshot) -> crate::Result {
        let started = Instant::now();
        let v = snapshot.version();
        let prev = self.version;
        let mut mismatches = 0;
        if v <= prev {
            eprintln!("stress-observer {}: latest() gave version {v} after version {prev}", self.index);
            mismatches += 1;
        }
        for w in prev + 1..=v {
            self.pattern.schedule(w, &mut self.schedule);
            for r in &self.schedule {
                self.last_written[r.clone()].fill(w);
            }
        }

        let page = page_size();
        let bytes = snapshot.bytes(REGION)?;
        for (p, data) in bytes.chunks_exact(page).enumerate() {
            let writer = self.last_written[p];
            if !Pattern::holds(data, self.pattern.base(p, writer)) {
                self.totals.bad_pages += 1;
                mismatches += 1;
                if self.totals.bad_pages <= REPORTED_MISMATCHES {
                    eprintln!(
                        "stress-observer {}: version {v} page {p}: expected the bytes written at version {writer}, found {}",
                        self.index,
                        self.identify(p, data, v)
                    );
                }
            }
        }

        // Every page written in (prev, v] must be reported changed (more is allowed).
        let changed = snapshot.changed_since(prev);
        let mut ranges = changed.iter().peekable();
        for p in (0..self.pattern.pages).filter(|&p| self.last_written[p] > prev) {
            while ranges.next_if(|r| r.end <= p).is_some() {}
            if ranges.peek().is_none_or(|r| r.start > p) {
                self.totals.missing_changes += 1;
                mismatches += 1;
                if self.totals.missing_changes <= REPORTED_MISMATCHES {
                    eprintln!(
                        "stress-observer {}: version {v}: changed_since({prev}) misses page {p}, written at version {}",
                        self.index, self.last_written[p]
                    );
                }
            }
        }

        self.totals.acquisitions += 1;
        self.totals.verified_pages += (bytes.len() / page) as u64;
        self.totals.torn += u64::from(mismatches > 0);
        self.totals.check_us += started.elapsed().as_micros() as u64;
        self.version = v;
        Ok(())
    }

    /// What a mismatching page holds, for the report.
    fn identify(&self, p: usize, data: &[u8], v: u64) -> String {
        match (1..=v).rev().find(|&w| Pattern::holds(data, self.pattern.base(p, w))) {
            Some(w) => format!("those of version {w}"),
            None => "bytes of no version (a torn or foreign page)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_pure_and_vary() {
        let pattern = Pattern { seed: 7, pages: 1000 };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut coverages = Vec::new();
        for v in 1..200 {
            pattern.schedule(v, &mut a);
            pattern.schedule(v, &mut b);
            assert_eq!(a, b);
            assert!(a.iter().all(|r| r.end <= pattern.pages));
            let mut written = vec![false; pattern.pages];
            a.iter().for_each(|r| written[r.clone()].fill(true));
            coverages.push(written.iter().filter(|&&w| w).count());
        }
        assert_eq!(coverages[0], 1000);
        assert!(coverages.contains(&0));
        assert!(coverages[1..].contains(&1000));
        assert!(coverages.iter().any(|&c| c > 200 && c < 800));
    }

    #[test]
    fn pages_hold_only_their_own_fill() {
        let pattern = Pattern { seed: 3, pages: 4 };
        let mut page = vec![0u8; 4096];
        Pattern::fill(&mut page, pattern.base(2, 5));
        assert!(Pattern::holds(&page, pattern.base(2, 5)));
        assert!(!Pattern::holds(&page, pattern.base(2, 4)));
        assert!(!Pattern::holds(&page, pattern.base(3, 5)));
        page[4095] ^= 1;
        assert!(!Pattern::holds(&page, pattern.base(2, 5)));
    }

    #[test]
    fn totals_round_trip() {
        let t = Totals { acquisitions: 3, torn: 1, bad_pages: 2, latest_us: 5, ..Totals::default() };
        let back: Totals = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<Totals>("observer: acquisitions=3").is_err());
    }
}
