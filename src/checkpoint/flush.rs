//! The second level: copying complete checkpoints from a node-local directory (level 1: a
//! burst buffer, /dev/shm, NVMe) to a persistent one (level 2: the parallel file system),
//! in the same format, crash-consistent on both.
//!
//! A flush of local checkpoint v copies, into a chain of the persistent directory, every
//! checkpoint of v's local chain from the base up to v that is not there yet: a base and its
//! increments travel together, so a flushed chain restores on its own. Each local chain gets
//! a chain of its own on the persistent side (numbered there, after every chain it already
//! holds, so that checkpointers on other nodes or earlier runs never collide); its manifests
//! are re-encoded with that number and with links to the persistent copies of their parents,
//! while the chunks are copied byte for byte, each checked against its checksum on the way
//! (a damaged local chunk is never laundered into a valid-looking copy).
//!
//! The order of writes is the writer's: data file, sync, directory sync, then the manifest
//! under a temporary name, sync, rename, directory sync. A flusher killed at any moment
//! leaves at worst a data file without a manifest, which readers ignore; the persistent
//! directory always restores to the last checkpoint flushed completely.
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::format::{self, Link, Manifest};
use super::reader::{check_link, load_manifest, DataFile};
use super::writer::{self, WriteBehind};
use super::CheckpointError;

/// What one flush copied.
#[derive(Clone, Debug)]
pub struct Flushed {
    /// The local checkpoint flushed, and its chain there.
    pub version: u64,
    pub local_chain: u64,
    /// The chain it is in on the persistent side.
    pub chain: u64,
    /// Checkpoints copied (the base and increments not flushed before), ascending.
    pub copied: Vec<u64>,
    /// Bytes of data files written.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Persistent chains removed after it (`keep_flushed`).
    pub retired: Vec<u64>,
}

/// A local chain's copy on the persistent side, as far as it is flushed.
struct Mirror {
    chain: u64,
    dir: PathBuf,
    /// The last checkpoint flushed: its version and its persistent manifest's checksum.
    last: Option<Link>,
}

/// Copies checkpoints from `local` into the persistent directory, which it holds exclusively.
pub struct Flusher {
    local: PathBuf,
    persistent: PathBuf,
    keep: Option<usize>,
    mirrors: HashMap<u64, Mirror>,
    _lock: File,
}

impl Flusher {
    /// Takes the persistent directory `persistent` (which must exist: it is the parallel
    /// file system's, not ours to create) for flushes from `local`. `keep` persistent chains
    /// with a complete base are kept; older ones are removed once a newer base is flushed.
    pub fn create(local: &Path, persistent: &Path, keep: Option<usize>) -> Result<Flusher, CheckpointError> {
        match std::fs::metadata(persistent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CheckpointError::BadOutput {
                    dir: persistent.to_path_buf(),
                    what: "is not a directory".into(),
                })
            }
            Err(e) => {
                return Err(CheckpointError::BadOutput {
                    dir: persistent.to_path_buf(),
                    what: format!("cannot be used for flushing ({e}); create it on the persistent file system first"),
                })
            }
        }
        if same_dir(local, persistent) {
            return Err(CheckpointError::BadOutput {
                dir: persistent.to_path_buf(),
                what: "is the local directory itself".into(),
            });
        }
        let lock = writer::take_dir(persistent)?;
        Ok(Flusher {
            local: local.to_path_buf(),
            persistent: persistent.to_path_buf(),
            keep,
            mirrors: HashMap::new(),
            _lock: lock,
        })
    }

    pub fn persistent(&self) -> &Path {
        &self.persistent
    }

    /// Flushes local checkpoint `version` of local chain `chain` (and the checkpoints of its
    /// chain before it that are not flushed yet). `progress(done, total)` is called with
    /// bytes of data as they are copied. On error, what was flushed before stays complete,
    /// and the next flush of this chain continues from it.
    pub fn flush(
        &mut self,
        chain: u64,
        version: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Flushed, CheckpointError> {
        let started = Instant::now();
        let local_dir = format::chain_dir(&self.local, chain);
        let path = local_path(&local_dir, chain, version)?;
        let mirror = match self.mirrors.get(&chain) {
            // Still the chain it was: its flushed part is a prefix of `path`.
            Some(m) if m.last.is_none_or(|l| path.iter().any(|(p, _)| p.version == l.version)) => {
                self.mirrors.get_mut(&chain).expect("present")
            }
            _ => {
                let (number, dir) = writer::new_chain(&self.persistent)?;
                self.mirrors.insert(chain, Mirror { chain: number, dir, last: None });
                self.mirrors.get_mut(&chain).expect("just inserted")
            }
        };
        let todo: Vec<&(Manifest, DataFile)> = match mirror.last {
            Some(l) => path.iter().skip_while(|(m, _)| m.version <= l.version).collect(),
            None => path.iter().collect(),
        };
        let total: u64 = todo.iter().map(|(m, _)| m.data_len()).sum();
        let mut done = 0;
        let mut copied = Vec::new();
        for (m, data) in todo {
            let mut out = m.clone();
            out.chain = mirror.chain;
            out.parent = m.parent.map(|l| Link {
                version: l.version,
                checksum: mirror.last.expect("a parent is flushed before its child").checksum,
            });
            copy_data(data, &out, &mirror.dir, |n| {
                done += n;
                progress(done, total);
            })?;
            let checksum = writer::commit_manifest(&mirror.dir, &out)?;
            mirror.last = Some(Link { version: m.version, checksum });
            copied.push(m.version);
        }
        let persistent_chain = mirror.chain;
        let retired = match (copied.first().copied() == path.first().map(|(m, _)| m.version), self.keep) {
            (true, Some(keep)) => writer::retire(&self.persistent, keep)?,
            _ => Vec::new(),
        };
        Ok(Flushed {
            version,
            local_chain: chain,
            chain: persistent_chain,
            copied,
            bytes: done,
            elapsed: started.elapsed(),
            retired,
        })
    }
}

/// The checkpoints of local chain directory `dir` from its base to `version`, manifests and
/// links checked, each with its data file opened (so that a chain retired locally meanwhile
/// still reads to the end).
fn local_path(dir: &Path, chain: u64, version: u64) -> Result<Vec<(Manifest, DataFile)>, CheckpointError> {
    let (mut manifest, _) = load_manifest(dir, chain, version)?;
    let mut path = Vec::new();
    while let Some(link) = manifest.parent {
        let (parent, checksum) = load_manifest(dir, chain, link.version)?;
        check_link(dir, &manifest, &parent, checksum)?;
        let data = DataFile::open(dir, &manifest)?;
        path.push((std::mem::replace(&mut manifest, parent), data));
    }
    let data = DataFile::open(dir, &manifest)?;
    path.push((manifest, data));
    path.reverse();
    Ok(path)
}

/// Copies the chunks of `data` into the data file of `out` in chain directory `dir`, each
/// checked on the way, and makes it durable. `copied(bytes)` after each chunk.
fn copy_data(data: &DataFile, out: &Manifest, dir: &Path, mut copied: impl FnMut(u64)) -> Result<(), CheckpointError> {
    let path = format::data_path(dir, out.version);
    let io = |what| CheckpointError::io(what, &path);
    let mut file = File::create(&path).map_err(io("creating"))?;
    file.write_all(&format::data_header(out)).map_err(io("writing"))?;
    let mut behind = WriteBehind::new(format::DATA_HEADER as u64);
    let mut buf = Vec::new();
    for (index, (offset, chunk)) in out.chunk_offsets().enumerate() {
        data.read_chunk(index, offset, chunk, out.space.page_size, &mut buf)?;
        file.write_all(&buf).map_err(io("writing"))?;
        behind.wrote(&file, buf.len() as u64);
        copied(buf.len() as u64);
    }
    file.sync_data().map_err(io("syncing"))?;
    writer::sync_dir(dir)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
