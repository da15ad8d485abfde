//! Restart: finding the newest complete checkpoint across the levels (node-local first, then
//! the parallel file system) and loading it into a producer's own regions.
//!
//! The rules, as SCR and VeloC apply them: a checkpoint counts once its manifest is in place
//! (complete); the newest complete version in any directory wins, and when two levels hold
//! the same version the first directory listed (the faster level) is read. Before anything
//! is written into the producer's memory, every region is matched by name, element type and
//! shape, and every chunk the restore reads is checked; only then are the bytes copied in.
//! A copy of the version that fails its checks on one level is replaced by the same version
//! on another level; an older version is never taken silently in its place.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::global;
use super::reader::{Catalog, Restore};
use super::CheckpointError;
use crate::region::{Dtype, RegionInfo};

/// Why a checkpoint could not be loaded into a producer. Nothing was written into its
/// memory, except after [`RestartError::ChangedWhileRestoring`].
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{}: v{version} has no region {region:?} (it has {have}); restart with the regions the checkpointed run had, or start without the checkpoint",
            dir.display())]
    MissingRegion { dir: PathBuf, version: u64, region: String, have: String },
    #[error("{}: v{version} has a region {region:?} this producer does not: restart with the regions the checkpointed run had",
            dir.display())]
    ExtraRegion { dir: PathBuf, version: u64, region: String },
    #[error("{}: region {region:?} of v{version} holds {checkpoint}, this producer's holds {producer}", dir.display())]
    WrongType { dir: PathBuf, version: u64, region: String, checkpoint: Dtype, producer: Dtype },
    #[error("{}: region {region:?} of v{version} has shape {checkpoint:?}, this producer's has {producer:?}", dir.display())]
    WrongShape { dir: PathBuf, version: u64, region: String, checkpoint: Vec<usize>, producer: Vec<usize> },
    #[error("region {region:?}: its Region handle is alive but was not passed to restore(), which must borrow it while it writes the region")]
    HandleNotPassed { region: String },
    #[error("regions must be restored before the first publish()")]
    AfterFirstPublish,
    #[error("there is nothing to restore into: add the regions first")]
    NoRegions,
    #[error("{}: global checkpoint v{version} has no rank named {name:?} (it has {have}); restart with the job's producer names and size", dir.display())]
    NotInJob { dir: PathBuf, version: u64, name: String, have: String },
    #[error("{source}; the checkpoint changed on disk while it was restored: the regions hold part of it now, restore again")]
    ChangedWhileRestoring { source: CheckpointError },
}

/// The checkpoint a restart loaded.
#[derive(Clone, Debug)]
pub struct Restarted {
    pub version: u64,
    /// The checkpoint directory (level) it came from.
    pub dir: PathBuf,
    pub chain: u64,
    /// Checkpoints replayed, base first.
    pub replayed: Vec<u64>,
}

/// The complete checkpoints of the newest version found in any of `dirs`, one per directory
/// holding it, in the order of `dirs`. A directory that does not exist holds none (a first
/// run); one that cannot be read is an error.
fn newest_copies(dirs: &[&Path]) -> Result<Vec<(PathBuf, u64)>, CheckpointError> {
    let mut found: Vec<(PathBuf, u64)> = Vec::new();
    for dir in dirs {
        let catalog = match Catalog::open(dir) {
            Ok(c) => c,
            Err(CheckpointError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some((_, version)) = catalog.newest() {
            found.push((dir.to_path_buf(), version));
        }
    }
    let Some(newest) = found.iter().map(|(_, v)| *v).max() else { return Ok(Vec::new()) };
    found.retain(|(_, v)| *v == newest);
    Ok(found)
}

/// Opens the newest complete checkpoint in any of `dirs` whose every chunk a restore needs
/// checks out (`Ok(None)`: no checkpoint anywhere). Each chunk is read and checked here;
/// the caller reads them again to deliver them, from the page cache.
pub fn find_newest(dirs: &[&Path]) -> Result<Option<Restore>, CheckpointError> {
    let mut first_error = None;
    for (dir, version) in newest_copies(dirs)? {
        let checked = Restore::open(&dir, Some(version)).and_then(|r| r.read(|_, _| Ok(())).map(|()| r));
        match checked {
            Ok(r) => return Ok(Some(r)),
            Err(e) => {
                if first_error.is_some() {
                    tracing::warn!("{e}");
                }
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}

/// Opens checkpoint `version` (the newest complete one when `None`, as [`find_newest`]) from
/// the first of `dirs` where it is complete and intact, for tools that read a checkpoint
/// rather than restart from it. Errors name every directory tried.
pub fn open(dirs: &[&Path], version: Option<u64>) -> Result<Restore, CheckpointError> {
    let listed = || dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ");
    let Some(version) = version else {
        return find_newest(dirs)?.ok_or_else(|| CheckpointError::NoCheckpoint { dir: PathBuf::from(listed()) });
    };
    let mut first_error = None;
    for dir in dirs {
        match Restore::open(dir, Some(version)).and_then(|r| r.read(|_, _| Ok(())).map(|()| r)) {
            Ok(r) => return Ok(r),
            // A level that does not exist holds nothing: say what the others lack.
            Err(CheckpointError::Io { source, .. }) if source.kind() == ErrorKind::NotFound && !dir.exists() => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(CheckpointError::NoCheckpoint { dir: PathBuf::from(listed()) }))
}

/// Checks that `restore`'s regions are `regions` (by name, element type and shape; their
/// placement in pages may differ), and returns for each of `regions` the index of the
/// checkpoint's region of that name.
pub fn match_regions(restore: &Restore, regions: &[RegionInfo]) -> Result<Vec<usize>, RestartError> {
    let m = restore.manifest();
    let dir = restore.chain_dir().to_path_buf();
    let theirs = &m.space.regions;
    let mut index = Vec::with_capacity(regions.len());
    for r in regions {
        let Some(i) = theirs.iter().position(|t| t.name == r.name) else {
            let have = theirs.iter().map(|t| format!("{:?}", t.name)).collect::<Vec<_>>().join(", ");
            return Err(RestartError::MissingRegion { dir, version: m.version, region: r.name.clone(), have });
        };
        let t = &theirs[i];
        if t.dtype != r.dtype {
            return Err(RestartError::WrongType {
                dir,
                version: m.version,
                region: r.name.clone(),
                checkpoint: t.dtype,
                producer: r.dtype,
            });
        }
        if t.shape != r.shape {
            return Err(RestartError::WrongShape {
                dir,
                version: m.version,
                region: r.name.clone(),
                checkpoint: t.shape.clone(),
                producer: r.shape.clone(),
            });
        }
        index.push(i);
    }
    if let Some(extra) = theirs.iter().find(|t| !regions.iter().any(|r| r.name == t.name)) {
        return Err(RestartError::ExtraRegion { dir, version: m.version, region: extra.name.clone() });
    }
    Ok(index)
}

/// Loads the newest complete checkpoint in `dirs` into `regions`: `write(region, at, bytes)`
/// is called to put `bytes` at byte `at` of region number `region` (an index into
/// `regions`), covering every byte of every region once. Nothing is written unless every
/// region matches and every chunk read checks out. `Ok(None)`: there is no checkpoint.
pub fn load(
    dirs: &[&Path],
    regions: &[RegionInfo],
    write: impl FnMut(usize, usize, &[u8]),
) -> Result<Option<Restarted>, RestartError> {
    if regions.is_empty() {
        return Err(RestartError::NoRegions);
    }
    let Some(restore) = find_newest(dirs)? else { return Ok(None) };
    load_from(restore, regions, write)
}

/// [`load`] for rank `name` of an MPI job: loads the rank's part of the newest global
/// checkpoint found in `dirs` ([`global`]), from the rank's directory of the first level
/// holding that very checkpoint intact (node-local first). Every rank of the job finds the
/// same global version, so ranks never mix versions; a rank's own newer checkpoints are
/// ignored. `Ok(None)`: no global checkpoint anywhere (a first run).
pub fn load_job(
    dirs: &[&Path],
    name: &str,
    regions: &[RegionInfo],
    write: impl FnMut(usize, usize, &[u8]),
) -> Result<Option<Restarted>, RestartError> {
    if regions.is_empty() {
        return Err(RestartError::NoRegions);
    }
    let Some((gdir, g)) = global::newest(dirs)? else { return Ok(None) };
    let Some(part) = g.ranks.iter().find(|p| p.producer == name) else {
        let have = g.ranks.iter().map(|p| p.producer.as_str()).collect::<Vec<_>>().join(", ");
        return Err(RestartError::NotInJob { dir: gdir.to_path_buf(), version: g.version, name: name.into(), have });
    };
    let mut first_error = None;
    for dir in dirs {
        let rank_dir = global::rank_dir(dir, name);
        // On the level holding the global manifest, the very chain it names; elsewhere the
        // copy flushed from (the same chunks).
        let named = *dir == gdir;
        let opened = match named {
            true => Restore::open_in_chain(&rank_dir, part.chain, g.version),
            false => Restore::open(&rank_dir, Some(g.version)),
        };
        let checked = opened.and_then(|r| r.read(|_, _| Ok(())).map(|()| r));
        match checked {
            Ok(r)
                if if named {
                    global::part_present(gdir, part, g.version)
                } else {
                    global::same_checkpoint(&r, gdir, part, g.version)
                } =>
            {
                return load_from(r, regions, write)
            }
            Ok(r) => tracing::warn!(
                "{}: v{} is not the checkpoint global v{} names; reading another level",
                r.chain_dir().display(),
                g.version,
                g.version
            ),
            Err(CheckpointError::Io { source, .. }) if source.kind() == ErrorKind::NotFound && !rank_dir.exists() => {}
            Err(e) => {
                tracing::warn!("{e}");
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(CheckpointError::NoCheckpoint { dir: global::rank_dir(gdir, name) }).into())
}

/// Loads the checkpoint `restore` opened into `regions` (see [`load`]).
fn load_from(
    restore: Restore,
    regions: &[RegionInfo],
    mut write: impl FnMut(usize, usize, &[u8]),
) -> Result<Option<Restarted>, RestartError> {
    let index = match_regions(&restore, regions)?;
    let m = restore.manifest();
    let page = m.space.page_size;
    // Where each of our regions' bytes lie in the checkpoint's page space.
    let spans: Vec<(usize, usize)> = index
        .iter()
        .map(|&i| {
            let t = &m.space.regions[i];
            (t.first_page * page + t.offset, t.bytes())
        })
        .collect();
    restore
        .read(|first_page, bytes| {
            let at = first_page * page;
            for (r, &(start, len)) in spans.iter().enumerate() {
                let (lo, hi) = (start.max(at), (start + len).min(at + bytes.len()));
                if lo < hi {
                    write(r, lo - start, &bytes[lo - at..hi - at]);
                }
            }
            Ok(())
        })
        .map_err(|source| RestartError::ChangedWhileRestoring { source })?;
    let dir = restore.chain_dir().parent().unwrap_or(restore.chain_dir()).to_path_buf();
    Ok(Some(Restarted { version: m.version, dir, chain: m.chain, replayed: restore.replayed() }))
}

/// Splits a colon-separated list of directories (`LOCAL:PERSISTENT`, level 1 first), as the
/// C API and `tcasm restore --from` take them.
pub fn split_dirs(list: &str) -> Vec<PathBuf> {
    list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect()
}
