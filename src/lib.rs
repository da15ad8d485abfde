//! tcasm: consistent, versioned snapshots of a producer's live memory, shared with observer
//! processes on the same node.
#![deny(unsafe_code)]

pub mod error;
pub mod region;
pub mod store;
pub mod sys;
pub mod track;
