//! `tcasm demo`: the first thing to run. A producer (a small heat-diffusion simulation in this
//! process) publishes one version per time step while an observer (a child process, as an
//! analysis or checkpoint tool would be) follows it. Once a second the producer prints what
//! publishing cost and how far behind the observer is; at the end it sets the mean publish
//! against one plain copy of the grid, measured in the same run.
//!
//! The simulation computes and writes only the rows where heat is, so the pages a version
//! copies follow a moving heater and its cooling trail: the numbers show what tracking saves,
//! and that it saves less when more is written.
//!
//! The observer checks every snapshot: the step counter (one region) says where the heater
//! is, and the grid (another region) must have the heater exactly there. It prints its
//! counters once a second as a [`Report`] (a JSON line, `crate::harness`), which the producer
//! reads.
use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use tcasm::monotonic_ns;
use tcasm::{Observer, Producer, ProducerOptions, ProducerStats, ReadError, Snapshot, TrackerKind};

use indicatif::HumanBytes;

use crate::harness::{report, ChildProcess};
use crate::inspect::human_time;

#[derive(clap::Args)]
pub struct Args {
    /// Name the producer takes; observers attach by it.
    #[arg(long, default_value = "demo")]
    name: String,
    /// How long to run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Bytes of the square f64 grid ("temperature"); 32MiB is 2048 x 2048.
    #[arg(long, default_value = "32MiB", value_parser = crate::parse_size)]
    size: usize,
    /// How written pages are found: auto, async, sync, deferred or copy.
    #[arg(long, default_value_t = TrackerKind::Auto)]
    tracker: TrackerKind,
    /// Threads that share a publish's comparing and copying.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    copy_threads: u64,
    /// Run the producer alone, for `tcasm inspect` or your own observer to attach.
    #[arg(long)]
    no_observer: bool,
}

#[derive(clap::Args)]
pub struct ObserverArgs {
    /// The producer to follow.
    #[arg(long)]
    name: String,
}

const TEMPERATURE: &str = "temperature";
const STEP: &str = "step";

/// Temperature of the heater; the edges and the surroundings are at 0.
const HOT: f64 = 100.0;
/// A row whose cells are all below this is set to 0 and no longer computed.
const WARM: f64 = 0.01;
/// Cells below this become 0: keeps subnormal arithmetic out of the stencil.
const FLOOR: f64 = 1e-6;
/// Diffusion number (stable up to 0.25) and fraction of its heat a cell loses per step.
const DIFFUSION: f64 = 0.2;
const COOLING: f64 = 0.03;
/// Radians of the heater's path per step, times the grid's side: the heater moves a few
/// cells a step whatever the size.
const HEATER_SPEED: f64 = 4.0;

/// Steps, hence versions, a second at most.
const STEPS_PER_SECOND: u64 = 100;
const STEP_PERIOD: Duration = Duration::from_millis(1000 / STEPS_PER_SECOND);
const REPORT_PERIOD: Duration = Duration::from_secs(1);
/// How long the observer may take to notice the producer is gone.
const OBSERVER_GRACE: Duration = Duration::from_secs(5);

pub fn run(args: Args) -> crate::Result {
    let n = ((args.size / 8) as f64).sqrt() as usize;
    if n < 64 {
        return Err(format!("--size {} is too small: the grid needs at least 64 x 64 f64 (32KiB)", args.size).into());
    }
    let options =
        ProducerOptions { tracker: args.tracker, copy_threads: args.copy_threads as usize, ..Default::default() };
    let mut producer = Producer::create(&args.name, options)?;
    let mut temperature = producer.region::<f64>(TEMPERATURE, &[n, n])?;
    let mut step = producer.region::<i64>(STEP, &[1])?;
    // Give every page of the grid its own memory, so that a full copy reads real memory and
    // not the kernel's zero page.
    temperature.fill(0.0);
    let mut full_copy = FullCopy::new(&temperature);
    full_copy.sample(&temperature);
    let region_bytes: usize = producer.regions().iter().map(|r| r.bytes()).sum();

    println!(
        "producer {:?} (pid {}): {n} x {n} f64 grid {TEMPERATURE:?} ({}), tracker {}, one version per step, at most {} a second, for {} s",
        args.name,
        std::process::id(),
        HumanBytes((n * n * 8) as u64),
        producer.tracker(),
        STEPS_PER_SECOND,
        args.seconds,
    );
    let mut observer = if args.no_observer {
        println!("no observer started: attach one, e.g. `tcasm inspect {}`", args.name);
        None
    } else {
        let o = ObserverProcess::spawn(&args.name)?;
        println!("observer: pid {}", o.child.id());
        Some(o)
    };

    let mut plate = Plate::new(n);
    let mut run = Tally::default();
    let mut second = Tally::default();
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut next_line = started + REPORT_PERIOD;
    let mut next_step = started;
    let (mut tracked_step, mut untracked_steps) = (Duration::ZERO, Vec::new());
    loop {
        let now = Instant::now();
        if now >= next_line || now >= end {
            let observed = match &mut observer {
                Some(o) => o.describe_second()?,
                None => format!("observers attached: {}", producer.observers()),
            };
            println!(
                "{:>3} s  version {:>5}  {:>6} pages changed ({:>4} a version, {:>4} compared)  publish {:>9}  store {:>10}  | {observed}",
                started.elapsed().as_secs_f64().round(),
                run.versions,
                second.pages,
                second.pages / second.versions.max(1),
                second.compared / second.versions.max(1),
                human_time(second.mean_publish()),
                HumanBytes(producer.stats().store_bytes).to_string(),
            );
            second = Tally::default();
            next_line += REPORT_PERIOD;
            full_copy.sample(&temperature);
            // The same step in untracked memory (the copy just taken): what a step costs
            // without write faults.
            let mut shadow = plate.clone();
            let at = Instant::now();
            shadow.step(&mut full_copy.scratch);
            untracked_steps.push(at.elapsed());
        }
        if now >= end {
            break;
        }
        let at = Instant::now();
        plate.step(&mut temperature);
        tracked_step += at.elapsed();
        step[0] = plate.steps as i64;
        producer.publish()?;
        let stats = producer.stats();
        run.add(&stats);
        second.add(&stats);
        next_step = (next_step + STEP_PERIOD).max(Instant::now());
        thread::sleep(next_step.saturating_duration_since(Instant::now()));
    }
    let elapsed = started.elapsed();
    // Closing the store tells the observer the producer is gone.
    drop(producer);
    let observed = observer.map(ObserverProcess::finish);

    println!(
        "summary: {} versions in {:.1} s, {} pages changed and copied ({})",
        run.versions,
        elapsed.as_secs_f64(),
        run.pages,
        HumanBytes(run.pages * tcasm::page_size() as u64),
    );
    let full_copy_time = full_copy.median();
    // What tracking costs the producer per version: the publish, and the write faults its
    // steps took (a tracked step against the same step in untracked memory).
    let step_mean = tracked_step.div_f64(run.versions.max(1) as f64);
    untracked_steps.sort();
    let untracked = untracked_steps.get(untracked_steps.len() / 2).copied().unwrap_or_default();
    let faults = step_mean.saturating_sub(untracked);
    println!(
        "  publish   mean {}, max {}; a full copy of the grid takes {} (median of {} through the run)",
        human_time(run.mean_publish()),
        human_time(run.slowest),
        human_time(full_copy_time),
        full_copy.times.len(),
    );
    println!(
        "  producer  a step takes {} tracked, {} untracked (median of {}): {} in write faults; publish + write faults = {:.2} of a full copy",
        human_time(step_mean),
        human_time(untracked),
        untracked_steps.len(),
        human_time(faults),
        (run.mean_publish() + faults).as_secs_f64() / full_copy_time.as_secs_f64(),
    );
    println!(
        "  store     peak {} for {} of regions ({:.2}x)",
        HumanBytes(run.peak_store),
        HumanBytes(region_bytes as u64),
        run.peak_store as f64 / region_bytes as f64,
    );
    if let Some(report) = observed.transpose()? {
        println!(
            "  observer  saw {} versions, skipped {}, mean lag {}, last version {}",
            report.seen,
            report.skipped,
            human_time(Duration::from_nanos(report.lag_ns / report.seen.max(1))),
            report.version,
        );
    }
    Ok(())
}

/// The cells the heater covers at `step` on an `n` x `n` grid, as index ranges of the
/// row-major grid, one per row: a disk moving on a Lissajous figure, so that it sometimes runs
/// across rows (its trail then spans many) and sometimes along them.
fn heater(n: usize, step: u64) -> impl Iterator<Item = Range<usize>> {
    let phase = step as f64 * HEATER_SPEED / n as f64;
    let (middle, reach) = (n as f64 / 2.0, n as f64 * 0.35);
    let row = (middle + reach * (2.0 * phase).sin()) as usize;
    let column = (middle + reach * phase.cos()) as usize;
    let radius = n / 64;
    (row - radius..=row + radius).map(move |i| {
        let dy = i.abs_diff(row);
        let half = ((radius * radius - dy * dy) as f64).sqrt() as usize;
        i * n + column - half..i * n + column + half + 1
    })
}

/// A square plate with cold edges, warmed by a moving heater and cooling everywhere:
/// explicit finite differences, updated in place one row at a time.
///
/// Only rows that hold heat, and their neighbours, are computed, and only those that hold
/// heat afterwards are written: a row that cools below [`WARM`] is zeroed once and then left
/// alone. So the pages a step writes follow the heater and its trail.
#[derive(Clone)]
struct Plate {
    n: usize,
    steps: u64,
    /// Rows holding heat; every other row is exactly 0.
    warm: Vec<bool>,
    /// The old values of the row computed last.
    above: Vec<f64>,
    /// The new values of the row being computed.
    next: Vec<f64>,
}

impl Plate {
    fn new(n: usize) -> Plate {
        Plate { n, steps: 0, warm: vec![false; n], above: vec![0.0; n], next: vec![0.0; n] }
    }

    /// Advances `t` (n x n, row-major) one step: diffusion and cooling, then the heater at
    /// its new place.
    fn step(&mut self, t: &mut [f64]) {
        let n = self.n;
        let rows: Vec<usize> = (1..n - 1).filter(|&i| self.warm[i - 1] || self.warm[i] || self.warm[i + 1]).collect();
        let mut last = None;
        for i in rows {
            let (before, rest) = t.split_at_mut(i * n);
            let (row, after) = rest.split_at_mut(n);
            // Row i - 1 is already updated if it was computed: its old values are in `above`.
            let up = if last == Some(i - 1) { &self.above[..] } else { &before[(i - 1) * n..] };
            let down = &after[..n];
            let mut warm = false;
            let inner = 1..n - 1;
            for (((w, u), d), out) in
                row.windows(3).zip(&up[inner.clone()]).zip(&down[inner.clone()]).zip(&mut self.next[inner.clone()])
            {
                let c = w[1];
                let v = c + DIFFUSION * (u + d + w[0] + w[2] - 4.0 * c) - COOLING * c;
                *out = if v < FLOOR { 0.0 } else { v };
                warm |= v >= WARM;
            }
            self.above.copy_from_slice(row);
            last = Some(i);
            if warm {
                row[inner.clone()].copy_from_slice(&self.next[inner]);
            } else if self.warm[i] {
                row.fill(0.0);
            }
            self.warm[i] = warm;
        }
        self.steps += 1;
        for cells in heater(n, self.steps) {
            self.warm[cells.start / n] = true;
            t[cells].fill(HOT);
        }
    }
}

/// Copies of the whole grid into other memory, timed through the run: what a publish would
/// cost without tracking, under the same load (another process may be busy).
struct FullCopy {
    scratch: Vec<f64>,
    times: Vec<Duration>,
}

impl FullCopy {
    fn new(grid: &[f64]) -> FullCopy {
        // The first copy also faults the scratch pages in: not timed.
        FullCopy { scratch: grid.to_vec(), times: Vec::new() }
    }

    fn sample(&mut self, grid: &[f64]) {
        let started = Instant::now();
        self.scratch.copy_from_slice(grid);
        std::hint::black_box(&self.scratch);
        self.times.push(started.elapsed());
    }

    fn median(&self) -> Duration {
        let mut times = self.times.clone();
        times.sort();
        times[times.len() / 2]
    }
}

/// Publishes added up, over one second or the whole run.
#[derive(Default)]
struct Tally {
    versions: u64,
    pages: u64,
    /// Pages compared with the previous version (untracked chunks).
    compared: u64,
    publish: Duration,
    slowest: Duration,
    peak_store: u64,
}

impl Tally {
    fn add(&mut self, stats: &ProducerStats) {
        self.versions += 1;
        self.pages += stats.last_pages_copied as u64;
        self.compared += stats.last_pages_compared as u64;
        self.publish += stats.last_publish;
        self.slowest = self.slowest.max(stats.last_publish);
        self.peak_store = self.peak_store.max(stats.store_bytes);
    }

    fn mean_publish(&self) -> Duration {
        self.publish.div_f64(self.versions.max(1) as f64)
    }
}

/// What the observer has done so far: the counters of one of its reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Report {
    /// The newest version it took.
    version: u64,
    /// Snapshots taken, and versions published between two of them that it never took.
    seen: u64,
    skipped: u64,
    /// Over all snapshots, the sum of (taken - published), in ns.
    lag_ns: u64,
    /// Mean temperature of the newest snapshot.
    mean: f64,
}

impl Report {
    /// Reads a snapshot of an `n` x `n` grid: counts it, checks that its two regions are of
    /// the same step, and takes the mean temperature.
    fn read(&mut self, snapshot: &Snapshot, n: usize) -> crate::Result {
        let v = snapshot.version();
        let published =
            snapshot.info().ok_or_else(|| format!("version {v} left the version ring while pinned"))?.time_ns;
        self.lag_ns += monotonic_ns().saturating_sub(published);
        if self.seen > 0 {
            self.skipped += v - self.version - 1;
        }
        self.seen += 1;
        self.version = v;

        let step = snapshot.view_exact::<i64>(STEP, 1)?[0];
        let t = snapshot.view_exact::<f64>(TEMPERATURE, n * n)?;
        if !heater(n, step as u64).all(|cells| t[cells].iter().all(|&x| x == HOT)) {
            return Err(format!(
                "version {v} is inconsistent: its step is {step}, but its grid has the heater elsewhere"
            )
            .into());
        }
        self.mean = t.iter().sum::<f64>() / t.len() as f64;
        Ok(())
    }
}

/// The observer: `tcasm demo-observer` in a child process, and its reports.
struct ObserverProcess {
    child: ChildProcess<Report>,
    /// The newest report, and the one the previous line showed.
    last: Report,
    shown: Report,
}

impl ObserverProcess {
    fn spawn(name: &str) -> crate::Result<ObserverProcess> {
        let child = ChildProcess::start(["demo-observer", "--name", name], false, "observer")
            .map_err(|e| format!("starting the observer process: {e}"))?;
        Ok(ObserverProcess { child, last: Report::default(), shown: Report::default() })
    }

    /// What the observer did since the previous line, from its newest report. Fails if it
    /// has exited while the producer still runs.
    fn describe_second(&mut self) -> crate::Result<String> {
        if let Some(status) = self.child.try_wait()? {
            return Err(format!("the observer exited early ({status})").into());
        }
        if let Some(r) = self.child.reports().try_iter().last() {
            self.last = r;
        }
        let (now, then) = (&self.last, &self.shown);
        let line = match now.seen - then.seen {
            0 if now.seen == 0 => "observer: no report yet".to_string(),
            0 => "observer: no new version".to_string(),
            seen => format!(
                "observer: lag {:>9}, saw {seen:>3}, skipped {:>3}, mean temperature {:.3}",
                human_time(Duration::from_nanos((now.lag_ns - then.lag_ns) / seen)),
                now.skipped - then.skipped,
                now.mean
            ),
        };
        self.shown = self.last.clone();
        Ok(line)
    }

    /// Waits for the observer to end once the producer is gone (killing it after
    /// [`OBSERVER_GRACE`]) and returns its last report.
    fn finish(mut self) -> crate::Result<Report> {
        let deadline = Instant::now() + OBSERVER_GRACE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                return Err(
                    format!("the observer did not end within {OBSERVER_GRACE:?} of the producer: killed it").into()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            return Err(format!("the observer failed ({status})").into());
        }
        // The reader thread ends with the observer's stdout, so this sees every report.
        let last = self.last;
        Ok(self.child.remaining().into_iter().last().unwrap_or(last))
    }
}

/// `tcasm demo-observer`: follows the producer until it is gone, taking the newest version
/// whenever there is one, and reports on stdout once a second.
pub fn observe(args: ObserverArgs) -> crate::Result {
    let observer = Observer::attach(&args.name)?;
    let n = observer
        .regions()
        .iter()
        .find(|r| r.name == TEMPERATURE && r.shape.len() == 2)
        .map(|r| r.shape[0])
        .ok_or_else(|| format!("producer {:?} has no {TEMPERATURE:?} grid: is it `tcasm demo`?", args.name))?;
    let mut counters = Report::default();
    let mut next_report = Instant::now() + REPORT_PERIOD;
    loop {
        if Instant::now() >= next_report {
            report(&counters)?;
            next_report += REPORT_PERIOD;
        }
        let Some(newer) = until_gone(observer.wait_newer(counters.version, REPORT_PERIOD / 10))? else { break };
        if newer.is_none() {
            continue;
        }
        let Some(snapshot) = until_gone(observer.latest())? else { break };
        counters.read(&snapshot, n)?;
    }
    report(&counters)?;
    Ok(())
}

/// `None` once the producer is gone: for the observer, the end of the run.
fn until_gone<T>(result: Result<T, ReadError>) -> Result<Option<T>, ReadError> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(ReadError::ProducerGone { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_round_trip() {
        let r = Report { version: 812, seen: 790, skipped: 21, lag_ns: 1_234_567, mean: 0.125 };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), r);
        assert!(serde_json::from_str::<Report>("version=1 seen=2").is_err());
    }

    #[test]
    fn plate_keeps_heat_where_it_says() {
        let n = 128;
        let mut plate = Plate::new(n);
        let mut t = vec![0.0; n * n];
        for _ in 0..300 {
            plate.step(&mut t);
            assert!(
                heater(n, plate.steps).all(|cells| t[cells].iter().all(|&x| x == HOT)),
                "the heater is where the step says"
            );
            assert!(!heater(n, plate.steps + 1).all(|cells| t[cells].iter().all(|&x| x == HOT)), "and nowhere else");
            for (i, row) in t.chunks(n).enumerate() {
                assert!(row.iter().all(|&v| (0.0..=HOT).contains(&v)));
                assert!(plate.warm[i] || row.iter().all(|&v| v == 0.0), "row {i} is not warm, so it is 0");
            }
        }
        assert!(plate.warm.iter().any(|w| !w), "some rows stay cold and unwritten");
    }
}
