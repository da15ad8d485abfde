//! Mappings: shared mappings of a file (the store's control block, pins and pool), and
//! private memory of this process alone, into which runs of a file are mapped read-only with
//! `MAP_FIXED` (an observer's view).
//!
//! Soundness is in the types. A [`Mapping`] may be shared with other threads and processes,
//! so `&Mapping` hands out only its address, atomics ([`Mapping::words`]) and reads through
//! raw pointers; writing its bytes is an `unsafe fn` whose caller promises that no one reads
//! or writes them meanwhile (for the pool: the slots are claimed by a version prepared and
//! not yet released). A [`PrivateMapping`] is mapped by this process alone, and is written
//! and remapped through `&mut self`, which excludes every borrow of its bytes.
//!
//! Reading memory that others write is racy by design: the producer's regions
//! ([`RegionMemory`]) are written by the producer's threads whenever they like, also while a
//! publish copies or compares them. Those reads go through raw pointers (`memcpy`, `memcmp`,
//! SIMD loads), never references, and take whatever bytes they find: a page written
//! meanwhile may be copied as a mix of old and new bytes, or found equal or not; its write
//! tracker reports it again, so the next version copies it whole.
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

/// An owned range of address space, unmapped on drop, whose bytes other threads and
/// processes may read and write: a shared mapping of a file.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a plain address range; it has no thread affinity.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` hands out the address, atomics, and reads through raw pointers (racy by
// design, see the module docs); every write of its bytes is an `unsafe fn` whose caller
// promises that no other thread or process accesses them meanwhile.
unsafe impl Sync for Mapping {}

/// The address of byte `at` of the `size` bytes at `base`, after checking that
/// `[at, at + len)` lies inside them (`what` names the operation in the panic).
fn span(base: *mut u8, size: usize, at: usize, len: usize, what: &str) -> *mut u8 {
    assert!(at.checked_add(len).is_some_and(|e| e <= size), "{what} out of bounds");
    base.wrapping_add(at)
}

fn non_zero(len: usize) -> nix::Result<NonZeroUsize> {
    NonZeroUsize::new(len).ok_or(nix::Error::EINVAL)
}

impl Mapping {
    /// A shared mapping of `len` bytes of `file` from `offset`.
    pub fn shared(file: impl AsFd, offset: u64, len: usize, access: Access) -> nix::Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel chooses aliases nothing in this
        // process; the file's other mappings are shared memory that users access through
        // atomics, raw-pointer reads, or the `unsafe fn` writes below.
        let ptr = unsafe {
            mman::mmap(None, non_zero(len)?, access.prot(), MapFlags::MAP_SHARED, file, offset as libc::off_t)?
        };
        Ok(Mapping { ptr: ptr.cast(), len })
    }

    /// The address of byte `at`, after checking that `[at, at + len)` lies inside this
    /// mapping (`what` names the operation in the panic).
    fn span(&self, at: usize, len: usize, what: &str) -> *mut u8 {
        span(self.ptr.as_ptr(), self.len, at, len, what)
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

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

    /// Copies `len` bytes at `src_off` of `src` to `at` of this mapping. The source is read
    /// racily by design (see the module docs).
    ///
    /// # Safety
    /// The mapping must be writable, and no other thread or process may read or write
    /// `[at, at + len)` of it during the call, nor any reference into it be live: for the
    /// pool, the slots are claimed by a version this producer prepared and has not released
    /// (no observer can pin it yet) and no other thread copies into them.
    pub unsafe fn copy_in(&self, at: usize, src: &RegionMemory, src_off: usize, len: usize) {
        let dst = self.span(at, len, "copy_in");
        let src = src.span(src_off, len, "copy_in source");
        // SAFETY: both ranges lie inside live mappings (checked by `span`) that cannot
        // overlap (a region's memory is never a mapping of the pool); the destination is
        // writable and ours alone, as the caller promises; the source is read racily by
        // design.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
    }

    /// As [`Mapping::copy_in`], with non-temporal stores where the processor has them
    /// (x86-64): a snapshot's pages are not read again by this process, so they need not
    /// pass through its caches, and the destination is not read first (no read for
    /// ownership). glibc's `memcpy` streams only copies larger than most of the last-level
    /// cache; a publish's runs are mostly smaller. Non-temporal stores are not ordered by a
    /// release: call [`store_fence`] after the last copy and before the store that publishes
    /// what was copied (one fence for a whole pass: a fence a page costs about a tenth of a
    /// page's copy).
    ///
    /// # Safety
    /// As [`Mapping::copy_in`].
    pub unsafe fn stream_in(&self, at: usize, src: &RegionMemory, src_off: usize, len: usize) {
        let dst = self.span(at, len, "stream_in");
        let src = src.span(src_off, len, "stream_in source");
        // SAFETY: as in `copy_in`, whose contract the caller keeps.
        unsafe { stream_copy(dst, src, len) }
    }

    /// Zeroes `[at, at + len)` of this mapping.
    ///
    /// # Safety
    /// As [`Mapping::copy_in`], for `[at, at + len)`.
    pub unsafe fn zero(&self, at: usize, len: usize) {
        let dst = self.span(at, len, "zero");
        // SAFETY: in bounds (checked by `span`), writable and ours alone, as the caller
        // promises.
        unsafe { std::ptr::write_bytes(dst, 0, len) }
    }

    /// Whether `len` bytes at `at` of this mapping equal `len` bytes at `src_off` of `src`.
    /// Stops at the first difference, so a rewritten page usually costs a few bytes.
    ///
    /// Both sides are read racily by design: a producer thread writing `src` meanwhile makes
    /// the answer either, and a page found equal while being written is written after the
    /// publish's scan or compare, so it belongs to the next version (see `crate::producer`).
    pub fn equals(&self, at: usize, src: &RegionMemory, src_off: usize, len: usize) -> bool {
        let here = self.span(at, len, "equals");
        let src = src.span(src_off, len, "equals source");
        // SAFETY: both ranges lie inside live, readable mappings (checked by `span`).
        // `memcmp` only reads, through raw pointers: Rust references to racy bytes would
        // claim they are not.
        unsafe { libc::memcmp(here.cast(), src.cast(), len) == 0 }
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
    /// Advice: when the kernel cannot, the writes fault as usual. Safe on bytes others read:
    /// it changes no byte (a page not allocated yet reads as zero before and after).
    pub fn populate(&self, at: usize, len: usize) {
        let page = crate::sys::page_size();
        let (start, end) = (at / page * page, (at + len).div_ceil(page) * page);
        if end <= start || end > self.len {
            return;
        }
        // SAFETY: `[start, end)` lies inside this mapping, which we own; MADV_POPULATE_WRITE
        // only faults pages in (as a write would) and never changes their contents.
        let _ =
            unsafe { mman::madvise(self.ptr.add(start).cast(), end - start, mman::MmapAdvise::MADV_POPULATE_WRITE) };
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

/// Private anonymous memory of this process alone, unmapped on drop, into which runs of a
/// file can be mapped read-only: no other process maps its writable pages, and writing or
/// remapping takes `&mut self`, so no borrow of its bytes is live meanwhile. (Writing a range
/// mapped from a file faults: those pages are read-only.)
#[derive(Debug)]
pub struct PrivateMapping(Mapping);

impl PrivateMapping {
    /// `len` bytes of private anonymous read-write memory, zero-filled, page-aligned.
    pub fn anonymous(len: usize) -> nix::Result<PrivateMapping> {
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
        Ok(PrivateMapping(Mapping { ptr: ptr.cast(), len }))
    }

    /// The address and length of `[at, at + len)`, which must lie inside this mapping, for a
    /// `MAP_FIXED` over it.
    fn fixed_range(&self, at: usize, len: usize) -> nix::Result<(NonZeroUsize, NonZeroUsize)> {
        if at.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(nix::Error::EINVAL);
        }
        let addr = NonZeroUsize::new(self.as_ptr() as usize + at).ok_or(nix::Error::EINVAL)?;
        Ok((addr, non_zero(len)?))
    }

    /// Maps `len` bytes of `file` from `file_offset` read-only over `[at, at + len)` of this
    /// mapping, replacing what was there.
    pub fn map_file_at(&mut self, at: usize, file: impl AsFd, file_offset: u64, len: usize) -> nix::Result<()> {
        let (addr, len) = self.fixed_range(at, len)?;
        // SAFETY: `[at, at + len)` lies inside this mapping, which we own, so MAP_FIXED only
        // replaces pages of ours, and `&mut self` means no reference into them is live
        // (every borrow of the bytes borrows this mapping). Read-only: nothing written here
        // reaches the file's other mappings.
        unsafe {
            mman::mmap(
                Some(addr),
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                file,
                file_offset as libc::off_t,
            )?;
        }
        Ok(())
    }

    /// Replaces `[at, at + len)` of this mapping with fresh private zero pages.
    pub fn map_anonymous_at(&mut self, at: usize, len: usize) -> nix::Result<()> {
        let (addr, len) = self.fixed_range(at, len)?;
        // SAFETY: as in `map_file_at`: inside this mapping, and no reference into it is live.
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

    /// Copies `len` bytes at `src_off` of `src` to `at` of this mapping. The source is read
    /// through raw pointers: another process writing it meanwhile (which an observer's pin
    /// forbids the producer) would only garble the copy.
    pub fn copy_from(&mut self, at: usize, src: &Mapping, src_off: usize, len: usize) {
        let dst = self.0.span(at, len, "copy_from");
        let src = src.span(src_off, len, "copy_from source");
        // SAFETY: both ranges lie inside live mappings (checked by `span`), which are distinct
        // (a private mapping is never the shared one it copies from); the destination is ours
        // alone and unborrowed (`&mut self`).
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
    }

    /// As [`Mapping::copy_in`], safe: this memory is ours alone and unborrowed.
    pub fn copy_in(&mut self, at: usize, src: &RegionMemory, src_off: usize, len: usize) {
        // SAFETY: no other process maps this private memory, and `&mut self` excludes every
        // other access from this one.
        unsafe { self.0.copy_in(at, src, src_off, len) }
    }

    /// Zeroes `[at, at + len)` of this mapping.
    pub fn zero(&mut self, at: usize, len: usize) {
        // SAFETY: as in `copy_in`.
        unsafe { self.0.zero(at, len) }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The memory behind a producer's region: memory the library allocated, a `Vec` it took
/// over, or a buffer foreign code lent it. The producer's threads write it at any time, so
/// the library reads it racily by design (see the module docs).
pub struct RegionMemory {
    ptr: *mut u8,
    len: usize,
    _owner: Owner,
}

enum Owner {
    Mapped(#[allow(dead_code)] PrivateMapping),
    Heap(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>),
    Lent,
}

// SAFETY: the memory is either owned by `_owner` (Send + Sync) or lent under the contract of
// `RegionMemory::lent`; the pointer has no thread affinity.
unsafe impl Send for RegionMemory {}
// SAFETY: as above; shared access only reads the memory, through raw pointers (racy by
// design, see the module docs), and `write_at` is an `unsafe fn`.
unsafe impl Sync for RegionMemory {}

impl RegionMemory {
    /// `len` bytes of fresh, zeroed, page-aligned anonymous memory.
    pub fn allocate(len: usize) -> nix::Result<RegionMemory> {
        let m = PrivateMapping::anonymous(len)?;
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

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The address of byte `at`, after checking that `[at, at + len)` lies inside this
    /// memory (`what` names the operation in the panic).
    fn span(&self, at: usize, len: usize, what: &str) -> *mut u8 {
        span(self.ptr, self.len, at, len, what)
    }

    /// Copies `bytes` to byte `at` of this memory (a restart loading a checkpoint).
    ///
    /// # Safety
    /// The memory must be writable, and no reference to `[at, at + bytes.len())` may be live
    /// nor any other thread access it during the call: for memory the library owns, the
    /// caller holds the region's only handle exclusively; for lent memory, its owner has
    /// promised so.
    pub unsafe fn write_at(&self, at: usize, bytes: &[u8]) {
        let dst = self.span(at, bytes.len(), "write_at");
        // SAFETY: in bounds (checked by `span`); writable and unaliased, as the caller
        // promises; `bytes` is not this memory (the caller holds no reference into it).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
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
/// overlap; `src` may be written meanwhile (read racily by design), `dst` must not be.
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
            let (a, b, c, e) =
                (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)), _mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
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
