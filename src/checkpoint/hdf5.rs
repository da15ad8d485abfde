//! Checkpointed versions exported as one HDF5 file, with an XDMF file beside it
//! ([`super::xdmf`]), so that h5py, ParaView and VisIt open them. Built with the `hdf5`
//! feature, which links the system libhdf5 (Debian: `libhdf5-dev`, found by pkg-config).
//!
//! tcasm keeps its own checkpoint format (incremental, checksummed, crash-consistent); HDF5
//! is what users open, so a version is exported from a checkpoint directory, not written by
//! the checkpointer.
//!
//! # File
//! ```text
//! one version (--version V)              several (--versions A..B)
//! /             attributes:              /              attributes: producer, versions
//!                 producer, version,     /v000000000012 a group per version, attributes as
//!                 chain, checkpoint_time,                for one version
//!                 step (see below)       /v000000000012/<region>
//! /<region>     a dataset per region     /v000000000015/...
//! ```
//! A dataset has the region's shape (C order) and element type (HDF5's native little-endian
//! integers and IEEE floats: every tcasm element type has one). A region named `a/b` is the
//! dataset `b` in the group `a`. `checkpoint_time` is when the checkpoint completed, in
//! seconds since the Unix epoch (its manifest's modification time: a copy of the directory
//! that does not keep times has the copy's); `step` is the value of a one-element region named `step`,
//! when the producer has one, with its type.
//!
//! # Writing
//! The chain of each version is replayed once ([`Restore::read`], every chunk checked) and
//! each stretch of pages goes straight into the datasets it covers, as the rectangular
//! hyperslabs a run of elements in C order splits into ([`boxes`]): nothing is held in memory
//! but one chunk. Both files are written under temporary names in the output directory,
//! synced, and renamed into place at the end: a failure (a damaged chunk, a full disk)
//! leaves no partial file, and an existing output is only replaced with `force`.
use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ::hdf5::types::VarLenUnicode;
use ::hdf5::{Dataset, Group, Hyperslab, SliceOrIndex};
use ndarray::{ArrayView, IxDyn};

use super::xdmf;
use super::{CheckpointError, Restore};
use crate::region::{Dtype, RegionInfo};
use crate::with_element;

/// Why an export failed. Nothing is left at the output paths when it does.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{} exists; pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: HDF5 could not {what}: {source}", path.display())]
    Hdf5 {
        path: PathBuf,
        what: String,
        #[source]
        source: ::hdf5::Error,
    },
    #[error("nothing to export: no versions given")]
    NoVersions,
    #[error("{}: the XDMF file takes the name ending in .xmf; name the HDF5 file FILE.h5", path.display())]
    XdmfName { path: PathBuf },
}

/// What [`export_hdf5`] wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    pub h5: PathBuf,
    /// The XDMF file, when some region has rank 2 or 3.
    pub xdmf: Option<PathBuf>,
    pub versions: Vec<u64>,
    /// Bytes of region data written (all versions).
    pub bytes: u64,
}

/// A file written under a temporary name beside its final one; removed on drop unless
/// renamed into place by [`Staged::commit`].
struct Staged {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    fn create(target: &Path) -> Result<Staged, ExportError> {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        // Created here, not by HDF5, so an unwritable directory is reported as such.
        OpenOptions::new().write(true).create_new(true).open(&temp).map_err(|source| ExportError::Io {
            what: "creating",
            path: temp.clone(),
            source,
        })?;
        Ok(Staged { temp, target: target.to_path_buf(), committed: false })
    }

    fn sync(&self) -> Result<(), ExportError> {
        File::open(&self.temp).and_then(|f| f.sync_all()).map_err(|source| ExportError::Io {
            what: "syncing",
            path: self.temp.clone(),
            source,
        })
    }

    fn commit(mut self) -> Result<(), ExportError> {
        fs::rename(&self.temp, &self.target).map_err(|source| ExportError::Io {
            what: "renaming into place",
            path: self.target.clone(),
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The group of one version in a multi-version export.
fn group_name(version: u64) -> String {
    format!("v{version:012}")
}

/// Exports `restores` (one version, or several in ascending order) to the HDF5 file `out`,
/// and the XDMF file beside it (`out` with the extension `.xmf`) when a region has rank 2
/// or 3. Refuses to replace an existing output unless `force`.
pub fn export_hdf5(restores: &[Restore], out: &Path, force: bool) -> Result<Exported, ExportError> {
    if restores.is_empty() {
        return Err(ExportError::NoVersions);
    }
    let xmf = out.with_extension("xmf");
    if xmf == out {
        return Err(ExportError::XdmfName { path: out.to_path_buf() });
    }
    if !force {
        for path in [out, xmf.as_path()] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(ExportError::Exists { path: path.to_path_buf() });
            }
        }
    }
    let h5 = Staged::create(out)?;
    let hdf5_error = |what: String| {
        let path = out.to_path_buf();
        move |source| ExportError::Hdf5 { path, what, source }
    };
    let series = restores.len() > 1;
    let mut versions = Vec::new();
    let mut bytes = 0;
    let file = ::hdf5::File::create(&h5.temp).map_err(hdf5_error("create the file".into()))?;
    if series {
        let all: Vec<u64> = restores.iter().map(|r| r.manifest().version).collect();
        let producer = &restores[restores.len() - 1].manifest().space.producer;
        string_attribute(&file, "producer", producer).map_err(hdf5_error("write the attribute producer".into()))?;
        file.new_attr::<u64>()
            .shape(all.len())
            .create("versions")
            .and_then(|a| a.write_raw(&all))
            .map_err(hdf5_error("write the attribute versions".into()))?;
    }
    for restore in restores {
        let version = restore.manifest().version;
        let (group, prefix) = if series {
            let name = group_name(version);
            (file.create_group(&name).map_err(hdf5_error(format!("create the group {name}")))?, format!("/{name}/"))
        } else {
            (file.group("/").map_err(hdf5_error("open the root group".into()))?, "/".to_string())
        };
        let written = write_version(&group, restore, out)?;
        bytes += restore.manifest().space.regions.iter().map(|r| r.bytes() as u64).sum::<u64>();
        versions.push(xdmf::Version {
            version,
            step: written.step,
            datasets: restore
                .manifest()
                .space
                .regions
                .iter()
                .map(|r| xdmf::Dataset {
                    region: r.name.clone(),
                    path: format!("{prefix}{}", r.name),
                    dtype: r.dtype,
                    shape: r.shape.clone(),
                })
                .collect(),
        });
    }
    file.close().map_err(hdf5_error("close the file".into()))?;
    h5.sync()?;
    let h5_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let xdmf = match xdmf::document(&h5_name, &versions) {
        Some(text) => {
            let staged = Staged::create(&xmf)?;
            fs::write(&staged.temp, text).map_err(|source| ExportError::Io {
                what: "writing",
                path: staged.temp.clone(),
                source,
            })?;
            staged.sync()?;
            Some(staged)
        }
        None => None,
    };
    h5.commit()?;
    let wrote_xdmf = xdmf.is_some();
    match xdmf {
        Some(staged) => staged.commit()?,
        // A forced export over an older one must not leave that one's XDMF pointing here.
        None => match fs::remove_file(&xmf) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ExportError::Io { what: "removing the old", path: xmf, source: e })
            }
            _ => {}
        },
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| ExportError::Io {
        what: "syncing",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(Exported {
        h5: out.to_path_buf(),
        xdmf: wrote_xdmf.then_some(xmf),
        versions: restores.iter().map(|r| r.manifest().version).collect(),
        bytes,
    })
}

fn string_attribute(group: &Group, name: &str, value: &str) -> ::hdf5::Result<()> {
    let value: VarLenUnicode = value.parse().map_err(|e| ::hdf5::Error::from(format!("{e}")))?;
    group.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&value)
}

/// What writing a version found out.
struct WrittenVersion {
    step: Option<f64>,
}

/// A region being written: its dataset and where its bytes lie in the page space.
struct Target<'a> {
    region: &'a RegionInfo,
    span: Range<usize>,
    dataset: Dataset,
}

/// Writes the datasets and attributes of the version `restore` into `group`.
fn write_version(group: &Group, restore: &Restore, out: &Path) -> Result<WrittenVersion, ExportError> {
    let manifest = restore.manifest();
    let space = &manifest.space;
    let hdf5_error = |what: String| {
        let path = out.to_path_buf();
        move |source| ExportError::Hdf5 { path, what, source }
    };
    let mut targets = Vec::new();
    for r in &space.regions {
        let dataset = create_dataset(group, r).map_err(hdf5_error(format!("create the dataset {:?}", r.name)))?;
        let start = r.first_page * space.page_size + r.offset;
        targets.push(Target { region: r, span: start..start + r.bytes(), dataset });
    }
    let step_region = space.regions.iter().find(|r| r.name == "step" && r.elements() == 1);
    let mut step_bytes = Vec::new();
    restore.read(|first_page, bytes| {
        let at = first_page * space.page_size;
        for t in &targets {
            let (lo, hi) = (t.span.start.max(at), t.span.end.min(at + bytes.len()));
            if lo >= hi {
                continue;
            }
            let size = t.region.dtype.size();
            let first = (lo - t.span.start) / size;
            write_run(&t.dataset, t.region, first, &bytes[lo - at..hi - at]).map_err(|e| CheckpointError::Io {
                what: "writing",
                path: out.to_path_buf(),
                source: std::io::Error::other(format!("HDF5 could not write region {:?}: {e}", t.region.name)),
            })?;
            if step_region.is_some_and(|s| s.name == t.region.name) {
                step_bytes.extend_from_slice(&bytes[lo - at..hi - at]);
            }
        }
        Ok(())
    })?;
    let attributes = || -> ::hdf5::Result<Option<f64>> {
        string_attribute(group, "producer", &space.producer)?;
        group.new_attr::<u64>().create("version")?.write_scalar(&manifest.version)?;
        group.new_attr::<u64>().create("chain")?.write_scalar(&manifest.chain)?;
        let completed = restore.completed().map_err(|e| ::hdf5::Error::from(e.to_string()))?;
        let seconds = completed.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        group.new_attr::<f64>().create("checkpoint_time")?.write_scalar(&seconds)?;
        match step_region {
            Some(r) if step_bytes.len() == r.dtype.size() => step_attribute(group, r.dtype, &step_bytes).map(Some),
            _ => Ok(None),
        }
    };
    let step = attributes().map_err(hdf5_error(format!("write the attributes of version {}", manifest.version)))?;
    Ok(WrittenVersion { step })
}

fn create_dataset(group: &Group, r: &RegionInfo) -> ::hdf5::Result<Dataset> {
    with_element!(r.dtype, T => group.new_dataset::<T>().shape(r.shape.clone()).create(r.name.as_str()))
}

/// Writes a `step` attribute of the type of the one-element region `step` holding `bytes`,
/// and returns its value as a number.
fn step_attribute(group: &Group, dtype: Dtype, bytes: &[u8]) -> ::hdf5::Result<f64> {
    with_element!(dtype, T => {
        let value: T = bytemuck::pod_read_unaligned(bytes);
        group.new_attr::<T>().create("step")?.write_scalar(&value)?;
        Ok(value as f64)
    })
}

/// Writes the elements in `bytes` (the producer's memory, so native byte order) into
/// `dataset` (of `region`'s shape), the first of them being element `first` in C order.
fn write_run(dataset: &Dataset, region: &RegionInfo, first: usize, bytes: &[u8]) -> ::hdf5::Result<()> {
    with_element!(region.dtype, T => {
        let copied: Vec<T>;
        let values: &[T] = match bytemuck::try_cast_slice(bytes) {
            Ok(values) => values,
            // Not aligned for T where the reader's buffer happens to lie: a copy is.
            Err(_) => {
                copied = bytemuck::pod_collect_to_vec(bytes);
                &copied
            }
        };
        let mut done = 0;
        for ranges in boxes(&region.shape, first..first + values.len()) {
            let lengths: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
            let count: usize = lengths.iter().product();
            let view = ArrayView::from_shape(IxDyn(&lengths), &values[done..done + count])
                .map_err(|e| ::hdf5::Error::from(e.to_string()))?;
            let slab: Vec<SliceOrIndex> = ranges.into_iter().map(SliceOrIndex::from).collect();
            dataset.write_slice(view, Hyperslab::from(slab))?;
            done += count;
        }
        Ok(())
    })
}

/// Splits the run `run` of elements (C order) of an array of `shape` into rectangular boxes,
/// in order: each box is a range per dimension, and its elements, in C order, are the next
/// ones of the run. At most `2 × rank − 1` boxes: a partial line, partial planes, ..., the
/// whole middle, and the same again down to a partial line.
fn boxes(shape: &[usize], run: Range<usize>) -> Vec<Vec<Range<usize>>> {
    let mut out = Vec::new();
    if !run.is_empty() {
        split(shape, run, &mut Vec::new(), &mut out);
    }
    out
}

/// [`boxes`] of the sub-array `shape` whose outer indices are fixed to `prefix`.
fn split(shape: &[usize], run: Range<usize>, prefix: &mut Vec<usize>, out: &mut Vec<Vec<Range<usize>>>) {
    let whole = |prefix: &[usize], lead: Range<usize>, rest: &[usize]| -> Vec<Range<usize>> {
        prefix.iter().map(|&i| i..i + 1).chain(std::iter::once(lead)).chain(rest.iter().map(|&n| 0..n)).collect()
    };
    let (rest, stride) = (&shape[1..], shape[1..].iter().product::<usize>());
    let (first, last) = (run.start / stride, (run.end - 1) / stride);
    let (head, tail) = (!run.start.is_multiple_of(stride), !run.end.is_multiple_of(stride));
    if first == last && (head || tail) {
        prefix.push(first);
        split(rest, run.start - first * stride..run.end - first * stride, prefix, out);
        prefix.pop();
        return;
    }
    if head {
        prefix.push(first);
        split(rest, run.start - first * stride..stride, prefix, out);
        prefix.pop();
    }
    let middle = first + head as usize..if tail { last } else { last + 1 };
    if !middle.is_empty() {
        out.push(whole(prefix, middle, rest));
    }
    if tail {
        prefix.push(last);
        split(rest, 0..run.end - last * stride, prefix, out);
        prefix.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::boxes;

    /// The C-order indices of the elements of `boxes`, one after the other.
    fn covered(shape: &[usize], boxes: &[Vec<std::ops::Range<usize>>]) -> Vec<usize> {
        let mut out = Vec::new();
        for b in boxes {
            let lengths: Vec<usize> = b.iter().map(|r| r.len()).collect();
            for k in 0..lengths.iter().product::<usize>() {
                // The k-th element of the box in C order, as a flat index of the array.
                let (mut rem, mut flat) = (k, 0);
                for d in 0..shape.len() {
                    let inner: usize = lengths[d + 1..].iter().product();
                    flat = flat * shape[d] + b[d].start + rem / inner;
                    rem %= inner;
                }
                out.push(flat);
            }
        }
        out
    }

    #[test]
    fn every_run_splits_into_boxes_that_cover_it_in_order() {
        for shape in [vec![7], vec![3, 4], vec![2, 3, 4], vec![2, 1, 3, 2, 2, 3]] {
            let n: usize = shape.iter().product();
            for start in 0..n {
                for end in start + 1..=n {
                    let b = boxes(&shape, start..end);
                    assert_eq!(
                        covered(&shape, &b),
                        (start..end).collect::<Vec<_>>(),
                        "shape {shape:?} run {start}..{end}: {b:?}"
                    );
                    assert!(b.len() < 2 * shape.len(), "shape {shape:?} run {start}..{end}: {} boxes", b.len());
                }
            }
        }
        assert!(boxes(&[3, 4], 5..5).is_empty());
        assert_eq!(boxes(&[3, 4], 0..12), [vec![0..3, 0..4]]);
    }
}
