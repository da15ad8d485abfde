//! The XDMF file written beside an HDF5 export, so that ParaView and VisIt open the regions
//! of rank 2 and 3 as fields on a grid without knowing tcasm.
//!
//! XDMF is XML that describes a mesh and points into the HDF5 file for the data. A region of
//! shape `(nz, ny, nx)` (C order, the last index fastest) is a cell-centred attribute on a
//! uniform grid of `nz × ny × nx` unit cells with its origin at 0 (`3DCoRectMesh`, whose
//! `Dimensions` count nodes: one more than cells in each direction); rank 2 uses
//! `2DCoRectMesh`. Cell-centred because a simulation's array usually holds one value per
//! cell (finite volumes, finite differences on cell centres), and because a dimension of
//! size 1 still makes a valid grid. Regions of one shape share one grid, so ParaView shows
//! them as arrays of one dataset. Several versions make a temporal collection per grid, with
//! the value of the `step` region as the time when every version has one, else the version.
//!
//! XDMF 2 spellings (`TopologyType`, `NumberType`) are used: XDMF 2 and 3 readers (ParaView's
//! two, VisIt's, VTK's) accept them.
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::region::Dtype;

/// One exported version, as the XDMF file refers to it.
pub(super) struct Version {
    pub version: u64,
    /// The value of the one-element `step` region, if the version has one.
    pub step: Option<f64>,
    pub datasets: Vec<Dataset>,
}

/// A region written as an HDF5 dataset.
pub(super) struct Dataset {
    pub region: String,
    /// Its absolute path in the HDF5 file.
    pub path: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// XDMF's name and precision of an element type.
fn number_type(dtype: Dtype) -> (&'static str, usize) {
    let name = match dtype {
        Dtype::U8 => "UChar",
        Dtype::I8 => "Char",
        Dtype::U16 => "UShort",
        Dtype::I16 => "Short",
        Dtype::U32 | Dtype::U64 => "UInt",
        Dtype::I32 | Dtype::I64 => "Int",
        Dtype::F32 | Dtype::F64 => "Float",
    };
    (name, dtype.size())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn joined(values: impl IntoIterator<Item = impl ToString>) -> String {
    values.into_iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" ")
}

/// One uniform grid of `shape` cells carrying `datasets`, indented by `indent` spaces.
fn grid(out: &mut String, indent: usize, name: &str, time: f64, shape: &[usize], datasets: &[&Dataset], h5_file: &str) {
    let pad = " ".repeat(indent);
    let rank = shape.len();
    let (topology, geometry) =
        if rank == 3 { ("3DCoRectMesh", "ORIGIN_DXDYDZ") } else { ("2DCoRectMesh", "ORIGIN_DXDY") };
    let nodes = joined(shape.iter().map(|n| n + 1));
    let _ = writeln!(out, "{pad}<Grid Name=\"{}\" GridType=\"Uniform\">", escape(name));
    let _ = writeln!(out, "{pad}  <Time Value=\"{time}\"/>");
    let _ = writeln!(out, "{pad}  <Topology TopologyType=\"{topology}\" Dimensions=\"{nodes}\"/>");
    let _ = writeln!(out, "{pad}  <Geometry GeometryType=\"{geometry}\">");
    for (what, value) in [("Origin", "0"), ("Spacing", "1")] {
        let _ = writeln!(
            out,
            "{pad}    <DataItem Name=\"{what}\" Dimensions=\"{rank}\" NumberType=\"Float\" Precision=\"8\" Format=\"XML\">{}</DataItem>",
            joined(std::iter::repeat_n(value, rank))
        );
    }
    let _ = writeln!(out, "{pad}  </Geometry>");
    for d in datasets {
        let (number, precision) = number_type(d.dtype);
        let _ =
            writeln!(out, "{pad}  <Attribute Name=\"{}\" AttributeType=\"Scalar\" Center=\"Cell\">", escape(&d.region));
        let _ = writeln!(
            out,
            "{pad}    <DataItem Dimensions=\"{}\" NumberType=\"{number}\" Precision=\"{precision}\" Format=\"HDF\">{}:{}</DataItem>",
            joined(&d.shape),
            escape(h5_file),
            escape(&d.path)
        );
        let _ = writeln!(out, "{pad}  </Attribute>");
    }
    let _ = writeln!(out, "{pad}</Grid>");
}

/// The XDMF document for `versions` exported to the HDF5 file `h5_file` (a name relative to
/// the XDMF file), or `None` when no region has rank 2 or 3.
pub(super) fn document(h5_file: &str, versions: &[Version]) -> Option<String> {
    let by_step = versions.iter().all(|v| v.step.is_some());
    let time = |v: &Version| if by_step { v.step.unwrap_or_default() } else { v.version as f64 };
    // Per grid shape, in order of shape: per version, the datasets on it.
    let mut grids: BTreeMap<&[usize], Vec<(&Version, Vec<&Dataset>)>> = BTreeMap::new();
    for v in versions {
        let mut on: BTreeMap<&[usize], Vec<&Dataset>> = BTreeMap::new();
        for d in v.datasets.iter().filter(|d| matches!(d.shape.len(), 2 | 3)) {
            on.entry(d.shape.as_slice()).or_default().push(d);
        }
        for (shape, datasets) in on {
            grids.entry(shape).or_default().push((v, datasets));
        }
    }
    if grids.is_empty() {
        return None;
    }
    let mut out = String::from(
        "<?xml version=\"1.0\" ?>\n<!DOCTYPE Xdmf SYSTEM \"Xdmf.dtd\" []>\n<Xdmf Version=\"2.0\">\n  <Domain>\n",
    );
    for (shape, steps) in grids {
        let name = joined(shape).replace(' ', "x");
        if versions.len() == 1 {
            let (v, datasets) = &steps[0];
            grid(&mut out, 4, &name, time(v), shape, datasets, h5_file);
        } else {
            let _ = writeln!(out, "    <Grid Name=\"{name}\" GridType=\"Collection\" CollectionType=\"Temporal\">");
            for (v, datasets) in &steps {
                grid(&mut out, 6, &format!("{name} v{}", v.version), time(v), shape, datasets, h5_file);
            }
            out.push_str("    </Grid>\n");
        }
    }
    out.push_str("  </Domain>\n</Xdmf>\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(region: &str, path: &str, dtype: Dtype, shape: &[usize]) -> Dataset {
        Dataset { region: region.into(), path: path.into(), dtype, shape: shape.to_vec() }
    }

    #[test]
    fn only_ranks_2_and_3_make_grids() {
        let v = Version {
            version: 3,
            step: None,
            datasets: vec![dataset("x", "/x", Dtype::F64, &[10]), dataset("p", "/p", Dtype::F64, &[2, 2, 2, 2])],
        };
        assert_eq!(document("a.h5", &[v]), None);
    }

    #[test]
    fn regions_of_one_shape_share_a_grid_of_cells() {
        let v = Version {
            version: 7,
            step: Some(70.0),
            datasets: vec![
                dataset("grid/t", "/grid/t", Dtype::F64, &[4, 5]),
                dataset("mask", "/mask", Dtype::U8, &[4, 5]),
                dataset("rho", "/rho", Dtype::F32, &[2, 3, 4]),
            ],
        };
        let doc = document("out & co.h5", &[v]).unwrap();
        assert_eq!(doc.matches("GridType=\"Uniform\"").count(), 2, "{doc}");
        assert!(doc.contains("<Topology TopologyType=\"2DCoRectMesh\" Dimensions=\"5 6\"/>"), "{doc}");
        assert!(doc.contains("<Topology TopologyType=\"3DCoRectMesh\" Dimensions=\"3 4 5\"/>"), "{doc}");
        assert!(doc.contains("NumberType=\"UChar\" Precision=\"1\" Format=\"HDF\">out &amp; co.h5:/mask<"), "{doc}");
        assert!(doc.contains("<Time Value=\"70\"/>"), "{doc}");
        assert!(!doc.contains("Temporal"), "{doc}");
    }

    #[test]
    fn versions_make_a_temporal_collection_timed_by_step_or_version() {
        let v = |version, step| Version {
            version,
            step,
            datasets: vec![dataset("t", &format!("/v{version}/t"), Dtype::F64, &[4, 5])],
        };
        let doc = document("a.h5", &[v(1, Some(10.0)), v(2, Some(20.0))]).unwrap();
        assert_eq!(doc.matches("CollectionType=\"Temporal\"").count(), 1, "{doc}");
        assert!(doc.contains("<Time Value=\"10\"/>") && doc.contains("<Time Value=\"20\"/>"), "{doc}");
        assert!(doc.contains("a.h5:/v2/t"), "{doc}");
        let doc = document("a.h5", &[v(1, Some(10.0)), v(2, None)]).unwrap();
        assert!(doc.contains("<Time Value=\"1\"/>") && doc.contains("<Time Value=\"2\"/>"), "{doc}");
    }
}
