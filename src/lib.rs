//! tcasm: consistent, versioned snapshots of a producer's live memory, shared with observer
//! processes on the same node.
//!
//! A [`Producer`] wraps memory it already has (or allocates regions), and each
//! [`Producer::publish`] makes a new version visible: only the pages written since the last
//! publish are copied, found by the kernel's write-protect tracking ([`TrackerKind`]). An
//! [`Observer`] attaches by name and takes [`Snapshot`]s: typed, read-only views that never
//! change while held, however fast the producer goes.
//!
//! Layers, top to bottom: [`producer`] / [`observer`] (the API), `endpoint` (naming and
//! attach), `store` (versioned pages in memfds), `track` (dirty pages), `sys` (the only raw
//! system calls). The four lower layers are private; what a tool needs of them is the few
//! functions re-exported here ([`list_producers`], [`tracking_support`], [`page_size`],
//! [`monotonic_ns`]). The cargo feature `internals` makes them public for tcasm's own tests
//! and benches; it is not a stable API.
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod error;
pub mod job;
pub mod observer;
pub mod producer;
pub mod region;
mod view;

/// The tools' generator (SplitMix64, `tools/tcasm/rng.rs`) for the unit tests' pseudo-random
/// cases: one generator in the repository.
#[cfg(test)]
#[path = "../tools/tcasm/rng.rs"]
#[allow(dead_code)]
mod test_rng;

// The layers under the API: public only for tcasm's own tests (the feature `internals`).
#[cfg(feature = "internals")]
pub mod endpoint;
#[cfg(not(feature = "internals"))]
pub(crate) mod endpoint;
#[cfg(feature = "internals")]
pub mod store;
#[cfg(not(feature = "internals"))]
pub(crate) mod store;
#[cfg(feature = "internals")]
pub mod sys;
#[cfg(not(feature = "internals"))]
pub(crate) mod sys;
#[cfg(feature = "internals")]
pub mod track;
#[cfg(not(feature = "internals"))]
pub(crate) mod track;

pub use error::{CreateError, EndpointError, PublishError, ReadError, RegionError};
pub use job::Job;
pub use observer::{Observer, Snapshot};
pub use producer::{Freed, Producer, ProducerOptions, ProducerStats};
pub use region::{Dtype, Element, Region, RegionHandle, RegionInfo};
pub use track::TrackerKind;

pub use endpoint::{directory as endpoint_directory, list as list_producers, Listed};
pub use sys::{monotonic_ns, page_size};
pub use track::{detect as tracking_support, Detected};
