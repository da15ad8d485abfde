//! `tcasm checkpoint`: incremental checkpoints of
//! a running producer to a directory (a burst buffer), without slowing the producer. The
//! format and its checks live in `tcasm::checkpoint`; this is the command line around them.
use std::fs::{self};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tcasm::checkpoint::{self, CheckpointError, Flusher, PageSpace, Writer, WriterOptions, Written};

use crate::flush;
use tcasm::ReadError;

#[derive(clap::Args)]
pub struct Args {
    /// The producer's endpoint name.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    name: Option<String>,
    /// Instead of NAME: follow every producer whose endpoint name matches PATTERN (a glob,
    /// e.g. 'heat.*': the ranks of an MPI job on this node) as they appear, each into
    /// DIR/<name> (and PERSISTENT/<name>), writing the job's global manifests on PERSISTENT.
    /// Exits once every producer it followed has exited and none has appeared for --idle.
    #[arg(long, value_name = "PATTERN")]
    all: Option<String>,
    /// With --all: how long to wait for producers after the last one exits (or before the
    /// first appears).
    #[arg(long, value_name = "SECONDS", default_value = "5", requires = "all", value_parser = crate::parse_seconds)]
    idle: Duration,
    /// Where checkpoints go (created if missing); one checkpointer per directory.
    #[arg(long)]
    dir: PathBuf,
    /// Checkpoint the newest version every SECONDS (the first at once).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = crate::parse_seconds)]
    interval: Duration,
    /// Instead, checkpoint every version it can catch, taking the newest when it falls
    /// behind: as fast as the directory takes them, which fills a burst buffer quickly.
    #[arg(long, conflicts_with = "interval")]
    every_version: bool,
    /// A bandwidth budget: keep the average write rate since the start at or below SIZE per
    /// second (e.g. 200MiB). A checkpoint that would take the bytes written past SIZE per
    /// second elapsed waits until they fit, then takes the newest version (the versions in
    /// between are skipped; their changes are in it). The first, a full base, waits too. With
    /// --interval both limits apply; with --all, each producer has this budget.
    #[arg(long, value_name = "SIZE", value_parser = parse_rate)]
    max_rate: Option<u64>,
    /// Warn when the directory's file system has less than SIZE free (default: less than two
    /// base checkpoints).
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size)]
    min_free: Option<usize>,
    /// Start a new full base after K checkpoints (default: one base per run).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    full_every: Option<u64>,
    /// Keep the newest N chains; older chains are removed once a newer base is complete.
    #[arg(long, value_name = "N", requires = "full_every", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
    /// Keep the newest chains that fit in SIZE (e.g. 20GiB; at least the current chain);
    /// older chains are removed once a newer base is complete.
    #[arg(long, value_name = "SIZE", requires = "full_every", value_parser = crate::parse_size)]
    keep_bytes: Option<usize>,
    /// Stop after N checkpoints (default: until the producer exits).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Level 2: copy completed checkpoints in the background to this persistent directory
    /// (the parallel file system; it must exist), crash-consistent there too.
    #[arg(long, value_name = "PERSISTENT")]
    flush_to: Option<PathBuf>,
    /// Flush every K-th completed checkpoint (with the checkpoints of its chain not flushed
    /// yet).
    #[arg(long, value_name = "K", default_value_t = 1, requires = "flush_to", value_parser = clap::value_parser!(u64).range(1..))]
    flush_every: u64,
    /// Keep the newest M chains on PERSISTENT; older ones are removed once a newer base is
    /// flushed.
    #[arg(long, value_name = "M", requires = "flush_to", value_parser = clap::value_parser!(u64).range(1..))]
    keep_flushed: Option<u64>,
    #[command(flatten)]
    wait: crate::wait::Wait,
}

/// Parses a `--max-rate` budget: a size per second such as `200MiB` (or `200MiB/s`).
fn parse_rate(s: &str) -> Result<u64, String> {
    let size = crate::parse_size(s.trim().strip_suffix("/s").unwrap_or(s))?;
    match size {
        0 => Err(format!("{s:?} is no budget: give a rate above 0, e.g. 200MiB")),
        n => Ok(n as u64),
    }
}

/// `--max-rate`: the bytes a checkpointer may have written by now, from its start.
struct Budget {
    /// Bytes per second.
    rate: u64,
    started: Instant,
}

impl Budget {
    fn new(rate: u64) -> Budget {
        Budget { rate, started: Instant::now() }
    }

    /// How long to wait before writing `next` bytes after `written`, so that the average
    /// rate since the start stays at or below the budget (zero: write now).
    fn wait(&self, written: u64, next: u64) -> Duration {
        let fits_at = Duration::try_from_secs_f64(written.saturating_add(next) as f64 / self.rate as f64)
            .unwrap_or(Duration::MAX);
        fits_at.saturating_sub(self.started.elapsed())
    }

    /// For the progress line: the average since the start, and the budget.
    fn describe(&self, written: u64) -> String {
        format!("average {}/s, budget {}/s", HumanBytes(rate(written, self.started.elapsed())), HumanBytes(self.rate))
    }
}

/// What a run has done so far.
#[derive(Default)]
struct Totals {
    checkpoints: u64,
    skipped: u64,
    bytes: u64,
    busy: Duration,
    first: Option<u64>,
    last: u64,
}

impl Totals {
    fn add(&mut self, w: &Written, skipped: u64) {
        self.checkpoints += 1;
        self.skipped += skipped;
        self.bytes += w.bytes;
        self.busy += w.elapsed;
        self.first.get_or_insert(w.version);
        self.last = w.version;
    }

    fn summary(&self) -> String {
        format!(
            "{} (v{}..v{}), {} skipped, {} written at {}/s",
            crate::plural(self.checkpoints, "checkpoint"),
            self.first.unwrap_or(0),
            self.last,
            crate::plural(self.skipped, "version"),
            HumanBytes(self.bytes),
            HumanBytes(rate(self.bytes, self.busy)),
        )
    }
}

fn rate(bytes: u64, took: Duration) -> u64 {
    (bytes as f64 / took.as_secs_f64().max(1e-9)) as u64
}

/// One line per checkpoint.
fn describe(w: &Written, skipped: u64) -> String {
    let kind = match w.parent {
        None => "base".to_string(),
        Some(p) => format!("increment on v{p}"),
    };
    let mut line = format!(
        "v{} ({kind}, chain {}): {} pages in {} chunks, {} in {:.1} ms ({}/s)",
        w.version,
        w.chain,
        w.pages,
        w.chunks,
        HumanBytes(w.bytes),
        w.elapsed.as_secs_f64() * 1e3,
        HumanBytes(rate(w.bytes, w.elapsed)),
    );
    if skipped > 0 {
        line += &format!(", {} skipped", crate::plural(skipped, "version"));
    }
    if !w.retired.is_empty() {
        line += &format!(", retired chains {:?}", w.retired);
    }
    line
}

/// What the checkpoint directory uses, and what its file system has free (`None` where it
/// cannot be read: the line says so rather than failing the run).
struct Disk {
    used: Option<u64>,
    free: Option<u64>,
}

impl Disk {
    fn of(dir: &Path) -> Disk {
        // The field types are u64 here, narrower on 32-bit targets.
        #[allow(clippy::unnecessary_cast)]
        let free = nix::sys::statvfs::statvfs(dir).ok().map(|s| s.blocks_available() as u64 * s.fragment_size() as u64);
        Disk { used: checkpoint::directory_bytes(dir).ok(), free }
    }
}

impl std::fmt::Display for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = |b: Option<u64>| b.map_or("?".to_string(), |b| HumanBytes(b).to_string());
        write!(f, "dir {}, {} free", bytes(self.used), bytes(self.free))
    }
}

/// A progress bar on a terminal, plain lines elsewhere.
enum Progress {
    Terminal(ProgressBar),
    /// Lines, each starting with the label (the producer's name under `--all`).
    Plain(String),
}

impl Progress {
    fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::Plain(String::new());
        }
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{prefix:>26} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
                .expect("template is valid")
                .progress_chars("=> "),
        );
        Progress::Terminal(bar)
    }

    fn starting(&self, version: u64) {
        if let Progress::Terminal(bar) = self {
            bar.set_prefix(format!("v{version}"));
            bar.set_position(0);
        }
    }

    fn bytes(&self, done: u64, total: u64) {
        if let Progress::Terminal(bar) = self {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    /// After checkpoint `w`: what it wrote, the run's totals, the directory's use and free
    /// space, and under `--max-rate` the average rate against the budget.
    fn checkpoint(&self, w: &Written, skipped: u64, totals: &Totals, disk: &Disk, budget: Option<&Budget>) {
        let budget = budget.map_or(String::new(), |b| format!("; {}", b.describe(totals.bytes)));
        match self {
            Progress::Terminal(bar) => {
                if w.parent.is_none() {
                    bar.println(format!("{}; {disk}{budget}", describe(w, skipped)));
                }
                bar.set_message(format!(
                    "{}, {} skipped, {}/s; {disk}{budget}",
                    crate::plural(totals.checkpoints, "checkpoint"),
                    totals.skipped,
                    HumanBytes(rate(totals.bytes, totals.busy))
                ));
            }
            Progress::Plain(label) => eprintln!("{label}{}; {disk}{budget}", describe(w, skipped)),
        }
    }

    /// A line that stays (above the bar on a terminal).
    fn note(&self, line: &str) {
        match self {
            Progress::Terminal(bar) => bar.println(line),
            Progress::Plain(label) => eprintln!("{label}{line}"),
        }
    }

    /// Level 2's state, beside level 1's.
    fn level2(&self, status: &str) {
        if let Progress::Terminal(bar) = self {
            bar.set_message(format!("{} | {status}", bar.message().split(" | ").next().unwrap_or("")));
        }
    }

    fn finish(&self, why: &str, totals: &Totals, budget: Option<&Budget>) {
        if let Progress::Terminal(bar) = self {
            bar.finish_and_clear();
        }
        let budget = budget.map_or(String::new(), |b| format!(" ({})", b.describe(totals.bytes)));
        eprintln!("{why}: {}{budget}", totals.summary());
    }
}

/// Whether `e` says the local directory is full (or the file too large for the process):
/// then the checkpointer keeps the last complete checkpoint and retries with newer versions.
fn out_of_space(e: &CheckpointError) -> bool {
    let CheckpointError::Io { source, .. } = e else { return false };
    matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT))
}

/// Where one producer's checkpoints go: level 1, level 2, and the persistent directory of
/// the MPI job it is a rank of (for global manifests).
struct Target<'a> {
    name: &'a str,
    dir: PathBuf,
    flush_to: Option<PathBuf>,
    job: Option<&'a Path>,
}

/// Starts level 2, or says why not: level 1 goes on either way.
fn start_flusher(args: &Args, target: &Target) -> Option<flush::Background> {
    let persistent = target.flush_to.as_ref()?;
    match Flusher::create(&target.dir, persistent, args.keep_flushed.map(|k| k as usize)) {
        Ok(f) => Some(flush::Background::start(f, target.job.map(Path::to_path_buf))),
        Err(e) => {
            eprintln!("tcasm: --flush-to: {e}; checkpoints stay on level 1 ({}) only", target.dir.display());
            None
        }
    }
}

/// Follows the producer (or with `--all`, every producer matching) and checkpoints its
/// versions until it exits (or `--count`).
pub fn run(args: Args) -> crate::Result {
    match (&args.name, &args.all) {
        (_, Some(pattern)) => run_all(&args, pattern),
        (Some(name), None) => {
            let target = Target { name, dir: args.dir.clone(), flush_to: args.flush_to.clone(), job: None };
            match follow(&args, &target, Progress::new())? {
                Ended::Exited => Ok(()),
                Ended::Died(why) => Err(why.into()),
            }
        }
        (None, None) => unreachable!("clap requires NAME or --all"),
    }
}

/// A producer followed under `--all`: its name, its incarnation, and its checkpointer thread.
type Following<'scope> = (String, u64, thread::ScopedJoinHandle<'scope, Result<(), String>>);

/// `--all PATTERN`: a thread per producer matching, each into its own directory of both
/// levels, started as producers appear (a producer relaunched under the same name is
/// followed again).
fn run_all(args: &Args, pattern: &str) -> crate::Result {
    let glob = glob::Pattern::new(pattern).map_err(|e| format!("--all {pattern:?} is not a glob: {e}"))?;
    let job = args.flush_to.as_deref();
    // Producers by name and incarnation (pids repeat across containers' pid namespaces).
    let mut finished: Vec<(String, u64)> = Vec::new();
    let mut failed = 0;
    let mut last_seen = Instant::now();
    thread::scope(|scope| -> crate::Result {
        let mut running: Vec<Following> = Vec::new();
        loop {
            for l in tcasm::list_producers()? {
                // A producer relaunched under a name still followed waits for the follower of
                // the one before to finish (it holds the name's directories).
                let known =
                    running.iter().any(|(n, _, _)| *n == l.name) || finished.contains(&(l.name.clone(), l.incarnation));
                if !glob.matches(&l.name) || known {
                    continue;
                }
                eprintln!("following {} (pid {})", l.name, l.pid);
                let name = l.name.clone();
                let handle = thread::Builder::new()
                    .name(format!("ckpt {name}"))
                    .spawn_scoped(scope, move || {
                        let flush_to = job.map(|p| {
                            let mine = tcasm::checkpoint::global::rank_dir(p, &name);
                            if p.is_dir() {
                                // Left to the flusher to report when it cannot be made.
                                let _ = fs::create_dir(&mine);
                            }
                            mine
                        });
                        let target = Target {
                            name: &name,
                            dir: tcasm::checkpoint::global::rank_dir(&args.dir, &name),
                            flush_to,
                            job,
                        };
                        match follow(args, &target, Progress::Plain(format!("{name}: "))) {
                            Ok(Ended::Died(why)) => {
                                eprintln!("{name}: {why}");
                                Ok(())
                            }
                            Ok(Ended::Exited) => Ok(()),
                            Err(e) => Err(format!("{name}: {e}")),
                        }
                    })
                    .map_err(|e| format!("starting a checkpointer thread: {e}"))?;
                running.push((l.name, l.incarnation, handle));
            }
            let (done, still): (Vec<_>, Vec<_>) =
                std::mem::take(&mut running).into_iter().partition(|(_, _, h)| h.is_finished());
            running = still;
            for (name, incarnation, handle) in done {
                if let Err(e) =
                    handle.join().unwrap_or_else(|_| Err(format!("{name}: its checkpointer thread panicked")))
                {
                    eprintln!("tcasm: {e}");
                    failed += 1;
                }
                finished.push((name, incarnation));
            }
            if !running.is_empty() {
                last_seen = Instant::now();
            } else if last_seen.elapsed() >= args.idle {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?;
    eprintln!("--all {pattern:?}: followed {} producers, {failed} failed", finished.len());
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of the producers followed could not be checkpointed (see above)").into()),
    }
}

fn follow(args: &Args, target: &Target, progress: Progress) -> crate::Result<Ended> {
    // Before waiting for the producer: a wrong --dir is said at once.
    checkpoint::refuse_non_directory(&target.dir)?;
    let observer = args.wait.attach(target.name)?;
    let options = WriterOptions {
        full_every: args.full_every,
        keep: args.keep.map(|k| k as usize),
        keep_bytes: args.keep_bytes.map(|b| b as u64),
    };
    let mut writer = Writer::create(&target.dir, PageSpace::of(&observer), options)?;
    let level2 = start_flusher(args, target);
    let mut totals = Totals::default();
    let mut last: Option<(u64, u64)> = None;
    let mut full_since: Option<u64> = None;
    let mut due = Instant::now();
    let (mut base_bytes, mut warned) = (0, false);
    let budget = args.max_rate.map(Budget::new);
    // After waiting for the budget, the newest version is taken at once (its interval passed).
    let (mut paced, mut said_paced) = (false, false);
    let why = loop {
        if let Some(l2) = &level2 {
            l2.take_events().iter().for_each(|line| progress.note(line));
            progress.level2(&l2.status());
            if l2.take_rebase() {
                writer.start_new_chain();
            }
        }
        if !std::mem::take(&mut paced) && !args.every_version {
            // Until the next is due, or the producer is gone (said at once, not an interval later).
            while Instant::now() < due && !observer.producer_gone() {
                thread::sleep(due.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
            }
            due = Instant::now().max(due) + args.interval;
        }
        // After a new chain is asked for, the next base is a version not taken yet.
        let taken = match observer
            .wait_newer(writer.last().or(last.map(|(_, v)| v)).unwrap_or(0), Duration::from_millis(500))
        {
            Ok(None) => continue,
            Ok(Some(_)) => observer.latest(),
            Err(e) => Err(e),
        };
        let snapshot = match taken {
            Ok(s) => s,
            Err(ReadError::ProducerGone { .. }) if observer.producer_died() => {
                break format!("producer {:?} died without closing its endpoint (killed or crashed)", target.name)
            }
            Err(ReadError::ProducerGone { .. }) => break format!("producer {:?} exited", target.name),
            Err(e) => return Err(e.into()),
        };
        if let Some(budget) = &budget {
            let next = writer.bytes_to_write(&snapshot);
            let wait = budget.wait(totals.bytes, next);
            if !wait.is_zero() {
                if !said_paced && wait >= Duration::from_secs(1) {
                    progress.note(&format!(
                        "v{}: waiting {:.1} s to write {} within --max-rate {}/s; then the newest version is taken",
                        snapshot.version(),
                        wait.as_secs_f64(),
                        HumanBytes(next),
                        HumanBytes(budget.rate)
                    ));
                    said_paced = true;
                }
                // The pin goes while it waits: the producer's memory is not held for it.
                drop(snapshot);
                let until = Instant::now().checked_add(wait);
                while let Some(left) = until.map_or(Some(Duration::MAX), |u| u.checked_duration_since(Instant::now())) {
                    if left.is_zero() || observer.producer_gone() {
                        break;
                    }
                    thread::sleep(left.min(Duration::from_millis(100)));
                }
                paced = true;
                continue;
            }
        }
        // Versions published since the last checkpoint and not taken: the writer never
        // holds the producer back, it takes the newest.
        let skipped = writer.last().map_or(0, |l| snapshot.version() - l - 1);
        progress.starting(snapshot.version());
        let written = match writer.write(&snapshot, |done, total| progress.bytes(done, total)) {
            Ok(w) => w,
            Err(e) if out_of_space(&e) => {
                if full_since.is_none() {
                    let kept = writer.last().map_or("none yet".into(), |v| format!("v{v}"));
                    progress.note(&format!(
                        "v{}: {e}: {} is full; the last complete checkpoint ({kept}) stays, and newer versions are tried as they come",
                        snapshot.version(),
                        target.dir.display()
                    ));
                    full_since = Some(snapshot.version());
                }
                drop(snapshot);
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        drop(snapshot);
        if let Some(v) = full_since.take() {
            progress.note(&format!(
                "{} has space again: v{} written (full since v{v})",
                target.dir.display(),
                written.version
            ));
        }
        totals.add(&written, skipped);
        let disk = Disk::of(&target.dir);
        progress.checkpoint(&written, skipped, &totals, &disk, budget.as_ref());
        if written.parent.is_none() {
            base_bytes = written.bytes;
        }
        // Warn once while less than --min-free (by default, two bases) is free, again after
        // space came back.
        let min_free = args.min_free.map_or(2 * base_bytes, |m| m as u64);
        let short = disk.free.is_some_and(|free| free < min_free);
        if short && !warned {
            let less_than = match args.min_free {
                Some(m) => format!("less than --min-free {}", HumanBytes(m as u64)),
                None => format!("less than two base checkpoints ({} each)", HumanBytes(base_bytes)),
            };
            progress.note(&format!(
                "warning: {} has {} free, {less_than}: retire chains with --full-every and --keep or --keep-bytes, or checkpoint less often (--interval, --max-rate)",
                target.dir.display(),
                HumanBytes(disk.free.unwrap_or(0)),
            ));
        }
        warned = short;
        last = Some((written.chain, written.version));
        if let Some(l2) = &level2 {
            if totals.checkpoints % args.flush_every == 0 {
                if let Some(old) = l2.request(written.chain, written.version) {
                    progress.note(&format!(
                        "flush of v{old} skipped: the flusher is still busy ({}); v{} goes instead, and the next local checkpoint is a new base",
                        l2.status(),
                        written.version
                    ));
                }
            }
            if let Progress::Plain(label) = &progress {
                eprintln!("{label}  level 2: {}", l2.status());
            }
        }
        if args.count.is_some_and(|n| totals.checkpoints >= n) {
            break format!("{} taken", crate::plural(totals.checkpoints, "checkpoint"));
        }
    };
    progress.finish(&why, &totals, budget.as_ref());
    if let Some(l2) = level2 {
        let (events, summary) = l2.finish(last);
        events.iter().for_each(|line| eprintln!("{line}"));
        eprintln!("{summary}");
    }
    let last = writer.last().map_or("none".into(), |v| format!("v{v}"));
    Ok(if observer.producer_died() {
        Ended::Died(format!(
            "producer {:?} died without closing its endpoint; the last complete checkpoint is {last}",
            target.name
        ))
    } else {
        Ended::Exited
    })
}

/// How the producer a checkpointer followed ended.
enum Ended {
    /// It closed its endpoint.
    Exited,
    /// It died without closing it (killed, crashed): said, and for a single producer an
    /// error; under `--all` a rank of a job that died is what the checkpoints are for, not a
    /// failure of the checkpointer.
    Died(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_sizes_per_second() {
        assert_eq!(parse_rate("200MiB"), Ok(200 << 20));
        assert_eq!(parse_rate("200MiB/s"), Ok(200 << 20));
        assert_eq!(parse_rate("1GB"), Ok(1_000_000_000));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    /// A write waits until the bytes written, its own included, fit in the budget since the
    /// start; a write that fits goes at once.
    #[test]
    fn the_budget_waits_for_what_does_not_fit() {
        let budget = Budget { rate: 1000, started: Instant::now() - Duration::from_secs(2) };
        assert_eq!(budget.wait(1000, 500), Duration::ZERO);
        let wait = budget.wait(2000, 1000);
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(budget.wait(u64::MAX, 1) > Duration::from_secs(1 << 40));
        assert!(Budget { rate: 1, started: Instant::now() }.wait(u64::MAX, u64::MAX) > Duration::from_secs(1 << 40));
    }
}
