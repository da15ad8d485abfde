//! The only place where tcasm makes raw system calls.
//!
//! The crate root denies `unsafe_code`; this module opts out, as do the typed views over raw
//! memory (`crate::view`) and, at the narrowest scope, the callers of this module's `unsafe
//! fn`s, whose `# Safety` contracts only the caller's protocol can keep.
//! Each wrapper is thin and typed: it takes and returns Rust types, turns `-1`/`errno` into
//! `nix::Error`, and carries a `// SAFETY:` line on every `unsafe` block.
//!
//! Where a well-kept crate covers a call we use it: `nix` (mmap, madvise, fcntl and OFD
//! locks, SCM_RIGHTS sockets, sysconf, clocks, signals, and the ioctl request-code macros)
//! and `memfd` (memfd + seals). What no crate covers without a build-time dependency is
//! declared here from the kernel's uapi headers, each struct checked for its size, and called
//! through `libc`: userfaultfd (the system call and its ioctls, [`uffd`]), `PAGEMAP_SCAN`
//! ([`scan`]) and `futex` ([`futex`]). [`mem`] copies and compares bytes with raw pointers
//! (and x86-64 non-temporal stores): the memory it reads may be written meanwhile by other
//! threads or processes, which Rust references must not see.
#![allow(unsafe_code)]

pub mod fdpass;
pub mod futex;
pub mod lock;
pub mod mem;
pub mod memfd;
pub mod scan;
pub mod uffd;

use std::sync::OnceLock;

/// The base page size of this machine, in bytes.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |p| p as usize)
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
    std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(65_530)
}
