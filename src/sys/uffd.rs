//! userfaultfd: open it with the features we need, register ranges for write-protect
//! tracking, write-protect them, and read the write-protect faults of the sync trackers.
//!
//! The few kernel definitions this takes (`<linux/userfaultfd.h>`: four structs, five ioctl
//! numbers, the fault message) are written out here, each struct checked for its size, so
//! that tcasm builds with nothing but Rust: the `userfaultfd` crate's bindings are made by
//! bindgen at build time, which needs libclang on every machine that builds a crate depending
//! on tcasm. The descriptor is opened with the system call itself: `/dev/userfaultfd` is
//! `crw------- root` on most systems, while the system call with `UFFD_USER_MODE_ONLY` works
//! for any user.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `UFFD_FEATURE_WP_UNPOPULATED`: pages never touched are write-protected too.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself and leaves the
/// "written" mark for `PAGEMAP_SCAN` to find.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `UFFD_USER_MODE_ONLY`: only faults raised in user mode.
const USER_MODE_ONLY: libc::c_int = 1;
/// `UFFD_API`: the only API version.
const API: u64 = 0xaa;
/// `UFFDIO_REGISTER_MODE_WP`.
const REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`: protect (without it: unprotect, and wake the waiters).
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFD_EVENT_PAGEFAULT`, the `event` of a fault message.
const EVENT_PAGEFAULT: u8 = 0x12;
/// `sizeof(struct uffd_msg)`.
const MSG_SIZE: usize = 32;
/// Where a fault message holds `arg.pagefault.address`.
const MSG_ADDRESS: usize = 16;

/// `struct uffdio_api`.
#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Range {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
struct WriteProtect {
    range: Range,
    mode: u64,
}

const _: () = assert!(size_of::<Api>() == 24 && size_of::<Range>() == 16);
const _: () = assert!(size_of::<Register>() == 32 && size_of::<WriteProtect>() == 24);

/// `UFFDIO`: the userfaultfd ioctls' type.
const UFFDIO: u8 = 0xaa;
/// An ioctl request number, as `libc::ioctl` takes it.
type Request = nix::sys::ioctl::ioctl_num_type;
const UFFDIO_API: Request = nix::request_code_readwrite!(UFFDIO, 0x3f, size_of::<Api>());
const UFFDIO_REGISTER: Request = nix::request_code_readwrite!(UFFDIO, 0x00, size_of::<Register>());
const UFFDIO_UNREGISTER: Request = nix::request_code_read!(UFFDIO, 0x01, size_of::<Range>());
const UFFDIO_WAKE: Request = nix::request_code_read!(UFFDIO, 0x02, size_of::<Range>());
const UFFDIO_WRITEPROTECT: Request = nix::request_code_readwrite!(UFFDIO, 0x06, size_of::<WriteProtect>());

/// An open userfaultfd, after its `UFFDIO_API` handshake.
pub struct Uffd(OwnedFd);

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

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

/// One userfaultfd ioctl on `fd` with its argument `arg`.
///
/// # Safety
/// `request` must be a userfaultfd ioctl whose argument is a `T`.
unsafe fn ioctl<T>(fd: &impl AsRawFd, request: Request, arg: &mut T) -> nix::Result<()> {
    // SAFETY: the caller pairs `request` with its argument type; `arg` is valid for reads
    // and writes of a `T` for the whole call, and the kernel touches nothing else.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    nix::errno::Errno::result(r).map(drop)
}

/// The `UFFDIO_API` handshake; returns the features the kernel grants (all it offers when
/// `features` is 0).
fn handshake(fd: &OwnedFd, features: u64) -> nix::Result<u64> {
    let mut api = Api { api: API, features, ioctls: 0 };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
    unsafe { ioctl(fd, UFFDIO_API, &mut api) }?;
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
    Ok(Uffd(fd))
}

fn range(start: usize, len: usize) -> Range {
    Range { start: start as u64, len: len as u64 }
}

/// Registers `[start, start + len)` for write-protect tracking.
pub fn register_wp(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    let mut register = Register { range: range(start, len), mode: REGISTER_MODE_WP, ioctls: 0 };
    // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`. Registering changes no
    // memory: it only routes the range's faults to this descriptor.
    unsafe { ioctl(&uffd.0, UFFDIO_REGISTER, &mut register) }
}

fn write_protect_mode(uffd: &Uffd, start: usize, len: usize, mode: u64) -> nix::Result<()> {
    let mut wp = WriteProtect { range: range(start, len), mode };
    // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`; it changes the
    // range's protection, not its contents.
    unsafe { ioctl(&uffd.0, UFFDIO_WRITEPROTECT, &mut wp) }
}

/// Write-protects `[start, start + len)`, which must be registered.
pub fn write_protect(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    write_protect_mode(uffd, start, len, WRITEPROTECT_MODE_WP)
}

/// Removes the write protection of `[start, start + len)` and wakes the threads waiting to
/// write there.
pub fn unprotect(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    write_protect_mode(uffd, start, len, 0)
}

/// Wakes the threads waiting on a fault in `[start, start + len)`.
pub fn wake(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    let mut r = range(start, len);
    // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`.
    unsafe { ioctl(&uffd.0, UFFDIO_WAKE, &mut r) }
}

/// Stops tracking `[start, start + len)`.
pub fn unregister(uffd: &Uffd, start: usize, len: usize) -> nix::Result<()> {
    let mut r = range(start, len);
    // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`.
    unsafe { ioctl(&uffd.0, UFFDIO_UNREGISTER, &mut r) }
}

/// Reads the pending fault messages (the descriptor is non-blocking) and appends the
/// address of each page fault to `faults`; other events are skipped. `EAGAIN` when none
/// is pending.
pub fn read_faults(uffd: &Uffd, faults: &mut Vec<usize>) -> nix::Result<()> {
    let mut buf = [0u8; 64 * MSG_SIZE];
    let n = nix::unistd::read(&uffd.0, &mut buf)?;
    for msg in buf[..n].chunks_exact(MSG_SIZE) {
        if msg[0] == EVENT_PAGEFAULT {
            let address = u64::from_ne_bytes(msg[MSG_ADDRESS..MSG_ADDRESS + 8].try_into().expect("8 bytes"));
            faults.push(address as usize);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // The values <linux/userfaultfd.h> gives on x86-64 and arm64.
        assert_eq!(super::UFFDIO_API, 0xc018_aa3f);
        assert_eq!(super::UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(super::UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(super::UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(super::UFFDIO_WRITEPROTECT, 0xc018_aa06);
    }
}
