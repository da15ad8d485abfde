//! One error type per operation, each carrying what a user needs to act: the name, the
//! errno, and what to do about it.
use std::path::PathBuf;

use crate::region::Dtype;
use crate::track::TrackerKind;

/// Errors of naming and reaching an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "endpoint name {name:?} is not valid: use 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"
    )]
    BadName { name: String },
    #[error("endpoint directory {dir}: {what}")]
    Directory { dir: PathBuf, what: String },
    #[error("no group named {group:?} on this node (ProducerOptions::group)")]
    NoSuchGroup { group: String },
    #[error("a producer named {name:?} is already running (pid {pid}); pick another name or stop it")]
    NameInUse { name: String, pid: i32 },
    #[error("no producer named {name:?} in {dir}; `tcasm ls` lists the live ones (TCASM_DIR selects the directory)")]
    NotFound { name: String, dir: PathBuf },
    #[error("producer {name:?} refused this observer: {why}")]
    Refused { name: String, why: String },
    #[error("producer {name:?} has every observer slot taken; it may raise ProducerOptions::max_observers")]
    Full { name: String },
    #[error("producer {name:?} has not published a first version within {waited_ms} ms")]
    NotReady { name: String, waited_ms: u64 },
    #[error("talking to producer {name:?}: {what}")]
    Protocol { name: String, what: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Errors of `Producer::create`.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Job(#[from] crate::job::JobError),
    #[error("tracker {kind} is not available here: {reason}")]
    Tracker { kind: TrackerKind, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Errors of adding a region to a producer.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{0}")]
    Invalid(String),
    #[error("a region named {name:?} already exists")]
    Duplicate { name: String },
    #[error("region {name:?}: regions must be added before the first publish()")]
    AfterFirstPublish { name: String },
    #[error("region {name:?}: buffer at {addr:#x} is not aligned for {dtype} ({align} bytes)")]
    Misaligned { name: String, addr: usize, dtype: Dtype, align: usize },
    #[error("region {name:?}: {bytes} bytes do not hold shape {shape:?} of {dtype}")]
    WrongLength { name: String, bytes: usize, shape: Vec<usize>, dtype: Dtype },
    #[error(
        "region {name:?}: the {tracker} tracker cannot track the buffer at {addr:#x} ({errno}); \
             userfaultfd tracks anonymous and shared memory (malloc, mmap, a Vec, static arrays), \
             not memory mapped from a file. Allocate it with Producer::region, or use the copy tracker"
    )]
    CannotTrack { name: String, addr: usize, tracker: TrackerKind, errno: nix::Error },
    #[error(
        "region {name:?}: the buffer at {addr:#x} is already tracked by another producer (or \
             another userfaultfd user) in this process (EBUSY): a buffer belongs to one producer at \
             a time. Destroy the other producer first, share the buffer through it, or wrap a copy"
    )]
    AlreadyTracked { name: String, addr: usize },
    #[error(
        "region {name:?}: the {tracker} tracker stops every write to a protected page until \
             its handler thread lets it through, so it protects only pages a region owns whole; the \
             buffer at {addr:#x} ({bytes} bytes) shares its first or last page with other data \
             (heap metadata, other objects), whose writes could block forever. Use page-aligned \
             buffers of whole pages (Producer::region, posix_memalign), or the async tracker"
    )]
    SharesPages { name: String, addr: usize, bytes: usize, tracker: TrackerKind },
    #[error("region {name:?}: allocating {bytes} bytes failed: {errno}")]
    Alloc { name: String, bytes: usize, errno: nix::Error },
}

/// Errors of `Producer::publish`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("there is nothing to publish: add a region first")]
    NoRegions,
    #[error("finding written pages failed: {0}")]
    Track(nix::Error),
    #[error("the snapshot store could not {what}: {errno}; {}", store_advice(*.errno))]
    Store { what: String, errno: nix::Error },
}

/// What to do when the store cannot have its memory: the store's files count against the
/// file size limit, which no freeing of memory lifts.
fn store_advice(errno: nix::Error) -> &'static str {
    match errno {
        nix::Error::EFBIG => "raise the file size limit (`ulimit -f`), which the store's memory files count against",
        _ => "free memory, or let observers release old snapshots",
    }
}

/// Errors of an observer reading a producer's store.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("producer {name:?} is gone (last version {last_version}); snapshots already taken stay readable")]
    ProducerGone { name: String, last_version: u64 },
    #[error("the control block of {name:?} is corrupt: {what}")]
    Corrupt { name: String, what: String },
    #[error("no region named {region:?}; the producer has {have}")]
    NoSuchRegion { region: String, have: String },
    #[error("region {region:?} holds {actual}, not {asked}")]
    WrongType { region: String, actual: Dtype, asked: Dtype },
    #[error("region {region:?} has {actual} elements, not {asked}")]
    WrongLength { region: String, actual: usize, asked: usize },
    #[error("this observer already holds {held} snapshots, the most one observer may pin; drop one first")]
    TooManySnapshots { held: usize },
    #[error("mapping the snapshot failed: {0}; raise vm.max_map_count or free address space")]
    Map(nix::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
