//! tcasm: consistent, versioned snapshots of a producer's live memory, shared with observer
//! processes on the same node.
//!
//! A [`Producer`] wraps memory it already has (or allocates regions), and each
//! [`Producer::publish`] makes a new version visible: only the pages written since the last
//! publish are copied, found by the kernel's write-protect tracking ([`track`]). An
//! [`Observer`] attaches by name and takes [`Snapshot`]s: typed, read-only views that never
//! change while held, however fast the producer goes.
//!
//! Layers, top to bottom: [`producer`] / [`observer`] (the API), [`endpoint`] (naming and
//! attach), [`store`] (versioned pages in memfds), [`track`] (dirty pages), [`sys`] (the only
//! raw system calls).
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod endpoint;
pub mod error;
pub mod job;
pub mod observer;
pub mod producer;
pub mod region;
pub mod store;
pub mod sys;
pub mod track;
mod view;

pub use job::Job;
pub use error::{CreateError, EndpointError, PublishError, ReadError, RegionError};
pub use observer::{Observer, Snapshot};
pub use producer::{Freed, Producer, ProducerOptions, ProducerStats};
pub use region::{Dtype, Element, Region, RegionHandle, RegionInfo};
pub use track::TrackerKind;
