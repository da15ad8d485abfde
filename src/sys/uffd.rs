//! userfaultfd: open it with the features we need, register ranges for write-protect
//! tracking, write-protect them.
//!
//! The descriptor is opened here with the system call and the `UFFDIO_API` handshake, then
//! handed to the `userfaultfd` crate for everything else (register, write-protect, events).
//! The crate's own builder cannot be used to open it: it tries `/dev/userfaultfd` first and
//! gives up when that node exists but is not accessible (`crw------- root`), which is every
//! unprivileged user's case, although the system call with `UFFD_USER_MODE_ONLY` works for
//! them. It also does not return the features the kernel offers, which we report.
use std::ffi::c_void;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use userfaultfd::{RegisterMode, Uffd};

/// `UFFD_FEATURE_WP_UNPOPULATED`: pages never touched are write-protected too.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself and leaves the
/// "written" mark for `PAGEMAP_SCAN` to find.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `UFFD_USER_MODE_ONLY`: only faults raised in user mode.
const USER_MODE_ONLY: libc::c_int = 1;

/// `struct uffdio_api`, from the kernel header's bindings.
use userfaultfd_sys::uffdio_api as UffdioApi;

/// `_IOWR(0xAA, _UFFDIO_API, struct uffdio_api)`, sized by the bindings' struct.
const UFFDIO_API: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<UffdioApi>() as libc::c_ulong) << 16) | (0xaa << 8) | userfaultfd_sys::_UFFDIO_API as libc::c_ulong;

/// Why a userfaultfd could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The system call failed (no `CONFIG_USERFAULTFD`, a seccomp filter, or a policy).
    Unavailable(nix::Error),
    /// The kernel refused the features asked for; it offers `offered`.
    FeaturesRefused { errno: nix::Error, offered: u64 },
}

fn syscall(user_mode_only: bool) -> nix::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | if user_mode_only { USER_MODE_ONLY } else { 0 };
    // SAFETY: userfaultfd(2) takes only flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    let fd = nix::errno::Errno::result(fd)? as libc::c_int;
    // SAFETY: the kernel just created `fd` for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `UFFDIO_API` handshake; returns the features the kernel grants (all it offers when
/// `features` is 0).
fn handshake(fd: &OwnedFd, features: u64) -> nix::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut api = UffdioApi { api: userfaultfd_sys::UFFD_API, features, ioctls: 0 };
    // SAFETY: `api` is a valid uffdio_api that outlives the call; the kernel reads and writes
    // only it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) };
    nix::errno::Errno::result(r)?;
    Ok(api.features)
}

/// The features this kernel offers (`UFFD_FEATURE_*` bits), through a user-mode-only fd.
pub fn offered_features() -> Result<u64, nix::Error> {
    handshake(&syscall(true)?, 0)
}

/// Opens a userfaultfd with `features` (`UFFD_FEATURE_*` bits).
///
/// `user_mode_only` asks only for faults raised in user mode, which any user may do even
/// when `vm.unprivileged_userfaultfd` is 0; faults raised while the kernel writes into the
/// range (e.g. `read(2)` into it) then fail with `EFAULT` unless the kernel resolves them
/// itself, as it does in asynchronous mode.
pub fn open(features: u64, user_mode_only: bool) -> Result<Uffd, OpenError> {
    let fd = syscall(user_mode_only).map_err(OpenError::Unavailable)?;
    if let Err(errno) = handshake(&fd, features) {
        let offered = offered_features().unwrap_or(0);
        return Err(OpenError::FeaturesRefused { errno, offered });
    }
    // SAFETY: `fd` is a userfaultfd after a successful handshake, owned by us until now.
    Ok(unsafe { Uffd::from_raw_fd(fd.into_raw_fd()) })
}

fn errno_of(e: userfaultfd::Error) -> nix::Error {
    match e {
        userfaultfd::Error::SystemError(errno) => nix::Error::from_raw(errno as i32),
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

/// Removes the write protection of `[start, start + len)` and wakes the threads waiting to
/// write there.
pub fn unprotect(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    uffd.remove_write_protection(start as *mut c_void, len, true).map_err(errno_of)
}

/// Wakes the threads waiting on a fault in `[start, start + len)`.
pub fn wake(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    uffd.wake(start as *mut c_void, len).map_err(errno_of)
}

/// Stops tracking `[start, start + len)`.
pub fn unregister(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    uffd.unregister(start as *mut c_void, len).map_err(errno_of)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_number_matches_the_uapi_header() {
        // The number the bindings took from <linux/userfaultfd.h>, against ours.
        assert_eq!(super::UFFDIO_API, libc::c_ulong::from(userfaultfd_sys::UFFDIO_API));
    }
}
