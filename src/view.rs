//! An observer's typed, read-only views of a snapshot's raw memory (the producer's writable
//! counterpart is [`crate::region::Region`]). Opts out of the crate's `deny(unsafe_code)` for
//! the one `unsafe` block a typed slice of a view needs.
#![allow(unsafe_code)]

use crate::region::Element;
use crate::sys::mem::PrivateMapping;

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
