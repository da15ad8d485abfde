//! `tcasm restore --format hdf5`: checkpointed versions as one HDF5 file and an XDMF file
//! beside it (`tcasm::checkpoint::export_hdf5`), for h5py, ParaView and VisIt. Only in a
//! build with the `hdf5` feature; without it the command says how to get one.
use std::fmt;
use std::path::PathBuf;

/// What to export where (read only by a build with the `hdf5` feature).
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
pub struct Hdf5Args {
    pub dir: PathBuf,
    pub version: Option<u64>,
    pub versions: Option<VersionRange>,
    pub out: PathBuf,
    pub force: bool,
}

/// `--versions A..B`: the complete checkpoints from A to B, both included; either end may be
/// left out (`A..`, `..B`, `..`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRange {
    pub first: Option<u64>,
    pub last: Option<u64>,
}

impl VersionRange {
    #[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
    pub fn contains(&self, v: u64) -> bool {
        self.first.is_none_or(|f| f <= v) && self.last.is_none_or(|l| v <= l)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = |e: Option<u64>| e.map(|v| v.to_string()).unwrap_or_default();
        write!(f, "{}..{}", end(self.first), end(self.last))
    }
}

/// Parses `A..B`, `A..`, `..B` or `..`.
pub fn parse_versions(s: &str) -> Result<VersionRange, String> {
    let bad = || format!("{s:?} is not a version range like 10..20 (both included), 10.. or ..20");
    let (first, last) = s.trim().split_once("..").ok_or_else(bad)?;
    let end = |e: &str| if e.is_empty() { Ok(None) } else { e.parse::<u64>().map(Some).map_err(|_| bad()) };
    let range = VersionRange { first: end(first)?, last: end(last)? };
    match (range.first, range.last) {
        (Some(f), Some(l)) if f > l => Err(format!("{s:?}: the first version is after the last")),
        _ => Ok(range),
    }
}

#[cfg(feature = "hdf5")]
pub fn hdf5(args: Hdf5Args) -> crate::Result {
    use std::time::Instant;

    use indicatif::HumanBytes;
    use tcasm::checkpoint::{self, Catalog, Restore};

    let restores = match args.versions {
        None => vec![Restore::open(&args.dir, args.version)?],
        Some(range) => {
            let catalog = Catalog::open(&args.dir)?;
            let versions: Vec<u64> = catalog.versions().into_iter().filter(|&v| range.contains(v)).collect();
            if versions.is_empty() {
                return Err(format!(
                    "no complete checkpoint of a version in {range} in {}; complete ones: {}",
                    args.dir.display(),
                    catalog.describe()
                )
                .into());
            }
            // Every chain is resolved and checked before anything is written.
            versions.into_iter().map(|v| Restore::open(&args.dir, Some(v))).collect::<Result<Vec<_>, _>>()?
        }
    };
    let started = Instant::now();
    let exported = checkpoint::export_hdf5(&restores, &args.out, args.force)?;
    let took = started.elapsed();
    let last = restores[restores.len() - 1].manifest();
    let versions = match exported.versions.as_slice() {
        [one] => format!("version {one}"),
        many => format!("{} versions (v{}..v{})", many.len(), many[0], many[many.len() - 1]),
    };
    println!(
        "exported {versions} of {:?} ({} of regions) to {} in {:.2} s ({}/s)",
        last.space.producer,
        HumanBytes(exported.bytes),
        exported.h5.display(),
        took.as_secs_f64(),
        HumanBytes((exported.bytes as f64 / took.as_secs_f64().max(1e-9)) as u64)
    );
    for r in &last.space.regions {
        println!("  {:<24} {:<4} {:?}", r.name, r.dtype.name(), r.shape);
    }
    match &exported.xdmf {
        Some(xmf) => println!("open {} in ParaView or VisIt (the regions of rank 2 and 3, as cell data)", xmf.display()),
        None => println!("no region has rank 2 or 3: no XDMF file"),
    }
    Ok(())
}

#[cfg(not(feature = "hdf5"))]
pub fn hdf5(_: Hdf5Args) -> crate::Result {
    Err("this tcasm was built without HDF5 export. Install the HDF5 library and pkg-config \
         (Debian/Ubuntu: `apt-get install libhdf5-dev pkg-config`), then rebuild with the \
         feature: `cargo build --release --features hdf5`"
        .into())
}

#[cfg(test)]
mod tests {
    use super::{parse_versions, VersionRange};

    #[test]
    fn version_ranges_parse() {
        assert_eq!(parse_versions("3..7"), Ok(VersionRange { first: Some(3), last: Some(7) }));
        assert_eq!(parse_versions("3.."), Ok(VersionRange { first: Some(3), last: None }));
        assert_eq!(parse_versions("..7"), Ok(VersionRange { first: None, last: Some(7) }));
        assert!(parse_versions("7..3").is_err());
        assert!(parse_versions("7").is_err());
        assert!(parse_versions("a..b").is_err());
        let r = parse_versions("3..7").unwrap();
        assert!(r.contains(3) && r.contains(7) && !r.contains(8) && !r.contains(2));
    }
}
