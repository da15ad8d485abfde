//! The bytes of manifests and data-file headers (drawn in the module docs), and the names of
//! the files of a checkpoint directory.
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{CheckpointError, PageSpace};
use crate::region::{Dtype, RegionInfo, MAX_DIMS};

/// The format version this code writes and reads.
pub const FORMAT: u32 = 1;
/// The format of a manifest written for a rank of an MPI job: format 1 with the rank and the
/// job's size after the producer name. Data files stay format 1.
pub const FORMAT_JOB: u32 = 2;
/// The most bytes one chunk holds (one page when pages are larger).
pub const CHUNK_BYTES: usize = 1 << 20;

const MANIFEST_MAGIC: &[u8; 8] = b"TCASMCKM";
const DATA_MAGIC: &[u8; 8] = b"TCASMCKD";
/// Bytes of the data file before the first chunk.
pub const DATA_HEADER: usize = 32;
/// Bytes of the manifest before the producer name.
const MANIFEST_HEADER: usize = 80;
const CHUNK_ENTRY: usize = 16;
const TRAILER: usize = 4;

/// Where an increment was written from: its parent's version and manifest checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub version: u64,
    pub checksum: u32,
}

/// Consecutive pages stored back to back in a data file, with their checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub first_page: usize,
    pub pages: usize,
    pub checksum: u32,
}

impl Chunk {
    pub fn page_range(&self) -> Range<usize> {
        self.first_page..self.first_page + self.pages
    }
}

/// What makes a checkpoint complete: which version it holds, what it was written on, and
/// the checksum of every chunk of its data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub chain: u64,
    pub version: u64,
    /// The version of the chain's base (this one's, for a base).
    pub base: u64,
    /// `None` for a base.
    pub parent: Option<Link>,
    pub space: PageSpace,
    pub chunks: Vec<Chunk>,
}

/// The largest chunk, in pages, for a page size.
pub fn chunk_pages(page_size: usize) -> usize {
    (CHUNK_BYTES / page_size).max(1)
}

/// The checksum a manifest's bytes end with.
pub fn manifest_checksum(bytes: &[u8]) -> u32 {
    bytes.len().checked_sub(TRAILER).map_or(0, |end| u32::from_le_bytes(bytes[end..].try_into().expect("4 bytes")))
}

impl Manifest {
    pub fn is_base(&self) -> bool {
        self.parent.is_none()
    }

    /// The length its data file must have.
    pub fn data_len(&self) -> u64 {
        let pages: usize = self.chunks.iter().map(|c| c.pages).sum();
        (DATA_HEADER + pages * self.space.page_size) as u64
    }

    /// Each chunk with its byte offset in the data file.
    pub fn chunk_offsets(&self) -> impl Iterator<Item = (u64, &Chunk)> {
        let page = self.space.page_size as u64;
        self.chunks.iter().scan(DATA_HEADER as u64, move |at, c| {
            let here = *at;
            *at += c.pages as u64 * page;
            Some((here, c))
        })
    }

    /// The manifest's bytes, ending with their checksum.
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.space;
        let mut b = Vec::with_capacity(MANIFEST_HEADER + 256 + self.chunks.len() * CHUNK_ENTRY);
        b.extend_from_slice(MANIFEST_MAGIC);
        b.extend_from_slice(&(if s.job.is_some() { FORMAT_JOB } else { FORMAT }).to_le_bytes());
        b.extend_from_slice(&(s.page_size as u32).to_le_bytes());
        for w in [self.chain, self.version, self.base, self.parent.map_or(0, |l| l.version)] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&self.parent.map_or(0, |l| l.checksum).to_le_bytes());
        b.extend_from_slice(&(s.regions.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        b.extend_from_slice(&(s.page_count as u64).to_le_bytes());
        let length_at = b.len();
        b.extend_from_slice(&0u64.to_le_bytes()); // the manifest's length, filled in below
        put_str(&mut b, &s.producer);
        if let Some(job) = s.job {
            b.extend_from_slice(&job.rank.to_le_bytes());
            b.extend_from_slice(&job.size.to_le_bytes());
            b.extend_from_slice(&job.launch.to_le_bytes());
        }
        for r in &s.regions {
            put_str(&mut b, &r.name);
            b.extend_from_slice(&(r.dtype as u32).to_le_bytes());
            b.extend_from_slice(&(r.shape.len() as u32).to_le_bytes());
            for w in r.shape.iter().chain([&r.first_page, &r.pages, &r.offset]) {
                b.extend_from_slice(&(*w as u64).to_le_bytes());
            }
        }
        for c in &self.chunks {
            b.extend_from_slice(&(c.first_page as u64).to_le_bytes());
            b.extend_from_slice(&(c.pages as u32).to_le_bytes());
            b.extend_from_slice(&c.checksum.to_le_bytes());
        }
        let len = (b.len() + TRAILER) as u64;
        b[length_at..length_at + 8].copy_from_slice(&len.to_le_bytes());
        let sum = crc32fast::hash(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads and checks a manifest: length, magic, format, checksum, then that its contents
    /// agree with each other. `file` names it in errors.
    pub fn decode(bytes: &[u8], file: &Path) -> Result<Manifest, CheckpointError> {
        let file = file.to_path_buf();
        let min = (MANIFEST_HEADER + 2 + TRAILER) as u64;
        if (bytes.len() as u64) < min {
            return Err(CheckpointError::Truncated { file, expected: min, actual: bytes.len() as u64 });
        }
        check_magic(&bytes[..8], MANIFEST_MAGIC, &file)?;
        let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if format != FORMAT && format != FORMAT_JOB {
            return Err(CheckpointError::UnsupportedFormat { file, found: format });
        }
        let declared = u64::from_le_bytes(bytes[72..80].try_into().expect("8 bytes"));
        let actual = bytes.len() as u64;
        if actual < declared {
            return Err(CheckpointError::Truncated { file, expected: declared, actual });
        }
        if actual > declared {
            return Err(CheckpointError::TrailingBytes { file, expected: declared, actual });
        }
        let end = bytes.len() - TRAILER;
        let (stored, computed) = (manifest_checksum(bytes), crc32fast::hash(&bytes[..end]));
        if stored != computed {
            return Err(CheckpointError::ManifestChecksum { file, stored, computed });
        }
        let bad = |what: String| CheckpointError::BadManifest { file: file.clone(), what };
        let mut c = Cursor { bytes: &bytes[..end], at: 12 };
        let manifest =
            c.manifest(format == FORMAT_JOB).ok_or_else(|| bad("its tables end before the manifest does".into()))?;
        if c.at != end {
            return Err(bad(format!("{} bytes follow the chunk table", end - c.at)));
        }
        manifest.validate().map_err(bad)?;
        Ok(manifest)
    }

    /// Checks what a checksum cannot: that the contents describe a possible checkpoint, so
    /// readers can index with them.
    fn validate(&self) -> Result<(), String> {
        let s = &self.space;
        if let Some(job) = s.job.filter(|j| j.rank >= j.size) {
            return Err(format!("rank {} of a job of {} ranks", job.rank, job.size));
        }
        if !s.page_size.is_power_of_two() || s.page_size < 512 {
            return Err(format!("page size {} is not a power of two of at least 512", s.page_size));
        }
        if s.page_count.checked_mul(s.page_size).is_none() {
            return Err(format!("{} pages of {} bytes overflow", s.page_count, s.page_size));
        }
        match self.parent {
            None if self.base != self.version => {
                return Err(format!("a base of version {} names base v{}", self.version, self.base))
            }
            Some(l) if !(self.base <= l.version && l.version < self.version) => {
                return Err(format!("v{} names parent v{} and base v{}", self.version, l.version, self.base))
            }
            _ => {}
        }
        for r in &s.regions {
            let bytes = r.shape.iter().try_fold(r.dtype.size(), |n, &d| n.checked_mul(d));
            let fits = r.first_page.checked_add(r.pages).is_some_and(|end| end <= s.page_count)
                && r.offset < s.page_size
                && bytes.and_then(|b| b.checked_add(r.offset)).is_some_and(|end| end <= r.pages * s.page_size);
            if !fits || r.shape.is_empty() || r.shape.len() > MAX_DIMS {
                return Err(format!(
                    "region {:?} (shape {:?}, pages {}+{}) does not fit the page space",
                    r.name, r.shape, r.first_page, r.pages
                ));
            }
        }
        let most = chunk_pages(s.page_size);
        let mut next = 0;
        for (i, ch) in self.chunks.iter().enumerate() {
            if ch.pages == 0
                || ch.pages > most
                || ch.first_page.checked_add(ch.pages).is_none_or(|end| end > s.page_count)
            {
                return Err(format!(
                    "chunk {i} (pages {}+{}) does not fit the page space of {} pages",
                    ch.first_page, ch.pages, s.page_count
                ));
            }
            if ch.first_page < next {
                return Err(format!(
                    "chunk {i} starts at page {}, before the end of the chunk before it",
                    ch.first_page
                ));
            }
            next = ch.first_page + ch.pages;
        }
        let held: usize = self.chunks.iter().map(|c| c.pages).sum();
        if self.is_base() && held != s.page_count {
            return Err(format!("a base holds {held} of the {} pages", s.page_count));
        }
        Ok(())
    }
}

fn check_magic(found: &[u8], magic: &[u8; 8], file: &Path) -> Result<(), CheckpointError> {
    if found == magic {
        return Ok(());
    }
    Err(CheckpointError::BadMagic { file: file.to_path_buf(), found: String::from_utf8_lossy(found).into_owned() })
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Reads little-endian fields; `None` past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.bytes.get(self.at..self.at.checked_add(N)?)?;
        self.at += N;
        b.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn usize(&mut self) -> Option<usize> {
        self.u64().and_then(|w| usize::try_from(w).ok())
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u16()? as usize;
        let b = self.bytes.get(self.at..self.at + len)?;
        self.at += len;
        String::from_utf8(b.to_vec()).ok()
    }

    /// The manifest after magic and format, up to the trailer.
    fn manifest(&mut self, with_job: bool) -> Option<Manifest> {
        let page_size = self.u32()? as usize;
        let (chain, version, base, parent) = (self.u64()?, self.u64()?, self.u64()?, self.u64()?);
        let parent_sum = self.u32()?;
        let region_count = self.u32()? as usize;
        let chunk_count = self.usize()?;
        let page_count = self.usize()?;
        self.u64()?; // the manifest's length, checked by the caller
        let producer = self.string()?;
        let job = match with_job {
            true => Some(crate::job::Job { rank: self.u32()?, size: self.u32()?, launch: self.u64()? }),
            false => None,
        };
        let mut regions = Vec::new();
        for _ in 0..region_count {
            let name = self.string()?;
            let dtype = Dtype::from_code(self.u32()?)?;
            let dims = self.u32()? as usize;
            if dims > MAX_DIMS {
                return None;
            }
            let shape = (0..dims).map(|_| self.usize()).collect::<Option<Vec<_>>>()?;
            let (first_page, pages, offset) = (self.usize()?, self.usize()?, self.usize()?);
            regions.push(RegionInfo { name, dtype, shape, first_page, pages, offset });
        }
        // Bound the table by the bytes left before allocating for it.
        if chunk_count > (self.bytes.len() - self.at) / CHUNK_ENTRY {
            return None;
        }
        let chunks = (0..chunk_count)
            .map(|_| Some(Chunk { first_page: self.usize()?, pages: self.u32()? as usize, checksum: self.u32()? }))
            .collect::<Option<Vec<_>>>()?;
        Some(Manifest {
            chain,
            version,
            base,
            parent: (parent != 0).then_some(Link { version: parent, checksum: parent_sum }),
            space: PageSpace { producer, job, page_size, page_count, regions },
            chunks,
        })
    }
}

/// The header of `manifest`'s data file.
pub fn data_header(manifest: &Manifest) -> [u8; DATA_HEADER] {
    let mut h = [0u8; DATA_HEADER];
    h[..8].copy_from_slice(DATA_MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[12..16].copy_from_slice(&(manifest.space.page_size as u32).to_le_bytes());
    h[16..24].copy_from_slice(&manifest.chain.to_le_bytes());
    h[24..32].copy_from_slice(&manifest.version.to_le_bytes());
    h
}

/// Checks a data file's header against the manifest that names it.
pub fn check_data_header(h: &[u8; DATA_HEADER], manifest: &Manifest, file: &Path) -> Result<(), CheckpointError> {
    check_magic(&h[..8], DATA_MAGIC, file)?;
    let format = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(CheckpointError::UnsupportedFormat { file: file.to_path_buf(), found: format });
    }
    let expected = data_header(manifest);
    if h[12..] != expected[12..] {
        let describe = |h: &[u8]| {
            let w = |r: Range<usize>| u64::from_le_bytes(h[r].try_into().unwrap_or([0; 8]));
            let page = u32::from_le_bytes(h[12..16].try_into().unwrap_or([0; 4]));
            format!("chain {} version {} (pages of {page} bytes)", w(16..24), w(24..32))
        };
        return Err(CheckpointError::ForeignData {
            file: file.to_path_buf(),
            found: describe(h),
            expected: describe(&expected),
        });
    }
    Ok(())
}

/// `DIR/chain-N`.
pub fn chain_dir(dir: &Path, chain: u64) -> PathBuf {
    dir.join(format!("chain-{chain:06}"))
}

/// `DIR/chain-N.retired`: a chain being removed.
pub fn retired_dir(dir: &Path, chain: u64) -> PathBuf {
    dir.join(format!("chain-{chain:06}.retired"))
}

pub fn manifest_path(chain_dir: &Path, version: u64) -> PathBuf {
    chain_dir.join(format!("v{version:012}.manifest"))
}

pub fn temp_manifest_path(chain_dir: &Path, version: u64) -> PathBuf {
    chain_dir.join(format!("v{version:012}.manifest.tmp"))
}

pub fn data_path(chain_dir: &Path, version: u64) -> PathBuf {
    chain_dir.join(format!("v{version:012}.data"))
}

/// What a name in a checkpoint directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    Chain(u64),
    /// A chain being removed by `--keep`.
    Retired(u64),
    Manifest(u64),
    TempManifest(u64),
    Data(u64),
}

impl Name {
    pub fn parse(name: &str) -> Option<Name> {
        let number = |s: &str| s.parse().ok().filter(|_| s.bytes().all(|b| b.is_ascii_digit()));
        if let Some(rest) = name.strip_prefix("chain-") {
            return match rest.strip_suffix(".retired") {
                Some(n) => number(n).map(Name::Retired),
                None => number(rest).map(Name::Chain),
            };
        }
        let rest = name.strip_prefix('v')?;
        let (n, ext) = rest.split_once('.')?;
        let v = number(n)?;
        match ext {
            "manifest" => Some(Name::Manifest(v)),
            "manifest.tmp" => Some(Name::TempManifest(v)),
            "data" => Some(Name::Data(v)),
            _ => None,
        }
    }
}
