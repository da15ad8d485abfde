//! What a region is: a name, an element type and a shape, laid somewhere in the page space;
//! and the producer's handle to one of its own, [`Region`], through which it writes it.
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::sys::mem::RegionMemory;

/// Element types a region may hold. All are plain old data: every bit pattern is a valid
/// value, so a typed view over snapshot bytes is sound whatever the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Dtype {
    U8 = 1,
    I8 = 2,
    U16 = 3,
    I16 = 4,
    U32 = 5,
    I32 = 6,
    U64 = 7,
    I64 = 8,
    F32 = 9,
    F64 = 10,
}

impl Dtype {
    pub const ALL: [Dtype; 10] = [
        Dtype::U8,
        Dtype::I8,
        Dtype::U16,
        Dtype::I16,
        Dtype::U32,
        Dtype::I32,
        Dtype::U64,
        Dtype::I64,
        Dtype::F32,
        Dtype::F64,
    ];

    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// The Rust name of the type, as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "u8",
            Dtype::I8 => "i8",
            Dtype::U16 => "u16",
            Dtype::I16 => "i16",
            Dtype::U32 => "u32",
            Dtype::I32 => "i32",
            Dtype::U64 => "u64",
            Dtype::I64 => "i64",
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }

    /// The numpy `descr` of the type (little-endian), for `.npy` files.
    pub fn numpy_descr(self) -> &'static str {
        match self {
            Dtype::U8 => "|u1",
            Dtype::I8 => "|i1",
            Dtype::U16 => "<u2",
            Dtype::I16 => "<i2",
            Dtype::U32 => "<u4",
            Dtype::I32 => "<i4",
            Dtype::U64 => "<u8",
            Dtype::I64 => "<i8",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
        }
    }

    pub fn from_code(code: u32) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| *d as u32 == code)
    }

    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs `$body` with the type alias `$t` set to the Rust element type of the [`Dtype`]
/// `$dtype`: code written once for every element type (`with_element!(d, T => size_of::<T>())`).
#[macro_export]
macro_rules! with_element {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::Dtype::U8 => {
                type $t = u8;
                $body
            }
            $crate::Dtype::I8 => {
                type $t = i8;
                $body
            }
            $crate::Dtype::U16 => {
                type $t = u16;
                $body
            }
            $crate::Dtype::I16 => {
                type $t = i16;
                $body
            }
            $crate::Dtype::U32 => {
                type $t = u32;
                $body
            }
            $crate::Dtype::I32 => {
                type $t = i32;
                $body
            }
            $crate::Dtype::U64 => {
                type $t = u64;
                $body
            }
            $crate::Dtype::I64 => {
                type $t = i64;
                $body
            }
            $crate::Dtype::F32 => {
                type $t = f32;
                $body
            }
            $crate::Dtype::F64 => {
                type $t = f64;
                $body
            }
        }
    };
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that can be a region's element. Sealed: implemented for the primitive
/// numeric types only, whose every bit pattern is valid.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    const DTYPE: Dtype;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t { const DTYPE: Dtype = Dtype::$d; }
    )*};
}
element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
         u64 => U64, i64 => I64, f32 => F32, f64 => F64);

/// The most dimensions a region's shape may have. HDF5 allows 32 and Fortran 2008 15, but
/// simulation fields stop at rank 6 or 7 (a transport code's phase space is 6-D, and 7 was
/// Fortran's limit until 2008); 8 covers those and keeps a region's shared-memory entry
/// small (one word per dimension).
pub const MAX_DIMS: usize = 8;
/// The longest region name, in bytes.
pub const MAX_NAME: usize = 63;

/// A region as observers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// First page of the region in the page space.
    pub first_page: usize,
    /// Pages the region spans in the page space.
    pub pages: usize,
    /// Offset of the first element inside the first page (non-zero for wrapped buffers that
    /// do not start on a page boundary).
    pub offset: usize,
}

impl RegionInfo {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.elements() * self.dtype.size()
    }
}

/// Checks a region name: 1 to 63 bytes of letters, digits, `_`, `-`, `.`, `/`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("region name {name:?} must be 1 to {MAX_NAME} bytes long"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))) {
        return Err(format!("region name {name:?} has the character {c:?}; use letters, digits, '_', '-', '.', '/'"));
    }
    Ok(())
}

/// Checks a shape and returns its number of elements.
pub fn check_shape(name: &str, shape: &[usize]) -> Result<usize, String> {
    if shape.is_empty() || shape.len() > MAX_DIMS {
        return Err(format!("region {name:?}: a shape has 1 to {MAX_DIMS} dimensions, not {}", shape.len()));
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("region {name:?}: shape {shape:?} is empty or too large"))
}

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
pub trait RegionHandle: handle_sealed::Sealed {
    #[doc(hidden)]
    fn memory(&self) -> &Arc<RegionMemory>;
}

mod handle_sealed {
    pub trait Sealed {}
    impl<T: super::Element> Sealed for super::Region<T> {}
}

impl<T: Element> RegionHandle for Region<T> {
    fn memory(&self) -> &Arc<RegionMemory> {
        &self.memory
    }
}

#[allow(unsafe_code)]
impl<T: Element> Deref for Region<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `Region::new` checked that the memory holds `len` aligned elements and stays alive
        // while `self.memory` does; every bit pattern is a valid `T` (Element is POD).
        unsafe { std::slice::from_raw_parts(self.memory.as_mut_ptr().cast::<T>(), self.len) }
    }
}

#[allow(unsafe_code)]
impl<T: Element> DerefMut for Region<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; this Region is the only handle that writes the memory, and
        // `&mut self` makes the borrow unique. The producer only reads it, inside publish().
        unsafe { std::slice::from_raw_parts_mut(self.memory.as_mut_ptr().cast::<T>(), self.len) }
    }
}
