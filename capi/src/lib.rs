//! The C ABI of tcasm: a C, C++ or Fortran simulation shares the arrays it already has with
//! observer processes in a handful of lines.
//!
//! ```c
//! #include "tcasm.h"
//! tcasm_producer *tp;
//! tcasm_producer_create("heat", &tp);
//! tcasm_wrap(tp, "temperature", TCASM_F64, t, (size_t[]){NY, NX}, 2);
//! for (;;) { step(t); tcasm_publish(tp, NULL); }
//! tcasm_producer_destroy(tp);
//! ```
//!
//! `include/tcasm.h` is generated from this file by cbindgen (`build.rs`) and committed;
//! `tests/header.rs` fails when it is out of date. Every function returns a
//! [`tcasm_status`]; on failure [`tcasm_last_error`] says what went wrong in words. No panic
//! crosses the boundary: one is caught, reported as `TCASM_ERR_INTERNAL`, and the producer it
//! happened in refuses everything but [`tcasm_producer_destroy`] afterwards.
//!
//! The functions are `unsafe`: C hands over raw pointers whose validity Rust cannot check.
//! Each one's `# Safety` section (copied into the header) says what the caller promises.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tcasm_core::checkpoint::restart::{split_dirs, RestartError};
use tcasm_core::checkpoint::CheckpointError;
use tcasm_core::error::{CreateError, EndpointError, PublishError, RegionError};
use tcasm_core::region::MAX_DIMS;
use tcasm_core::{Dtype, Producer, ProducerOptions, TrackerKind};

/// What a call did: `TCASM_OK`, or why it failed. `tcasm_strerror` names a status;
/// `tcasm_last_error` describes the last failure of the calling thread in full.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tcasm_status {
    /// Success.
    TCASM_OK = 0,
    /// A pointer argument that must not be NULL was NULL.
    TCASM_ERR_NULL = 1,
    /// An argument is not valid: a name that is not UTF-8 or has characters tcasm does not
    /// allow, an unknown element type or tracker, a shape with 0 or more than 8 dimensions or
    /// no elements, a buffer that overlaps one wrapped already.
    TCASM_ERR_INVALID = 2,
    /// Another live producer has this endpoint name.
    TCASM_ERR_NAME_IN_USE = 3,
    /// The endpoint directory or socket could not be set up.
    TCASM_ERR_ENDPOINT = 4,
    /// The tracker asked for is not available on this kernel.
    TCASM_ERR_TRACKER = 5,
    /// A region of this name was wrapped already.
    TCASM_ERR_DUPLICATE = 6,
    /// Regions must all be wrapped before the first `tcasm_publish`.
    TCASM_ERR_AFTER_PUBLISH = 7,
    /// The buffer is not aligned for its element type.
    TCASM_ERR_MISALIGNED = 8,
    /// The tracker cannot watch this buffer (a file mapping or a program's initialised static
    /// data; for the sync trackers, a buffer sharing pages with other data; or a buffer
    /// another producer of this process wraps already: `tcasm_last_error` says which).
    TCASM_ERR_CANNOT_TRACK = 9,
    /// `tcasm_publish` before any region was wrapped.
    TCASM_ERR_NO_REGIONS = 10,
    /// Publishing failed: finding written pages or storing them (out of memory).
    TCASM_ERR_PUBLISH = 11,
    /// A system call failed.
    TCASM_ERR_IO = 12,
    /// A bug in tcasm (a caught panic). The producer may only be destroyed.
    TCASM_ERR_INTERNAL = 13,
    /// `tcasm_restore` found no complete checkpoint in any directory: a first run.
    TCASM_ERR_NO_CHECKPOINT = 14,
}

use tcasm_status::*;

impl tcasm_status {
    const ALL: [tcasm_status; 15] = [
        TCASM_OK,
        TCASM_ERR_NULL,
        TCASM_ERR_INVALID,
        TCASM_ERR_NAME_IN_USE,
        TCASM_ERR_ENDPOINT,
        TCASM_ERR_TRACKER,
        TCASM_ERR_DUPLICATE,
        TCASM_ERR_AFTER_PUBLISH,
        TCASM_ERR_MISALIGNED,
        TCASM_ERR_CANNOT_TRACK,
        TCASM_ERR_NO_REGIONS,
        TCASM_ERR_PUBLISH,
        TCASM_ERR_IO,
        TCASM_ERR_INTERNAL,
        TCASM_ERR_NO_CHECKPOINT,
    ];
}

/// An element type: one of the `TCASM_U8` ... `TCASM_F64` constants.
pub type tcasm_dtype = u32;
/// `uint8_t`
pub const TCASM_U8: tcasm_dtype = 1;
/// `int8_t`
pub const TCASM_I8: tcasm_dtype = 2;
/// `uint16_t`
pub const TCASM_U16: tcasm_dtype = 3;
/// `int16_t`
pub const TCASM_I16: tcasm_dtype = 4;
/// `uint32_t`
pub const TCASM_U32: tcasm_dtype = 5;
/// `int32_t` (Fortran `integer(c_int32_t)`)
pub const TCASM_I32: tcasm_dtype = 6;
/// `uint64_t`
pub const TCASM_U64: tcasm_dtype = 7;
/// `int64_t` (Fortran `integer(c_int64_t)`)
pub const TCASM_I64: tcasm_dtype = 8;
/// `float` (Fortran `real(c_float)`)
pub const TCASM_F32: tcasm_dtype = 9;
/// `double` (Fortran `real(c_double)`)
pub const TCASM_F64: tcasm_dtype = 10;

/// The most dimensions a shape may have: 8, enough for a Fortran array of any rank up to 7
/// (Fortran 2003's limit) and for the 6-D phase space of transport codes. HDF5 allows 32;
/// tcasm keeps one shared-memory word per dimension, so it stops at 8.
pub const TCASM_MAX_DIMS: usize = 8;

// The C codes are the library's own.
const _: () = {
    assert!(TCASM_U8 == Dtype::U8 as u32 && TCASM_I8 == Dtype::I8 as u32);
    assert!(TCASM_U16 == Dtype::U16 as u32 && TCASM_I16 == Dtype::I16 as u32);
    assert!(TCASM_U32 == Dtype::U32 as u32 && TCASM_I32 == Dtype::I32 as u32);
    assert!(TCASM_U64 == Dtype::U64 as u32 && TCASM_I64 == Dtype::I64 as u32);
    assert!(TCASM_F32 == Dtype::F32 as u32 && TCASM_F64 == Dtype::F64 as u32);
    assert!(TCASM_MAX_DIMS == MAX_DIMS);
};

/// A producer: an endpoint observers attach to and the regions it shares. Opaque; made by
/// `tcasm_producer_create`, freed by `tcasm_producer_destroy`. Not thread-safe: one thread at
/// a time may call functions on it (the simulation may keep writing its arrays from any
/// number of threads).
pub struct tcasm_producer {
    producer: Producer,
    /// Set when a call panicked: the producer's state is unknown, only destroy is allowed.
    poisoned: bool,
}

/// What a producer has done so far, as `tcasm_stats` reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct tcasm_producer_stats {
    /// Versions published.
    pub versions: u64,
    /// Pages the last publish found changed and copied (what its page map names as changed).
    pub last_pages_copied: u64,
    /// Nanoseconds spent in the last publish.
    pub last_publish_ns: u64,
    /// Nanoseconds spent in all publishes.
    pub total_publish_ns: u64,
    /// Bytes of memory the snapshot store holds.
    pub store_bytes: u64,
    /// Snapshots observers held at the last publish.
    pub live_pins: u64,
    /// Mappings an observer needs for the last version.
    pub mapping_runs: u64,
    /// The snapshot pool's size, in copies of the page space (address space, not memory).
    pub planes: u64,
    /// Pages in the page space (all regions).
    pub pages: u64,
    /// Bytes of free slots the store keeps allocated for the next publishes (part of
    /// `store_bytes`).
    pub reserve_bytes: u64,
}

thread_local! {
    /// The message of the calling thread's last failure.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: its status and the message `tcasm_last_error` will return.
struct Failure {
    status: tcasm_status,
    message: String,
}

fn fail(status: tcasm_status, message: impl Into<String>) -> Failure {
    Failure { status, message: message.into() }
}

fn set_last_error(message: String) {
    // A message with a NUL in it loses the rest rather than the whole message.
    let mut bytes = message.into_bytes();
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(nul);
    }
    let message = CString::new(bytes).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

/// Runs `body`, turning its failure or panic into a status and the thread's last error.
fn guard(what: &str, body: impl FnOnce() -> Result<(), Failure>) -> tcasm_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => TCASM_OK,
        Ok(Err(failure)) => {
            set_last_error(format!("{what}: {}", failure.message));
            failure.status
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("{what}: internal error (a bug in tcasm, please report it): {why}"));
            TCASM_ERR_INTERNAL
        }
    }
}

/// Reads a C string argument as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid during the call.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(fail(TCASM_ERR_NULL, format!("{what} is NULL")));
    }
    // SAFETY: not NULL (checked above) and NUL-terminated, as the caller promises.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|_| fail(TCASM_ERR_INVALID, format!("{what} is not UTF-8: {:?}", c.to_string_lossy())))
}

/// The producer behind a handle, unless NULL or poisoned by an earlier panic.
///
/// # Safety
/// `ptr` is NULL or a live handle from `tcasm_producer_create`, used by no other thread now.
unsafe fn producer<'a>(ptr: *mut tcasm_producer) -> Result<&'a mut tcasm_producer, Failure> {
    // SAFETY: the caller promises a live, unshared handle or NULL; `as_mut` maps NULL to None.
    let handle = unsafe { ptr.as_mut() }.ok_or_else(|| fail(TCASM_ERR_NULL, "the producer is NULL"))?;
    if handle.poisoned {
        return Err(fail(
            TCASM_ERR_INTERNAL,
            "an earlier call on this producer failed with an internal error; destroy it",
        ));
    }
    Ok(handle)
}

/// Runs `body` on the producer behind `ptr`, poisoning it if `body` panics.
///
/// # Safety
/// As for [`producer`].
unsafe fn with_producer(
    what: &str,
    ptr: *mut tcasm_producer,
    body: impl FnOnce(&mut Producer) -> Result<(), Failure>,
) -> tcasm_status {
    let status = guard(what, || {
        // SAFETY: passed on from the caller.
        let handle = unsafe { producer(ptr) }?;
        body(&mut handle.producer)
    });
    if status == TCASM_ERR_INTERNAL && !ptr.is_null() {
        // SAFETY: not NULL, and live and unshared as the caller promises; a panic in `body`
        // left the handle itself intact (only the producer inside may be inconsistent).
        unsafe { (*ptr).poisoned = true };
    }
    status
}

fn create_failure(e: CreateError) -> Failure {
    let status = match &e {
        CreateError::Endpoint(EndpointError::BadName { .. }) | CreateError::Job(_) => TCASM_ERR_INVALID,
        CreateError::Endpoint(EndpointError::NameInUse { .. }) => TCASM_ERR_NAME_IN_USE,
        CreateError::Endpoint(_) => TCASM_ERR_ENDPOINT,
        CreateError::Tracker { .. } => TCASM_ERR_TRACKER,
        CreateError::Io { .. } => TCASM_ERR_IO,
    };
    fail(status, e.to_string())
}

fn region_failure(e: RegionError) -> Failure {
    let status = match &e {
        RegionError::Invalid(_) | RegionError::WrongLength { .. } => TCASM_ERR_INVALID,
        RegionError::Duplicate { .. } => TCASM_ERR_DUPLICATE,
        RegionError::AfterFirstPublish { .. } => TCASM_ERR_AFTER_PUBLISH,
        RegionError::Misaligned { .. } => TCASM_ERR_MISALIGNED,
        RegionError::CannotTrack { .. } | RegionError::SharesPages { .. } | RegionError::AlreadyTracked { .. } => {
            TCASM_ERR_CANNOT_TRACK
        }
        RegionError::Alloc { .. } => TCASM_ERR_IO,
    };
    fail(status, e.to_string())
}

fn publish_failure(e: PublishError) -> Failure {
    let status = match &e {
        PublishError::NoRegions => TCASM_ERR_NO_REGIONS,
        PublishError::Track(_) | PublishError::Store { .. } => TCASM_ERR_PUBLISH,
    };
    fail(status, e.to_string())
}

fn restart_failure(e: RestartError) -> Failure {
    let status = match &e {
        RestartError::Checkpoint(CheckpointError::Io { .. }) => TCASM_ERR_IO,
        RestartError::AfterFirstPublish => TCASM_ERR_AFTER_PUBLISH,
        RestartError::NoRegions => TCASM_ERR_NO_REGIONS,
        _ => TCASM_ERR_INVALID,
    };
    fail(status, e.to_string())
}

/// Creates a producer named `name` with the default options (the fastest tracker the kernel
/// offers) and stores it in `*out`. Observers attach to it by that name (`tcasm ls` lists the
/// live ones); endpoints live in `$TCASM_DIR`, else `$XDG_RUNTIME_DIR/tcasm`, else
/// `/tmp/tcasm-$UID`.
///
/// `name`: 1 to 64 letters, digits, `_`, `-` or `.`, not starting with `.`. A name holding
/// `%r` (`"heat.%r"`) makes the producer a rank of an MPI job: `%r` becomes the rank
/// (`OMPI_COMM_WORLD_RANK`, `PMI_RANK`, `PMIX_RANK` or `SLURM_PROCID`), and the job's size
/// (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`, `SLURM_NTASKS`) travels with its versions;
/// `TCASM_ERR_INVALID` when neither is set. On failure `*out` is set to NULL.
///
/// # Safety
/// `name` is a NUL-terminated string; `out` points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn tcasm_producer_create(name: *const c_char, out: *mut *mut tcasm_producer) -> tcasm_status {
    // SAFETY: the caller's promises are those of tcasm_producer_create_with; NULL is allowed
    // for the tracker.
    unsafe { tcasm_producer_create_with(name, std::ptr::null(), 0, out) }
}

/// Like `tcasm_producer_create`, with options: `tracker` names how written pages are found:
/// `"auto"` (or NULL: the default), `"async"`, `"sync"`, `"deferred"` or `"copy"` (no kernel
/// tracking: every page is compared with the last version and copied if it changed; works
/// everywhere). `max_observers` is the
/// most observers attached at once (0: the default, 64).
///
/// # Safety
/// `name` is a NUL-terminated string; `tracker` is NULL or a NUL-terminated string; `out`
/// points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn tcasm_producer_create_with(
    name: *const c_char,
    tracker: *const c_char,
    max_observers: usize,
    out: *mut *mut tcasm_producer,
) -> tcasm_status {
    guard("tcasm_producer_create", || {
        if out.is_null() {
            return Err(fail(TCASM_ERR_NULL, "out is NULL"));
        }
        // SAFETY: `out` is not NULL and points to writable storage, as the caller promises.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: a NUL-terminated string, as the caller promises.
        let name = unsafe { text(name, "name") }?;
        let mut options = ProducerOptions::default();
        if !tracker.is_null() {
            // SAFETY: not NULL, so a NUL-terminated string, as the caller promises.
            let tracker = unsafe { text(tracker, "tracker") }?;
            options.tracker = tracker.parse::<TrackerKind>().map_err(|e| fail(TCASM_ERR_INVALID, e))?;
        }
        if max_observers > 0 {
            options.max_observers = max_observers;
        }
        let producer = Producer::create(name, options).map_err(create_failure)?;
        let handle = Box::into_raw(Box::new(tcasm_producer { producer, poisoned: false }));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Shares the caller's array `data` as region `name`: `ndim` dimensions of sizes
/// `shape[0..ndim]` (C order: the last dimension varies fastest; a Fortran array is passed
/// with its dimensions reversed, as `fortran/tcasm.f90` does), elements of type `dtype`.
/// The array stays the caller's: keep writing it as usual, and each `tcasm_publish` makes
/// what it holds then a new version. Any memory will do (malloc, static, mmap, a Fortran
/// ALLOCATABLE): it need not be page-aligned, only aligned for its element type. Every
/// region must be wrapped before the first publish.
///
/// `name`: 1 to 63 letters, digits, `_`, `-`, `.` or `/`.
///
/// # Safety
/// `producer` is a live producer handle no other thread is using; `name` is a
/// NUL-terminated string; `shape` points to `ndim` sizes; `data` points to an array of
/// `shape[0] * ... * shape[ndim-1]` elements of `dtype`, which must stay allocated (not
/// freed, unmapped or DEALLOCATEd) until `tcasm_producer_destroy(producer)` has returned.
#[no_mangle]
pub unsafe extern "C" fn tcasm_wrap(
    producer: *mut tcasm_producer,
    name: *const c_char,
    dtype: tcasm_dtype,
    data: *mut c_void,
    shape: *const usize,
    ndim: usize,
) -> tcasm_status {
    let body = |p: &mut Producer| {
        // SAFETY: a NUL-terminated string, as the caller promises.
        let name = unsafe { text(name, "name") }?;
        let context = |what: String| format!("region {name:?}: {what}");
        if data.is_null() {
            return Err(fail(TCASM_ERR_NULL, context("data is NULL".into())));
        }
        if shape.is_null() {
            return Err(fail(TCASM_ERR_NULL, context("shape is NULL".into())));
        }
        if ndim == 0 || ndim > MAX_DIMS {
            return Err(fail(
                TCASM_ERR_INVALID,
                context(format!("ndim is {ndim}; a shape has 1 to {MAX_DIMS} dimensions")),
            ));
        }
        // SAFETY: not NULL, and `ndim` sizes long as the caller promises; `ndim` is small.
        let shape = unsafe { std::slice::from_raw_parts(shape, ndim) };
        let dtype = Dtype::from_code(dtype).ok_or_else(|| {
            fail(TCASM_ERR_INVALID, context(format!("unknown element type {dtype}; use one of TCASM_U8 .. TCASM_F64")))
        })?;
        macro_rules! wrap {
            ($t:ty) => {
                // SAFETY: `data` holds the shape's elements of `dtype` (= $t) and stays
                // allocated until the producer is destroyed, as the caller promises.
                unsafe { p.wrap_raw::<$t>(name, data.cast::<$t>(), shape) }
            };
        }
        let wrapped = match dtype {
            Dtype::U8 => wrap!(u8),
            Dtype::I8 => wrap!(i8),
            Dtype::U16 => wrap!(u16),
            Dtype::I16 => wrap!(i16),
            Dtype::U32 => wrap!(u32),
            Dtype::I32 => wrap!(i32),
            Dtype::U64 => wrap!(u64),
            Dtype::I64 => wrap!(i64),
            Dtype::F32 => wrap!(f32),
            Dtype::F64 => wrap!(f64),
        };
        wrapped.map_err(region_failure)
    };
    // SAFETY: the producer handle is live and unshared, as the caller promises.
    unsafe { with_producer("tcasm_wrap", producer, body) }
}

/// Publishes a new version: what the wrapped arrays hold now becomes visible to observers
/// (only pages written since the last publish are copied). Never waits for an observer.
/// Stores the version number in `*version` unless `version` is NULL. Call it where the
/// arrays are consistent, e.g. at the end of a time step.
///
/// # Safety
/// `producer` is a live producer handle no other thread is using; `version` is NULL or
/// points to writable storage for one `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn tcasm_publish(producer: *mut tcasm_producer, version: *mut u64) -> tcasm_status {
    let body = |p: &mut Producer| {
        let v = p.publish().map_err(publish_failure)?;
        if !version.is_null() {
            // SAFETY: not NULL, so writable storage for a u64, as the caller promises.
            unsafe { version.write(v) };
        }
        Ok(())
    };
    // SAFETY: the producer handle is live and unshared, as the caller promises.
    unsafe { with_producer("tcasm_publish", producer, body) }
}

/// Waits until the last published version is visible to observers. Only the `"deferred"`
/// tracker makes a version visible after `tcasm_publish` returns; for the others this returns
/// at once.
///
/// # Safety
/// `producer` is a live producer handle no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn tcasm_flush(producer: *mut tcasm_producer) -> tcasm_status {
    let body = |p: &mut Producer| {
        p.flush();
        Ok(())
    };
    // SAFETY: the producer handle is live and unshared, as the caller promises.
    unsafe { with_producer("tcasm_flush", producer, body) }
}

/// Sets how many threads share each publish's comparing and copying (default 1; 0 counts
/// as 1). Two threads copy about 1.4 times as fast as one where one core does not fill the
/// memory bandwidth; the simulation's own threads are usually idle at the publish point.
///
/// # Safety
/// `producer` is a live producer handle no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn tcasm_set_copy_threads(producer: *mut tcasm_producer, threads: usize) -> tcasm_status {
    let body = |p: &mut Producer| {
        p.set_copy_threads(threads);
        Ok(())
    };
    // SAFETY: the producer handle is live and unshared, as the caller promises.
    unsafe { with_producer("tcasm_set_copy_threads", producer, body) }
}

/// Restarts from a checkpoint: loads the newest complete checkpoint found in `dirs` into the
/// wrapped arrays and numbers the next published version after it. `dirs` is a
/// colon-separated list of checkpoint directories, level 1 first (`"/local/ckpt:/pfs/ckpt"`);
/// the newest complete version in any of them wins, the first directory on a tie. Call it
/// after wrapping every array and before the first `tcasm_publish`. A rank of an MPI job
/// (a name with `%r`) loads instead its part of the newest *global* version (complete for
/// every rank, `tcasm checkpoint --all`), from `DIR/<its name>` of the first level holding
/// it: every rank restores the same version.
///
/// Returns `TCASM_OK` and stores the version in `*version` (unless NULL);
/// `TCASM_ERR_NO_CHECKPOINT` when no directory holds a complete checkpoint (a first run: the
/// arrays are untouched); `TCASM_ERR_INVALID` when the checkpoint does not match the wrapped
/// arrays (name, element type or shape; `tcasm_last_error` names the region and what
/// differs) or fails its checksums. Nothing is written into any array unless every region
/// matches and every checksum verifies.
///
/// # Safety
/// `producer` is a live producer handle no other thread is using; `dirs` is a NUL-terminated
/// string; `version` is NULL or points to writable storage for one `uint64_t`. No other
/// thread may use the wrapped arrays during the call.
#[no_mangle]
pub unsafe extern "C" fn tcasm_restore(
    producer: *mut tcasm_producer,
    dirs: *const c_char,
    version: *mut u64,
) -> tcasm_status {
    let body = |p: &mut Producer| {
        // SAFETY: a NUL-terminated string, as the caller promises.
        let list = split_dirs(unsafe { text(dirs, "dirs") }?);
        if list.is_empty() {
            return Err(fail(TCASM_ERR_INVALID, "dirs names no directory; give \"LOCAL\" or \"LOCAL:PERSISTENT\""));
        }
        let paths: Vec<&std::path::Path> = list.iter().map(|d| d.as_path()).collect();
        // Every region of a C producer is lent (tcasm_wrap): there are no Rust handles.
        let found = p.restore(&paths, &mut []).map_err(restart_failure)?;
        let Some(found) = found else {
            return Err(fail(
                TCASM_ERR_NO_CHECKPOINT,
                format!(
                    "no complete checkpoint in {}",
                    list.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
                ),
            ));
        };
        if !version.is_null() {
            // SAFETY: not NULL, so writable storage for a u64, as the caller promises.
            unsafe { version.write(found.version) };
        }
        Ok(())
    };
    // SAFETY: the producer handle is live and unshared, as the caller promises.
    unsafe { with_producer("tcasm_restore", producer, body) }
}

/// Stores what the producer has done so far in `*stats`.
///
/// # Safety
/// `producer` is a live producer handle no other thread is using; `stats` points to
/// writable storage for one `tcasm_producer_stats`.
#[no_mangle]
pub unsafe extern "C" fn tcasm_stats(producer: *mut tcasm_producer, stats: *mut tcasm_producer_stats) -> tcasm_status {
    let body = |p: &mut Producer| {
        if stats.is_null() {
            return Err(fail(TCASM_ERR_NULL, "stats is NULL"));
        }
        let s = p.stats();
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let out = tcasm_producer_stats {
            versions: s.versions,
            last_pages_copied: s.last_pages_copied as u64,
            last_publish_ns: ns(s.last_publish),
            total_publish_ns: ns(s.total_publish),
            store_bytes: s.store_bytes,
            live_pins: s.live_pins as u64,
            mapping_runs: s.mapping_runs as u64,
            planes: s.planes as u64,
            pages: s.pages as u64,
            reserve_bytes: s.reserve_bytes,
        };
        // SAFETY: not NULL, so writable storage for a tcasm_producer_stats, as the caller promises.
        unsafe { stats.write(out) };
        Ok(())
    };
    // SAFETY: the producer handle is live and unshared, as the caller promises.
    unsafe { with_producer("tcasm_stats", producer, body) }
}

/// The tracker the producer uses: `"auto"` (async tracking, and comparison instead for the
/// chunks of memory mostly written every version), `"async"`, `"sync"`, `"deferred"` or `"copy"` (what `"auto"` falls
/// back to where the kernel lacks async write-protection). A static string; NULL if
/// `producer` is NULL.
///
/// # Safety
/// `producer` is NULL or a live producer handle no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn tcasm_producer_tracker(producer: *const tcasm_producer) -> *const c_char {
    // SAFETY: NULL or live, as the caller promises; `as_ref` maps NULL to None.
    let Some(handle) = (unsafe { producer.as_ref() }) else {
        return std::ptr::null();
    };
    let name: &'static CStr = match handle.producer.tracker() {
        TrackerKind::Async => c"async",
        TrackerKind::Sync => c"sync",
        TrackerKind::Deferred => c"deferred",
        TrackerKind::Copy => c"copy",
        TrackerKind::Auto => c"auto",
    };
    name.as_ptr()
}

/// Destroys a producer: observers are told it is gone (the snapshots they hold stay
/// readable) and the endpoint is removed. The wrapped arrays are the caller's again and may
/// be freed after this returns. NULL is allowed and does nothing.
///
/// # Safety
/// `producer` is NULL or a live producer handle no other thread is using; it is invalid
/// after this call.
#[no_mangle]
pub unsafe extern "C" fn tcasm_producer_destroy(producer: *mut tcasm_producer) {
    if producer.is_null() {
        return;
    }
    // SAFETY: a live handle from Box::into_raw in tcasm_producer_create_with, not used again.
    let handle = unsafe { Box::from_raw(producer) };
    // A panic while dropping must not unwind into C; the memory is then leaked, never
    // left reachable.
    let _ = guard("tcasm_producer_destroy", || {
        drop(handle);
        Ok(())
    });
}

/// A static description of a status code (e.g. "another producer has this name"); unknown
/// codes get "unknown tcasm status". For what exactly went wrong, see `tcasm_last_error`.
#[no_mangle]
pub extern "C" fn tcasm_strerror(status: c_int) -> *const c_char {
    let text: &'static CStr = match tcasm_status::ALL.into_iter().find(|s| *s as c_int == status) {
        Some(TCASM_OK) => c"success",
        Some(TCASM_ERR_NULL) => c"a required pointer argument is NULL",
        Some(TCASM_ERR_INVALID) => c"invalid argument",
        Some(TCASM_ERR_NAME_IN_USE) => c"another producer has this name",
        Some(TCASM_ERR_ENDPOINT) => c"the endpoint could not be set up",
        Some(TCASM_ERR_TRACKER) => c"the tracker asked for is not available here",
        Some(TCASM_ERR_DUPLICATE) => c"a region of this name exists already",
        Some(TCASM_ERR_AFTER_PUBLISH) => c"regions must be wrapped before the first publish",
        Some(TCASM_ERR_MISALIGNED) => c"the buffer is not aligned for its element type",
        Some(TCASM_ERR_CANNOT_TRACK) => c"the tracker cannot watch this buffer",
        Some(TCASM_ERR_NO_REGIONS) => c"nothing to publish: wrap a region first",
        Some(TCASM_ERR_PUBLISH) => c"publishing failed",
        Some(TCASM_ERR_IO) => c"a system call failed",
        Some(TCASM_ERR_INTERNAL) => c"internal error in tcasm",
        Some(TCASM_ERR_NO_CHECKPOINT) => c"no complete checkpoint to restore (a first run)",
        None => c"unknown tcasm status",
    };
    text.as_ptr()
}

/// The message of the calling thread's last failed tcasm call (e.g. `tcasm_wrap: region
/// "t": buffer at 0x... is not aligned for f64 (8 bytes)`), or "" if none failed yet. The
/// string belongs to tcasm and stays valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn tcasm_last_error() -> *const c_char {
    // The pointer is to the CString's heap buffer, which lives until it is replaced.
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: tcasm_last_error returns a NUL-terminated string valid until the next failure.
        unsafe { CStr::from_ptr(tcasm_last_error()) }.to_string_lossy().into_owned()
    }

    /// No input makes the library panic, so the panic is made here, inside the same guard
    /// every entry point runs its body in: it is reported as `TCASM_ERR_INTERNAL`, and the
    /// producer then refuses everything but destroy.
    #[test]
    fn a_caught_panic_is_internal_and_only_destroy_works_after() {
        let dir = std::env::temp_dir().join(format!("tcasm-capi-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::env::set_var("TCASM_DIR", &dir);
        let mut p: *mut tcasm_producer = std::ptr::null_mut();
        // SAFETY: valid C strings and a valid out pointer.
        assert_eq!(unsafe { tcasm_producer_create_with(c"internal".as_ptr(), c"copy".as_ptr(), 0, &mut p) }, TCASM_OK);
        let mut field = [0.0f64; 512];
        let shape = [512usize];
        // SAFETY: `p` is live; `field` and `shape` outlive the producer.
        let wrapped =
            unsafe { tcasm_wrap(p, c"field".as_ptr(), TCASM_F64, field.as_mut_ptr().cast(), shape.as_ptr(), 1) };
        assert_eq!(wrapped, TCASM_OK, "{}", last_error());

        // SAFETY: `p` is live and used by this thread only.
        let status = unsafe { with_producer("tcasm_publish", p, |_| panic!("a bug")) };
        assert_eq!(status, TCASM_ERR_INTERNAL);
        assert!(last_error().contains("internal error") && last_error().contains("a bug"), "{}", last_error());

        let mut version = 0u64;
        let mut stats = std::mem::MaybeUninit::<tcasm_producer_stats>::zeroed();
        // SAFETY: `p` is live; the out pointers are valid.
        let refused = unsafe { [tcasm_publish(p, &mut version), tcasm_flush(p), tcasm_stats(p, stats.as_mut_ptr())] };
        assert_eq!(refused, [TCASM_ERR_INTERNAL; 3]);
        assert!(last_error().contains("destroy it"), "{}", last_error());
        assert_eq!(version, 0);
        // SAFETY: `p` is live; destroyed once.
        unsafe { tcasm_producer_destroy(p) };
        // The endpoint went with it: the name is free again.
        let mut q: *mut tcasm_producer = std::ptr::null_mut();
        // SAFETY: as above.
        assert_eq!(unsafe { tcasm_producer_create_with(c"internal".as_ptr(), c"copy".as_ptr(), 0, &mut q) }, TCASM_OK);
        // SAFETY: `q` is live; destroyed once.
        unsafe { tcasm_producer_destroy(q) };
        let _ = std::fs::remove_dir_all(&dir);
    }
}
