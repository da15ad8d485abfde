//! The global field of an MPI job: the ranks' tiles of one global version put together.
//!
//! Each rank says where its tile lies with two small regions of its own: `global_shape` and
//! `offset` (u64, one element per dimension). Every other region with that many dimensions is
//! a tile of a global array of shape `global_shape`, placed at `offset`; the tiles of all the
//! ranks must cover it exactly once. A region with another number of dimensions (a step
//! counter, a time) is the same on every rank by the simulation's logic, and is taken from
//! rank 0. Ranks without the two regions are not tiles: nothing is assembled from them.
use std::path::Path;

use super::global::{self, GlobalManifest};
use super::{CheckpointError, Restore};
use crate::region::{Dtype, RegionInfo};

/// The names of the regions that place a rank's tile.
pub const GLOBAL_SHAPE: &str = "global_shape";
pub const OFFSET: &str = "offset";

/// One assembled array, its elements little-endian in C order.
pub struct Assembled {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// A global version, assembled.
pub struct GlobalField {
    pub version: u64,
    pub ranks: usize,
    pub regions: Vec<Assembled>,
}

fn bad(dir: &Path, what: String) -> CheckpointError {
    CheckpointError::BadManifest { file: dir.join(global::GLOBAL_DIR), what }
}

/// Where a rank's tile lies: the global shape and the tile's offset in it.
type Placement = (Vec<usize>, Vec<usize>);

/// One rank's checkpoint of the version, read whole.
struct Tile {
    producer: String,
    regions: Vec<RegionInfo>,
    page_size: usize,
    space: Vec<u8>,
}

impl Tile {
    fn region(&self, name: &str) -> Option<(&RegionInfo, &[u8])> {
        let r = self.regions.iter().find(|r| r.name == name)?;
        let start = r.first_page * self.page_size + r.offset;
        Some((r, &self.space[start..start + r.bytes()]))
    }

    /// `global_shape` and `offset`, when both are there as u64 vectors of one length.
    fn placement(&self, dir: &Path) -> Result<Option<Placement>, CheckpointError> {
        let words = |name| {
            self.region(name).map(|(r, b)| match (r.dtype, r.shape.as_slice()) {
                (Dtype::U64, [_]) => Ok(b
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")) as usize)
                    .collect::<Vec<_>>()),
                _ => Err(bad(
                    dir,
                    format!(
                        "{}: region {name:?} must be u64 with one dimension, is {} {:?}",
                        self.producer, r.dtype, r.shape
                    ),
                )),
            })
        };
        match (words(GLOBAL_SHAPE).transpose()?, words(OFFSET).transpose()?) {
            (Some(g), Some(o)) if g.len() == o.len() => Ok(Some((g, o))),
            (None, None) => Ok(None),
            (g, o) => {
                Err(bad(dir, format!("{}: {GLOBAL_SHAPE} {g:?} and {OFFSET} {o:?} do not go together", self.producer)))
            }
        }
    }
}

/// Reads global `version` (the newest when `None`) from the job directory `dir` and puts the
/// ranks' tiles together. Every chunk read is checked.
pub fn assemble(dir: &Path, version: Option<u64>) -> Result<GlobalField, CheckpointError> {
    let (globals, _) = global::read_all(dir)?;
    let g: &GlobalManifest = match version {
        None => globals.last().ok_or_else(|| CheckpointError::NoCheckpoint { dir: dir.join(global::GLOBAL_DIR) })?,
        Some(v) => globals.iter().find(|g| g.version == v).ok_or_else(|| {
            bad(
                dir,
                format!(
                    "no global version v{v} (there are {})",
                    globals.iter().map(|g| format!("v{}", g.version)).collect::<Vec<_>>().join(", ")
                ),
            )
        })?,
    };
    let mut tiles = Vec::with_capacity(g.ranks.len());
    for part in &g.ranks {
        let restore = Restore::open_in_chain(&global::rank_dir(dir, &part.producer), part.chain, g.version)?;
        if !global::part_present(dir, part, g.version) {
            return Err(bad(
                dir,
                format!("{}: v{} is not the checkpoint global v{} names", part.producer, g.version, g.version),
            ));
        }
        let m = restore.manifest();
        let page_size = m.space.page_size;
        let mut space = vec![0u8; m.space.page_count * page_size];
        restore.read(|first_page, bytes| {
            space[first_page * page_size..first_page * page_size + bytes.len()].copy_from_slice(bytes);
            Ok(())
        })?;
        tiles.push(Tile { producer: part.producer.clone(), regions: m.space.regions.clone(), page_size, space });
    }
    let placements = tiles.iter().map(|t| t.placement(dir)).collect::<Result<Vec<_>, _>>()?;
    let mut regions = Vec::new();
    for r in &tiles[0].regions {
        if r.name == GLOBAL_SHAPE || r.name == OFFSET {
            continue;
        }
        let tiled = placements[0].as_ref().filter(|(g, _)| g.len() == r.shape.len());
        let Some((global_shape, _)) = tiled else {
            regions.push(Assembled {
                name: r.name.clone(),
                dtype: r.dtype,
                shape: r.shape.clone(),
                bytes: tiles[0].region(&r.name).expect("listed").1.to_vec(),
            });
            continue;
        };
        regions.push(place(dir, r, global_shape, &tiles, &placements)?);
    }
    Ok(GlobalField { version: g.version, ranks: tiles.len(), regions })
}

/// The global array of region `r`, from every rank's tile of it.
fn place(
    dir: &Path,
    r: &RegionInfo,
    global_shape: &[usize],
    tiles: &[Tile],
    placements: &[Option<Placement>],
) -> Result<Assembled, CheckpointError> {
    let size = r.dtype.size();
    let elements: usize = global_shape.iter().product();
    let mut bytes = vec![0u8; elements * size];
    let mut covered = vec![false; elements];
    for (tile, placement) in tiles.iter().zip(placements) {
        let who = &tile.producer;
        let Some((g, offset)) = placement else {
            return Err(bad(dir, format!("{who}: no {GLOBAL_SHAPE}/{OFFSET} regions, unlike rank 0")));
        };
        let Some((t, data)) = tile.region(&r.name) else {
            return Err(bad(dir, format!("{who}: no region {:?}", r.name)));
        };
        if g != global_shape
            || t.dtype != r.dtype
            || t.shape.len() != g.len()
            || t.shape.iter().zip(offset).zip(g).any(|((s, o), g)| s + o > *g)
        {
            return Err(bad(dir, format!("{who}: tile {:?} {} {:?} at {offset:?} does not fit global shape {g:?} (rank 0: {global_shape:?}, {})", r.name, t.dtype, t.shape, r.dtype)));
        }
        // One row (the last dimension) at a time, in C order.
        let row = *t.shape.last().expect("at least one dimension");
        let rows: usize = t.shape[..t.shape.len() - 1].iter().product();
        for i in 0..rows {
            let (mut rest, mut at) = (i, 0);
            for d in (0..t.shape.len() - 1).rev() {
                let k = rest % t.shape[d];
                rest /= t.shape[d];
                let stride: usize = global_shape[d + 1..].iter().product();
                at += (k + offset[d]) * stride;
            }
            at += offset[offset.len() - 1];
            if covered[at..at + row].iter().any(|&c| c) {
                return Err(bad(dir, format!("{who}: tile {:?} at {offset:?} overlaps another rank's", r.name)));
            }
            covered[at..at + row].fill(true);
            bytes[at * size..(at + row) * size].copy_from_slice(&data[i * row * size..(i + 1) * row * size]);
        }
    }
    if let Some(gap) = covered.iter().position(|&c| !c) {
        return Err(bad(dir, format!("the tiles of {:?} leave element {gap} of {global_shape:?} uncovered", r.name)));
    }
    Ok(Assembled { name: r.name.clone(), dtype: r.dtype, shape: global_shape.to_vec(), bytes })
}
