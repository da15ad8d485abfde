//! Placeholder until written.
#[derive(clap::Args)]
pub struct Args {}
#[derive(clap::Args)]
pub struct ObserverArgs {}
pub fn run(_: Args) -> crate::Result { Err("not written yet".into()) }
pub fn observe(_: ObserverArgs) -> crate::Result { Err("not written yet".into()) }
