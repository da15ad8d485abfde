//! Mappings: anonymous memory, shared file mappings, and address-space reservations into
//! which runs of a file are mapped with `MAP_FIXED`.
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use nix::sys::mman::{self, MapFlags, ProtFlags};

/// Access of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

impl Access {
    fn prot(self) -> ProtFlags {
        match self {
            Access::ReadOnly => ProtFlags::PROT_READ,
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        }
    }
}

/// An owned range of address space, unmapped on drop.
///
/// Parts of the range can be replaced by runs of a file ([`Mapping::map_file_at`]) or fresh
/// private pages ([`Mapping::map_anonymous_at`]).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a plain address range; it has no thread affinity. Access to the bytes
// is synchronised by its users (the store's protocol), not by the mapping.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out the address and length.
unsafe impl Sync for Mapping {}

fn non_zero(len: usize) -> nix::Result<NonZeroUsize> {
    NonZeroUsize::new(len).ok_or(nix::Error::EINVAL)
}

impl Mapping {
    /// Private anonymous read-write memory, zero-filled, page-aligned.
    pub fn anonymous(len: usize) -> nix::Result<Mapping> {
        // SAFETY: a new private anonymous mapping at an address the kernel chooses aliases
        // nothing that Rust knows about.
        let ptr = unsafe {
            mman::mmap_anonymous(
                None,
                non_zero(len)?,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )?
        };
        Ok(Mapping { ptr: ptr.cast(), len })
    }

    /// A shared mapping of `len` bytes of `file` from `offset`.
    pub fn shared(file: impl AsFd, offset: u64, len: usize, access: Access) -> nix::Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel chooses aliases nothing in this
        // process; the file's other mappings are shared memory that users access through
        // atomics or through the store's protocol.
        let ptr = unsafe {
            mman::mmap(
                None,
                non_zero(len)?,
                access.prot(),
                MapFlags::MAP_SHARED,
                file,
                offset as libc::off_t,
            )?
        };
        Ok(Mapping { ptr: ptr.cast(), len })
    }

    /// The address and length of `[at, at + len)`, which must lie inside this mapping, for a
    /// `MAP_FIXED` over it.
    fn fixed_range(&self, at: usize, len: usize) -> nix::Result<(NonZeroUsize, NonZeroUsize)> {
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(nix::Error::EINVAL);
        }
        let addr = NonZeroUsize::new(self.ptr.as_ptr() as usize + at).ok_or(nix::Error::EINVAL)?;
        Ok((addr, non_zero(len)?))
    }

    /// Maps `len` bytes of `file` from `file_offset` over `[at, at + len)` of this mapping,
    /// replacing what was there.
    pub fn map_file_at(
        &self,
        at: usize,
        file: impl AsFd,
        file_offset: u64,
        len: usize,
        access: Access,
    ) -> nix::Result<()> {
        let (addr, len) = self.fixed_range(at, len)?;
        // SAFETY: `[at, at + len)` lies inside this mapping, which we own, so MAP_FIXED only
        // replaces pages of ours. Callers hold `&self` and no Rust reference into the range
        // being replaced (Snapshot views borrow the Snapshot, which owns its Mapping mutably
        // while remapping).
        unsafe {
            mman::mmap(
                Some(addr),
                len,
                access.prot(),
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                file,
                file_offset as libc::off_t,
            )?;
        }
        Ok(())
    }

    /// Replaces `[at, at + len)` of this mapping with fresh private zero pages.
    pub fn map_anonymous_at(&self, at: usize, len: usize) -> nix::Result<()> {
        let (addr, len) = self.fixed_range(at, len)?;
        // SAFETY: `[at, at + len)` lies inside this mapping, which we own; as in
        // `map_file_at`, no Rust reference into the replaced range is live.
        unsafe {
            mman::mmap_anonymous(
                Some(addr),
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED | MapFlags::MAP_NORESERVE,
            )?;
        }
        Ok(())
    }

    /// Copies `len` bytes at `src_off` of `src` to `at` of this writable mapping.
    pub fn copy_from(&self, at: usize, src: &Mapping, src_off: usize, len: usize) {
        assert!(at.checked_add(len).is_some_and(|e| e <= self.len), "copy_from out of bounds");
        assert!(src_off.checked_add(len).is_some_and(|e| e <= src.len), "copy_from source out of bounds");
        // SAFETY: both ranges were just checked to lie inside live mappings, which are
        // distinct (a view never maps the pool mapping it copies from).
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.as_ptr().add(src_off), self.ptr.as_ptr().add(at), len) }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own `[ptr, ptr + len)`, created by mmap, and nothing borrows it any more
        // (borrows of its bytes are tied to the owner's lifetime).
        if let Err(e) = unsafe { mman::munmap(self.ptr.cast(), self.len) } {
            // Unmapping our own range cannot fail but for a kernel out of memory while
            // splitting VMAs; the range then stays mapped and unreachable from Rust.
            tracing::error!("munmap of {} bytes failed: {e}", self.len);
        }
    }
}

impl Mapping {
    /// The mapping as 64-bit words shared with other processes.
    ///
    /// Shared memory is written by other processes at any time, so it is only ever accessed
    /// through atomics: every bit pattern is a valid `AtomicU64`, and a mapping is
    /// page-aligned. On a read-only mapping only loads may be used (a store faults).
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so 8-aligned), `len / 8` words lie inside it,
        // and it stays mapped while `&self` lives. AtomicU64 has the size and alignment of u64
        // and tolerates concurrent access from other processes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Copies `len` bytes at `src_off` of `src` to `at` of this mapping, which must be
    /// writable and not hold any snapshot page an observer may be reading (the store's
    /// protocol guarantees the slot is free).
    pub fn copy_in(&self, at: usize, src: &RegionMemory, src_off: usize, len: usize) {
        assert!(at.checked_add(len).is_some_and(|e| e <= self.len), "copy_in out of bounds");
        assert!(src_off.checked_add(len).is_some_and(|e| e <= src.len), "copy_in source out of bounds");
        // SAFETY: both ranges were just checked to lie inside live mappings; they cannot
        // overlap (a region's memory is never a mapping of the pool). A producer thread
        // writing `src` meanwhile gives a mix of old and new bytes, which the tracker reports
        // again at the next publish.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.add(src_off), self.ptr.as_ptr().add(at), len) }
    }

    /// As [`Mapping::copy_in`], with non-temporal stores where the processor has them
    /// (x86-64): a snapshot's pages are not read again by this process, so they need not
    /// pass through its caches, and the destination is not read first (no read for
    /// ownership). glibc's `memcpy` streams only copies larger than most of the last-level
    /// cache; a publish's runs are mostly smaller. Non-temporal stores are not ordered by a
    /// release: call [`store_fence`] after the last copy and before the store that publishes
    /// what was copied (one fence for a whole pass: a fence a page costs about a tenth of a
    /// page's copy).
    pub fn stream_in(&self, at: usize, src: &RegionMemory, src_off: usize, len: usize) {
        assert!(at.checked_add(len).is_some_and(|e| e <= self.len), "stream_in out of bounds");
        assert!(src_off.checked_add(len).is_some_and(|e| e <= src.len), "stream_in source out of bounds");
        // SAFETY: both ranges were just checked to lie inside live mappings that cannot
        // overlap (as in `copy_in`, whose caveat on concurrent writers applies).
        unsafe { stream_copy(self.ptr.as_ptr().add(at), src.ptr.add(src_off), len) }
    }

    /// Whether `len` bytes at `at` of this mapping equal `len` bytes at `src_off` of `src`.
    /// Stops at the first difference, so a rewritten page usually costs a few bytes.
    pub fn equals(&self, at: usize, src: &RegionMemory, src_off: usize, len: usize) -> bool {
        assert!(at.checked_add(len).is_some_and(|e| e <= self.len), "equals out of bounds");
        assert!(src_off.checked_add(len).is_some_and(|e| e <= src.len), "equals source out of bounds");
        // SAFETY: both ranges were just checked to lie inside live mappings. `memcmp` only
        // reads; a producer thread writing `src` meanwhile makes the answer either, and a
        // page found equal while being written is written after the publish's scan or
        // compare, so it belongs to the next version (see `crate::producer`). libc's memcmp
        // rather than a slice comparison: the bytes are racy by design, and Rust references
        // to them would claim they are not.
        unsafe { libc::memcmp(self.ptr.as_ptr().add(at).cast(), src.ptr.add(src_off).cast(), len) == 0 }
    }

    /// Asks the processor to start loading the cache line at `at` (a hint: a comparison
    /// page after page otherwise waits a memory latency on each page's first line).
    pub fn prefetch(&self, at: usize) {
        if at < self.len {
            prefetch(self.ptr.as_ptr().wrapping_add(at));
        }
    }

    /// Allocates and maps the pages of `[at, at + len)` of this writable mapping in one call
    /// (`MADV_POPULATE_WRITE`), so that writing them does not take a page fault each.
    /// Advice: when the kernel cannot, the writes fault as usual.
    pub fn populate(&self, at: usize, len: usize) {
        let page = crate::sys::page_size();
        let (start, end) = (at / page * page, (at + len).div_ceil(page) * page);
        if end <= start || end > self.len {
            return;
        }
        // SAFETY: `[start, end)` lies inside this mapping, which we own; MADV_POPULATE_WRITE
        // only faults pages in (as a write would) and never changes their contents.
        let _ = unsafe {
            mman::madvise(self.ptr.add(start).cast(), end - start, mman::MmapAdvise::MADV_POPULATE_WRITE)
        };
    }

    /// Zeroes `[at, at + len)` of this writable mapping.
    pub fn zero(&self, at: usize, len: usize) {
        assert!(at.checked_add(len).is_some_and(|e| e <= self.len), "zero out of bounds");
        // SAFETY: the range was just checked to lie inside this mapping.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(at), 0, len) }
    }
}

/// The memory behind a producer's region: memory the library allocated, a `Vec` it took
/// over, or a buffer foreign code lent it.
pub struct RegionMemory {
    ptr: *mut u8,
    len: usize,
    _owner: Owner,
}

enum Owner {
    Mapped(#[allow(dead_code)] Mapping),
    Heap(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>),
    Lent,
}

// SAFETY: the memory is either owned by `_owner` (Send + Sync) or lent under the contract of
// `RegionMemory::lent`; the pointer has no thread affinity.
unsafe impl Send for RegionMemory {}
// SAFETY: as above; shared access only copies out of the memory.
unsafe impl Sync for RegionMemory {}

impl RegionMemory {
    /// `len` bytes of fresh, zeroed, page-aligned anonymous memory.
    pub fn allocate(len: usize) -> nix::Result<RegionMemory> {
        let m = Mapping::anonymous(len)?;
        Ok(RegionMemory { ptr: m.as_ptr(), len, _owner: Owner::Mapped(m) })
    }

    /// Takes over the storage of `v`.
    pub fn from_vec<T: Copy + Send + Sync + 'static>(mut v: Vec<T>) -> RegionMemory {
        let ptr = v.as_mut_ptr().cast::<u8>();
        let len = std::mem::size_of_val(v.as_slice());
        RegionMemory { ptr, len, _owner: Owner::Heap(Box::new(v)) }
    }

    /// Memory lent by foreign code.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must stay mapped and readable until the returned value (and every
    /// producer holding it) is dropped, and no one may unmap or free it before.
    pub unsafe fn lent(ptr: *mut u8, len: usize) -> RegionMemory {
        RegionMemory { ptr, len, _owner: Owner::Lent }
    }

    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Copies `bytes` to byte `at` of this memory (a restart loading a checkpoint).
    ///
    /// # Safety
    /// The memory must be writable, and no reference to `[at, at + bytes.len())` may be live
    /// nor any other thread access it during the call: for memory the library owns, the
    /// caller holds the region's only handle exclusively; for lent memory, its owner has
    /// promised so.
    pub unsafe fn write_at(&self, at: usize, bytes: &[u8]) {
        assert!(at.checked_add(bytes.len()).is_some_and(|e| e <= self.len), "write_at out of bounds");
        // SAFETY: in bounds (checked above); writable and unaliased, as the caller promises;
        // `bytes` is not this memory (the caller holds no reference into it).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) }
    }

    /// As [`Mapping::prefetch`].
    pub fn prefetch(&self, at: usize) {
        if at < self.len {
            prefetch(self.ptr.wrapping_add(at));
        }
    }
}

/// Copies `len` bytes from `src` to `dst` with non-temporal stores of 16 bytes (SSE2, part
/// of x86-64) and plain copies for the unaligned head and the tail; no fence.
///
/// # Safety
/// `src` must be readable and `dst` writable for `len` bytes, and the ranges must not
/// overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_copy(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    let head = dst.align_offset(16).min(len);
    // SAFETY: every access below lies in `[0, len)` of both ranges, which the caller
    // promises are valid and disjoint; `dst + i` is 16-aligned after the head,
    // as `_mm_stream_si128` needs; unaligned loads need no alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let mut i = head;
        while i + 64 <= len {
            let s = src.add(i).cast::<__m128i>();
            let d = dst.add(i).cast::<__m128i>();
            let (a, b, c, e) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)), _mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
            i += 64;
        }
        while i + 16 <= len {
            _mm_stream_si128(dst.add(i).cast(), _mm_loadu_si128(src.add(i).cast()));
            i += 16;
        }
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
    }
}

/// Orders this thread's earlier [`Mapping::stream_in`] copies before its later stores.
#[cfg(target_arch = "x86_64")]
pub fn store_fence() {
    // SAFETY: `sfence` has no operands and no preconditions (SSE, part of x86-64).
    unsafe { std::arch::x86_64::_mm_sfence() }
}

/// Elsewhere the copies are plain stores, which the release that follows orders.
#[cfg(not(target_arch = "x86_64"))]
pub fn store_fence() {}

/// Elsewhere a plain copy.
///
/// # Safety
/// As the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn stream_copy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// A prefetch hint for the cache line of `p`. Never faults, whatever `p` is.
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint with no architectural effect: it reads nothing into the
    // program and never faults, even on an unmapped address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
