/* tcasm: share consistent, versioned snapshots of a program's live arrays with observer
 * processes on the same node.
 *
 * Generated from capi/src/lib.rs by cbindgen: do not edit. Regenerate with
 *   TCASM_BLESS=1 cargo test --release -p tcasm-capi --test header
 *
 * Link with -ltcasm (libtcasm.so or libtcasm.a from `cargo build --release -p tcasm-capi`;
 * the static library also needs -lpthread -ldl -lm). */

#ifndef TCASM_H
#define TCASM_H

#include <stddef.h>
#include <stdint.h>

// The most dimensions a shape may have: 8, enough for a Fortran array of any rank up to 7
// (Fortran 2003's limit) and for the 6-D phase space of transport codes. HDF5 allows 32;
// tcasm keeps one shared-memory word per dimension, so it stops at 8.
#define TCASM_MAX_DIMS 8

// What a call did: `TCASM_OK`, or why it failed. `tcasm_strerror` names a status;
// `tcasm_last_error` describes the last failure of the calling thread in full.
typedef enum tcasm_status {
  // Success.
  TCASM_OK = 0,
  // A pointer argument that must not be NULL was NULL.
  TCASM_ERR_NULL = 1,
  // An argument is not valid: a name that is not UTF-8 or has characters tcasm does not
  // allow, an unknown element type or tracker, a shape with 0 or more than 8 dimensions or
  // no elements, a buffer that overlaps one wrapped already.
  TCASM_ERR_INVALID = 2,
  // Another live producer has this endpoint name.
  TCASM_ERR_NAME_IN_USE = 3,
  // The endpoint directory or socket could not be set up.
  TCASM_ERR_ENDPOINT = 4,
  // The tracker asked for is not available on this kernel.
  TCASM_ERR_TRACKER = 5,
  // A region of this name was wrapped already.
  TCASM_ERR_DUPLICATE = 6,
  // Regions must all be wrapped before the first `tcasm_publish`.
  TCASM_ERR_AFTER_PUBLISH = 7,
  // The buffer is not aligned for its element type.
  TCASM_ERR_MISALIGNED = 8,
  // The tracker cannot watch this buffer (a file mapping or a program's initialised static
  // data; for the sync trackers, a buffer sharing pages with other data; or a buffer
  // another producer of this process wraps already: `tcasm_last_error` says which).
  TCASM_ERR_CANNOT_TRACK = 9,
  // `tcasm_publish` before any region was wrapped.
  TCASM_ERR_NO_REGIONS = 10,
  // Publishing failed: finding written pages or storing them (out of memory).
  TCASM_ERR_PUBLISH = 11,
  // A system call failed.
  TCASM_ERR_IO = 12,
  // A bug in tcasm (a caught panic). The producer may only be destroyed.
  TCASM_ERR_INTERNAL = 13,
  // `tcasm_restore` found no complete checkpoint in any directory: a first run.
  TCASM_ERR_NO_CHECKPOINT = 14,
} tcasm_status;

// A producer: an endpoint observers attach to and the regions it shares. Opaque; made by
// `tcasm_producer_create`, freed by `tcasm_producer_destroy`. Not thread-safe: one thread at
// a time may call functions on it (the simulation may keep writing its arrays from any
// number of threads).
typedef struct tcasm_producer tcasm_producer;

// An element type: one of the `TCASM_U8` ... `TCASM_F64` constants.
typedef uint32_t tcasm_dtype;

// What a producer has done so far, as `tcasm_stats` reports it.
typedef struct tcasm_producer_stats {
  // Versions published.
  uint64_t versions;
  // Pages the last publish found changed and copied (what its page map names as changed).
  uint64_t last_pages_copied;
  // Nanoseconds spent in the last publish.
  uint64_t last_publish_ns;
  // Nanoseconds spent in all publishes.
  uint64_t total_publish_ns;
  // Bytes of memory the snapshot store holds.
  uint64_t store_bytes;
  // Snapshots observers held at the last publish.
  uint64_t live_pins;
  // Mappings an observer needs for the last version.
  uint64_t mapping_runs;
  // The snapshot pool's size, in copies of the page space (address space, not memory).
  uint64_t planes;
  // Pages in the page space (all regions).
  uint64_t pages;
  // Bytes of free slots the store keeps allocated for the next publishes (part of
  // `store_bytes`).
  uint64_t reserve_bytes;
} tcasm_producer_stats;

// `uint8_t`
#define TCASM_U8 1

// `int8_t`
#define TCASM_I8 2

// `uint16_t`
#define TCASM_U16 3

// `int16_t`
#define TCASM_I16 4

// `uint32_t`
#define TCASM_U32 5

// `int32_t` (Fortran `integer(c_int32_t)`)
#define TCASM_I32 6

// `uint64_t`
#define TCASM_U64 7

// `int64_t` (Fortran `integer(c_int64_t)`)
#define TCASM_I64 8

// `float` (Fortran `real(c_float)`)
#define TCASM_F32 9

// `double` (Fortran `real(c_double)`)
#define TCASM_F64 10

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// Creates a producer named `name` with the default options (the fastest tracker the kernel
// offers) and stores it in `*out`. Observers attach to it by that name (`tcasm ls` lists the
// live ones); endpoints live in `$TCASM_DIR`, else `$XDG_RUNTIME_DIR/tcasm`, else
// `/tmp/tcasm-$UID`.
//
// `name`: 1 to 64 letters, digits, `_`, `-` or `.`, not starting with `.`. A name holding
// `%r` (`"heat.%r"`) makes the producer a rank of an MPI job: `%r` becomes the rank
// (`OMPI_COMM_WORLD_RANK`, `PMI_RANK`, `PMIX_RANK` or `SLURM_PROCID`), and the job's size
// (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`, `SLURM_NTASKS`) travels with its versions;
// `TCASM_ERR_INVALID` when neither is set. On failure `*out` is set to NULL.
//
// # Safety
// `name` is a NUL-terminated string; `out` points to writable storage for one pointer.
enum tcasm_status tcasm_producer_create(const char *name, struct tcasm_producer **out);

// Like `tcasm_producer_create`, with options: `tracker` names how written pages are found:
// `"auto"` (or NULL: the default), `"async"`, `"sync"`, `"deferred"` or `"copy"` (no kernel
// tracking: every page is compared with the last version and copied if it changed; works
// everywhere). `max_observers` is the
// most observers attached at once (0: the default, 64).
//
// # Safety
// `name` is a NUL-terminated string; `tracker` is NULL or a NUL-terminated string; `out`
// points to writable storage for one pointer.
enum tcasm_status tcasm_producer_create_with(const char *name,
                                             const char *tracker,
                                             size_t max_observers,
                                             struct tcasm_producer **out);

// Shares the caller's array `data` as region `name`: `ndim` dimensions of sizes
// `shape[0..ndim]` (C order: the last dimension varies fastest; a Fortran array is passed
// with its dimensions reversed, as `fortran/tcasm.f90` does), elements of type `dtype`.
// The array stays the caller's: keep writing it as usual, and each `tcasm_publish` makes
// what it holds then a new version. Any memory will do (malloc, static, mmap, a Fortran
// ALLOCATABLE): it need not be page-aligned, only aligned for its element type. Every
// region must be wrapped before the first publish.
//
// `name`: 1 to 63 letters, digits, `_`, `-`, `.` or `/`.
//
// # Safety
// `producer` is a live producer handle no other thread is using; `name` is a
// NUL-terminated string; `shape` points to `ndim` sizes; `data` points to an array of
// `shape[0] * ... * shape[ndim-1]` elements of `dtype`, which must stay allocated (not
// freed, unmapped or DEALLOCATEd) until `tcasm_producer_destroy(producer)` has returned.
enum tcasm_status tcasm_wrap(struct tcasm_producer *producer,
                             const char *name,
                             tcasm_dtype dtype,
                             void *data,
                             const size_t *shape,
                             size_t ndim);

// Publishes a new version: what the wrapped arrays hold now becomes visible to observers
// (only pages written since the last publish are copied). Never waits for an observer.
// Stores the version number in `*version` unless `version` is NULL. Call it where the
// arrays are consistent, e.g. at the end of a time step.
//
// # Safety
// `producer` is a live producer handle no other thread is using; `version` is NULL or
// points to writable storage for one `uint64_t`.
enum tcasm_status tcasm_publish(struct tcasm_producer *producer, uint64_t *version);

// Waits until the last published version is visible to observers. Only the `"deferred"`
// tracker makes a version visible after `tcasm_publish` returns; for the others this returns
// at once.
//
// # Safety
// `producer` is a live producer handle no other thread is using.
enum tcasm_status tcasm_flush(struct tcasm_producer *producer);

// Sets how many threads share each publish's comparing and copying (default 1; 0 counts
// as 1). Two threads copy about 1.4 times as fast as one where one core does not fill the
// memory bandwidth; the simulation's own threads are usually idle at the publish point.
//
// # Safety
// `producer` is a live producer handle no other thread is using.
enum tcasm_status tcasm_set_copy_threads(struct tcasm_producer *producer, size_t threads);

// Restarts from a checkpoint: loads the newest complete checkpoint found in `dirs` into the
// wrapped arrays and numbers the next published version after it. `dirs` is a
// colon-separated list of checkpoint directories, level 1 first (`"/local/ckpt:/pfs/ckpt"`);
// the newest complete version in any of them wins, the first directory on a tie. Call it
// after wrapping every array and before the first `tcasm_publish`. A rank of an MPI job
// (a name with `%r`) loads instead its part of the newest *global* version (complete for
// every rank, `tcasm checkpoint --all`), from `DIR/<its name>` of the first level holding
// it: every rank restores the same version.
//
// Returns `TCASM_OK` and stores the version in `*version` (unless NULL);
// `TCASM_ERR_NO_CHECKPOINT` when no directory holds a complete checkpoint (a first run: the
// arrays are untouched); `TCASM_ERR_INVALID` when the checkpoint does not match the wrapped
// arrays (name, element type or shape; `tcasm_last_error` names the region and what
// differs) or fails its checksums. Nothing is written into any array unless every region
// matches and every checksum verifies.
//
// # Safety
// `producer` is a live producer handle no other thread is using; `dirs` is a NUL-terminated
// string; `version` is NULL or points to writable storage for one `uint64_t`. No other
// thread may use the wrapped arrays during the call.
enum tcasm_status tcasm_restore(struct tcasm_producer *producer,
                                const char *dirs,
                                uint64_t *version);

// Stores what the producer has done so far in `*stats`.
//
// # Safety
// `producer` is a live producer handle no other thread is using; `stats` points to
// writable storage for one `tcasm_producer_stats`.
enum tcasm_status tcasm_stats(struct tcasm_producer *producer, struct tcasm_producer_stats *stats);

// The tracker the producer uses: `"auto"` (async tracking, and comparison instead for the
// chunks of memory mostly written every version), `"async"`, `"sync"`, `"deferred"` or `"copy"` (what `"auto"` falls
// back to where the kernel lacks async write-protection). A static string; NULL if
// `producer` is NULL.
//
// # Safety
// `producer` is NULL or a live producer handle no other thread is using.
const char *tcasm_producer_tracker(const struct tcasm_producer *producer);

// Destroys a producer: observers are told it is gone (the snapshots they hold stay
// readable) and the endpoint is removed. The wrapped arrays are the caller's again and may
// be freed after this returns. NULL is allowed and does nothing.
//
// # Safety
// `producer` is NULL or a live producer handle no other thread is using; it is invalid
// after this call.
void tcasm_producer_destroy(struct tcasm_producer *producer);

// A static description of a status code (e.g. "another producer has this name"); unknown
// codes get "unknown tcasm status". For what exactly went wrong, see `tcasm_last_error`.
const char *tcasm_strerror(int status);

// The message of the calling thread's last failed tcasm call (e.g. `tcasm_wrap: region
// "t": buffer at 0x... is not aligned for f64 (8 bytes)`), or "" if none failed yet. The
// string belongs to tcasm and stays valid until the next failing call on this thread.
const char *tcasm_last_error(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* TCASM_H */
