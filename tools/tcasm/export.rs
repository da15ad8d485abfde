//! `tcasm restore --format hdf5`: checkpointed versions as one HDF5 file and an XDMF file
//! beside it (`tcasm::checkpoint::export_hdf5`), for h5py, ParaView and VisIt; and `tcasm
//! bench export`, its rate against the `.npy` restore. Only in a build with the `hdf5`
//! feature; without it both say how to get one.
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
        Some(xmf) => {
            println!("open {} in ParaView or VisIt (the regions of rank 2 and 3, as cell data)", xmf.display())
        }
        None => println!("no region has rank 2 or 3: no XDMF file"),
    }
    Ok(())
}

/// What a build without the `hdf5` feature answers.
#[cfg(not(feature = "hdf5"))]
const NOT_BUILT: &str = "this tcasm was built without HDF5 export. Install the HDF5 library and pkg-config \
     (Debian/Ubuntu: `apt-get install libhdf5-dev pkg-config`), then rebuild with the \
     feature: `cargo build --release --features hdf5`";

#[cfg(not(feature = "hdf5"))]
pub fn hdf5(_: Hdf5Args) -> crate::Result {
    Err(NOT_BUILT.into())
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A checkpoint directory.
    checkpoints: PathBuf,
    /// The version to export (default: the newest complete checkpoint).
    #[arg(long)]
    version: Option<u64>,
    /// A scratch directory for the outputs (created; what the bench writes is removed).
    #[arg(long)]
    dir: PathBuf,
    /// Rounds of one .npy restore and one HDF5 export, after one that warms up.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
}

/// The HDF5 export's rate against the `.npy` restore of the same version, in one run: the
/// two alternate, each round writing the version anew, and both are synced before the clock
/// stops (the export syncs itself; the `.npy` files are synced after the restore).
#[cfg(feature = "hdf5")]
pub fn bench(args: BenchArgs) -> crate::Result {
    use std::fs::{self, File};
    use std::time::{Duration, Instant};

    use tcasm::checkpoint::{self, Restore};

    let restore = Restore::open(&args.checkpoints, args.version)?;
    let bytes: u64 = restore.manifest().space.regions.iter().map(|r| r.bytes() as u64).sum();
    let scratch = args.dir.join(format!("tcasm-bench-export-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let mib_per_s = |took: Duration| bytes as f64 / took.as_secs_f64() / (1 << 20) as f64;
    let (mut npy, mut hdf5) = (Vec::new(), Vec::new());
    for round in 0..=args.rounds {
        let out = scratch.join("npy");
        let _ = fs::remove_dir_all(&out);
        let started = Instant::now();
        let restored = checkpoint::restore_npy(&restore, &out)?;
        for r in &restored {
            File::open(out.join(&r.file))?.sync_all()?;
        }
        let a = started.elapsed();
        for old in ["x.h5", "x.xmf"] {
            let _ = fs::remove_file(scratch.join(old));
        }
        let started = Instant::now();
        checkpoint::export_hdf5(std::slice::from_ref(&restore), &scratch.join("x.h5"), false)?;
        let b = started.elapsed();
        if round == 0 {
            println!("warm-up: npy {:.0} MiB/s, hdf5 {:.0} MiB/s (not counted)", mib_per_s(a), mib_per_s(b));
            continue;
        }
        println!("round {round}: npy {:.0} MiB/s, hdf5 {:.0} MiB/s", mib_per_s(a), mib_per_s(b));
        npy.push(a);
        hdf5.push(b);
    }
    fs::remove_dir_all(&scratch)?;
    npy.sort();
    hdf5.sort();
    let (npy, hdf5) = (npy[npy.len() / 2], hdf5[hdf5.len() / 2]);
    let m = restore.manifest();
    println!(
        "version {} of {:?}: {} in {} regions",
        m.version,
        m.space.producer,
        indicatif::HumanBytes(bytes),
        m.space.regions.len()
    );
    println!("npy restore, synced: median {:.3} s ({:.0} MiB/s)", npy.as_secs_f64(), mib_per_s(npy));
    println!("hdf5 export, synced: median {:.3} s ({:.0} MiB/s)", hdf5.as_secs_f64(), mib_per_s(hdf5));
    println!("ratio: hdf5 at {:.2} of the npy rate", npy.as_secs_f64() / hdf5.as_secs_f64());
    Ok(())
}

#[cfg(not(feature = "hdf5"))]
pub fn bench(_: BenchArgs) -> crate::Result {
    Err(NOT_BUILT.into())
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
