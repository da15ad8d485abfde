//! The only place where tcasm makes raw system calls.
//!
//! Every other module is `#![deny(unsafe_code)]` (set at the crate root); this one opts out.
//! Each wrapper is thin and typed: it takes and returns Rust types, turns `-1`/`errno` into
//! `nix::Error`, and carries a `// SAFETY:` line on every `unsafe` block.
//!
//! Where a well-kept crate covers a call we use it: `nix` (mmap, fcntl, sockets), `memfd`
//! (memfd + seals), `userfaultfd` (the fd, register, write-protect). Raw `libc` is used only
//! for what no crate covers: `PAGEMAP_SCAN` ([`pagemap`]) and `futex` ([`futex`]).
#![allow(unsafe_code)]

pub mod fdpass;
pub mod futex;
pub mod lock;
pub mod mem;
pub mod memfd;
pub mod pagemap;
pub mod uffd;

use std::sync::OnceLock;

/// The base page size of this machine, in bytes.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as usize)
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process on the node, so a
/// producer's publish time and an observer's read time can be subtracted.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// `vm.max_map_count`: how many mappings one process may hold.
pub fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}
