//! Restored versions as NumPy `.npy` files, one per region, and a `manifest.json` saying
//! what they are, so that `numpy.load` (or any `.npy` reader) needs no tcasm code.
//!
//! `.npy` format 1.0: the magic `\x93NUMPY`, version bytes 1 0, a little-endian u16 header
//! length, then a Python dict literal (`descr`, `fortran_order`, `shape`) padded with spaces
//! and a newline so the data starts 64-byte aligned, then the elements in C order.
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use super::assemble::GlobalField;
use super::{CheckpointError, Restore};
use crate::region::{Dtype, RegionInfo};

/// A region written by [`restore_npy`], as `manifest.json` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct RestoredRegion {
    pub name: String,
    /// The `.npy` file, relative to the output directory.
    pub file: String,
    /// The element type as tcasm names it (`f64`) and as NumPy does (`<f8`).
    pub dtype: &'static str,
    pub numpy_descr: &'static str,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

/// `manifest.json`: written last, so its presence says the restore completed.
#[derive(Serialize)]
struct RestoreManifest<'a> {
    producer: &'a str,
    version: u64,
    chain: u64,
    /// Checkpoints replayed, base first.
    replayed: Vec<u64>,
    regions: &'a [RestoredRegion],
}

/// The `.npy` header for `shape` elements of `dtype`.
pub(super) fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", dtype.numpy_descr());
    let unpadded = 10 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(' ', unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h
}

/// The file a region is restored to: its name with `/` (allowed in region names, not in
/// file names) written `%2F`, which no region name contains.
fn file_name(region: &RegionInfo) -> String {
    format!("{}.npy", region.name.replace('/', "%2F"))
}

/// Restores `restore` into the directory `out`: one `.npy` file per region, then
/// `manifest.json`, all written into a temporary directory that is renamed to `out` at the
/// end ([`super::output::write_dir`]): a restore that fails leaves nothing under `out`.
pub fn restore_npy(restore: &Restore, out: &Path) -> Result<Vec<RestoredRegion>, CheckpointError> {
    super::output::write_dir(out, |temp| write_npy(restore, temp))
}

/// `manifest.json` of an assembled global version.
#[derive(Serialize)]
struct GlobalRestoreManifest<'a> {
    global: bool,
    version: u64,
    ranks: usize,
    regions: &'a [RestoredRegion],
}

/// Writes an assembled global version into the directory `out` as [`restore_npy`] does: one
/// `.npy` file per global array, then `manifest.json`.
pub fn restore_global_npy(field: &GlobalField, out: &Path) -> Result<Vec<RestoredRegion>, CheckpointError> {
    super::output::write_dir(out, |temp| {
        let mut restored = Vec::new();
        for a in &field.regions {
            let info = RegionInfo {
                name: a.name.clone(),
                dtype: a.dtype,
                shape: a.shape.clone(),
                first_page: 0,
                pages: 0,
                offset: 0,
            };
            let name = file_name(&info);
            let path = temp.join(&name);
            fs::write(&path, [header(a.dtype, &a.shape), a.bytes.clone()].concat())
                .map_err(CheckpointError::io("writing", &path))?;
            restored.push(RestoredRegion {
                name: a.name.clone(),
                file: name,
                dtype: a.dtype.name(),
                numpy_descr: a.dtype.numpy_descr(),
                shape: a.shape.clone(),
                bytes: a.bytes.len(),
            });
        }
        let json = serde_json::to_vec_pretty(&GlobalRestoreManifest {
            global: true,
            version: field.version,
            ranks: field.ranks,
            regions: &restored,
        })
        .expect("a manifest of strings and numbers serializes");
        let json_path = temp.join("manifest.json");
        fs::write(&json_path, json).map_err(CheckpointError::io("writing", &json_path))?;
        Ok(restored)
    })
}

fn write_npy(restore: &Restore, out: &Path) -> Result<Vec<RestoredRegion>, CheckpointError> {
    let manifest = restore.manifest();
    let space = &manifest.space;
    let json_path = out.join("manifest.json");
    let mut files = Vec::new();
    let mut restored = Vec::new();
    for r in &space.regions {
        let name = file_name(r);
        let path = out.join(&name);
        let header = header(r.dtype, &r.shape);
        let file = File::create(&path).map_err(CheckpointError::io("creating", &path))?;
        file.write_all_at(&header, 0).map_err(CheckpointError::io("writing", &path))?;
        file.set_len((header.len() + r.bytes()) as u64).map_err(CheckpointError::io("writing", &path))?;
        // Where the region's bytes lie in the page space, and where they go in the file.
        let start = r.first_page * space.page_size + r.offset;
        files.push((start..start + r.bytes(), header.len(), file, path));
        restored.push(RestoredRegion {
            name: r.name.clone(),
            file: name,
            dtype: r.dtype.name(),
            numpy_descr: r.dtype.numpy_descr(),
            shape: r.shape.clone(),
            bytes: r.bytes(),
        });
    }
    restore.read(|first_page, bytes| {
        let at = first_page * space.page_size;
        for (span, header, file, path) in &files {
            let (lo, hi) = (span.start.max(at), span.end.min(at + bytes.len()));
            if lo < hi {
                let into = (header + lo - span.start) as u64;
                file.write_all_at(&bytes[lo - at..hi - at], into).map_err(CheckpointError::io("writing", path))?;
            }
        }
        Ok(())
    })?;
    let json = serde_json::to_vec_pretty(&RestoreManifest {
        producer: &space.producer,
        version: manifest.version,
        chain: manifest.chain,
        replayed: restore.replayed(),
        regions: &restored,
    })
    .expect("a manifest of strings and numbers serializes");
    fs::write(&json_path, json).map_err(CheckpointError::io("writing", &json_path))?;
    Ok(restored)
}
