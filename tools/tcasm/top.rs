//! `tcasm top NAME`: a live view of an endpoint — how fast the producer publishes, how much
//! each version writes and costs, the memory of its store, and who observes it how far
//! behind. Everything comes from the control block and pin table, so watching costs the
//! producer nothing.
use std::io::IsTerminal;
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tcasm::Observer;

#[derive(clap::Args)]
pub struct Args {
    /// The producer's endpoint name.
    name: String,
    /// Seconds between updates.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = crate::parse_seconds)]
    interval: Duration,
    /// Stop after N updates (default: until the producer exits).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    wait: crate::wait::Wait,
}

/// What the versions published between two updates cost.
struct Sample {
    latest: u64,
    per_second: f64,
    /// Averages over the versions the ring still held.
    pages_per_version: f64,
    publish_ms: f64,
    store_bytes: u64,
    reserve_bytes: u64,
    observers: Vec<String>,
}

fn sample(observer: &Observer, since: u64, elapsed: Duration) -> Sample {
    let latest = observer.latest_version();
    let infos: Vec<_> = (since + 1..=latest).rev().take(1024).filter_map(|v| observer.version_info(v)).collect();
    let n = infos.len().max(1) as f64;
    let observers = observer
        .slots()
        .into_iter()
        .filter(|s| !s.ours)
        .map(|s| match s.pins.iter().min() {
            Some(&oldest) => {
                format!(
                    "pid {}: {}, oldest v{oldest}, lag {}",
                    s.pid,
                    crate::plural(s.pins.len() as u64, "pin"),
                    crate::plural(latest.saturating_sub(oldest), "version")
                )
            }
            None => format!("pid {}: no pins", s.pid),
        })
        .collect();
    Sample {
        latest,
        per_second: (latest - since) as f64 / elapsed.as_secs_f64().max(1e-9),
        // Folded from +0.0: an empty sum of f64 is -0.0.
        pages_per_version: infos.iter().fold(0.0, |sum, i| sum + i.dirty_pages as f64) / n,
        publish_ms: infos.iter().fold(0.0, |sum, i| sum + i.publish_ns as f64) / n / 1e6,
        store_bytes: observer.version_info(latest).map_or(0, |i| i.store_bytes),
        reserve_bytes: observer.version_info(latest).map_or(0, |i| i.reserve_bytes),
        observers,
    }
}

pub fn run(args: Args) -> crate::Result {
    let observer = args.wait.attach(&args.name)?;
    let header = format!(
        "{} (pid {}): {} regions, {} pages",
        args.name,
        observer.producer_pid(),
        observer.regions().len(),
        observer.pages()
    );
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout())
            .with_style(ProgressStyle::with_template("{msg}").expect("template is valid"));
        bar.set_message(header.clone());
        bar
    });
    if bar.is_none() {
        println!("{header}");
    }
    let (mut since, mut at) = (observer.latest_version(), Instant::now());
    let mut updates = 0;
    while !observer.producer_gone() && args.count.is_none_or(|n| updates < n) {
        thread::sleep(args.interval);
        if observer.producer_gone() {
            break;
        }
        let s = sample(&observer, since, at.elapsed());
        (since, at) = (s.latest, Instant::now());
        updates += 1;
        let line = format!(
            "v{}: {:.1} versions/s, {:.0} pages/version, publish {:.2} ms, store {} (reserve {}), {}",
            s.latest,
            s.per_second,
            s.pages_per_version,
            s.publish_ms,
            HumanBytes(s.store_bytes),
            HumanBytes(s.reserve_bytes),
            crate::plural(s.observers.len() as u64, "observer")
        );
        match &bar {
            Some(bar) => {
                let observers: String = s.observers.iter().map(|o| format!("\n  {o}")).collect();
                bar.set_message(format!("{header}\n{line}{observers}"));
            }
            None => {
                let observers =
                    if s.observers.is_empty() { String::new() } else { format!(" [{}]", s.observers.join("; ")) };
                println!("{line}{observers}");
            }
        }
    }
    if let Some(bar) = bar {
        bar.abandon();
    }
    if observer.producer_died() {
        return Err(format!(
            "producer {:?} (pid {}) died without closing its endpoint (killed or crashed); its last version was v{}",
            args.name,
            observer.producer_pid(),
            observer.latest_version()
        )
        .into());
    }
    if observer.producer_gone() {
        println!("producer {:?} exited at v{}", args.name, observer.latest_version());
    }
    Ok(())
}
