//! `tcasm demo` (to be written).
pub struct Args;
