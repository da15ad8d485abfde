//! Checking a whole checkpoint directory: every manifest, every chunk of every data file and
//! every chain link, naming each damaged file or chunk and the checkpoints it makes
//! unrestorable.
//!
//! What a problem costs is what [`super::Restore`] would hit: a damaged manifest, data file
//! or link costs its checkpoint and every later one written on it; a damaged chunk costs
//! only the checkpoints that still take a page from it (later increments may have rewritten
//! all of its pages).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::format::{self, Manifest};
use super::reader::{check_link, load_manifest, Catalog, DataFile};
use super::CheckpointError;

/// One problem found, and what it costs.
#[derive(Debug)]
pub struct Damage {
    pub chain: u64,
    /// The checkpoint the damaged file or link belongs to.
    pub version: u64,
    pub error: CheckpointError,
    /// The checkpoints of the chain that cannot be restored because of it, ascending.
    pub unrestorable: Vec<u64>,
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Complete checkpoints that restore, as (chain, version).
    pub restorable: Vec<(u64, u64)>,
    pub damage: Vec<Damage>,
    /// Files of checkpoints that never completed: not damage, never restored.
    pub incomplete: Vec<PathBuf>,
    pub chunks_checked: usize,
    pub bytes_checked: u64,
}

impl VerifyReport {
    /// Whether every complete checkpoint is intact.
    pub fn intact(&self) -> bool {
        self.damage.is_empty()
    }
}

/// The complete checkpoints of a chain by version, with manifest and its checksum when the
/// manifest could be read.
type Loaded = BTreeMap<u64, Option<(Manifest, u32)>>;

/// Whether checkpoint `m` holds page `page` (its chunks are ascending and disjoint).
fn holds(m: &Manifest, page: usize) -> bool {
    let i = m.chunks.partition_point(|c| c.page_range().end <= page);
    m.chunks.get(i).is_some_and(|c| c.page_range().contains(&page))
}

/// Reads and checks every complete checkpoint in `dir`. Fails only when `dir` cannot be listed;
/// everything else is reported.
pub fn verify(dir: &Path) -> Result<VerifyReport, CheckpointError> {
    let catalog = Catalog::open(dir)?;
    let mut report = VerifyReport::default();
    let mut buf = Vec::new();
    for chain in &catalog.chains {
        report.incomplete.extend(chain.incomplete.iter().cloned());
        let mut loaded = Loaded::new();
        let mut found: Vec<(u64, CheckpointError)> = Vec::new();
        for &v in &chain.complete {
            let (manifest, sum) = match load_manifest(&chain.dir, chain.number, v) {
                Ok(m) => m,
                Err(e) => {
                    found.push((v, e));
                    loaded.insert(v, None);
                    continue;
                }
            };
            match DataFile::open(&chain.dir, &manifest) {
                Err(e) => found.push((v, e)),
                Ok(data) => {
                    for (index, (offset, chunk)) in manifest.chunk_offsets().enumerate() {
                        match data.read_chunk(index, offset, chunk, manifest.space.page_size, &mut buf) {
                            Ok(()) => {
                                report.chunks_checked += 1;
                                report.bytes_checked += buf.len() as u64;
                            }
                            Err(e) => found.push((v, e)),
                        }
                    }
                }
            }
            if let Some(link) = manifest.parent {
                if chain.complete.binary_search(&link.version).is_err() {
                    let (chain, version, file) = (chain.number, link.version, format::manifest_path(&chain.dir, link.version));
                    found.push((v, if version == manifest.base {
                        CheckpointError::MissingBase { chain, version, file }
                    } else {
                        CheckpointError::MissingManifest { chain, version, file }
                    }));
                } else if let Some(Some((parent, parent_sum))) = loaded.get(&link.version) {
                    if let Err(e) = check_link(&chain.dir, &manifest, parent, *parent_sum) {
                        found.push((v, e));
                    }
                }
            }
            loaded.insert(v, Some((manifest, sum)));
        }
        let mut lost = BTreeSet::new();
        for (version, error) in found {
            let unrestorable = unrestorable(&loaded, version, &error);
            lost.extend(unrestorable.iter().copied());
            report.damage.push(Damage { chain: chain.number, version, error, unrestorable });
        }
        report.restorable.extend(loaded.keys().filter(|v| !lost.contains(v)).map(|&v| (chain.number, v)));
    }
    Ok(report)
}

/// The checkpoints that `error`, found in checkpoint `damaged`, keeps from restoring: those
/// written on it that still take a page from it. Parents precede children in version order,
/// so one ascending pass carries what each still needs from `damaged`.
fn unrestorable(loaded: &Loaded, damaged: u64, error: &CheckpointError) -> Vec<u64> {
    // The pages of the damaged chunk a checkpoint still takes from it (`None`: a whole file,
    // manifest or link is lost, which nothing later replaces).
    let mut needs: BTreeMap<u64, Option<Vec<usize>>> = BTreeMap::new();
    for (&v, m) in loaded {
        let need: Option<Vec<usize>> = if v == damaged {
            match error {
                CheckpointError::ChunkChecksum { pages, .. } => Some(pages.clone().collect()),
                _ => None,
            }
        } else {
            let Some((m, _)) = m else { continue };
            match m.parent.and_then(|l| needs.get(&l.version)) {
                Some(Some(pages)) => Some(pages.iter().copied().filter(|&p| !holds(m, p)).collect()),
                Some(None) => None,
                None => continue,
            }
        };
        if need.as_ref().is_none_or(|pages| !pages.is_empty()) {
            needs.insert(v, need);
        }
    }
    needs.into_keys().collect()
}
