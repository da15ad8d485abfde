//! Open-file-description (OFD) byte-range locks.
//!
//! An OFD lock belongs to the open file description, not to the process, and the kernel
//! drops it when the last descriptor of that description closes, in particular when its
//! process dies. tcasm uses that as a liveness signal: a producer holds the lock of its
//! endpoint name, an observer holds the lock of its pin slot.
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

fn flock(kind: libc::c_int, start: u64, len: u64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as libc::off_t,
        l_len: len as libc::off_t,
        l_pid: 0,
    }
}

/// Takes an exclusive lock on `[start, start + len)` without waiting. `Ok(false)` when
/// another description holds a conflicting lock.
pub fn try_lock(file: impl AsFd, start: u64, len: u64) -> nix::Result<bool> {
    let lock = flock(libc::F_WRLCK, start, len);
    match fcntl(file, FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether another open file description holds a lock on `[start, start + len)`.
pub fn is_locked_by_other(file: impl AsFd, start: u64, len: u64) -> nix::Result<bool> {
    let mut lock = flock(libc::F_WRLCK, start, len);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut lock))?;
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}
