//! Reading checkpoints: listing a directory, resolving a version to its chain (base first),
//! and replaying that chain page by page with every chunk used checked.
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{self, Chunk, Manifest, Name, DATA_HEADER};
use super::plan::ReadPlan;
use super::CheckpointError;

/// One chain directory as listed.
#[derive(Clone, Debug)]
pub struct ChainListing {
    pub number: u64,
    pub dir: PathBuf,
    /// Versions with a manifest, ascending.
    pub complete: Vec<u64>,
    /// What checkpoints that never completed left: data files without a manifest and
    /// temporary manifests.
    pub incomplete: Vec<PathBuf>,
}

/// The chains of a checkpoint directory, by what their file names say (nothing is read).
#[derive(Clone, Debug)]
pub struct Catalog {
    pub dir: PathBuf,
    /// Ascending by number.
    pub chains: Vec<ChainListing>,
}

fn list(dir: &Path) -> Result<Vec<(Name, PathBuf)>, CheckpointError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(CheckpointError::io("listing", dir))? {
        let entry = entry.map_err(CheckpointError::io("listing", dir))?;
        if let Some(name) = entry.file_name().to_str().and_then(Name::parse) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

impl Catalog {
    pub fn open(dir: &Path) -> Result<Catalog, CheckpointError> {
        let mut chains = Vec::new();
        for (name, path) in list(dir)? {
            let Name::Chain(number) = name else { continue };
            let entries = list(&path)?;
            let mut complete: Vec<u64> =
                entries.iter().filter_map(|(n, _)| if let Name::Manifest(v) = n { Some(*v) } else { None }).collect();
            complete.sort_unstable();
            let mut incomplete: Vec<PathBuf> = entries
                .into_iter()
                .filter(|(n, _)| match n {
                    Name::Data(v) => complete.binary_search(v).is_err(),
                    Name::TempManifest(_) => true,
                    _ => false,
                })
                .map(|(_, p)| p)
                .collect();
            incomplete.sort();
            chains.push(ChainListing { number, dir: path, complete, incomplete });
        }
        chains.sort_by_key(|c| c.number);
        Ok(Catalog { dir: dir.to_path_buf(), chains })
    }

    /// The highest chain number in `dir`, counting chains being retired (0: none).
    pub fn highest_chain(dir: &Path) -> Result<u64, CheckpointError> {
        Ok(list(dir)?
            .into_iter()
            .filter_map(|(n, _)| match n {
                Name::Chain(c) | Name::Retired(c) => Some(c),
                _ => None,
            })
            .max()
            .unwrap_or(0))
    }

    /// The newest complete checkpoint, as (chain, version).
    pub fn newest(&self) -> Option<(u64, u64)> {
        self.chains.iter().rev().find_map(|c| c.complete.last().map(|&v| (c.number, v)))
    }

    /// The newest chain holding a complete checkpoint of `version`.
    pub fn find(&self, version: u64) -> Option<u64> {
        self.chains.iter().rev().find(|c| c.complete.binary_search(&version).is_ok()).map(|c| c.number)
    }

    /// Every version with a complete checkpoint in some chain, ascending, once each.
    pub fn versions(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.chains.iter().flat_map(|c| c.complete.iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether `chain` starts with a complete, intact base manifest.
    pub fn has_base(&self, chain: &ChainListing) -> bool {
        chain
            .complete
            .first()
            .is_some_and(|&v| load_manifest(&chain.dir, chain.number, v).is_ok_and(|(m, _)| m.is_base()))
    }

    /// What the chains hold, for messages: "chain 1: v3..v40 (12)".
    pub fn describe(&self) -> String {
        let chains: Vec<String> = self
            .chains
            .iter()
            .filter_map(|c| {
                let (first, last) = (c.complete.first()?, c.complete.last()?);
                Some(format!("chain {}: v{first}..v{last} ({})", c.number, c.complete.len()))
            })
            .collect();
        if chains.is_empty() {
            "none".into()
        } else {
            chains.join(", ")
        }
    }
}

/// Reads and checks the manifest of checkpoint `version` in the chain directory `dir`,
/// returning it with its checksum.
pub(super) fn load_manifest(dir: &Path, chain: u64, version: u64) -> Result<(Manifest, u32), CheckpointError> {
    let file = format::manifest_path(dir, version);
    let bytes = match fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(CheckpointError::MissingManifest { chain, version, file })
        }
        Err(e) => return Err(CheckpointError::io("reading", file)(e)),
    };
    let manifest = Manifest::decode(&bytes, &file)?;
    if (manifest.chain, manifest.version) != (chain, version) {
        return Err(CheckpointError::BadManifest {
            file,
            what: format!("holds chain {} version {}, not what its name says", manifest.chain, manifest.version),
        });
    }
    Ok((manifest, format::manifest_checksum(&bytes)))
}

/// Checks that `parent` (whose manifest has checksum `checksum`) is the checkpoint `child`
/// was written on, in the chain directory `dir`.
pub(super) fn check_link(
    dir: &Path,
    child: &Manifest,
    parent: &Manifest,
    checksum: u32,
) -> Result<(), CheckpointError> {
    let Some(link) = child.parent else { return Ok(()) };
    let file = format::manifest_path(dir, child.version);
    if checksum != link.checksum {
        let parent_file = format::manifest_path(dir, link.version);
        return Err(CheckpointError::BrokenLink {
            file,
            parent: link.version,
            parent_file,
            recorded: link.checksum,
            found: checksum,
        });
    }
    let (c, p) = (&child.space, &parent.space);
    if parent.base != child.base || p.page_size != c.page_size || p.page_count != c.page_count {
        return Err(CheckpointError::BadManifest {
            file,
            what: format!("its page space or base differs from its parent v{}'s", link.version),
        });
    }
    Ok(())
}

/// A data file whose header matches its manifest and that is not longer than the manifest
/// says. A file cut short is still opened: only the chunks past its end are lost, and
/// [`DataFile::read_chunk`] says so for each (see [`super::plan`]).
pub(super) struct DataFile {
    file: File,
    path: PathBuf,
    len: u64,
    expected: u64,
}

impl DataFile {
    pub(super) fn open(dir: &Path, manifest: &Manifest) -> Result<DataFile, CheckpointError> {
        let path = format::data_path(dir, manifest.version);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(CheckpointError::MissingData {
                    manifest: format::manifest_path(dir, manifest.version),
                    file: path,
                })
            }
            Err(e) => return Err(CheckpointError::io("opening", path)(e)),
        };
        let len = file.metadata().map_err(CheckpointError::io("reading", &path))?.len();
        let expected = manifest.data_len();
        if len < DATA_HEADER as u64 {
            return Err(CheckpointError::Truncated { file: path, expected, actual: len });
        }
        let mut header = [0u8; DATA_HEADER];
        file.read_exact_at(&mut header, 0).map_err(CheckpointError::io("reading", &path))?;
        format::check_data_header(&header, manifest, &path)?;
        if len > expected {
            return Err(CheckpointError::TrailingBytes { file: path, expected, actual: len });
        }
        Ok(DataFile { file, path, len, expected })
    }

    /// Reads chunk number `index` (at byte `offset`) into `buf` and checks its checksum.
    pub(super) fn read_chunk(
        &self,
        index: usize,
        offset: u64,
        chunk: &Chunk,
        page_size: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), CheckpointError> {
        buf.resize(chunk.pages * page_size, 0);
        if offset + buf.len() as u64 > self.len {
            return Err(CheckpointError::Truncated {
                file: self.path.clone(),
                expected: self.expected,
                actual: self.len,
            });
        }
        self.file.read_exact_at(buf, offset).map_err(CheckpointError::io("reading", &self.path))?;
        let computed = crc32fast::hash(buf);
        if computed != chunk.checksum {
            return Err(CheckpointError::ChunkChecksum {
                file: self.path.clone(),
                chunk: index,
                pages: chunk.page_range(),
                stored: chunk.checksum,
                computed,
            });
        }
        Ok(())
    }
}

/// A complete checkpoint and the chain it is replayed from, links checked.
pub struct Restore {
    dir: PathBuf,
    /// Base first, the checkpoint to restore last.
    chain: Vec<Manifest>,
}

impl Restore {
    /// Resolves checkpoint `version` (the newest complete one when `None`) in the checkpoint
    /// directory `dir`: finds its chain and checks every manifest and link back to the base.
    pub fn open(dir: &Path, version: Option<u64>) -> Result<Restore, CheckpointError> {
        let catalog = Catalog::open(dir)?;
        let (number, version) = match version {
            None => catalog.newest().ok_or_else(|| CheckpointError::NoCheckpoint { dir: dir.to_path_buf() })?,
            Some(v) => match catalog.find(v) {
                Some(number) => (number, v),
                None => {
                    let left = catalog
                        .chains
                        .iter()
                        .rev()
                        .find(|c| c.incomplete.iter().any(|p| *p == format::data_path(&c.dir, v)));
                    return Err(match left {
                        Some(c) => CheckpointError::MissingManifest {
                            chain: c.number,
                            version: v,
                            file: format::manifest_path(&c.dir, v),
                        },
                        None => CheckpointError::NoSuchVersion {
                            dir: dir.to_path_buf(),
                            version: v,
                            have: catalog.describe(),
                        },
                    });
                }
            },
        };
        Restore::open_in_chain(dir, number, version)
    }

    /// Resolves checkpoint `version` of chain `number` in `dir` (when a version is in several
    /// chains, and one is wanted by name: a global manifest names its ranks' chains).
    pub fn open_in_chain(dir: &Path, number: u64, version: u64) -> Result<Restore, CheckpointError> {
        let chain_dir = format::chain_dir(dir, number);
        let (mut manifest, _) = load_manifest(&chain_dir, number, version)?;
        let mut chain = Vec::new();
        while let Some(link) = manifest.parent {
            let (parent, checksum) = load_manifest(&chain_dir, number, link.version).map_err(|e| match e {
                CheckpointError::MissingManifest { chain, version, file } if version == manifest.base => {
                    CheckpointError::MissingBase { chain, version, file }
                }
                e => e,
            })?;
            check_link(&chain_dir, &manifest, &parent, checksum)?;
            chain.push(std::mem::replace(&mut manifest, parent));
        }
        chain.push(manifest);
        chain.reverse();
        Ok(Restore { dir: chain_dir, chain })
    }

    /// The checkpoint restored.
    pub fn manifest(&self) -> &Manifest {
        self.chain.last().expect("a chain has its checkpoint")
    }

    /// When the checkpoint completed: its manifest's modification time (the format stores
    /// no time; the manifest is renamed into place as the checkpoint's last step).
    pub fn completed(&self) -> Result<std::time::SystemTime, CheckpointError> {
        let file = format::manifest_path(&self.dir, self.manifest().version);
        fs::metadata(&file).and_then(|m| m.modified()).map_err(CheckpointError::io("reading", file))
    }

    /// The versions replayed, base first.
    pub fn replayed(&self) -> Vec<u64> {
        self.chain.iter().map(|m| m.version).collect()
    }

    /// The directory of the chain it is replayed from.
    pub fn chain_dir(&self) -> &Path {
        &self.dir
    }

    /// Rebuilds the version: calls `sink(first_page, bytes)` so that every page of the page
    /// space is delivered exactly once, from the newest checkpoint of the chain holding it
    /// (the base holds every page: decoding its manifest checked that). Only the data files
    /// and chunks that deliver pages are read (see `plan.rs`), each chunk checked before
    /// delivery.
    pub fn read(
        &self,
        mut sink: impl FnMut(usize, &[u8]) -> Result<(), CheckpointError>,
    ) -> Result<(), CheckpointError> {
        let page_size = self.manifest().space.page_size;
        let plan = ReadPlan::new(&self.chain);
        let mut buf = Vec::new();
        for (i, m) in self.chain.iter().enumerate().filter(|(i, m)| plan.needs_file(*i, m)) {
            let data = DataFile::open(&self.dir, m)?;
            for (index, (offset, chunk)) in m.chunk_offsets().enumerate().filter(|(_, (_, c))| plan.needs(i, c)) {
                data.read_chunk(index, offset, chunk, page_size, &mut buf)?;
                for pages in plan.delivered(i, chunk) {
                    let at = (pages.start - chunk.first_page) * page_size;
                    sink(pages.start, &buf[at..at + pages.len() * page_size])?;
                }
            }
        }
        Ok(())
    }
}
