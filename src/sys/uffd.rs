//! userfaultfd through the `userfaultfd` crate: open with the features we need, register
//! ranges for write-protect tracking, and write-protect them.
//!
//! The crate's builder hands any feature bits to `UFFDIO_API`, so the asynchronous
//! write-protect features (`WP_ASYNC`, `WP_UNPOPULATED`, Linux 6.7), which the crate does not
//! name, go through it as raw bits.
use std::ffi::c_void;

use userfaultfd::{FeatureFlags, RegisterMode, Uffd, UffdBuilder};

/// `UFFD_FEATURE_WP_UNPOPULATED`: pages never touched are write-protected too.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself and leaves the
/// "written" mark for `PAGEMAP_SCAN` to find.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// Why a userfaultfd could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The syscall itself failed (no `CONFIG_USERFAULTFD`, a seccomp filter, or a policy).
    Unavailable(nix::Error),
    /// The kernel refused the features asked for (too old a kernel).
    FeaturesRefused(nix::Error),
}

/// Opens a userfaultfd with `features` (`UFFD_FEATURE_*` bits).
///
/// `user_mode_only` asks only for faults raised in user mode, which any user may do even
/// when `vm.unprivileged_userfaultfd` is 0; faults raised while the kernel writes into the
/// range (e.g. `read(2)` into it) then fail with `EFAULT` unless the kernel resolves them
/// itself, as it does in asynchronous mode.
pub fn open(features: u64, user_mode_only: bool) -> Result<Uffd, OpenError> {
    let mut builder = UffdBuilder::new();
    builder.close_on_exec(true).non_blocking(true).user_mode_only(user_mode_only);
    if let Err(e) = builder.create() {
        return Err(OpenError::Unavailable(errno_of(e)));
    }
    builder.require_features(FeatureFlags::from_bits_retain(features));
    builder.create().map_err(|e| OpenError::FeaturesRefused(errno_of(e)))
}

fn errno_of(e: userfaultfd::Error) -> nix::Error {
    match e {
        userfaultfd::Error::SystemError(errno) => nix::Error::from_raw(errno as i32),
        userfaultfd::Error::OpenDevUserfaultfd(io) => {
            nix::Error::from_raw(io.raw_os_error().unwrap_or(libc::EIO))
        }
        _ => nix::Error::EINVAL,
    }
}

/// Registers `[start, start + len)` for write-protect tracking.
pub fn register_wp(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    uffd.register_with_mode(start as *mut c_void, len, RegisterMode::WRITE_PROTECT)
        .map(drop)
        .map_err(errno_of)
}

/// Write-protects `[start, start + len)`, which must be registered.
pub fn write_protect(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    uffd.write_protect(start as *mut c_void, len).map_err(errno_of)
}

/// Stops tracking `[start, start + len)`.
pub fn unregister(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    uffd.unregister(start as *mut c_void, len).map_err(errno_of)
}
