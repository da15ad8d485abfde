//! Shared memory for the hand-written baselines of `bench coverage` (`memcpy`,
//! `double-buffer`): a memfd mapped `MAP_SHARED` into the producer and into observer
//! processes, its words read and written atomically, and a futex on a word to wait for the
//! next version. This is what a user writes without tcasm; tcasm's own store lives in the
//! library and is not reachable from here.
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

#[cfg(not(target_endian = "little"))]
compile_error!("the futex word is the low half of a 64-bit word: little-endian only");

/// A memfd: the shared file of a baseline.
pub fn memfd(name: &str, len: usize) -> std::io::Result<File> {
    let file =
        memfd::MemfdOptions::default().close_on_exec(true).create(name).map_err(std::io::Error::other)?.into_file();
    file.set_len(len as u64)?;
    Ok(file)
}

/// Bytes of memory a file holds (what it costs, unlike its size).
pub fn allocated_bytes(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

/// `len` bytes of a file mapped `MAP_SHARED` at an address the kernel chooses, unmapped on
/// drop.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; through `&self` it hands
// out only atomics (`words`), and its bytes are written only through `&mut self`.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps the first `len` bytes of `file`, writable when `writable`.
    pub fn new(file: impl AsFd, len: usize, writable: bool) -> nix::Result<SharedMap> {
        let size = NonZeroUsize::new(len).ok_or(nix::errno::Errno::EINVAL)?;
        let prot = if writable { ProtFlags::PROT_READ | ProtFlags::PROT_WRITE } else { ProtFlags::PROT_READ };
        // SAFETY: a new mapping at an address the kernel chooses aliases nothing in this
        // process; other processes' mappings of the file are accessed as this one is.
        let ptr = unsafe { mmap(None, size, prot, MapFlags::MAP_SHARED, file, 0)? };
        Ok(SharedMap { ptr: ptr.cast(), len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The mapping as 64-bit words: other processes read and write them concurrently.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so 8-aligned), `len / 8` words lie inside it,
        // and it stays mapped while `&self` lives. AtomicU64 has the size and alignment of
        // u64 and tolerates concurrent access from other processes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Zeroes the whole mapping, which must be writable: its pages are allocated before
    /// anything is measured.
    pub fn zero(&mut self) {
        // SAFETY: `[ptr, ptr + len)` is this live mapping; no Rust reference points into it.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.len) }
    }

    /// Copies `source` to offset `at` of this mapping, which must be writable: the `memcpy` a
    /// user writes by hand. Observer processes may read the target meanwhile and see a copy
    /// in progress: the baselines' documented lack of consistency.
    pub fn copy_in(&mut self, at: usize, source: &[u8]) {
        assert!(at.checked_add(source.len()).is_some_and(|end| end <= self.len), "copy inside the mapping");
        // SAFETY: the target `[at, at + len)` lies inside this live mapping (checked above),
        // and the source is a live slice of a different allocation (no Rust reference points
        // into this mapping), so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), self.ptr.as_ptr().add(at), source.len()) };
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: we own `[ptr, ptr + len)`, created by mmap; the words borrowed from it do
        // not outlive `&self`.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// Sleeps while the low half of `word` equals `expected`, for at most `timeout`; returns on
/// a wake, a timeout, a signal or a changed value alike (callers re-check). The producer
/// keeps the word below 2^32, and on a little-endian machine its low half sits at its
/// address.
pub fn futex_wait(word: &AtomicU64, expected: u32, timeout: Duration) {
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: the low half of `word` is a valid, 4-aligned 32-bit word for the duration of
    // the call (it is borrowed); FUTEX_WAIT only reads it; `ts` outlives the call. Every
    // error (EAGAIN, ETIMEDOUT, EINTR) means "re-check".
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const libc::timespec);
    }
}

/// Wakes every process waiting on the low half of `word`.
pub fn futex_wake_all(word: &AtomicU64) {
    // SAFETY: the low half of `word` is a valid, aligned 32-bit word; FUTEX_WAKE does not
    // access memory beyond hashing its address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}
