//! `tcasm bench coverage`: what a version costs the producer against the share of its pages
//! it wrote (TCASM's experiment: overhead against coverage, with 0, 1, 10 observers), for
//! each tcasm tracker and for the snapshotting a user writes by hand instead.
//!
//! One producer (this process) and a region of `--size` bytes. An *iteration* writes the
//! pages the coverage and `--pattern` choose (one 8-byte word per page by default, the same
//! pages and the same writes for every tracker) and publishes. Per iteration:
//!
//! - `publish_us`: the time inside the publish call.
//! - `write_overhead_us`: the time the writes took in the tracked region minus the time the
//!   very same writes took in a plain, untracked buffer of the same kind of memory, both
//!   measured in the same iteration, in alternating order, so that load changes affect both.
//!   It is what tracking makes the producer's own writes cost: first-write faults.
//! - `producer_us = publish_us + write_overhead_us`: what the producer loses per version.
//! - `memory_bytes`: what the snapshots hold, just before a publish.
//! - `observer_lag_us`: from the producer's publish call to an observer holding that
//!   version (`latest()` returned), over every version observers took.
//! - `memcpy_ref_us`: a plain `memcpy` of the whole region into a memfd, timed in the same
//!   iterations (first in each, before the writes; with `deferred` it may overlap the
//!   background copy of the previous version, which then slows both). `vs_memcpy` divides
//!   `producer_us` by it: the ratio holds however the machine's load drifts between rows,
//!   which on a shared 2-core machine it does by ±30 %. `vs_memcpy_row` divides by the
//!   `memcpy` row's `producer_us` instead (same coverage and observers, measured at another
//!   time).
//!
//! A row reports the median of each over its measured iterations (`producer_us` is the
//! median of the per-iteration sums; `producer_mean_us` their mean, which shows the rare
//! expensive versions), after `--warmup` unmeasured ones (with observers, and at least one
//! `--observer-period`: every observer has then taken a version of the row, and the store
//! has grown once to what their pins hold, as it does in a steady state); a row stops
//! early, once it has 3, after `--row-seconds`. Rows of one tracker and observer count share one producer,
//! coverage after coverage; a tcasm producer first publishes its whole region and then 10
//! empty versions. `auto` adapts chunk by chunk within a version or two of a change of
//! pattern; the warm-up iterations cover that, and rows in falling coverage order show it.
//! `changed_pages` is what the version's page map names as changed: with an exact change
//! set it equals `pages_written` for every tracker.
//!
//! The methods (`--tracker`):
//! - `async`, `sync`, `deferred`, `copy`, `auto`: a tcasm [`Producer`] with that tracker.
//!   `deferred`'s publish returns before the copy: its cost is in the producer's next writes
//!   (each first write to a page takes a synchronous fault, in `write_overhead_us`) and in
//!   the next publish, which first finishes the copy the background thread has not done
//!   (in `publish_us`). The copier thread's own time, on another core, is not counted.
//! - `memcpy`: what users write by hand: copy the whole region into a shared memfd every
//!   version, bump a version word, wake waiters. Observers read it in place (no consistency:
//!   they may see a copy in progress).
//! - `double-buffer`: two shared buffers; a publish copies into the back one the pages
//!   written in this and the previous version (the back buffer holds the version before the
//!   last), then flips an atomic index. The user is assumed to know exactly which pages they
//!   wrote (the bench hands it the list, for free): the best hand-written userspace can do.
//!   Observers read the front buffer; one slower than a version may see it rewritten.
//! - `fork`: `fork()` per version, the child holding the snapshot copy-on-write (it only
//!   sleeps; a real one would write a checkpoint). `publish_us` is the `fork()`; the previous
//!   child is then killed and reaped, untimed. The producer's next writes take the COW faults
//!   (`write_overhead_us`). `memory_bytes` is the child's private memory, i.e. the pages
//!   the producer's writes copied away from it. It has no observers: rows with observers
//!   are skipped.
//!
//! Observers are real processes (`tcasm bench-coverage-observer`) that wait for a newer
//! version, take it (`latest()`, or the baselines' buffer), read one word of every 64-byte
//! line of every page (so every byte of the region crosses the memory bus), and wait again.
//! Each takes at most one version per `--observer-period` (1 s), their phases spread over
//! it, and they run at `--observer-nice` (10): ten observers reading 256 MiB as fast as they
//! can would need several cores of a 2-core machine, and the measurement would be of the CPU
//! scheduler and the memory bus, not of publishing. tcasm makes the producer independent of
//! its observers' pace, not of the cores and the bandwidth they share.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tcasm::{monotonic_ns, page_size, Freed, Observer, Producer, ProducerOptions, ReadError, Region, TrackerKind};

use super::shm::{allocated_bytes, futex_wait, futex_wake_all, memfd, SharedMap};
use super::{machine, mean, median, micros, write_pages, Pages, Pattern, Plain, Write};
use crate::harness::{report, ChildProcess};

/// The one region of the producer.
const REGION: &str = "data";
/// Measured iterations a row keeps even past `--row-seconds`.
const MIN_ITERATIONS: usize = 3;
/// Publishes without writes after a tcasm producer's first version, before measuring.
const SETTLE_PUBLISHES: usize = 10;
/// How long observers get to attach, and to report after the producer ends.
const OBSERVER_GRACE: Duration = Duration::from_secs(60);
/// Words of a baseline's header page: the version (its low half is the futex word), the
/// front buffer, whether the producer has finished.
const VERSION: usize = 0;
const FRONT: usize = 1;
const CLOSED: usize = 2;

#[derive(clap::Args)]
pub struct Args {
    /// Bytes of the producer's region (e.g. 256MiB).
    #[arg(long, default_value = "256MiB", value_parser = crate::parse_size)]
    size: usize,
    /// Percents of the pages written per version.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    coverage: Vec<f64>,
    /// Which pages are written.
    #[arg(long, value_enum, default_value_t = Pattern::Strided)]
    pattern: Pattern,
    /// Observer process counts.
    #[arg(long, value_delimiter = ',', default_value = "0,10")]
    observers: Vec<usize>,
    /// Methods: async, sync, deferred, copy, auto (tcasm), memcpy, double-buffer, fork.
    #[arg(long, value_delimiter = ',', default_value = "auto,async,deferred,copy,memcpy,fork")]
    tracker: Vec<Method>,
    /// Measured iterations per row.
    #[arg(long, default_value_t = 40)]
    iterations: usize,
    /// Unmeasured iterations before each row's.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Threads that share a tcasm publish's comparing and copying.
    #[arg(long, default_value_t = 1)]
    copy_threads: usize,
    /// A row stops after this many seconds once it has 3 measured iterations (the
    /// synchronous-fault paths take seconds per version at high coverage).
    #[arg(long, default_value = "20", value_parser = crate::parse_seconds)]
    row_seconds: Duration,
    /// How a written page is written.
    #[arg(long, value_enum, default_value_t = Write::Word)]
    write: Write,
    /// Niceness of the observer processes.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    observer_nice: i32,
    /// An observer takes at most one version per period (seconds; 0: every version it can),
    /// the observers' phases spread evenly over it.
    #[arg(long, default_value_t = 1.0)]
    observer_period: f64,
    /// Seed of the random patterns.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the rows as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw producer cost against coverage to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print every iteration's times on stderr.
    #[arg(long)]
    verbose: bool,
}

#[derive(clap::Args)]
pub struct ObserverArgs {
    /// A tcasm producer's endpoint name.
    #[arg(long, conflicts_with = "file")]
    name: Option<String>,
    /// A baseline's shared file (`/proc/PID/fd/N`): a header page, then `buffers` buffers.
    #[arg(long, requires_all = ["buffers", "size"])]
    file: Option<PathBuf>,
    #[arg(long)]
    buffers: Option<usize>,
    #[arg(long)]
    size: Option<usize>,
    /// Niceness to take.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    nice: i32,
    /// Seconds between two versions taken (0: no pause).
    #[arg(long, default_value_t = 0.0)]
    period: f64,
    /// This observer's phase: `index / count` of a period.
    #[arg(long, default_value_t = 0)]
    index: usize,
    #[arg(long, default_value_t = 1)]
    count: usize,
}

/// How the producer makes a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Tcasm(TrackerKind),
    Memcpy,
    DoubleBuffer,
    Fork,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Tcasm(k) => k.fmt(f),
            Method::Memcpy => f.write_str("memcpy"),
            Method::DoubleBuffer => f.write_str("double-buffer"),
            Method::Fork => f.write_str("fork"),
        }
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "memcpy" => Ok(Method::Memcpy),
            "double-buffer" => Ok(Method::DoubleBuffer),
            "fork" => Ok(Method::Fork),
            _ => s.parse().map(Method::Tcasm).map_err(|_| {
                format!("unknown tracker {s:?}: use async, sync, deferred, copy, auto, memcpy, double-buffer or fork")
            }),
        }
    }
}

/// One row of the result: one method, coverage and observer count.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub tracker: String,
    pub pattern: String,
    /// Percent of the pages written per version.
    pub coverage: f64,
    pub observers: usize,
    pub size: usize,
    /// Threads sharing a tcasm publish's work (1 for the baselines).
    pub copy_threads: usize,
    /// Measured iterations.
    pub iterations: usize,
    pub pages_written: usize,
    /// What the version's page map names as changed (median over the iterations; tcasm
    /// only). Equal to `pages_written` when the change set is exact.
    pub changed_pages: Option<usize>,
    pub publish_us: f64,
    /// The writes themselves, untracked: the producer's own work the overhead adds to.
    pub untracked_writes_us: f64,
    pub write_overhead_us: f64,
    pub producer_us: f64,
    /// The mean of the per-iteration sums: shows the rare expensive versions a median hides
    /// (auto's periodic re-arm, deferred's waits).
    pub producer_mean_us: f64,
    /// A whole-region memcpy into a memfd, timed in the same iterations.
    pub memcpy_ref_us: f64,
    /// `producer_us / memcpy_ref_us`.
    pub vs_memcpy: f64,
    /// `producer_us` over the `memcpy` row's, at the same coverage and observer count.
    pub vs_memcpy_row: Option<f64>,
    pub memory_bytes: u64,
    /// `None` without observers or when none took a measured version.
    pub observer_lag_us: Option<f64>,
    /// Versions of this row taken by observers, all observers together.
    pub observer_acquisitions: usize,
}

/// What one publish reports.
struct Published {
    version: u64,
    /// The producer's time in it (all of the call but for `fork`'s untimed reaping).
    spent: Duration,
}

/// A way of making versions of the producer's memory.
trait Subject {
    /// The producer's memory, which iterations write.
    fn memory(&mut self) -> &mut [u8];
    /// Makes a version of the memory; `written` are the pages written since the last one
    /// (only the hand-tracked double buffer uses them).
    fn publish(&mut self, written: &[u32]) -> crate::Result<Published>;
    /// Bytes of memory the snapshots hold now.
    fn memory_bytes(&self) -> crate::Result<u64>;
    /// Pages the last version's page map names as changed, where there is one.
    fn changed_pages(&self) -> Option<usize> {
        None
    }
    /// The arguments of `bench-coverage-observer` that attach to this, if observers can.
    fn observer_args(&self) -> Option<Vec<String>>;
}

/// A tcasm producer.
struct Tcasm {
    producer: Producer,
    region: Region<u8>,
}

impl Tcasm {
    fn create(
        name: &str,
        kind: TrackerKind,
        size: usize,
        observers: usize,
        copy_threads: usize,
    ) -> crate::Result<Tcasm> {
        let options = ProducerOptions {
            tracker: kind,
            max_observers: ProducerOptions::default().max_observers.max(observers),
            freed: Freed::Reuse,
            copy_threads,
            ..ProducerOptions::default()
        };
        let mut producer = Producer::create(name, options)?;
        if producer.tracker() != kind {
            return Err(format!("asked for the {kind} tracker, the producer runs {}", producer.tracker()).into());
        }
        let mut region = producer.region::<u8>(REGION, &[size])?;
        // Every page touched before the first version, as in the plain buffer.
        region.fill(1);
        producer.publish()?;
        // Settle: the first publishes create the store's planes.
        for _ in 0..SETTLE_PUBLISHES {
            producer.publish()?;
        }
        Ok(Tcasm { producer, region })
    }
}

impl Subject for Tcasm {
    fn memory(&mut self) -> &mut [u8] {
        &mut self.region
    }

    fn publish(&mut self, _: &[u32]) -> crate::Result<Published> {
        let started = Instant::now();
        let version = self.producer.publish()?;
        Ok(Published { version, spent: started.elapsed() })
    }

    fn memory_bytes(&self) -> crate::Result<u64> {
        Ok(self.producer.stats().store_bytes)
    }

    fn changed_pages(&self) -> Option<usize> {
        Some(self.producer.stats().last_pages_copied)
    }

    fn observer_args(&self) -> Option<Vec<String>> {
        Some(vec!["--name".into(), self.producer.name().into()])
    }
}

/// The hand-written baselines with shared buffers: a header page, then one buffer
/// (`memcpy`) or two (`double-buffer`).
struct Shared {
    memory: Plain,
    file: std::fs::File,
    map: SharedMap,
    buffers: usize,
    version: u64,
    /// Pages written in the previous version (double buffer).
    previous: Vec<u32>,
    /// Scratch: runs of pages to copy.
    runs: Vec<(usize, usize)>,
}

impl Shared {
    fn create(buffers: usize, size: usize) -> crate::Result<Shared> {
        let page = page_size();
        let file = memfd("tcasm-bench-baseline", page + buffers * size)?;
        let map = SharedMap::new(&file, page + buffers * size, true)?;
        let mut shared =
            Shared { memory: Plain::new(size), file, map, buffers, version: 0, previous: Vec::new(), runs: Vec::new() };
        for b in 0..buffers {
            shared.copy(b, &[(0, size / page)]);
        }
        shared.release(0);
        Ok(shared)
    }

    /// Copies runs of pages (first, count) of the producer's memory into buffer `b`.
    fn copy(&mut self, b: usize, runs: &[(usize, usize)]) {
        let page = page_size();
        let size = self.memory.len();
        let base = page + b * size;
        assert!(base + size <= self.map.len(), "buffer {b} lies inside the shared mapping");
        for &(first, count) in runs {
            let (from, len) = (first * page, count * page);
            self.map.copy_in(base + from, &self.memory[from..from + len]);
        }
    }

    /// Makes buffer `front` the one observers read, under a new version, and wakes them.
    fn release(&mut self, front: usize) {
        self.version += 1;
        let words = self.map.words();
        words[FRONT].store(front as u64, Ordering::Release);
        // SYNC: Release pairs with the observers' Acquire load of VERSION: the copy and FRONT
        // are visible before the version is.
        words[VERSION].store(self.version, Ordering::Release);
        futex_wake_all(&words[VERSION]);
    }

    fn close(&self) {
        let words = self.map.words();
        words[CLOSED].store(1, Ordering::Release);
        futex_wake_all(&words[VERSION]);
    }
}

impl Subject for Shared {
    fn memory(&mut self) -> &mut [u8] {
        &mut self.memory
    }

    fn publish(&mut self, written: &[u32]) -> crate::Result<Published> {
        let started = Instant::now();
        let front = if self.buffers == 1 {
            self.copy(0, &[(0, self.memory.len() / page_size())]);
            0
        } else {
            let words = self.map.words();
            let back = 1 - words[FRONT].load(Ordering::Relaxed) as usize;
            // The back buffer holds the version before the previous one: it lacks the pages
            // written in both since.
            let mut runs = std::mem::take(&mut self.runs);
            merge_runs(&self.previous, written, &mut runs);
            self.copy(back, &runs);
            self.runs = runs;
            self.previous.clear();
            self.previous.extend_from_slice(written);
            back
        };
        self.release(front);
        Ok(Published { version: self.version, spent: started.elapsed() })
    }

    fn memory_bytes(&self) -> crate::Result<u64> {
        Ok(allocated_bytes(&self.file)?)
    }

    fn observer_args(&self) -> Option<Vec<String>> {
        use std::os::fd::{AsFd, AsRawFd};
        let path = format!("/proc/{}/fd/{}", std::process::id(), self.file.as_fd().as_raw_fd());
        Some(vec![
            "--file".into(),
            path,
            "--buffers".into(),
            self.buffers.to_string(),
            "--size".into(),
            self.memory.len().to_string(),
        ])
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
    }
}

/// The in-row reference: the producer's untracked buffer copied whole into a memfd.
struct Reference {
    map: SharedMap,
}

impl Reference {
    fn create(size: usize) -> crate::Result<Reference> {
        let file = memfd("tcasm-bench-reference", size)?;
        let mut map = SharedMap::new(&file, size, true)?;
        map.zero();
        Ok(Reference { map })
    }

    fn copy(&mut self, source: &[u8]) -> Duration {
        let started = Instant::now();
        self.map.copy_in(0, source);
        started.elapsed()
    }
}

/// The runs (first page, count) covering the pages of two sorted lists.
fn merge_runs(a: &[u32], b: &[u32], runs: &mut Vec<(usize, usize)>) {
    runs.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let p = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x <= y => {
                i += 1;
                j += usize::from(x == y);
                x
            }
            (Some(_), Some(&y)) | (None, Some(&y)) => {
                j += 1;
                y
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (None, None) => unreachable!("loop condition"),
        } as usize;
        match runs.last_mut() {
            Some((first, count)) if *first + *count == p => *count += 1,
            _ => runs.push((p, 1)),
        }
    }
}

/// fork()-based snapshots: the child holds the version copy-on-write.
struct Fork {
    memory: Plain,
    child: Option<nix::unistd::Pid>,
    version: u64,
}

impl Fork {
    fn create(size: usize) -> Fork {
        Fork { memory: Plain::new(size), child: None, version: 0 }
    }

    fn reap(child: nix::unistd::Pid) {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(child, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
    }
}

impl Subject for Fork {
    fn memory(&mut self) -> &mut [u8] {
        &mut self.memory
    }

    fn publish(&mut self, _: &[u32]) -> crate::Result<Published> {
        use nix::unistd::ForkResult;
        let started = Instant::now();
        // SAFETY: the child calls only async-signal-safe functions (prctl, getppid, pause)
        // and never returns from this block nor touches any lock, allocator or Rust state
        // another thread of the parent might have held at the fork; it ends by SIGKILL.
        let forked = unsafe { nix::unistd::fork() }?;
        let spent = started.elapsed();
        match forked {
            ForkResult::Child => {
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
                loop {
                    if nix::unistd::getppid().as_raw() == 1 {
                        std::process::abort();
                    }
                    nix::unistd::pause();
                }
            }
            ForkResult::Parent { child } => {
                if let Some(previous) = self.child.replace(child) {
                    Fork::reap(previous);
                }
            }
        }
        self.version += 1;
        Ok(Published { version: self.version, spent })
    }

    fn memory_bytes(&self) -> crate::Result<u64> {
        let Some(child) = self.child else { return Ok(0) };
        let rollup = std::fs::read_to_string(format!("/proc/{child}/smaps_rollup"))?;
        let kib: u64 = rollup
            .lines()
            .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        Ok(kib * 1024)
    }

    fn observer_args(&self) -> Option<Vec<String>> {
        None
    }
}

impl Drop for Fork {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            Fork::reap(child);
        }
    }
}

/// What an observer process reports: that it has taken a first version, and at the end
/// every (version, time it was taken) of the versions it took.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum ObserverReport {
    Ready,
    Taken(Vec<(u64, u64)>),
}

/// The observer processes of one producer.
struct Observers {
    children: Vec<ChildProcess<ObserverReport>>,
}

impl Observers {
    /// Starts `n` observers with `args` and waits until each has taken a first version.
    fn start(n: usize, args: &[String], nice: i32, period: f64) -> crate::Result<Observers> {
        let mut observers = Observers { children: Vec::new() };
        for i in 0..n {
            let own = ["--nice".into(), nice.to_string(), "--period".into(), period.to_string()].into_iter().chain([
                "--index".into(),
                i.to_string(),
                "--count".into(),
                n.to_string(),
            ]);
            let args = std::iter::once("bench-coverage-observer".to_string()).chain(args.iter().cloned()).chain(own);
            observers.children.push(ChildProcess::start(args, false, &format!("observer {i}"))?);
        }
        for (i, child) in observers.children.iter().enumerate() {
            match child.reports().recv() {
                Ok(ObserverReport::Ready) => {}
                other => return Err(format!("observer {i} did not start: {other:?}").into()),
            }
        }
        Ok(observers)
    }

    /// Waits for the observers to end (the producer has), at most [`OBSERVER_GRACE`], and
    /// returns every (version, time it was taken) they report.
    fn finish(mut self) -> crate::Result<Vec<(u64, u64)>> {
        let deadline = Instant::now() + OBSERVER_GRACE;
        let mut failed = Vec::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            match status {
                Some(s) if s.success() => {}
                Some(s) => failed.push(format!("observer {i} exited with {s}")),
                None => failed.push(format!("observer {i} still running {OBSERVER_GRACE:?} after the producer ended")),
            }
        }
        let mut taken = Vec::new();
        for child in self.children {
            for r in child.remaining() {
                if let ObserverReport::Taken(t) = r {
                    taken.extend(t);
                }
            }
        }
        if !failed.is_empty() {
            return Err(failed.join("; ").into());
        }
        Ok(taken)
    }
}

/// What the iterations of one row measured.
#[derive(Default)]
struct Samples {
    publish: Vec<f64>,
    writes: Vec<f64>,
    reference: Vec<f64>,
    overhead: Vec<f64>,
    producer: Vec<f64>,
    memory: Vec<f64>,
    lag: Vec<f64>,
    changed: Vec<f64>,
}

pub fn run(args: Args) -> crate::Result {
    let page = page_size();
    if args.size == 0 || !args.size.is_multiple_of(page) {
        return Err(format!("--size {} is not a positive multiple of the page size ({page})", args.size).into());
    }
    if let Some(c) = args.coverage.iter().find(|c| !(0.0..=100.0).contains(*c)) {
        return Err(format!("--coverage {c} is not a percent").into());
    }
    if !(args.observer_period >= 0.0 && args.observer_period < 1e6) {
        return Err(format!("--observer-period {} is not a number of seconds", args.observer_period).into());
    }
    if args.iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    let started = Instant::now();
    let machine = machine();
    eprintln!(
        "bench coverage: {} MiB, {} pattern, {:?} writes, {} + {} iterations a row; {machine}",
        args.size >> 20,
        args.pattern,
        args.write,
        args.warmup,
        args.iterations
    );
    if let Some(d) = tcasm::tracking_support().reason {
        eprintln!("bench coverage: async tracking unavailable here ({d}): auto runs as copy");
    }
    let mut plain = Plain::new(args.size);
    exclude_from_fork(&plain)?;
    let mut reference = Reference::create(args.size)?;

    let mut rows = Vec::new();
    for &observers in &args.observers {
        for &method in &args.tracker {
            if method == Method::Fork && observers > 0 {
                eprintln!("bench coverage: fork with {observers} observers: skipped (the child is the only holder)");
                continue;
            }
            rows.extend(run_method(&args, method, observers, &mut plain, &mut reference)?);
        }
    }
    compare_to_memcpy(&mut rows);

    println!("{}", table(&rows));
    println!("{machine}; {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)? + "\n")?;
        eprintln!("bench coverage: wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!("producer cost per version, {} MiB region, {} writes", args.size >> 20, args.pattern);
        super::plot::draw(path, &rows, &title)?;
        eprintln!("bench coverage: drew {}", path.display());
    }
    Ok(())
}

/// Keeps the untracked buffer out of `fork` children, so that the fork rows' reference
/// writes take no copy-on-write fault.
fn exclude_from_fork(plain: &Plain) -> crate::Result {
    let addr = std::ptr::NonNull::new(plain.addr() as *mut libc::c_void).ok_or("null buffer")?;
    // SAFETY: `[addr, addr + len)` is page-aligned and lies inside `plain`'s live allocation,
    // which this process owns and keeps for the whole run; MADV_DONTFORK only changes what a
    // child inherits, not this process's memory.
    unsafe { nix::sys::mman::madvise(addr, plain.len(), nix::sys::mman::MmapAdvise::MADV_DONTFORK) }?;
    Ok(())
}

/// Measures every coverage of one method and observer count, on one producer.
fn run_method(
    args: &Args,
    method: Method,
    observers: usize,
    plain: &mut Plain,
    reference: &mut Reference,
) -> crate::Result<Vec<Row>> {
    let name = format!("coverage-{}-{method}-{observers}", std::process::id());
    let mut subject: Box<dyn Subject> = match method {
        Method::Tcasm(kind) => Box::new(Tcasm::create(&name, kind, args.size, observers, args.copy_threads.max(1))?),
        Method::Memcpy => Box::new(Shared::create(1, args.size)?),
        Method::DoubleBuffer => Box::new(Shared::create(2, args.size)?),
        Method::Fork => Box::new(Fork::create(args.size)),
    };
    let attached = match subject.observer_args() {
        Some(a) if observers > 0 => Some(Observers::start(observers, &a, args.observer_nice, args.observer_period)?),
        _ => None,
    };
    let pages = args.size / page_size();
    let mut chooser = Pages::new(args.pattern, pages, args.seed);
    let mut written = Vec::new();
    let mut samples: Vec<Samples> = Vec::new();
    // Measured versions: the row and the time the publish was called.
    let mut versions: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut result = Ok(());
    for (row, &coverage) in args.coverage.iter().enumerate() {
        let mut s = Samples::default();
        let row_started = Instant::now();
        let warm_for = if attached.is_some() { Duration::from_secs_f64(args.observer_period) } else { Duration::ZERO };
        let mut measuring_since = None;
        for i in 0.. {
            if s.producer.len() >= args.iterations {
                break;
            }
            if measuring_since.is_none() && i >= args.warmup && row_started.elapsed() >= warm_for {
                measuring_since = Some(Instant::now());
            }
            let measured = measuring_since.is_some();
            if measuring_since.is_some_and(|t| s.producer.len() >= MIN_ITERATIONS && t.elapsed() > args.row_seconds) {
                break;
            }
            let iteration = (row * 10_000 + i) as u64;
            chooser.choose(coverage / 100.0, iteration, &mut written);
            // First, so that the writes and the publish follow each other as in a producer.
            let copied = reference.copy(plain);
            let value = iteration + 2;
            let (untracked, tracked) = if i % 2 == 0 {
                let u = write_pages(plain, &written, args.write, value);
                (u, write_pages(subject.memory(), &written, args.write, value))
            } else {
                let t = write_pages(subject.memory(), &written, args.write, value);
                (write_pages(plain, &written, args.write, value), t)
            };
            let memory = match subject.memory_bytes() {
                Ok(m) => m,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let called = monotonic_ns();
            let published = match subject.publish(&written) {
                Ok(p) => p,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if args.verbose {
                eprintln!(
                    "bench coverage: {method} {coverage}% {observers} observers, iteration {i}{}: publish {:.0} us, writes {:.0} us tracked / {:.0} us untracked, memcpy {:.0} us",
                    if measured { "" } else { " (warm-up)" },
                    micros(published.spent),
                    micros(tracked),
                    micros(untracked),
                    micros(copied)
                );
            }
            if measured {
                let overhead = micros(tracked) - micros(untracked);
                s.publish.push(micros(published.spent));
                s.writes.push(micros(untracked));
                s.reference.push(micros(copied));
                s.overhead.push(overhead);
                s.producer.push(micros(published.spent) + overhead);
                s.memory.push(memory as f64);
                if let Some(changed) = subject.changed_pages() {
                    s.changed.push(changed as f64);
                }
                versions.insert(published.version, (row, called));
            }
        }
        samples.push(s);
        if result.is_err() {
            break;
        }
        let s = samples.last().expect("pushed above");
        // Each part's own median: they need not add up to the median of their sum. The write
        // overhead (tracked writes less the same writes untracked) may come out below zero
        // when tracking costs nothing measurable: it is noise then, and printed with its sign.
        eprintln!(
            "bench coverage: {method:>13} {coverage:>5}% {observers:>2} observers: producer {:>10.0} us (medians: publish {:.0}, write overhead {:+.0}, memcpy {:.0}), {} MiB held",
            median(&s.producer).unwrap_or(f64::NAN),
            median(&s.publish).unwrap_or(f64::NAN),
            median(&s.overhead).unwrap_or(f64::NAN),
            median(&s.reference).unwrap_or(f64::NAN),
            median(&s.memory).unwrap_or(0.0) as u64 >> 20
        );
    }
    // Observers see the producer end, report and exit.
    drop(subject);
    if let Some(o) = attached {
        for (version, taken) in o.finish()? {
            if let Some(&(row, called)) = versions.get(&version) {
                samples[row].lag.push(taken.saturating_sub(called) as f64 / 1e3);
            }
        }
    }
    result?;
    Ok(args
        .coverage
        .iter()
        .zip(samples)
        .map(|(&coverage, s)| Row {
            tracker: method.to_string(),
            pattern: args.pattern.to_string(),
            coverage,
            observers,
            size: args.size,
            copy_threads: if matches!(method, Method::Tcasm(_)) { args.copy_threads.max(1) } else { 1 },
            iterations: s.producer.len(),
            pages_written: ((coverage / 100.0 * pages as f64).round() as usize).min(pages),
            changed_pages: median(&s.changed).map(|c| c as usize),
            publish_us: median(&s.publish).unwrap_or(f64::NAN),
            untracked_writes_us: median(&s.writes).unwrap_or(f64::NAN),
            write_overhead_us: median(&s.overhead).unwrap_or(f64::NAN),
            producer_us: median(&s.producer).unwrap_or(f64::NAN),
            producer_mean_us: mean(&s.producer).unwrap_or(f64::NAN),
            memcpy_ref_us: median(&s.reference).unwrap_or(f64::NAN),
            vs_memcpy: median(&s.producer).unwrap_or(f64::NAN) / median(&s.reference).unwrap_or(f64::NAN),
            vs_memcpy_row: None,
            memory_bytes: median(&s.memory).unwrap_or(0.0) as u64,
            observer_lag_us: median(&s.lag),
            observer_acquisitions: s.lag.len(),
        })
        .collect())
}

fn compare_to_memcpy(rows: &mut [Row]) {
    let memcpy: HashMap<(u64, usize), f64> = rows
        .iter()
        .filter(|r| r.tracker == "memcpy")
        .map(|r| ((r.coverage.to_bits(), r.observers), r.producer_us))
        .collect();
    for r in rows {
        r.vs_memcpy_row = memcpy.get(&(r.coverage.to_bits(), r.observers)).map(|m| r.producer_us / m);
    }
}

/// The rows as a markdown table, grouped by observer count.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| observers | tracker | coverage | publish µs | write overhead µs | producer µs | memcpy in row µs | vs memcpy in row | vs memcpy row | memory MiB | observer lag µs | iterations |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut sorted: BTreeMap<(usize, usize, u64), &Row> = BTreeMap::new();
    let order: Vec<&str> = rows.iter().map(|r| r.tracker.as_str()).fold(Vec::new(), |mut v, t| {
        if !v.contains(&t) {
            v.push(t);
        }
        v
    });
    for r in rows {
        let t = order.iter().position(|&t| t == r.tracker).unwrap_or(0);
        sorted.insert((r.observers, t, (r.coverage * 1000.0) as u64), r);
    }
    for r in sorted.values() {
        out += &format!(
            "| {} | {} | {} % | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {} | {:.0} | {} | {} |\n",
            r.observers,
            r.tracker,
            r.coverage,
            r.publish_us,
            r.write_overhead_us,
            r.producer_us,
            r.memcpy_ref_us,
            r.vs_memcpy,
            r.vs_memcpy_row.map_or("–".into(), |x| format!("{x:.3}")),
            r.memory_bytes as f64 / (1u64 << 20) as f64,
            r.observer_lag_us.map_or("–".into(), |x| format!("{x:.0}")),
            r.iterations
        );
    }
    out
}

/// The observer process: takes the newest version (at most one per period), reads all of it,
/// and again until the producer ends. It reports [`ObserverReport::Ready`] once it has taken
/// a first version, and at the end [`ObserverReport::Taken`].
pub fn observe(args: ObserverArgs) -> crate::Result {
    if args.nice != 0 {
        // SAFETY: setpriority takes no pointer; it changes only this process's priority
        // (raising niceness needs no privilege).
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, args.nice) };
        if r != 0 {
            eprintln!("bench-coverage-observer: setpriority({}): {}", args.nice, std::io::Error::last_os_error());
        }
    }
    if !(args.period >= 0.0 && args.period < 1e6) {
        return Err(format!("--period {} is not a number of seconds", args.period).into());
    }
    let period = Duration::from_secs_f64(args.period);
    let pace = Pace { period, next: Instant::now() + period.mul_f64(args.index as f64 / args.count.max(1) as f64) };
    let taken = match (&args.name, &args.file) {
        (Some(name), None) => observe_tcasm(name, pace)?,
        (None, Some(file)) => observe_shared(file, args.buffers.unwrap_or(1), args.size.unwrap_or(0), pace)?,
        _ => return Err("give --name or --file".into()),
    };
    report(&ObserverReport::Taken(taken))
}

/// One word of every 64-byte line: every byte of `bytes` crosses the memory bus.
fn read_all(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(64)
        .map(|line| u64::from_ne_bytes(line[..8].try_into().expect("8 bytes")))
        .fold(0, u64::wrapping_add)
}

fn ready() -> crate::Result {
    report(&ObserverReport::Ready)
}

/// When an observer may take its next version.
struct Pace {
    period: Duration,
    next: Instant,
}

impl Pace {
    /// Sleeps until the next version is due, waking every 100 ms to ask `gone`; false if the
    /// producer is gone.
    fn wait(&self, gone: impl Fn() -> bool) -> bool {
        loop {
            if gone() {
                return false;
            }
            let now = Instant::now();
            if now >= self.next {
                return true;
            }
            std::thread::sleep((self.next - now).min(Duration::from_millis(100)));
        }
    }

    /// A version was taken now.
    fn taken(&mut self) {
        self.next = (self.next + self.period).max(Instant::now());
    }
}

fn observe_tcasm(name: &str, mut pace: Pace) -> crate::Result<Vec<(u64, u64)>> {
    let observer = Observer::attach_timeout(name, OBSERVER_GRACE)?;
    let first = observer.latest()?;
    std::hint::black_box(read_all(first.bytes(REGION)?));
    let mut seen = first.version();
    drop(first);
    ready()?;
    let mut taken = Vec::new();
    loop {
        if !pace.wait(|| observer.producer_gone()) {
            break;
        }
        match observer.wait_newer(seen, Duration::from_millis(100)) {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(ReadError::ProducerGone { .. }) => break,
            Err(e) => return Err(e.into()),
        }
        let snapshot = match observer.latest() {
            Ok(s) => s,
            Err(ReadError::ProducerGone { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        taken.push((snapshot.version(), monotonic_ns()));
        pace.taken();
        std::hint::black_box(read_all(snapshot.bytes(REGION)?));
        seen = snapshot.version();
    }
    Ok(taken)
}

fn observe_shared(
    path: &std::path::Path,
    buffers: usize,
    size: usize,
    mut pace: Pace,
) -> crate::Result<Vec<(u64, u64)>> {
    let page = page_size();
    let file = std::fs::File::open(path)?;
    let len = page + buffers * size;
    if buffers == 0 || size == 0 || file.metadata()?.len() < len as u64 {
        return Err(format!("{} is not a baseline's shared file of {buffers} x {size} bytes", path.display()).into());
    }
    let map = SharedMap::new(&file, len, false)?;
    let words = map.words();
    let read = |front: u64| {
        let b = (front as usize).min(buffers - 1);
        let first = (page + b * size) / 8;
        words[first..first + size / 8].iter().step_by(8).map(|w| w.load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
    };
    // SYNC: Acquire pairs with the producer's Release store of VERSION in `Shared::release`.
    let mut seen = words[VERSION].load(Ordering::Acquire);
    std::hint::black_box(read(words[FRONT].load(Ordering::Acquire)));
    ready()?;
    let mut taken = Vec::new();
    let closed = || words[CLOSED].load(Ordering::Acquire) != 0;
    loop {
        if !pace.wait(closed) {
            break;
        }
        let v = words[VERSION].load(Ordering::Acquire);
        if v != seen {
            taken.push((v, monotonic_ns()));
            pace.taken();
            std::hint::black_box(read(words[FRONT].load(Ordering::Acquire)));
            seen = v;
            continue;
        }
        if closed() {
            break;
        }
        futex_wait(&words[VERSION], v as u32, Duration::from_millis(100));
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse() {
        assert_eq!("auto".parse::<Method>(), Ok(Method::Tcasm(TrackerKind::Auto)));
        assert_eq!("double-buffer".parse::<Method>(), Ok(Method::DoubleBuffer));
        assert_eq!("fork".parse::<Method>().map(|m| m.to_string()), Ok("fork".into()));
        assert!("mmap".parse::<Method>().is_err());
    }

    #[test]
    fn runs_merge() {
        let mut runs = Vec::new();
        merge_runs(&[1, 2, 7], &[2, 3, 9], &mut runs);
        assert_eq!(runs, vec![(1, 3), (7, 1), (9, 1)]);
        merge_runs(&[], &[], &mut runs);
        assert!(runs.is_empty());
        merge_runs(&[0, 1], &[], &mut runs);
        assert_eq!(runs, vec![(0, 2)]);
    }
}
