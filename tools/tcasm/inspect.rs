//! Placeholder until written.
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_: Args) -> crate::Result { Err("not written yet".into()) }
pub fn ls() -> crate::Result { Err("not written yet".into()) }
