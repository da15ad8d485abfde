//! Writing checkpoints: a base holding every page, then increments holding the pages changed
//! since the previous checkpoint, each made durable before its manifest appears.
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

use super::format::{self, chunk_pages, Chunk, Link, Manifest, Name, CHUNK_BYTES, DATA_HEADER};
use super::reader::Catalog;
use super::{CheckpointError, PageSource, PageSpace};
use crate::sys::lock;

/// How a writer chains and retires checkpoints.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterOptions {
    /// Start a new base after this many checkpoints in a chain (`None`: one chain per writer).
    pub full_every: Option<u64>,
    /// Keep this many chains with a complete base (at least the current one); older chains
    /// are removed.
    pub keep: Option<usize>,
    /// Keep the newest chains with a complete base whose files fit in this many bytes (at
    /// least the current one); older chains are removed. With `keep`, the stricter wins.
    pub keep_bytes: Option<u64>,
}

/// What one checkpoint wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub chain: u64,
    pub version: u64,
    /// The version it is an increment of (`None`: a base).
    pub parent: Option<u64>,
    pub pages: usize,
    pub chunks: usize,
    /// Bytes of pages written.
    pub bytes: u64,
    /// From the call to the manifest being durable.
    pub elapsed: Duration,
    /// Chains removed after this checkpoint.
    pub retired: Vec<u64>,
}

/// The chain being extended.
struct Chain {
    number: u64,
    dir: PathBuf,
    base: u64,
    last: Link,
    checkpoints: u64,
}

/// Writes the checkpoints of one page space into a directory it holds exclusively.
pub struct Writer {
    dir: PathBuf,
    space: PageSpace,
    options: WriterOptions,
    chain: Option<Chain>,
    /// Holds the directory's OFD lock for the writer's life.
    _lock: File,
}

impl Writer {
    /// Takes the directory `dir` (creating it) for checkpoints of `space`. The first
    /// checkpoint starts a new chain.
    pub fn create(dir: &Path, space: PageSpace, options: WriterOptions) -> Result<Writer, CheckpointError> {
        super::refuse_non_directory(dir)?;
        fs::create_dir_all(dir).map_err(CheckpointError::io("creating", dir))?;
        let lock = take_dir(dir)?;
        Ok(Writer { dir: dir.to_path_buf(), space, options, chain: None, _lock: lock })
    }

    /// Makes the next checkpoint a new base, in a new chain.
    pub fn start_new_chain(&mut self) {
        self.chain = None;
    }

    /// The version checkpointed last, if any.
    pub fn last(&self) -> Option<u64> {
        self.chain.as_ref().map(|c| c.last.version)
    }

    /// The chain the next checkpoint extends (`None`: it starts a new one with a base).
    fn extending(&self) -> Option<&Chain> {
        let full_every = self.options.full_every;
        self.chain.as_ref().filter(|c| full_every.is_none_or(|k| c.checkpoints < k))
    }

    /// Bytes of pages that [`Writer::write`] of `source` would write now: the pages changed
    /// since the last checkpoint, or every page when it would start a new base. For pacing a
    /// writer to a bandwidth budget before it writes.
    pub fn bytes_to_write(&self, source: &impl PageSource) -> u64 {
        let pages = match self.extending() {
            Some(c) => source.changed_since(c.last.version).iter().map(|r| r.len()).sum(),
            None => self.space.page_count,
        };
        (pages * self.space.page_size) as u64
    }

    /// Checkpoints `source`: as an increment of the last checkpoint, or as a new base when
    /// there is none or the chain is full. `progress(done, total)` is called with bytes of
    /// pages as they are written. On error nothing is left that a reader would take for a
    /// checkpoint (unless only the final directory sync failed), and the next call starts
    /// from the same parent.
    pub fn write(
        &mut self,
        source: &impl PageSource,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Written, CheckpointError> {
        let started = Instant::now();
        let version = source.version();
        if let Some(c) = &self.chain {
            if version <= c.last.version {
                return Err(CheckpointError::NotNewer { version, last: c.last.version });
            }
        }
        let extend = self.extending();
        let (number, dir, base, parent, changed, checkpoints) = match extend {
            Some(c) => {
                (c.number, c.dir.clone(), c.base, Some(c.last), source.changed_since(c.last.version), c.checkpoints + 1)
            }
            None => {
                let (number, dir) = self.new_chain()?;
                let every_page = 0..self.space.page_count;
                (number, dir, version, None, vec![every_page], 1)
            }
        };
        let mut manifest =
            Manifest { chain: number, version, base, parent, space: self.space.clone(), chunks: Vec::new() };
        let checksum = match write_checkpoint(&dir, &mut manifest, &changed, source, &mut progress) {
            Ok(sum) => sum,
            Err(e) if format::manifest_path(&dir, version).exists() => {
                // Only the last directory sync failed: readers see a complete checkpoint,
                // whose files must stay. The next checkpoint is written on the old parent.
                return Err(e);
            }
            Err(e) => {
                // Best effort: the caller hears of `e`, and readers ignore what is left anyway.
                if parent.is_none() {
                    let _ = fs::remove_dir_all(&dir);
                } else {
                    let _ = fs::remove_file(format::data_path(&dir, version));
                    let _ = fs::remove_file(format::temp_manifest_path(&dir, version));
                }
                return Err(e);
            }
        };
        self.chain = Some(Chain { number, dir, base, last: Link { version, checksum }, checkpoints });
        let by_size = match self.options.keep_bytes {
            Some(bytes) if parent.is_none() => Some(chains_within(&self.dir, bytes)?),
            _ => None,
        };
        let retired = match (parent, self.options.keep.into_iter().chain(by_size).min()) {
            (None, Some(keep)) => self.retire(keep)?,
            _ => Vec::new(),
        };
        let pages = manifest.chunks.iter().map(|c| c.pages).sum::<usize>();
        Ok(Written {
            chain: number,
            version,
            parent: parent.map(|l| l.version),
            pages,
            chunks: manifest.chunks.len(),
            bytes: (pages * self.space.page_size) as u64,
            elapsed: started.elapsed(),
            retired,
        })
    }

    /// Creates the directory of a chain numbered after every chain present or retiring.
    fn new_chain(&self) -> Result<(u64, PathBuf), CheckpointError> {
        new_chain(&self.dir)
    }

    /// Removes every chain older than the `keep` newest chains with a complete base.
    fn retire(&self, keep: usize) -> Result<Vec<u64>, CheckpointError> {
        retire(&self.dir, keep)
    }
}

/// Takes checkpoint directory `dir` for one writer: its `.lock` is OFD-locked for as long as
/// the returned file is open (the kernel releases it when the process dies). Finishes what
/// a writer killed while retiring chains left.
pub(super) fn take_dir(dir: &Path) -> Result<File, CheckpointError> {
    let lock_path = dir.join(".lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(CheckpointError::io("opening", &lock_path))?;
    match lock::try_lock(&lock_file, 0, 0) {
        Ok(true) => {}
        Ok(false) => return Err(CheckpointError::Busy { dir: dir.to_path_buf() }),
        Err(e) => return Err(CheckpointError::io("locking", &lock_path)(e.into())),
    }
    for entry in fs::read_dir(dir).map_err(CheckpointError::io("listing", dir))? {
        let entry = entry.map_err(CheckpointError::io("listing", dir))?;
        if let Some(Name::Retired(_)) = entry.file_name().to_str().and_then(Name::parse) {
            fs::remove_dir_all(entry.path()).map_err(CheckpointError::io("removing", entry.path()))?;
        }
    }
    Ok(lock_file)
}

/// Creates, in checkpoint directory `dir`, the directory of a chain numbered after every
/// chain present or retiring.
pub(super) fn new_chain(dir: &Path) -> Result<(u64, PathBuf), CheckpointError> {
    let mut number = Catalog::highest_chain(dir)? + 1;
    loop {
        let chain = format::chain_dir(dir, number);
        match fs::create_dir(&chain) {
            Ok(()) => {
                sync_dir(dir)?;
                return Ok((number, chain));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => number += 1,
            Err(e) => return Err(CheckpointError::io("creating", chain)(e)),
        }
    }
}

/// How many of the newest chains of `dir` with a complete base fit in `bytes` (at least one).
fn chains_within(dir: &Path, bytes: u64) -> Result<usize, CheckpointError> {
    let catalog = Catalog::open(dir)?;
    let (mut total, mut fit) = (0, 0);
    for chain in catalog.chains.iter().rev().filter(|c| catalog.has_base(c)) {
        total += super::directory_bytes(&chain.dir)?;
        if fit > 0 && total > bytes {
            break;
        }
        fit += 1;
    }
    Ok(fit.max(1))
}

/// Removes every chain of `dir` older than the `keep` newest chains with a complete base.
/// Each is first renamed out of readers' sight, so a crash never leaves half a chain visible.
pub(super) fn retire(dir: &Path, keep: usize) -> Result<Vec<u64>, CheckpointError> {
    let catalog = Catalog::open(dir)?;
    let mut based = catalog.chains.iter().rev().filter(|c| catalog.has_base(c));
    let Some(oldest_kept) = based.nth(keep.max(1) - 1).map(|c| c.number) else {
        return Ok(Vec::new());
    };
    let old: Vec<u64> = catalog.chains.iter().map(|c| c.number).filter(|&n| n < oldest_kept).collect();
    for &n in &old {
        let from = format::chain_dir(dir, n);
        fs::rename(&from, format::retired_dir(dir, n)).map_err(CheckpointError::io("retiring", from))?;
    }
    sync_dir(dir)?;
    for &n in &old {
        let retired = format::retired_dir(dir, n);
        fs::remove_dir_all(&retired).map_err(CheckpointError::io("removing", retired))?;
    }
    Ok(old)
}

/// Writes the data file of `manifest` from the pages of `changed`, then the manifest; returns
/// the manifest's checksum. The order of writes and syncs is what makes a checkpoint
/// complete exactly when its manifest exists (module docs).
/// Keeps the disk busy while a file is written: every CHUNK_BYTES written are advised
/// DONTNEED, which makes Linux start writing them back at once (sync_file_range without the
/// unsafe), so the final sync waits for the last chunk rather than the whole file. Advice
/// only: its failure costs speed, not data.
pub struct WriteBehind {
    /// Where in the file the counted bytes start.
    base: u64,
    done: u64,
    kicked: u64,
}

impl WriteBehind {
    pub fn new(base: u64) -> WriteBehind {
        WriteBehind { base, done: 0, kicked: 0 }
    }

    /// `bytes` more were written to `file`, after the ones counted so far.
    pub fn wrote(&mut self, file: &File, bytes: u64) {
        self.done += bytes;
        if self.done - self.kicked >= CHUNK_BYTES as u64 {
            let at = (self.base + self.kicked) as i64;
            let _ = posix_fadvise(file, at, (self.done - self.kicked) as i64, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
            self.kicked = self.done;
        }
    }
}

fn write_checkpoint(
    dir: &Path,
    manifest: &mut Manifest,
    changed: &[Range<usize>],
    source: &impl PageSource,
    progress: &mut impl FnMut(u64, u64),
) -> Result<u32, CheckpointError> {
    let page_size = manifest.space.page_size;
    let data_path = format::data_path(dir, manifest.version);
    let io = |what| CheckpointError::io(what, &data_path);
    let mut data = File::create(&data_path).map_err(io("creating"))?;
    data.write_all(&format::data_header(manifest)).map_err(io("writing"))?;
    let total = changed.iter().map(|r| r.len() * page_size).sum::<usize>() as u64;
    let mut done = 0;
    let mut behind = WriteBehind::new(DATA_HEADER as u64);
    let most = chunk_pages(page_size);
    for range in changed {
        for start in range.clone().step_by(most) {
            let pages: Vec<&[u8]> = (start..range.end.min(start + most)).map(|p| source.page(p)).collect();
            let mut sum = crc32fast::Hasher::new();
            pages.iter().for_each(|p| sum.update(p));
            let mut slices: Vec<IoSlice> = pages.iter().map(|p| IoSlice::new(p)).collect();
            write_all_vectored(&mut data, &mut slices).map_err(io("writing"))?;
            manifest.chunks.push(Chunk { first_page: start, pages: pages.len(), checksum: sum.finalize() });
            done += (pages.len() * page_size) as u64;
            behind.wrote(&data, (pages.len() * page_size) as u64);
            progress(done, total);
        }
    }
    data.sync_data().map_err(io("syncing"))?;
    sync_dir(dir)?;
    commit_manifest(dir, manifest)
}

/// Makes checkpoint `manifest`, whose data file in chain directory `dir` is durable, complete:
/// writes its manifest under a temporary name, syncs it, renames it and syncs the directory.
/// Returns the manifest's checksum.
pub(super) fn commit_manifest(dir: &Path, manifest: &Manifest) -> Result<u32, CheckpointError> {
    let bytes = manifest.encode();
    let temp = format::temp_manifest_path(dir, manifest.version);
    write_durably(dir, &temp, &format::manifest_path(dir, manifest.version), &bytes)?;
    Ok(format::manifest_checksum(&bytes))
}

/// Writes `bytes` to `path` in directory `dir` all or nothing: to `temp` (in `dir`) first,
/// synced, renamed to `path`, and the directory synced.
pub(super) fn write_durably(dir: &Path, temp: &Path, path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = File::create(temp).map_err(CheckpointError::io("creating", temp))?;
    file.write_all(bytes).map_err(CheckpointError::io("writing", temp))?;
    file.sync_all().map_err(CheckpointError::io("syncing", temp))?;
    fs::rename(temp, path).map_err(CheckpointError::io("renaming to", path))?;
    sync_dir(dir)
}

/// `write_all` for scattered pages, without copying them into one buffer.
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the entries of directory `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(CheckpointError::io("syncing", dir))
}
