//! `tcasm bench restart`: a restart (`Producer::restore`) against a plain read of the same
//! files, and a flush to the second level against `cp -r` + `sync`.
use std::fs::{self, File};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::HumanBytes;
use tcasm::checkpoint::{self, Flusher, PageSpace, Writer, WriterOptions};

use tcasm::{Observer, Producer, ProducerOptions};

#[derive(clap::Args)]
pub struct RestartBenchArgs {
    /// The directory to measure in (a scratch directory is made inside and removed).
    #[arg(long)]
    dir: PathBuf,
    /// Size of the producer's region.
    #[arg(long, default_value = "32MiB", value_parser = crate::parse_size)]
    size: usize,
}

/// Restart and flush against plain file tools, in the same run and on the same files: a
/// producer of `size` bytes is checkpointed (a base and an increment of a tenth of its
/// pages); then a new producer restores it (`Producer::restore`, every chunk checked twice)
/// against reading the same data files into memory, and the chain is flushed to a second
/// directory (`Flusher`, synced) against `cp -r` of the same files followed by `sync` of
/// them. Files are evicted from the page cache before each read (advice on our own files).
pub fn bench_restart(args: RestartBenchArgs) -> crate::Result {
    let scratch = args.dir.join(format!("tcasm-bench-restart-{}", std::process::id()));
    let (local, persistent, copied) = (scratch.join("local"), scratch.join("persistent"), scratch.join("cp"));
    fs::create_dir_all(&persistent)?;
    let name = format!("bench-restart-{}", std::process::id());
    let words = args.size / 8;
    {
        let mut p = Producer::create(&name, ProducerOptions::default())?;
        let mut field = p.region::<u64>("field", &[words])?;
        field.iter_mut().enumerate().for_each(|(i, x)| *x = i as u64);
        p.publish()?;
        let observer = Observer::attach(&name)?;
        let mut writer = Writer::create(&local, PageSpace::of(&observer), WriterOptions::default())?;
        writer.write(&observer.latest()?, |_, _| {})?;
        let per_page = tcasm::page_size() / 8;
        field.iter_mut().step_by(per_page * 10).for_each(|x| *x = !*x);
        p.publish()?;
        writer.write(&observer.latest()?, |_, _| {})?;
    }
    let data_files = || -> crate::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for chain in checkpoint::Catalog::open(&local)?.chains {
            for entry in fs::read_dir(&chain.dir)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "data") {
                    files.push(path);
                }
            }
        }
        Ok(files)
    };
    let evict = |files: &[PathBuf]| {
        for f in files {
            if let Ok(file) = File::open(f) {
                let _ = nix::fcntl::posix_fadvise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
            }
        }
    };
    let files = data_files()?;
    let bytes: u64 = files.iter().map(|f| fs::metadata(f).map_or(0, |m| m.len())).sum();

    evict(&files);
    let started = Instant::now();
    let mut read_back = 0;
    for f in &files {
        read_back += fs::read(f)?.len() as u64;
    }
    let plain_read = started.elapsed();

    evict(&files);
    let mut p = Producer::create(&format!("{name}-restarted"), ProducerOptions::default())?;
    let mut field = p.region::<u64>("field", &[words])?;
    let started = Instant::now();
    let restarted = p.restore(&[&local], &mut [&mut field])?.ok_or("the checkpoint written just now is not there")?;
    let restore = started.elapsed();
    let per_page = tcasm::page_size() / 8;
    let intact =
        field.iter().enumerate().all(|(i, &x)| if i % (per_page * 10) == 0 { x == !(i as u64) } else { x == i as u64 });
    if !intact {
        return Err("the restored region differs from what was checkpointed".into());
    }
    drop(field);
    drop(p);

    evict(&files);
    let mut flusher = Flusher::create(&local, &persistent, None)?;
    let catalog = checkpoint::Catalog::open(&local)?;
    let (chain, version) = catalog.newest().ok_or("no checkpoint")?;
    let chain_dir = catalog.chains.iter().find(|c| c.number == chain).map(|c| c.dir.clone()).ok_or("no chain")?;
    let flushed = flusher.flush(chain, version, |_, _| {})?;
    drop(flusher);

    evict(&files);
    let started = Instant::now();
    let status = std::process::Command::new("cp").arg("-r").arg(&chain_dir).arg(&copied).status()?;
    if !status.success() {
        return Err(format!("cp failed: {status}").into());
    }
    let synced: Vec<PathBuf> = fs::read_dir(&copied)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    let status = std::process::Command::new("sync").args(&synced).arg(&copied).status()?;
    if !status.success() {
        return Err(format!("sync failed: {status}").into());
    }
    let plain_copy = started.elapsed();
    fs::remove_dir_all(&scratch)?;

    let rate = |b: u64, d: Duration| HumanBytes((b as f64 / d.as_secs_f64().max(1e-9)) as u64);
    println!(
        "checkpoint of {} (v{}: a base and an increment, {} of data files)",
        HumanBytes(args.size as u64),
        restarted.version,
        HumanBytes(bytes)
    );
    println!("restart (Producer::restore): {:.1} ms ({}/s)", restore.as_secs_f64() * 1e3, rate(bytes, restore));
    println!(
        "plain read of the same files: {:.1} ms ({}/s, {} read)",
        plain_read.as_secs_f64() * 1e3,
        rate(read_back, plain_read),
        HumanBytes(read_back)
    );
    println!("ratio restart / plain read: {:.2}", restore.as_secs_f64() / plain_read.as_secs_f64());
    println!(
        "flush (Flusher, synced): {:.1} ms ({}/s)",
        flushed.elapsed.as_secs_f64() * 1e3,
        rate(flushed.bytes, flushed.elapsed)
    );
    println!(
        "cp -r + sync of the same files: {:.1} ms ({}/s)",
        plain_copy.as_secs_f64() * 1e3,
        rate(bytes, plain_copy)
    );
    println!("ratio flush rate / cp rate: {:.2}", plain_copy.as_secs_f64() / flushed.elapsed.as_secs_f64());
    Ok(())
}
