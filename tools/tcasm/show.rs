//! `tcasm show SOURCE [REGION]`: look at a snapshot rather than read it. Per region: min,
//! max, mean and the first values (as ADIOS2's `bpls -d` does for files), from a live
//! producer's latest version or a checkpoint directory's version; `--png` draws a 2-D
//! region (or one slice of a 3-D one) as a heatmap, `--json` prints the same for scripts.
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use std::time::Duration;

use tcasm::checkpoint::restart;
use tcasm::{Dtype, Observer, RegionInfo, Snapshot};

#[derive(clap::Args)]
pub struct Args {
    /// A live producer's name, or a checkpoint directory (a path with a `/`; LOCAL:PERSISTENT
    /// for two levels).
    source: String,
    /// One region (default: every region).
    region: Option<String>,
    /// The version (default: the newest). A live producer holds only its newest version for
    /// an observer: V must be that one (a V not published yet is waited for, up to --wait);
    /// older versions are in checkpoint directories.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    version: Option<u64>,
    /// Write a heatmap of REGION (2-D, or a slice of a 3-D one) to this PNG file.
    #[arg(long, value_name = "FILE", requires = "region")]
    png: Option<PathBuf>,
    /// With --png and a 3-D region: the 2-D slice at INDEX along AXIS (0, 1 or 2).
    #[arg(long, value_name = "AXIS=INDEX", requires = "png", value_parser = parse_slice)]
    slice: Option<(usize, usize)>,
    /// How many of the first values to print per region.
    #[arg(long, value_name = "N", default_value_t = 6)]
    values: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    wait: crate::wait::Wait,
}

fn parse_slice(s: &str) -> Result<(usize, usize), String> {
    let (axis, index) = s.split_once('=').ok_or_else(|| format!("{s:?} is not AXIS=INDEX, e.g. 0=10"))?;
    let axis: usize = axis.trim().parse().map_err(|_| format!("axis {axis:?} is not 0, 1 or 2"))?;
    let index: usize = index.trim().parse().map_err(|_| format!("index {index:?} is not a number"))?;
    if axis > 2 {
        return Err(format!("axis {axis} is not 0, 1 or 2"));
    }
    Ok((axis, index))
}

/// One region of the version shown, its elements as f64.
struct Shown {
    info: RegionInfo,
    values: Vec<f64>,
}

#[derive(serde::Serialize)]
struct Summary<'a> {
    name: &'a str,
    dtype: &'static str,
    shape: &'a [usize],
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    nan: usize,
    first: &'a [f64],
}

/// The elements of a region's bytes (little-endian, as the page space holds them) as f64.
fn as_f64(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    macro_rules! each {
        ($t:ty) => {
            bytes
                .chunks_exact(size_of::<$t>())
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of its size")) as f64)
                .collect()
        };
    }
    match dtype {
        Dtype::U8 => each!(u8),
        Dtype::I8 => each!(i8),
        Dtype::U16 => each!(u16),
        Dtype::I16 => each!(i16),
        Dtype::U32 => each!(u32),
        Dtype::I32 => each!(i32),
        Dtype::U64 => each!(u64),
        Dtype::I64 => each!(i64),
        Dtype::F32 => each!(f32),
        Dtype::F64 => each!(f64),
    }
}

fn wanted(info: &RegionInfo, region: &Option<String>) -> bool {
    region.as_ref().is_none_or(|r| *r == info.name)
}

/// The version `args` asks for: its number, and its regions (those asked for).
fn load(args: &Args) -> crate::Result<(u64, Vec<Shown>, Vec<String>)> {
    if args.source.contains('/') || args.source.contains(':') {
        let dirs = restart::split_dirs(&args.source);
        let paths: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let restore = restart::open(&paths, args.version)?;
        let space = &restore.manifest().space;
        let mut bytes = vec![0u8; space.page_count * space.page_size];
        restore.read(|first_page, data| {
            bytes[first_page * space.page_size..][..data.len()].copy_from_slice(data);
            Ok(())
        })?;
        let names = space.regions.iter().map(|r| r.name.clone()).collect();
        let shown = space
            .regions
            .iter()
            .filter(|r| wanted(r, &args.region))
            .map(|r| {
                let start = r.first_page * space.page_size + r.offset;
                Shown { info: r.clone(), values: as_f64(r.dtype, &bytes[start..start + r.bytes()]) }
            })
            .collect();
        return Ok((restore.manifest().version, shown, names));
    }
    let observer = args.wait.attach(&args.source)?;
    let snap = match args.version {
        None => observer.latest()?,
        Some(v) => live_version(&observer, v, args.wait.seconds())?,
    };
    let names = snap.regions().iter().map(|r| r.name.clone()).collect();
    let mut shown = Vec::new();
    for r in snap.regions().iter().filter(|r| wanted(r, &args.region)) {
        shown.push(Shown { info: r.clone(), values: as_f64(r.dtype, snap.bytes(&r.name)?) });
    }
    Ok((snap.version(), shown, names))
}

/// Version `v` of a live producer: readable while it is the newest (an observer pins only
/// the newest version), so a version not published yet is waited for, up to `wait`.
fn live_version(observer: &Observer, v: u64, wait: Duration) -> crate::Result<Snapshot> {
    let name = observer.name();
    if observer.latest_version() < v && observer.wait_newer(v - 1, wait)?.is_none() {
        return Err(format!(
            "producer {name:?} has not published version {v} yet (latest is {}, waited {} s): try again later, or wait longer with --wait",
            observer.latest_version(),
            wait.as_secs_f64()
        )
        .into());
    }
    let snap = observer.latest()?;
    if snap.version() != v {
        return Err(format!(
            "version {v} is no longer held by producer {name:?} (latest is {}): a live producer keeps only its newest version for observers; checkpoint directories keep older ones: tcasm show DIR --version {v}",
            snap.version()
        )
        .into());
    }
    Ok(snap)
}

fn summarize<'a>(s: &'a Shown, first: usize) -> Summary<'a> {
    let finite = s.values.iter().copied().filter(|x| !x.is_nan());
    let (mut min, mut max, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
    for x in finite {
        (min, max, sum, n) = (min.min(x), max.max(x), sum + x, n + 1);
    }
    Summary {
        name: &s.info.name,
        dtype: s.info.dtype.name(),
        shape: &s.info.shape,
        min: (n > 0).then_some(min),
        max: (n > 0).then_some(max),
        mean: (n > 0).then(|| sum / n as f64),
        nan: s.values.len() - n,
        first: &s.values[..first.min(s.values.len())],
    }
}

pub fn run(args: Args) -> crate::Result {
    let (version, shown, names) = load(&args)?;
    if let Some(region) = &args.region {
        if shown.is_empty() {
            return Err(format!("no region named {region:?}; {} has {}", args.source, names.join(", ")).into());
        }
    }
    let summaries: Vec<Summary> = shown.iter().map(|s| summarize(s, args.values)).collect();
    if args.json {
        let out = serde_json::json!({ "source": args.source, "version": version, "regions": summaries });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{} v{version}:", args.source);
        let number = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.6}"));
        let rows = summaries
            .iter()
            .map(|s| {
                let shape: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
                let first: Vec<String> = s.first.iter().map(|x| format!("{x}")).collect();
                let more = if s.first.len() < shown.iter().find(|r| r.info.name == s.name).map_or(0, |r| r.values.len())
                {
                    " ..."
                } else {
                    ""
                };
                vec![
                    s.name.to_string(),
                    s.dtype.to_string(),
                    shape.join(" x "),
                    number(s.min),
                    number(s.max),
                    number(s.mean),
                    format!("{}{more}", first.join(" ")),
                ]
            })
            .collect();
        crate::inspect::print_table(&["REGION", "DTYPE", "SHAPE", "MIN", "MAX", "MEAN", "VALUES"], rows);
    }
    if let Some(png) = &args.png {
        let s = shown.first().expect("a region was found");
        let (height, width, plane) = plane(s, args.slice)?;
        write_png(png, width, height, &plane)?;
        eprintln!("{} x {} heatmap of {} written to {}", width, height, s.info.name, png.display());
    }
    Ok(())
}

/// The 2-D plane to draw: a 2-D region, or a slice of a 3-D one (C order: the last axis
/// varies fastest and runs across the image).
fn plane(s: &Shown, slice: Option<(usize, usize)>) -> crate::Result<(usize, usize, Vec<f64>)> {
    match (s.info.shape.as_slice(), slice) {
        (&[rows, cols], None) => Ok((rows, cols, s.values.clone())),
        (&[_, _], Some(_)) => Err(format!("region {:?} is 2-D: drop --slice", s.info.name).into()),
        (&[d0, d1, d2], Some((axis, index))) => {
            let dims = [d0, d1, d2];
            if index >= dims[axis] {
                return Err(format!(
                    "--slice {axis}={index}: axis {axis} of {:?} has {} elements",
                    s.info.name, dims[axis]
                )
                .into());
            }
            let at = |i: usize, j: usize, k: usize| s.values[(i * d1 + j) * d2 + k];
            let plane: Vec<f64> = match axis {
                0 => (0..d1).flat_map(|j| (0..d2).map(move |k| (j, k))).map(|(j, k)| at(index, j, k)).collect(),
                1 => (0..d0).flat_map(|i| (0..d2).map(move |k| (i, k))).map(|(i, k)| at(i, index, k)).collect(),
                _ => (0..d0).flat_map(|i| (0..d1).map(move |j| (i, j))).map(|(i, j)| at(i, j, index)).collect(),
            };
            let (rows, cols) = match axis {
                0 => (d1, d2),
                1 => (d0, d2),
                _ => (d0, d1),
            };
            Ok((rows, cols, plane))
        }
        (&[_, _, _], None) => {
            Err(format!("region {:?} is 3-D: pick a slice with --slice AXIS=INDEX", s.info.name).into())
        }
        (shape, _) => {
            Err(format!("--png draws 2-D regions and slices of 3-D ones; {:?} has shape {shape:?}", s.info.name).into())
        }
    }
}

/// A perceptually ordered colour scale (viridis, at 5 stops), from 0 to 1.
fn colour(t: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 5] =
        [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    std::array::from_fn(|c| (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f).round() as u8)
}

/// Writes `plane` (`height` rows of `width`) as an RGB PNG, scaled from its min to its max
/// (NaN black), into a temporary file renamed into place.
fn write_png(path: &Path, width: usize, height: usize, plane: &[f64]) -> crate::Result {
    let (lo, hi) = plane
        .iter()
        .filter(|x| !x.is_nan())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let pixels: Vec<u8> =
        plane.iter().flat_map(|&x| if x.is_nan() { [0, 0, 0] } else { colour((x - lo) / span) }).collect();
    let temp = path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("heatmap")));
    {
        let file = File::create(&temp).map_err(|e| format!("creating {}: {e}", temp.display()))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), u32::try_from(width)?, u32::try_from(height)?);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
    }
    File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_parse() {
        assert_eq!(parse_slice("2=5"), Ok((2, 5)));
        assert!(parse_slice("3=1").is_err());
        assert!(parse_slice("x").is_err());
    }

    #[test]
    fn colours_run_from_dark_to_bright() {
        assert_eq!(colour(0.0), [68, 1, 84]);
        assert_eq!(colour(1.0), [253, 231, 37]);
        assert_eq!(colour(f64::NAN.max(0.5)), colour(0.5));
    }

    #[test]
    fn bytes_read_as_values() {
        let bytes: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(as_f64(Dtype::F64, &bytes), vec![1.5, -2.0]);
        assert_eq!(as_f64(Dtype::I16, &[0xff, 0xff, 2, 0]), vec![-1.0, 2.0]);
    }
}
