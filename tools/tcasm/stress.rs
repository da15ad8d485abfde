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
//! then drops its endpoint; each observer then gets `ProducerGone`, prints its totals as one
//! line on stdout and exits. The producer collects them under a watchdog (stragglers are
//! killed and count as failed), and its last stdout line is
//! `stress: versions=V acquisitions=A verified_pages=P torn=T`; it fails when a snapshot was
//! torn or an observer failed. Progress goes to stderr.
use std::io::Read;
use std::ops::Range;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use tcasm::sys::page_size;
use tcasm::{Observer, Producer, ProducerOptions, ReadError, Region, Snapshot, TrackerKind};

/// The one region the producer shares.
const REGION: &str = "stress";
/// How long observers get to notice the producer's end and report, before they are killed.
const OBSERVER_GRACE: Duration = Duration::from_secs(30);
/// Mismatches an observer describes on stderr before it only counts them.
const REPORTED_MISMATCHES: u64 = 5;

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
    /// How the producer finds written pages: async, copy or auto.
    #[arg(long, default_value_t = TrackerKind::Auto)]
    tracker: TrackerKind,
    /// Endpoint name (default: stress-PID).
    #[arg(long)]
    name: Option<String>,
    /// Seed of the write schedule (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
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

/// SplitMix64's finalizer: the source of every pseudo-random choice here.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A SplitMix64 stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0), close enough for a schedule.
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in [0, 1).
    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
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
        let mut rng = Rng(mix(self.seed ^ mix(v)));
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

/// What observers counted; one line of `key=value` pairs on an observer's stdout.
#[derive(Clone, Copy, Debug, Default)]
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

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "observer: acquisitions={} verified_pages={} torn={} bad_pages={} missing_changes={} latest_us={} check_us={}",
            self.acquisitions,
            self.verified_pages,
            self.torn,
            self.bad_pages,
            self.missing_changes,
            self.latest_us,
            self.check_us
        )
    }
}

impl FromStr for Totals {
    type Err = String;
    fn from_str(line: &str) -> Result<Totals, String> {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {key}= in {line:?}"))
        };
        Ok(Totals {
            acquisitions: field("acquisitions")?,
            verified_pages: field("verified_pages")?,
            torn: field("torn")?,
            bad_pages: field("bad_pages")?,
            missing_changes: field("missing_changes")?,
            latest_us: field("latest_us")?,
            check_us: field("check_us")?,
        })
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
        ..ProducerOptions::default()
    };
    let mut producer = Producer::create(&name, options)?;
    let region = producer.region::<u8>(REGION, &[args.size])?;
    eprintln!(
        "stress: producer {name:?}: {} pages, {} tracker, {} observers, {} s, seed {seed}",
        pattern.pages,
        producer.tracker(),
        args.observers,
        args.seconds
    );
    let mut writer = Writer { producer, region, pattern, schedule: Vec::new() };
    writer.publish_next()?;
    let observers = (0..args.observers)
        .map(|i| spawn_observer(&name, seed, i))
        .collect::<std::io::Result<Vec<_>>>()?;
    let published = writer.publish_for(Duration::from_secs_f64(args.seconds));
    let stats = writer.producer.stats();
    eprintln!(
        "stress: producer done: {} versions, {:.2} ms per publish",
        stats.versions,
        stats.total_publish.as_secs_f64() * 1e3 / stats.versions as f64
    );
    drop(writer); // observers now see ProducerGone

    let mut sum = Totals::default();
    let mut failed = 0;
    for (i, result) in collect(observers, OBSERVER_GRACE).into_iter().enumerate() {
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
        "stress: versions={} acquisitions={} verified_pages={} torn={}",
        stats.versions, sum.acquisitions, sum.verified_pages, sum.torn
    );
    if sum.torn > 0 || failed > 0 {
        return Err(format!("{} torn snapshots, {failed} of {} observers failed", sum.torn, args.observers).into());
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

fn spawn_observer(name: &str, seed: u64, index: usize) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["stress-observer", "--name", name])
        .args(["--seed", &seed.to_string(), "--index", &index.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
}

/// Waits for every observer, at most `grace` in all, kills those still running then, and
/// returns each one's totals or why it failed.
fn collect(mut children: Vec<Child>, grace: Duration) -> Vec<Result<Totals, String>> {
    let deadline = Instant::now() + grace;
    let mut results: Vec<Option<Result<Totals, String>>> = children.iter().map(|_| None).collect();
    while results.iter().any(Option::is_none) {
        let late = Instant::now() > deadline;
        for (child, result) in children.iter_mut().zip(&mut results).filter(|(_, r)| r.is_none()) {
            *result = match child.try_wait() {
                Ok(Some(status)) => Some(report(child, status)),
                Ok(None) if late => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Some(Err(format!("still running {grace:?} after the producer ended: killed")))
                }
                Ok(None) => None,
                Err(e) => Some(Err(format!("waiting for it: {e}"))),
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    results.into_iter().flatten().collect()
}

/// The totals an exited observer printed.
fn report(child: &mut Child, status: std::process::ExitStatus) -> Result<Totals, String> {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).map_err(|e| format!("reading its output: {e}"))?;
    }
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    out.lines().last().ok_or("printed nothing")?.parse()
}

pub fn observe(args: ObserverArgs) -> crate::Result {
    let observer = Observer::attach(&args.name)?;
    let region = observer
        .regions()
        .iter()
        .find(|r| r.name == REGION && r.first_page == 0 && r.offset == 0)
        .ok_or_else(|| format!("producer {:?} is not a stress producer: no region {REGION:?} at page 0", args.name))?;
    let pattern = Pattern { seed: args.seed, pages: region.pages };
    let mut checker = Checker {
        index: args.index,
        pattern,
        version: 0,
        last_written: vec![0; pattern.pages],
        schedule: Vec::new(),
        totals: Totals::default(),
    };
    loop {
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
            }
            Err(ReadError::ProducerGone { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", checker.totals);
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
        let back: Totals = t.to_string().parse().unwrap();
        assert_eq!(back.to_string(), t.to_string());
        assert!("observer: acquisitions=3".parse::<Totals>().is_err());
    }
}
