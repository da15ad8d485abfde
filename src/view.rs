//! Typed views over raw memory: the producer's writable regions and an observer's read-only
//! snapshot views. With `sys`, the only module that uses `unsafe`.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::region::Element;
use crate::sys::mem::{PrivateMapping, RegionMemory};

/// A region the producer owns (allocated by [`crate::Producer::region`] or taken over by
/// [`crate::Producer::wrap_vec`]): write it through `&mut [T]` between publishes.
pub struct Region<T: Element> {
    memory: Arc<RegionMemory>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element> Region<T> {
    /// The one handle to `memory` as `len` elements of `T`. The producer creates exactly one
    /// per region it owns, which is what makes `deref_mut` sound.
    pub(crate) fn new(memory: Arc<RegionMemory>, len: usize) -> Region<T> {
        assert!(len.checked_mul(std::mem::size_of::<T>()).is_some_and(|b| b <= memory.len()), "region too short");
        assert!(memory.addr().is_multiple_of(std::mem::align_of::<T>()), "region misaligned");
        Region { memory, len, _t: PhantomData }
    }
}

/// A producer's region handle, whatever its element type: what [`crate::Producer::restore`]
/// takes (`&mut`) to know that no slice of the region is borrowed while it writes the region.
pub trait RegionHandle: sealed::Sealed {
    #[doc(hidden)]
    fn memory(&self) -> &Arc<RegionMemory>;
}

mod sealed {
    pub trait Sealed {}
    impl<T: crate::region::Element> Sealed for super::Region<T> {}
}

impl<T: Element> RegionHandle for Region<T> {
    fn memory(&self) -> &Arc<RegionMemory> {
        &self.memory
    }
}

impl<T: Element> Deref for Region<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `Region::new` checked that the memory holds `len` aligned elements and stays alive
        // while `self.memory` does; every bit pattern is a valid `T` (Element is POD).
        unsafe { std::slice::from_raw_parts(self.memory.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Element> DerefMut for Region<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; this Region is the only handle that writes the memory, and
        // `&mut self` makes the borrow unique. The producer only reads it, inside publish().
        unsafe { std::slice::from_raw_parts_mut(self.memory.as_mut_ptr().cast::<T>(), self.len) }
    }
}

/// `count` elements of `T` at byte `offset` of a snapshot's view, borrowed for as long as
/// the view.
///
/// Sound because of what a view is (see `crate::observer`): its bytes are either private
/// pages only the observer writes, and only while no snapshot holds the view, or read-only
/// mappings of pool slots of a version the snapshot has pinned, which the producer does not
/// reuse while the pin is held. Only `Snapshot` calls this, on the view it owns.
pub(crate) fn snapshot_slice<T: Element>(mapping: &PrivateMapping, offset: usize, count: usize) -> &[T] {
    let bytes = count.checked_mul(std::mem::size_of::<T>()).expect("view size overflows");
    assert!(offset.checked_add(bytes).is_some_and(|e| e <= mapping.len()), "view out of bounds");
    let ptr = mapping.as_ptr().wrapping_add(offset);
    assert!((ptr as usize).is_multiple_of(std::mem::align_of::<T>()), "view misaligned");
    // SAFETY: in bounds and aligned (checked above), readable (the mapping is), stable while
    // borrowed (see above), and every bit pattern is a valid `T`.
    unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), count) }
}
