//! `tcasm bench checkpoint`: the checkpointer's drain rate against the directory's own
//! sequential write bandwidth, measured in the same run.
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use indicatif::HumanBytes;
use tcasm::checkpoint::{PageSpace, WriteBehind, Writer, WriterOptions};

use tcasm::{Observer, Producer, ProducerOptions};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The directory to measure (a scratch directory is made inside and removed).
    #[arg(long)]
    dir: PathBuf,
    /// Size of the producer's region: every checkpoint writes this much.
    #[arg(long, default_value = "256MiB", value_parser = crate::parse_size)]
    size: usize,
    /// Rounds of one plain write and one checkpoint, each of SIZE bytes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoints: u64,
}

/// Drain rate of the checkpointer against the directory's sequential write bandwidth, in the
/// same run: a producer rewrites its whole region every version, so every checkpoint writes
/// `size` bytes, and each checkpoint is paired with a plain write of `size` bytes to a new
/// file (large writes, then fsync). The two alternate while the producer runs, so both see
/// the same disk and the same competition for the CPU.
pub fn bench(args: BenchArgs) -> crate::Result {
    let scratch = args.dir.join(format!("tcasm-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let name = format!("bench-checkpoint-{}", std::process::id());
    let producer = BenchProducer::start(&name, args.size)?;
    let observer = Observer::attach(&name)?;
    let mut writer = Writer::create(&scratch.join("checkpoints"), PageSpace::of(&observer), WriterOptions::default())?;
    let mib_per_s = |bytes: u64, took: Duration| bytes as f64 / took.as_secs_f64() / (1 << 20) as f64;
    let (mut sequential, mut drain) = (Duration::ZERO, Duration::ZERO);
    let (mut drained, mut ratios) = (0, Vec::new());
    let (mut plain_rates, mut drain_rates) = (Vec::new(), Vec::new());
    // Round 0 warms up the file system (block allocation, page cache) for both and is not
    // counted: the first write to a fresh directory is often several times slower.
    for round in 0..=args.checkpoints {
        let plain = sequential_write(&scratch.join("sequential"), args.size)?;
        observer
            .wait_newer(writer.last().unwrap_or(0), Duration::from_secs(10))?
            .ok_or("the bench producer stopped publishing")?;
        let written = writer.write(&observer.latest()?, |_, _| {})?;
        let (s, d) = (mib_per_s(args.size as u64, plain), mib_per_s(written.bytes, written.elapsed));
        if round == 0 {
            println!("warm-up: sequential {s:.0} MiB/s, checkpoint {d:.0} MiB/s (not counted)");
            continue;
        }
        println!("round {round}: sequential {s:.0} MiB/s, checkpoint {d:.0} MiB/s");
        ratios.push(d / s);
        plain_rates.push(s);
        drain_rates.push(d);
        (sequential, drain, drained) = (sequential + plain, drain + written.elapsed, drained + written.bytes);
    }
    drop(writer);
    producer.stop()?;
    fs::remove_dir_all(&scratch)?;
    let (sequential, drain) = (mib_per_s(args.size as u64 * args.checkpoints, sequential), mib_per_s(drained, drain));
    let spread = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        format!("rounds {:.0} to {:.0} MiB/s", rates[0], rates[rates.len() - 1])
    };
    ratios.sort_by(f64::total_cmp);
    let size = HumanBytes(args.size as u64);
    println!(
        "sequential write: {sequential:.0} MiB/s ({}; {} of {size} in 8 MiB writes, each synced)",
        spread(&mut plain_rates),
        crate::plural(args.checkpoints, "file")
    );
    println!(
        "checkpoint drain: {drain:.0} MiB/s ({}; {} of {size}, each synced)",
        spread(&mut drain_rates),
        crate::plural(args.checkpoints, "checkpoint")
    );
    println!(
        "drain / sequential: {:.2} overall, {:.2} the median round (from {:.2} to {:.2})",
        drain / sequential,
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    if ratios[ratios.len() - 1] > 2.0 * ratios[0] {
        println!("the rounds disagree by more than 2x: the directory's bandwidth varies (page cache, other writers); run more --checkpoints");
    }
    Ok(())
}

/// How long writing `bytes` bytes to a new file at `path` in large writes, then fsync, takes:
/// the directory's sequential write bandwidth, with the same write-behind the checkpoint
/// writer uses, so that the ratio compares the checkpointer with the best a plain writer does.
fn sequential_write(path: &Path, bytes: usize) -> crate::Result<Duration> {
    let block = vec![0x5au8; 8 << 20];
    let started = Instant::now();
    let mut file = File::create(path)?;
    let mut behind = WriteBehind::new(0);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len());
        file.write_all(&block[..n])?;
        behind.wrote(&file, n as u64);
        left -= n;
    }
    file.sync_all()?;
    let took = started.elapsed();
    fs::remove_file(path)?;
    Ok(took)
}

/// A producer thread that rewrites every page of a `size`-byte region, publishes it and rests
/// 200 ms: every checkpoint finds a new version to write, and the bench measures the drain
/// rather than a race for the CPU with a producer spinning as fast as it can.
struct BenchProducer {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<Result<(), String>>,
}

impl BenchProducer {
    /// Starts it and waits for its first version.
    fn start(name: &str, size: usize) -> crate::Result<BenchProducer> {
        let (ready_tx, ready) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let name = name.to_string();
        let thread = thread::spawn(move || -> Result<(), String> {
            let mut p = Producer::create(&name, ProducerOptions::default()).map_err(|e| e.to_string())?;
            let mut field = p.region::<u64>("field", &[size / 8]).map_err(|e| e.to_string())?;
            let per_page = tcasm::page_size() / 8;
            let mut version = 0;
            while stopped.try_recv().is_err() {
                version += 1;
                field.iter_mut().step_by(per_page).for_each(|x| *x = version);
                p.publish().map_err(|e| e.to_string())?;
                if version == 1 {
                    let _ = ready_tx.send(());
                }
                thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        });
        match ready.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => Ok(BenchProducer { stop, thread }),
            // It ended without a first version: say why.
            Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
                Ok(Err(e)) => Err(format!("the bench producer failed: {e}").into()),
                _ => Err("the bench producer panicked".into()),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => Err("the bench producer published nothing in 60 s".into()),
        }
    }

    fn stop(self) -> crate::Result {
        let _ = self.stop.send(());
        self.thread.join().map_err(|_| "the bench producer panicked")??;
        Ok(())
    }
}
