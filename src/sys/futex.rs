//! Futex wait and wake on a 32-bit word in shared memory (no crate wraps futex(2)).
//!
//! The word lives in a `MAP_SHARED` mapping of a memfd, so waiter and waker may be in
//! different processes and map it at different addresses: hence the non-private ops.
use std::sync::atomic::AtomicU64;

#[cfg(not(target_endian = "little"))]
compile_error!("the futex word is the low half of a 64-bit word: little-endian only");
use std::time::Duration;

/// The futex is the low 32 bits of `word`, which on a little-endian machine sit at its
/// address; writers keep the value below 2^32 so the high half stays zero.
///
/// Sleeps while the low half of `*word == expected`, for at most `timeout`. Returns on a wake, a timeout, a
/// signal or a changed value alike: callers re-check their condition.
pub fn wait(word: &AtomicU64, expected: u32, timeout: Duration) {
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: the low half of `word` is a valid, 4-aligned 32-bit word for the duration of the call (it is
    // borrowed); FUTEX_WAIT only reads it; `ts` outlives the call. Errors (EAGAIN when the value
    // already changed, ETIMEDOUT, EINTR) all mean "re-check", so the result is not needed.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes every process waiting on the low half of `word`.
pub fn wake_all(word: &AtomicU64) {
    // SAFETY: the low half of `word` is a valid, aligned 32-bit word; FUTEX_WAKE does not access memory
    // beyond hashing its address. A failure could only be EFAULT, impossible for a reference.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}
