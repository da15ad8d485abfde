//! `tcasm`: run the demo, list and inspect live producers, checkpoint them, and stress-test
//! and benchmark the store.
//!
//! User commands: `demo`, `ls`, `inspect`, `show`, `top`, `checkpoint`, `restore`, `verify`,
//! `completions` and `bench` (`checkpoint`, `export`, `restart`, `coverage`), and `stress`:
//! tests/stress.rs runs it, and it ships because a user checks a node with it before trusting
//! it (its kernel, its limits, its other load: `tcasm stress --chaos` kills and stops observers
//! at random and counts torn snapshots and leaked bytes). Harnesses, hidden: `demo-observer`,
//! `stress-observer` and `bench-coverage-observer`, the child processes `demo`, `stress` and
//! `bench coverage` start ([`harness`]: they report as JSON lines); they ship because those
//! commands start them from this binary.
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod bench;
mod checkpoint;
mod demo;
mod export;
mod flush;
mod harness;
mod inspect;
mod restore;
mod rng;
mod show;
mod stress;
mod top;
mod verify;
mod wait;

#[derive(Parser)]
#[command(name = "tcasm", version, about = "Consistent, versioned snapshots of a running program's memory")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a small heat-diffusion producer and an observer that follows it.
    Demo(demo::Args),
    /// List the live producers in the endpoint directory.
    Ls(inspect::LsArgs),
    /// Show a producer's regions, versions, pins and memory.
    Inspect(inspect::Args),
    /// Look at a snapshot: per region min, max, mean and the first values, from a live
    /// producer or a checkpoint directory; a PNG heatmap of a 2-D region (--png).
    Show(show::Args),
    /// One producer and N observers verifying every byte of every snapshot.
    Stress(stress::Args),
    /// Follow a producer and write incremental, crash-consistent checkpoints to a directory.
    Checkpoint(checkpoint::Args),
    /// Rebuild a checkpointed version as one .npy file per region, or export versions to
    /// HDF5 + XDMF (--format hdf5).
    Restore(restore::RestoreArgs),
    /// Check every checksum and chain link of a checkpoint directory.
    Verify(verify::VerifyArgs),
    /// A live view of a producer: version rate, pages per version, memory, observers.
    Top(top::Args),
    /// Print a shell completion script: `tcasm completions bash > ~/.local/share/bash-completion/completions/tcasm`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Measure the tools.
    #[command(subcommand)]
    Bench(Bench),
    /// The observer half of `demo` (started by it).
    #[command(hide = true)]
    DemoObserver(demo::ObserverArgs),
    /// The observer half of `stress` (started by it).
    #[command(hide = true)]
    StressObserver(stress::ObserverArgs),
    /// An observer process of `bench coverage` (started by it).
    #[command(hide = true)]
    BenchCoverageObserver(bench::coverage::ObserverArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// Checkpoint drain rate against the directory's sequential write bandwidth.
    Checkpoint(bench::checkpoint::BenchArgs),
    /// HDF5 export rate against the .npy restore of the same version (--features hdf5).
    Export(export::BenchArgs),
    /// Restart and flush time against reading and copying the same files.
    Restart(bench::restart::RestartBenchArgs),
    /// Producer cost per version against the share of pages written, for each tracker and
    /// the hand-written baselines (memcpy, double buffer, fork), with observer processes.
    Coverage(bench::coverage::Args),
}

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Parses a byte count such as `64MiB`, `1GiB`, `4096` or `10MB`.
pub fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        u => return Err(format!("unknown unit {u:?} in {s:?}: use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// `1 observer`, `2 observers`.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Parses a positive number of seconds such as `0.5` or `10`.
pub fn parse_seconds(s: &str) -> std::result::Result<std::time::Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0 && *x < 1e9)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

/// Makes a write to a closed pipe end the process quietly, as it ends `cat` or `ls`, instead
/// of returning `EPIPE` (which Rust's runtime asks for, and `println!` turns into a panic):
/// `tcasm inspect heat | head` stops when `head` has read enough.
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler of ours, so no code runs in signal context; the
    // previous disposition (Rust's SIG_IGN) is not a handler anyone else relies on.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    tracing_subscriber::fmt().with_writer(std::io::stderr).without_time().init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Ls(a) => inspect::ls(a),
        Command::Show(a) => show::run(a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tcasm", &mut std::io::stdout());
            Ok(())
        }
        Command::Inspect(a) => inspect::run(a),
        Command::Stress(a) => stress::run(a),
        Command::Checkpoint(a) => checkpoint::run(a),
        Command::Restore(a) => restore::restore(a),
        Command::Verify(a) => verify::verify(a),
        Command::Top(a) => top::run(a),
        Command::Bench(Bench::Checkpoint(a)) => bench::checkpoint::bench(a),
        Command::Bench(Bench::Export(a)) => export::bench(a),
        Command::Bench(Bench::Restart(a)) => bench::restart::bench_restart(a),
        Command::Bench(Bench::Coverage(a)) => bench::coverage::run(a),
        Command::DemoObserver(a) => demo::observe(a),
        Command::StressObserver(a) => stress::observe(a),
        Command::BenchCoverageObserver(a) => bench::coverage::observe(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcasm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse() {
        assert_eq!(super::parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("1GiB"), Ok(1 << 30));
        assert!(super::parse_size("12XB").is_err());
        assert!(super::parse_size("MiB").is_err());
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(super::parse_seconds("0.25"), Ok(std::time::Duration::from_millis(250)));
        assert!(super::parse_seconds("0").is_err());
        assert!(super::parse_seconds("-1").is_err());
        assert!(super::parse_seconds("NaN").is_err());
    }
}
