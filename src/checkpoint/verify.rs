//! Checking a whole checkpoint directory: every manifest, every chunk of every data file and
//! every chain link, naming each damaged file or chunk and the checkpoints it makes
//! unrestorable.
//!
//! What a problem costs is decided by [`super::plan`], as for [`super::Restore`]: a damaged
//! manifest or link costs its checkpoint and every later one written on it; a damaged chunk
//! or data file costs only the checkpoints that still take a page from it (later increments
//! may have rewritten all of its pages).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::format::{self, Manifest};
use super::plan::{ReadPlan, Scope};
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

/// Reads and checks every complete checkpoint in `dir`. Fails only when `dir` cannot be listed;
/// everything else is reported.
pub fn verify(dir: &Path) -> Result<VerifyReport, CheckpointError> {
    let catalog = Catalog::open(dir)?;
    let mut report = VerifyReport::default();
    let mut buf = Vec::new();
    for chain in &catalog.chains {
        report.incomplete.extend(chain.incomplete.iter().cloned());
        let mut loaded = Loaded::new();
        let mut found: Vec<(u64, Scope, CheckpointError)> = Vec::new();
        for &v in &chain.complete {
            let (manifest, sum) = match load_manifest(&chain.dir, chain.number, v) {
                Ok(m) => m,
                Err(e) => {
                    found.push((v, Scope::Link, e));
                    loaded.insert(v, None);
                    continue;
                }
            };
            match DataFile::open(&chain.dir, &manifest) {
                Err(e) => found.push((v, Scope::Data, e)),
                Ok(data) => {
                    for (index, (offset, chunk)) in manifest.chunk_offsets().enumerate() {
                        match data.read_chunk(index, offset, chunk, manifest.space.page_size, &mut buf) {
                            Ok(()) => {
                                report.chunks_checked += 1;
                                report.bytes_checked += buf.len() as u64;
                            }
                            Err(e) => found.push((v, Scope::Chunk(index), e)),
                        }
                    }
                }
            }
            if let Some(link) = manifest.parent {
                if chain.complete.binary_search(&link.version).is_err() {
                    let (chain, version, file) =
                        (chain.number, link.version, format::manifest_path(&chain.dir, link.version));
                    found.push((
                        v,
                        Scope::Link,
                        if version == manifest.base {
                            CheckpointError::MissingBase { chain, version, file }
                        } else {
                            CheckpointError::MissingManifest { chain, version, file }
                        },
                    ));
                } else if let Some(Some((parent, parent_sum))) = loaded.get(&link.version) {
                    if let Err(e) = check_link(&chain.dir, &manifest, parent, *parent_sum) {
                        found.push((v, Scope::Link, e));
                    }
                }
            }
            loaded.insert(v, Some((manifest, sum)));
        }
        let lost_to = costs(&loaded, &found);
        report.restorable.extend(
            loaded.keys().filter(|v| lost_to.values().all(|lost| !lost.contains(v))).map(|&v| (chain.number, v)),
        );
        for (i, (version, _, error)) in found.into_iter().enumerate() {
            let unrestorable = lost_to.get(&i).map(|l| l.iter().copied().collect()).unwrap_or_default();
            report.damage.push(Damage { chain: chain.number, version, error, unrestorable });
        }
    }
    Ok(report)
}

/// For each problem in `found` (by index), the checkpoints it keeps from restoring: those whose
/// chain passes through a damaged manifest or link, and those whose [`ReadPlan`] needs a
/// damaged chunk or data file.
fn costs(loaded: &Loaded, found: &[(u64, Scope, CheckpointError)]) -> BTreeMap<usize, BTreeSet<u64>> {
    let mut lost_to: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    if found.is_empty() {
        return lost_to;
    }
    for &w in loaded.keys() {
        // The chain of `w`, from `w` back to its base, as far as it can be followed.
        let mut path: Vec<u64> = Vec::new();
        let mut chain: Vec<&Manifest> = Vec::new();
        let mut cur = w;
        let followed = loop {
            path.push(cur);
            let Some(Some((m, _))) = loaded.get(&cur) else { break false };
            chain.push(m);
            let broken = found.iter().any(|(v, scope, _)| *v == cur && *scope == Scope::Link);
            match m.parent {
                None => break !broken,
                Some(_) if broken => break false,
                Some(l) => cur = l.version,
            }
        };
        chain.reverse();
        let plan = followed.then(|| ReadPlan::new(chain.iter().copied()));
        for (i, (v, scope, _)) in found.iter().enumerate() {
            let Some(at) = path.iter().position(|p| p == v) else { continue };
            // The index of checkpoint `v` in the chain, base first.
            let index = path.len() - 1 - at;
            let hit = match (scope, &plan) {
                (Scope::Link, _) => true,
                (_, None) => false,
                (Scope::Data, Some(plan)) => plan.needs_file(index, chain[index]),
                (Scope::Chunk(c), Some(plan)) => plan.needs(index, &chain[index].chunks[*c]),
            };
            if hit {
                lost_to.entry(i).or_default().insert(w);
            }
        }
    }
    lost_to
}
