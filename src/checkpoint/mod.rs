//! Incremental, crash-consistent checkpoints of a producer's versions, written by an observer
//! to a directory (a burst buffer), and their restore and verification.
//!
//! Why an observer: the producer never stops or forks to be checkpointed. A checkpointer pins
//! the newest version, writes the pages that changed since the version it checkpointed last
//! ([`crate::Snapshot::changed_since`]), and drops the pin; when it falls behind it simply
//! takes the newest version, whose page map still says which pages changed since then.
//!
//! # Directory
//! ```text
//! DIR/
//! ├── .lock                       OFD-locked by the one checkpointer writing DIR
//! ├── chain-000001/               a chain: one base and the increments written on it
//! │   ├── v000000000012.data      the pages of checkpoint 12 (a base: every page)
//! │   ├── v000000000012.manifest  present = checkpoint 12 is complete
//! │   ├── v000000000015.data      the pages changed between versions 12 and 15
//! │   ├── v000000000015.manifest
//! │   └── v000000000019.data      no manifest: being written, or its writer died
//! └── chain-000002/               a newer chain (a later base, or a later checkpointer run)
//! ```
//! Each checkpointer run starts a new chain with a full base (so a producer that restarted
//! its version numbering between runs never mixes with the old one), and `--full-every K`
//! starts a new chain after K checkpoints. Chains are ordered by number, checkpoints in a
//! chain by version: the newest checkpoint is the last of the highest chain, and a version
//! found in several chains is taken from the highest.
//!
//! # Files
//! All integers are little-endian; checksums are CRC-32 (IEEE).
//! ```text
//! data file                          manifest
//! +0   magic  "TCASMCKD"             +0   magic  "TCASMCKM"
//! +8   format u32 = 1                +8   format u32 = 1
//! +12  page size u32                 +12  page size u32
//! +16  chain u64                     +16  chain u64
//! +24  version u64                   +24  version u64
//! +32  chunk 0: pages × page size    +32  base u64        (the chain's base version)
//!      chunk 1 ...                   +40  parent u64      (0: this checkpoint is the base)
//!      (back to back, in manifest    +48  parent sum u32  (checksum of the parent's manifest)
//!       order)                       +52  regions u32, +56 chunks u64, +64 page count u64
//!                                    +72  length u64      (of the whole manifest)
//!                                    +80  producer name   (u16 length, UTF-8)
//!                                         format 2 only (a rank of an MPI job): rank u32,
//!                                           job size u32, launch u64
//!                                         regions: name (u16 length, UTF-8), dtype u32,
//!                                           dims u32, shape u64 × dims, first page u64,
//!                                           pages u64, offset u64
//!                                         chunks: first page u64, pages u32, checksum u32
//!                                    end-4 checksum u32 of every byte before it
//! ```
//! A chunk is at most [`CHUNK_BYTES`] of consecutive pages of one changed range, so damage
//! is confined to, and reported as, one chunk. The data file carries no checksum of its own:
//! its manifest holds one per chunk and says how long it must be. An increment's manifest
//! names its parent by version *and* by the checksum of the parent's manifest, so a chain
//! can never be completed with a manifest from another run.
//!
//! # Crash consistency
//! A checkpoint is complete exactly when its manifest exists under its final name. The
//! writer writes the data file and fsyncs it and the chain directory, writes the manifest
//! as `vN.manifest.tmp`, fsyncs it, renames it to `vN.manifest` and fsyncs the directory.
//! A writer killed at any moment leaves, at worst, a data file or temporary manifest that
//! readers ignore. Retiring a chain (`--keep`) happens only after a newer base is complete:
//! the chain directory is renamed to `chain-N.retired` (atomically invisible to readers)
//! and then removed; a leftover `.retired` directory is removed by the next writer.
//!
//! # Restore and export
//! A version is rebuilt by replaying its chain, base first ([`Restore`]), into one `.npy`
//! file per region (`npy`), or, with the `hdf5` feature, into one HDF5 file with an XDMF file
//! beside it for ParaView and VisIt (`hdf5`, `xdmf`), several versions into one file.
//! # What a restore reads
//! A page is read from the newest checkpoint of the chain holding it (`plan.rs`): the one
//! rule by which [`Restore::read`] picks chunks and [`verify`] prices damage, so both agree
//! page by page on what is restorable (a damaged chunk or data file costs only the
//! checkpoints still reading a page from it; a damaged manifest or link, every checkpoint
//! written on it).
//!
//! # Restart and levels
//! [`restart`] finds the newest complete checkpoint across several directories (level 1,
//! node-local, first; level 2, the parallel file system, after) and loads it into a
//! producer's regions (`Producer::restore`), checking every region's name, element type and
//! shape and every chunk it reads before writing anything. [`Flusher`] copies a local chain
//! to a chain of its own in the persistent directory, base and increments together, in
//! this same format and with the same crash consistency; [`output`] gives a restore's
//! output directory the same all-or-nothing property (temporary directory, then rename).
//!
//! # Checks
//! Every check has its own [`CheckpointError`] variant: magic, format version, manifest
//! checksum, chunk checksum (naming file and chunk), truncated or overlong data file, a
//! data file that belongs to another checkpoint, a manifest that contradicts itself, a
//! missing data file, manifest or base, and a broken chain link.
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::observer::{Observer, Snapshot};
use crate::region::RegionInfo;

pub mod assemble;
mod flush;
mod format;
pub mod global;
#[cfg(feature = "hdf5")]
mod hdf5;
mod npy;
pub mod output;
mod plan;
mod reader;
pub mod restart;
mod verify;
mod writer;
#[cfg(feature = "hdf5")]
mod xdmf;

pub use flush::{Flushed, Flusher};
pub use format::{Chunk, Link, Manifest, CHUNK_BYTES, FORMAT, FORMAT_JOB};
#[cfg(feature = "hdf5")]
pub use hdf5::{export_hdf5, ExportError, Exported};
pub use npy::{restore_global_npy, restore_npy, RestoredRegion};
pub use reader::{Catalog, ChainListing, Restore};
pub use verify::{verify, Damage, VerifyReport};
pub use writer::{WriteBehind, Writer, WriterOptions, Written};

/// What is checkpointed: the producer's page space and the regions laid out in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSpace {
    /// The producer's endpoint name.
    pub producer: String,
    /// The MPI job the producer is a rank of.
    pub job: Option<crate::job::Job>,
    pub page_size: usize,
    pub page_count: usize,
    pub regions: Vec<RegionInfo>,
}

impl PageSpace {
    /// The page space of the producer `observer` is attached to.
    pub fn of(observer: &Observer) -> PageSpace {
        PageSpace {
            producer: observer.name().to_string(),
            job: observer.job(),
            page_size: crate::sys::page_size(),
            page_count: observer.pages(),
            regions: observer.regions().to_vec(),
        }
    }
}

/// One version of a page space, as a checkpoint reads it. [`Snapshot`] is the real one; the
/// trait lets the format be tested without a producer.
pub trait PageSource {
    fn version(&self) -> u64;
    /// Page `p` of the page space, `page_size` bytes.
    fn page(&self, p: usize) -> &[u8];
    /// Pages whose bytes changed after version `since`.
    fn changed_since(&self, since: u64) -> Vec<Range<usize>>;
}

impl PageSource for Snapshot {
    fn version(&self) -> u64 {
        Snapshot::version(self)
    }
    fn page(&self, p: usize) -> &[u8] {
        Snapshot::page(self, p)
    }
    fn changed_since(&self, since: u64) -> Vec<Range<usize>> {
        Snapshot::changed_since(self, since)
    }
}

/// Everything that can go wrong writing, reading or checking checkpoints: one variant per
/// check, each naming the file (and chunk) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a tcasm checkpoint file (magic {found:?})", file.display())]
    BadMagic { file: PathBuf, found: String },
    #[error("{}: checkpoint format {found}; this tcasm reads formats {FORMAT} and {FORMAT_JOB}", file.display())]
    UnsupportedFormat { file: PathBuf, found: u32 },
    #[error("{}: manifest checksum mismatch (stored {stored:08x}, computed {computed:08x})", file.display())]
    ManifestChecksum { file: PathBuf, stored: u32, computed: u32 },
    #[error("{}: chunk {chunk} (pages {}..{}) checksum mismatch (stored {stored:08x}, computed {computed:08x})",
            file.display(), pages.start, pages.end)]
    ChunkChecksum { file: PathBuf, chunk: usize, pages: Range<usize>, stored: u32, computed: u32 },
    #[error("{}: truncated: {actual} bytes, {expected} expected", file.display())]
    Truncated { file: PathBuf, expected: u64, actual: u64 },
    #[error("{}: {actual} bytes, {expected} expected: bytes past the last chunk", file.display())]
    TrailingBytes { file: PathBuf, expected: u64, actual: u64 },
    #[error("{}: belongs to {found}, its manifest to {expected}", file.display())]
    ForeignData { file: PathBuf, found: String, expected: String },
    #[error("{}: {what}", file.display())]
    BadManifest { file: PathBuf, what: String },
    #[error("{}: missing (named by {})", file.display(), manifest.display())]
    MissingData { file: PathBuf, manifest: PathBuf },
    #[error("chain {chain}: checkpoint v{version} has no manifest {}: it never completed or the manifest was deleted",
            file.display())]
    MissingManifest { chain: u64, version: u64, file: PathBuf },
    #[error("chain {chain}: the base v{version} has no manifest {}: the chain has nothing to start from", file.display())]
    MissingBase { chain: u64, version: u64, file: PathBuf },
    #[error("{}: written on a parent v{parent} whose manifest had checksum {recorded:08x}, but {} has {found:08x}",
            file.display(), parent_file.display())]
    BrokenLink { file: PathBuf, parent: u64, parent_file: PathBuf, recorded: u32, found: u32 },
    #[error("no complete checkpoint in {}", dir.display())]
    NoCheckpoint { dir: PathBuf },
    #[error("no complete checkpoint of version {version} in {}; complete ones: {have}", dir.display())]
    NoSuchVersion { dir: PathBuf, version: u64, have: String },
    #[error("{} is being written by another checkpointer; give each its own directory", dir.display())]
    Busy { dir: PathBuf },
    #[error("{}: {what}", dir.display())]
    BadOutput { dir: PathBuf, what: String },
    #[error("version {version} is not newer than the last checkpoint v{last}")]
    NotNewer { version: u64, last: u64 },
}

/// Refuses a path that exists and is not a directory (a file, a device) where a directory is
/// to be created or written: "not a directory" says more than the `File exists` of mkdir.
pub fn refuse_non_directory(dir: &Path) -> Result<(), CheckpointError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(CheckpointError::BadOutput {
            dir: dir.to_path_buf(),
            what: "not a directory; name a directory (it is created if missing)".into(),
        }),
        _ => Ok(()),
    }
}

/// The bytes of the files under `dir` (recursively): what a checkpoint directory uses.
pub fn directory_bytes(dir: &Path) -> Result<u64, CheckpointError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(CheckpointError::io("listing", dir))? {
        let entry = entry.map_err(CheckpointError::io("listing", dir))?;
        let meta = entry.metadata().map_err(CheckpointError::io("reading", entry.path()))?;
        total += if meta.is_dir() { directory_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

impl CheckpointError {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CheckpointError {
        let path = path.into();
        move |source| CheckpointError::Io { what, path, source }
    }
}

#[cfg(test)]
mod tests;
