//! Global checkpoints of an MPI job: version v of the whole job exists once every rank's v is
//! complete on the persistent level.
//!
//! Each rank is a producer of its own (`heat.%r`, [`crate::job`]), checkpointed into its own
//! directory `DIR/<rank's name>` on both levels (one checkpointer per node follows every rank
//! there). The persistent directory holds one job. After each flush, a checkpointer calls
//! [`update`], which lists every rank directory of the persistent level and, for each version
//! that every rank of the job (the size its manifests carry) holds complete, writes a global
//! manifest `global/vN.global`: temp + fsync + rename + directory fsync, written last, so that
//! a global manifest never names a rank's checkpoint that is not complete. Checkpointers on
//! several nodes may write the same global manifest: the bytes are the same, the rename atomic.
//! Coordination goes through the shared file system only, as SCR's index does: no MPI here.
//!
//! A global manifest is text, for people too:
//! ```text
//! tcasm global checkpoint 1
//! version 12
//! launch 1a2b3c4d5e     (which launch of the job: mpirun's or srun's job id, hashed)
//! ranks 4
//! rank 0 heat.0 chain 3 manifest 1a2b3c4d
//! ...
//! crc32 5e6f7a8b          (of every byte before this line)
//! ```
//! Restart ([`super::restart::load_job`]) takes the newest global version, every rank the
//! same one.
use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::reader::{load_manifest, Catalog};
use super::writer::write_durably;
use super::CheckpointError;

/// The directory of a checkpoint level holding the global manifests.
pub const GLOBAL_DIR: &str = "global";
const MAGIC_LINE: &str = "tcasm global checkpoint 1";

/// One rank's part of a global checkpoint, on the persistent level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankPart {
    pub rank: u32,
    /// The rank's producer name, which is also its checkpoint directory's.
    pub producer: String,
    pub chain: u64,
    /// The checksum of its manifest there.
    pub checksum: u32,
}

/// A version complete for every rank of the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalManifest {
    pub version: u64,
    /// The launch of the job whose ranks wrote it ([`crate::job::Job::launch`]).
    pub launch: u64,
    /// Every rank, by rank.
    pub ranks: Vec<RankPart>,
}

/// What the persistent level holds of a job's versions.
#[derive(Debug, Default)]
pub struct JobStatus {
    /// Global manifests, by version ascending.
    pub complete: Vec<GlobalManifest>,
    /// Versions some ranks hold but others do not: (version, job size, missing ranks).
    pub incomplete: Vec<(u64, u32, Vec<u32>)>,
    /// Rank directories whose checkpoints belong to no job (written for a producer without
    /// `%r`), or to jobs of different sizes.
    pub foreign: Vec<String>,
}

/// The directory of rank producer `name` in checkpoint level `dir`.
pub fn rank_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn global_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(GLOBAL_DIR).join(format!("v{version}.global"))
}

impl GlobalManifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut s =
            format!("{MAGIC_LINE}\nversion {}\nlaunch {:x}\nranks {}\n", self.version, self.launch, self.ranks.len());
        for r in &self.ranks {
            s += &format!("rank {} {} chain {} manifest {:08x}\n", r.rank, r.producer, r.chain, r.checksum);
        }
        let sum = crc32fast::hash(s.as_bytes());
        s += &format!("crc32 {sum:08x}\n");
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8], file: &Path) -> Result<GlobalManifest, CheckpointError> {
        let bad = |what: &str| CheckpointError::BadManifest {
            file: file.to_path_buf(),
            what: format!("global manifest: {what}"),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let body_end = text.trim_end_matches('\n').rfind('\n').map(|i| i + 1).ok_or_else(|| bad("too short"))?;
        let (body, last) = text.split_at(body_end);
        let stored = last
            .trim_end()
            .strip_prefix("crc32 ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("no checksum line"))?;
        let computed = crc32fast::hash(body.as_bytes());
        if stored != computed {
            return Err(CheckpointError::ManifestChecksum { file: file.to_path_buf(), stored, computed });
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC_LINE) {
            return Err(CheckpointError::BadMagic {
                file: file.to_path_buf(),
                found: body.lines().next().unwrap_or("").into(),
            });
        }
        let mut field = |key: &str, radix: u32| -> Result<u64, CheckpointError> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), radix).ok())
                .ok_or_else(|| bad(&format!("no {key}line")))
        };
        let version = field("version ", 10)?;
        let launch = field("launch ", 16)?;
        let count = field("ranks ", 10)?;
        let mut ranks = Vec::new();
        for (i, line) in lines.enumerate() {
            let w: Vec<&str> = line.split(' ').collect();
            let part = match w.as_slice() {
                ["rank", rank, producer, "chain", chain, "manifest", sum] => (|| {
                    Some(RankPart {
                        rank: rank.parse().ok()?,
                        producer: producer.to_string(),
                        chain: chain.parse().ok()?,
                        checksum: u32::from_str_radix(sum, 16).ok()?,
                    })
                })(),
                _ => None,
            };
            match part {
                Some(p) if p.rank as usize == i => ranks.push(p),
                _ => return Err(bad(&format!("rank line {i} reads {line:?}"))),
            }
        }
        if ranks.len() as u64 != count || count == 0 {
            return Err(bad(&format!("{} rank lines for {count} ranks", ranks.len())));
        }
        Ok(GlobalManifest { version, launch, ranks })
    }
}

/// The global manifests in level `dir`, by version ascending, with those that do not read
/// (named in the error, for `verify`). A level without global manifests has none.
pub fn read_all(dir: &Path) -> Result<(Vec<GlobalManifest>, Vec<CheckpointError>), CheckpointError> {
    let gdir = dir.join(GLOBAL_DIR);
    let entries = match fs::read_dir(&gdir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(CheckpointError::io("listing", &gdir)(e)),
    };
    let (mut found, mut bad) = (Vec::new(), Vec::new());
    for entry in entries {
        let path = entry.map_err(CheckpointError::io("listing", &gdir))?.path();
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('v')?.strip_suffix(".global")?.parse::<u64>().ok());
        let Some(version) = named else { continue };
        match fs::read(&path)
            .map_err(CheckpointError::io("reading", &path))
            .and_then(|b| GlobalManifest::decode(&b, &path))
        {
            Ok(g) if g.version == version => found.push(g),
            Ok(g) => bad.push(CheckpointError::BadManifest {
                file: path,
                what: format!("global manifest of v{} under the name of v{version}", g.version),
            }),
            Err(e) => bad.push(e),
        }
    }
    found.sort_by_key(|g| g.version);
    Ok((found, bad))
}

/// The newest global checkpoint in any of `dirs`, with the level holding it (`None`: no
/// level has one).
pub fn newest<'a>(dirs: &[&'a Path]) -> Result<Option<(&'a Path, GlobalManifest)>, CheckpointError> {
    let mut best: Option<(&Path, GlobalManifest)> = None;
    for dir in dirs {
        let (found, bad) = read_all(dir)?;
        bad.iter().for_each(|e| tracing::warn!("{e}"));
        if let Some(g) = found.into_iter().last() {
            if best.as_ref().is_none_or(|(_, b)| g.version > b.version) {
                best = Some((dir, g));
            }
        }
    }
    Ok(best)
}

/// Whether rank part `part` of global `version` on level `dir` is there as the global
/// manifest names it (its manifest with the checksum named).
pub fn part_present(dir: &Path, part: &RankPart, version: u64) -> bool {
    let chain_dir = super::format::chain_dir(&rank_dir(dir, &part.producer), part.chain);
    load_manifest(&chain_dir, part.chain, version).is_ok_and(|(_, sum)| sum == part.checksum)
}

/// Whether `restore` holds the same checkpoint as rank part `part` of level `dir` (a copy
/// on another level, with the same chunks), so that a rank never restores a same-numbered
/// version of another run.
pub fn same_checkpoint(restore: &super::Restore, dir: &Path, part: &RankPart, version: u64) -> bool {
    let chain_dir = super::format::chain_dir(&rank_dir(dir, &part.producer), part.chain);
    match load_manifest(&chain_dir, part.chain, version) {
        Ok((m, sum)) => sum == part.checksum && m.chunks == restore.manifest().chunks,
        Err(_) => false,
    }
}

/// Every rank's complete checkpoints on level `dir`: (version, launch) → rank → (size, part).
type Holdings = BTreeMap<(u64, u64), BTreeMap<u32, (u32, RankPart)>>;

fn holdings(dir: &Path, foreign: &mut Vec<String>) -> Result<Holdings, CheckpointError> {
    let mut held = Holdings::new();
    for entry in fs::read_dir(dir).map_err(CheckpointError::io("listing", dir))? {
        let entry = entry.map_err(CheckpointError::io("listing", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if name == GLOBAL_DIR || name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let catalog = Catalog::open(&entry.path())?;
        for chain in &catalog.chains {
            for &version in &chain.complete {
                // A manifest that does not read is not part of any global version.
                let Ok((m, checksum)) = load_manifest(&chain.dir, chain.number, version) else { continue };
                let Some(job) = m.space.job else {
                    if !foreign.contains(&name) {
                        foreign.push(name.clone());
                    }
                    continue;
                };
                let part = RankPart { rank: job.rank, producer: name.clone(), chain: chain.number, checksum };
                // Chains ascend: a version in several chains is taken from the highest.
                held.entry((version, job.launch)).or_default().insert(job.rank, (job.size, part));
            }
        }
    }
    Ok(held)
}

/// Which versions level `dir` holds for every rank and which it does not.
pub fn status(dir: &Path) -> Result<JobStatus, CheckpointError> {
    let mut st = JobStatus::default();
    let held = holdings(dir, &mut st.foreign)?;
    let mut incomplete = Vec::new();
    for ((version, launch), ranks) in held {
        let size = ranks.values().map(|(s, _)| *s).max().unwrap_or(0);
        if ranks.values().any(|(s, _)| *s != size) {
            st.foreign.push(format!("v{version}: ranks of jobs of different sizes"));
            continue;
        }
        let missing: Vec<u32> = (0..size).filter(|r| !ranks.contains_key(r)).collect();
        if missing.is_empty() {
            st.complete.push(GlobalManifest { version, launch, ranks: ranks.into_values().map(|(_, p)| p).collect() });
        } else {
            incomplete.push((version, size, missing));
        }
    }
    // A version complete in one launch is not reported incomplete for another (an abandoned
    // launch's leftovers); of several incomplete ones, the one missing fewest ranks.
    incomplete.sort_by_key(|(v, _, missing)| (*v, missing.len()));
    incomplete.dedup_by_key(|(v, _, _)| *v);
    st.incomplete = incomplete.into_iter().filter(|(v, _, _)| !st.complete.iter().any(|g| g.version == *v)).collect();
    Ok(st)
}

/// Writes the global manifest of every version that level `dir` holds for every rank and that
/// has none yet. Returns the versions written.
pub fn update(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    let st = status(dir)?;
    let gdir = dir.join(GLOBAL_DIR);
    let mut written = Vec::new();
    for g in st.complete {
        let path = global_path(dir, g.version);
        if path.exists() {
            continue;
        }
        fs::create_dir_all(&gdir).map_err(CheckpointError::io("creating", &gdir))?;
        let bytes = g.encode();
        // Unique per writer: checkpointers of several nodes, and the flushers of one, may
        // write the same version at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = gdir.join(format!(".v{}.global.{}-{n}.tmp", g.version, std::process::id()));
        write_durably(&gdir, &temp, &path, &bytes)?;
        written.push(g.version);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_manifests_round_trip_and_refuse_damage() {
        let g = GlobalManifest {
            version: 12,
            launch: 0x1_2345_6789,
            ranks: (0..3)
                .map(|r| RankPart { rank: r, producer: format!("heat.{r}"), chain: 2, checksum: 0xdead0000 + r })
                .collect(),
        };
        let file = Path::new("v12.global");
        let b = g.encode();
        assert_eq!(GlobalManifest::decode(&b, file).unwrap(), g);
        let mut d = b.clone();
        d[30] ^= 1;
        assert!(matches!(GlobalManifest::decode(&d, file), Err(CheckpointError::ManifestChecksum { .. })));
        assert!(GlobalManifest::decode(&b[..b.len() - 10], file).is_err());
        let text = String::from_utf8(b).unwrap().replace("rank 1 ", "rank 2 ");
        assert!(GlobalManifest::decode(text.as_bytes(), file).is_err());
    }
}
