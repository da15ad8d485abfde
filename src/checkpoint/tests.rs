//! The format and its checks, against an in-memory page source whose every version is known.
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::format::{self, Manifest};
use super::restart;
use super::*;
use crate::region::{Dtype, RegionInfo};

const PAGE: usize = 4096;
/// Enough pages for several chunks.
const PAGES: usize = 600;

/// The version at which page `p` was last written, as of version `v`: every page at version
/// 1, then page `p` whenever `(p + v) % 5 == 0`.
fn written(p: usize, v: u64) -> u64 {
    (1..=v).rev().find(|&u| u == 1 || (p as u64 + u).is_multiple_of(5)).unwrap_or(1)
}

/// The bytes of page `p` as written at version `w`.
fn page_bytes(p: usize, w: u64) -> Vec<u8> {
    (0..PAGE).map(|i| (p as u64 * 31 + w * 17 + i as u64 * 7) as u8).collect()
}

struct Fake {
    version: u64,
    pages: Vec<Vec<u8>>,
}

impl Fake {
    fn at(version: u64) -> Fake {
        Fake { version, pages: (0..PAGES).map(|p| page_bytes(p, written(p, version))).collect() }
    }
    fn image(&self) -> Vec<u8> {
        self.pages.concat()
    }
}

impl PageSource for Fake {
    fn version(&self) -> u64 {
        self.version
    }
    fn page(&self, p: usize) -> &[u8] {
        &self.pages[p]
    }
    fn changed_since(&self, since: u64) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for p in (0..PAGES).filter(|&p| written(p, self.version) > since) {
            match out.last_mut() {
                Some(r) if r.end == p => r.end += 1,
                _ => out.push(p..p + 1),
            }
        }
        out
    }
}

fn space() -> PageSpace {
    let region = |name: &str, dtype: Dtype, shape: Vec<usize>, first_page, pages, offset| RegionInfo {
        name: name.into(),
        dtype,
        shape,
        first_page,
        pages,
        offset,
    };
    PageSpace {
        producer: "fake".into(),
        job: None,
        page_size: PAGE,
        page_count: PAGES,
        regions: vec![
            region("grid/u", Dtype::U8, vec![3, 100 * PAGE / 3 + 1], 0, 101, 0),
            region("t", Dtype::F64, vec![(499 * PAGE - 8 - 24) / 8], 101, 499, 8),
        ],
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcasm-ckpt-unit-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Writes checkpoints of `versions` and returns what each wrote.
fn write(dir: &Path, versions: &[u64], options: WriterOptions) -> Vec<Written> {
    let mut w = Writer::create(dir, space(), options).unwrap();
    versions.iter().map(|&v| w.write(&Fake::at(v), |_, _| {}).unwrap()).collect()
}

fn restored(dir: &Path, version: Option<u64>) -> Result<Vec<u8>, CheckpointError> {
    let r = Restore::open(dir, version)?;
    let mut image = vec![0u8; PAGES * PAGE];
    r.read(|first, bytes| {
        image[first * PAGE..first * PAGE + bytes.len()].copy_from_slice(bytes);
        Ok(())
    })?;
    Ok(image)
}

#[test]
fn increments_replay_to_every_version_checkpointed() {
    let dir = scratch("replay");
    let written = write(&dir, &[1, 2, 5, 6, 9, 14], WriterOptions { full_every: Some(4), ..Default::default() });
    assert_eq!(written.iter().map(|w| w.parent).collect::<Vec<_>>(), [None, Some(1), Some(2), Some(5), None, Some(9)]);
    assert_eq!(written[1].pages, Fake::at(2).changed_since(1).iter().map(|r| r.len()).sum::<usize>());
    assert!(written[0].chunks > 1, "a base spans several chunks");
    for v in [1, 2, 5, 6, 9, 14] {
        assert!(restored(&dir, Some(v)).unwrap() == Fake::at(v).image(), "version {v}");
    }
    assert!(restored(&dir, None).unwrap() == Fake::at(14).image());
    let report = verify(&dir).unwrap();
    assert!(report.intact(), "{:?}", report.damage);
    assert_eq!(report.restorable.len(), 6);
    assert!(matches!(Restore::open(&dir, Some(3)), Err(CheckpointError::NoSuchVersion { version: 3, .. })));
    fs::remove_dir_all(&dir).unwrap();
}

/// What a writer says it would write (for pacing, `--max-rate`) is what it then writes:
/// every page for a base (the first, and after `full_every`), the changed pages otherwise.
#[test]
fn bytes_to_write_is_what_the_write_writes() {
    let dir = scratch("bytes-to-write");
    let mut w = Writer::create(&dir, space(), WriterOptions { full_every: Some(2), ..Default::default() }).unwrap();
    let mut kinds = Vec::new();
    for v in [1, 2, 7, 8, 9] {
        let source = Fake::at(v);
        let said = w.bytes_to_write(&source);
        let written = w.write(&source, |_, _| {}).unwrap();
        assert_eq!(said, written.bytes, "version {v}");
        kinds.push((written.parent.is_none(), said == (PAGES * PAGE) as u64));
    }
    // Bases at 1 and 7 (after two checkpoints) and 9; increments are smaller.
    assert_eq!(kinds, [(true, true), (false, false), (true, true), (false, false), (true, true)]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_writer_is_refused_and_older_versions_too() {
    let dir = scratch("busy");
    let mut w = Writer::create(&dir, space(), WriterOptions::default()).unwrap();
    w.write(&Fake::at(4), |_, _| {}).unwrap();
    assert!(matches!(w.write(&Fake::at(4), |_, _| {}), Err(CheckpointError::NotNewer { version: 4, last: 4 })));
    assert!(matches!(Writer::create(&dir, space(), WriterOptions::default()), Err(CheckpointError::Busy { .. })));
    drop(w);
    Writer::create(&dir, space(), WriterOptions::default()).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keep_retires_whole_chains_once_a_newer_base_is_complete() {
    let dir = scratch("keep");
    let written =
        write(&dir, &[1, 2, 3, 4, 5, 6, 7], WriterOptions { full_every: Some(2), keep: Some(2), ..Default::default() });
    let retired: Vec<u64> = written.iter().flat_map(|w| w.retired.clone()).collect();
    assert_eq!(retired, [1, 2]);
    let catalog = Catalog::open(&dir).unwrap();
    assert_eq!(catalog.chains.iter().map(|c| c.number).collect::<Vec<_>>(), [3, 4]);
    assert!(restored(&dir, Some(5)).unwrap() == Fake::at(5).image());
    // A new writer starts a new chain after them; a leftover retiring chain is cleaned up.
    fs::create_dir(format::retired_dir(&dir, 9)).unwrap();
    let again = write(&dir, &[8], WriterOptions::default());
    assert_eq!(again[0].chain, 5);
    assert!(!format::retired_dir(&dir, 9).exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keep_bytes_retires_the_chains_that_do_not_fit() {
    let dir = scratch("keep-bytes");
    // Room for a little more than one chain of a base and an increment.
    let one = {
        let probe = scratch("keep-bytes-probe");
        write(&probe, &[1, 2], WriterOptions { full_every: Some(2), ..Default::default() });
        let bytes = super::directory_bytes(&probe).unwrap();
        fs::remove_dir_all(&probe).unwrap();
        bytes
    };
    let options = WriterOptions { full_every: Some(2), keep_bytes: Some(one + one / 2), ..Default::default() };
    let written = write(&dir, &[1, 2, 3, 4, 5, 6, 7], options);
    let retired: Vec<u64> = written.iter().flat_map(|w| w.retired.clone()).collect();
    assert_eq!(retired, [1, 2, 3]);
    let catalog = Catalog::open(&dir).unwrap();
    assert_eq!(catalog.chains.iter().map(|c| c.number).collect::<Vec<_>>(), [4]);
    assert!(restored(&dir, Some(7)).unwrap() == Fake::at(7).image());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn leftovers_of_a_killed_writer_are_ignored() {
    let dir = scratch("leftovers");
    write(&dir, &[1, 2], WriterOptions::default());
    let chain = format::chain_dir(&dir, 1);
    fs::write(format::data_path(&chain, 3), b"half a checkpoint").unwrap();
    fs::write(format::temp_manifest_path(&chain, 3), b"half a manifest").unwrap();
    let report = verify(&dir).unwrap();
    assert!(report.intact());
    assert_eq!(report.incomplete.len(), 2);
    assert!(restored(&dir, None).unwrap() == Fake::at(2).image());
    assert!(matches!(Restore::open(&dir, Some(3)), Err(CheckpointError::MissingManifest { version: 3, .. })));
    fs::remove_dir_all(&dir).unwrap();
}

/// Writes chain 1 with versions 1..=4 and applies `damage` to its directory.
fn damaged(test: &str, damage: impl FnOnce(&Path)) -> (PathBuf, VerifyReport) {
    let dir = scratch(test);
    write(&dir, &[1, 2, 3, 4], WriterOptions::default());
    damage(&format::chain_dir(&dir, 1));
    let report = verify(&dir).unwrap();
    assert!(!report.intact());
    (dir, report)
}

fn flip(file: &Path, at: u64) {
    let mut b = fs::read(file).unwrap();
    b[at as usize] ^= 0x40;
    fs::write(file, b).unwrap();
}

#[test]
fn a_flipped_byte_names_its_chunk_and_the_versions_it_costs() {
    let (dir, report) = damaged("flip", |chain| {
        let (m, _) = super::reader::load_manifest(chain, 1, 2).unwrap();
        let (offset, _) = m.chunk_offsets().nth(1).unwrap();
        flip(&format::data_path(chain, 2), offset + 5);
    });
    assert_eq!(report.damage.len(), 1);
    let d = &report.damage[0];
    assert!(matches!(d.error, CheckpointError::ChunkChecksum { chunk: 1, .. }), "{}", d.error);
    assert!(d.error.to_string().contains("v000000000002.data: chunk 1"), "{}", d.error);
    assert_eq!(d.unrestorable, [2, 3, 4]);
    assert_eq!(report.restorable, [(1, 1)]);
    assert!(matches!(restored(&dir, Some(4)), Err(CheckpointError::ChunkChecksum { chunk: 1, .. })));
    assert!(restored(&dir, Some(1)).unwrap() == Fake::at(1).image());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_chunk_costs_only_the_versions_that_still_take_its_pages() {
    let dir = scratch("rewritten");
    write(&dir, &[1, 2, 7], WriterOptions::default());
    let chain = format::chain_dir(&dir, 1);
    // v2's first chunk is page 3 alone, which v7 writes again.
    let (m, _) = super::reader::load_manifest(&chain, 1, 2).unwrap();
    assert_eq!(m.chunks[0].page_range(), 3..4);
    flip(&format::data_path(&chain, 2), format::DATA_HEADER as u64);
    let report = verify(&dir).unwrap();
    assert_eq!(report.damage[0].unrestorable, [2]);
    assert_eq!(report.restorable, [(1, 1), (1, 7)]);
    assert!(restored(&dir, Some(7)).unwrap() == Fake::at(7).image());
    assert!(matches!(restored(&dir, Some(2)), Err(CheckpointError::ChunkChecksum { chunk: 0, .. })));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_truncated_data_file_is_reported() {
    let (dir, report) = damaged("truncate", |chain| {
        let f = fs::OpenOptions::new().write(true).open(format::data_path(chain, 3)).unwrap();
        f.set_len(f.metadata().unwrap().len() - 1).unwrap();
    });
    assert!(matches!(report.damage[0].error, CheckpointError::Truncated { .. }));
    assert_eq!(report.damage[0].unrestorable, [3, 4]);
    assert!(matches!(restored(&dir, None), Err(CheckpointError::Truncated { .. })));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn verify_and_restore_agree_per_page_on_a_truncated_base() {
    // By version 6 every page was written again since 1: v6 needs nothing of its base.
    let dir = scratch("truncated-base");
    write(&dir, &[1, 6], WriterOptions::default());
    let f = fs::OpenOptions::new().write(true).open(format::data_path(&format::chain_dir(&dir, 1), 1)).unwrap();
    f.set_len(f.metadata().unwrap().len() - 1).unwrap();
    let report = verify(&dir).unwrap();
    assert_eq!(report.damage.len(), 1);
    assert!(matches!(report.damage[0].error, CheckpointError::Truncated { .. }), "{}", report.damage[0].error);
    assert_eq!(report.damage[0].unrestorable, [1]);
    assert_eq!(report.restorable, [(1, 6)]);
    assert!(restored(&dir, Some(6)).unwrap() == Fake::at(6).image());
    assert!(matches!(restored(&dir, Some(1)), Err(CheckpointError::Truncated { .. })));
    // A missing base data file is the same: v6 still restores, v1 does not.
    fs::remove_file(format::data_path(&format::chain_dir(&dir, 1), 1)).unwrap();
    let report = verify(&dir).unwrap();
    assert_eq!(
        (report.damage[0].unrestorable.as_slice(), report.restorable.as_slice()),
        ([1].as_slice(), [(1, 6)].as_slice())
    );
    assert!(restored(&dir, Some(6)).unwrap() == Fake::at(6).image());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_manifests_break_the_chain_after_them() {
    let (dir, report) = damaged("missing", |chain| fs::remove_file(format::manifest_path(chain, 2)).unwrap());
    let e = &report.damage[0].error;
    assert!(matches!(e, CheckpointError::MissingManifest { version: 2, .. }), "{e}");
    assert_eq!(report.damage[0].unrestorable, [3, 4]);
    assert!(matches!(restored(&dir, Some(4)), Err(CheckpointError::MissingManifest { version: 2, .. })));
    fs::remove_dir_all(&dir).unwrap();
    let (dir, report) = damaged("missing-base", |chain| fs::remove_file(format::manifest_path(chain, 1)).unwrap());
    assert!(matches!(report.damage[0].error, CheckpointError::MissingBase { version: 1, .. }));
    assert_eq!(report.damage[0].unrestorable, [2, 3, 4]);
    assert!(report.restorable.is_empty());
    assert!(matches!(restored(&dir, None), Err(CheckpointError::MissingBase { version: 1, .. })));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replaced_parent_breaks_the_link() {
    let (dir, report) = damaged("link", |chain| {
        // A manifest of v2 that checks out on its own, but is not the one v3 was written on.
        let path = format::manifest_path(chain, 2);
        let mut m = Manifest::decode(&fs::read(&path).unwrap(), &path).unwrap();
        m.space.producer = "another".into();
        fs::write(&path, m.encode()).unwrap();
    });
    assert!(matches!(report.damage[0].error, CheckpointError::BrokenLink { parent: 2, .. }));
    assert_eq!(report.damage[0].unrestorable, [3, 4]);
    assert!(matches!(restored(&dir, Some(3)), Err(CheckpointError::BrokenLink { .. })));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn each_manifest_check_has_its_error() {
    let dir = scratch("manifest");
    write(&dir, &[1], WriterOptions::default());
    let path = format::manifest_path(&format::chain_dir(&dir, 1), 1);
    let good = fs::read(&path).unwrap();
    let decode = |b: &[u8]| Manifest::decode(b, &path).unwrap_err();
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(decode(&b), CheckpointError::BadMagic { .. }));
    let mut b = good.clone();
    b[8] = 9;
    assert!(matches!(decode(&b), CheckpointError::UnsupportedFormat { found: 9, .. }));
    let mut b = good.clone();
    b[40] ^= 1;
    assert!(matches!(decode(&b), CheckpointError::ManifestChecksum { .. }));
    assert!(matches!(decode(&good[..good.len() - 3]), CheckpointError::Truncated { .. }));
    assert!(matches!(decode(&good[..20]), CheckpointError::Truncated { .. }));
    assert!(matches!(decode(&[good.as_slice(), b"x"].concat()), CheckpointError::TrailingBytes { .. }));
    // A checksum that holds over contents that do not: a chunk past the page space.
    let mut m = Manifest::decode(&good, &path).unwrap();
    m.chunks[0].first_page = PAGES;
    assert!(matches!(decode(&m.encode()), CheckpointError::BadManifest { .. }));
    // A rank of an MPI job: format 2 carries the rank and the job's size.
    let mut m = Manifest::decode(&good, &path).unwrap();
    m.space.job = Some(crate::job::Job { rank: 2, size: 4, launch: 1 << 40 });
    let b = m.encode();
    assert_eq!(b[8], format::FORMAT_JOB as u8);
    assert_eq!(Manifest::decode(&b, &path).unwrap(), m);
    m.space.job = Some(crate::job::Job { rank: 4, size: 4, launch: 0 });
    assert!(matches!(decode(&m.encode()), CheckpointError::BadManifest { .. }));
    // A data file of another checkpoint in its place.
    let chain = format::chain_dir(&dir, 1);
    let mut other = Manifest::decode(&good, &path).unwrap();
    other.version = 7;
    let mut data = fs::read(format::data_path(&chain, 1)).unwrap();
    data[..format::DATA_HEADER].copy_from_slice(&format::data_header(&other));
    fs::write(format::data_path(&chain, 1), data).unwrap();
    assert!(matches!(restored(&dir, None), Err(CheckpointError::ForeignData { .. })));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_files_hold_each_region_after_a_standard_header() {
    let dir = scratch("npy");
    write(&dir, &[1, 3], WriterOptions::default());
    let out = dir.join("out");
    let regions = restore_npy(&Restore::open(&dir, None).unwrap(), &out).unwrap();
    assert_eq!(regions[0].file, "grid%2Fu.npy");
    let image = Fake::at(3).image();
    for (r, info) in regions.iter().zip(&space().regions) {
        let file = fs::read(out.join(&r.file)).unwrap();
        let header = npy::header(info.dtype, &info.shape);
        assert_eq!(header.len() % 64, 0);
        assert_eq!(&file[..header.len()], header.as_slice());
        let start = info.first_page * PAGE + info.offset;
        assert!(file[header.len()..] == image[start..start + info.bytes()], "region {}", info.name);
    }
    let json: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(json["version"], 3);
    assert_eq!(json["regions"][1]["numpy_descr"], "<f8");
    let h = npy::header(Dtype::F64, &[3, 4]);
    assert_eq!(&h[..10], b"\x93NUMPY\x01\x00\x76\x00");
    assert!(
        String::from_utf8_lossy(&h[10..]).starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }")
    );
    assert!(String::from_utf8_lossy(&npy::header(Dtype::U8, &[5])[10..]).contains("'shape': (5,)"));
    fs::remove_dir_all(&dir).unwrap();
}

/// The HDF5 export of versions replayed from a base and increments, read back with the HDF5
/// library: regions spanning several chunks, a 2-D one whose rows do not start on pages and
/// one that does not start on a page, each split into hyperslabs where chunks end.
#[cfg(feature = "hdf5")]
#[test]
fn hdf5_export_holds_each_region_as_replayed() {
    let dir = scratch("hdf5");
    write(&dir, &[1, 2, 5], WriterOptions::default());
    let restores: Vec<Restore> = [2, 5].iter().map(|&v| Restore::open(&dir, Some(v)).unwrap()).collect();
    let out = dir.join("x.h5");
    let exported = export_hdf5(&restores, &out, false).unwrap();
    assert_eq!(exported.versions, [2, 5]);
    assert_eq!(exported.xdmf, Some(dir.join("x.xmf")));
    let file = ::hdf5::File::open(&out).unwrap();
    for v in [2, 5] {
        let image = Fake::at(v).image();
        let group = file.group(&format!("v{v:012}")).unwrap();
        assert_eq!(group.attr("version").unwrap().read_scalar::<u64>().unwrap(), v);
        for info in &space().regions {
            let dataset = group.dataset(&info.name).unwrap();
            assert_eq!(dataset.shape(), info.shape, "region {}", info.name);
            let bytes: Vec<u8> = match info.dtype {
                Dtype::U8 => dataset.read_raw::<u8>().unwrap(),
                Dtype::F64 => dataset.read_raw::<f64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
                other => panic!("no region of {other} here"),
            };
            let start = info.first_page * PAGE + info.offset;
            assert!(bytes == image[start..start + info.bytes()], "version {v}, region {}", info.name);
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// A region HDF5 cannot place (a dataset inside another dataset's path) is named, and the
/// export leaves nothing behind.
#[cfg(feature = "hdf5")]
#[test]
fn hdf5_export_names_a_region_it_cannot_place_and_leaves_nothing() {
    let dir = scratch("hdf5-clash");
    let mut clash = space();
    clash.regions[1].name = "grid/u/t".into();
    Writer::create(&dir, clash, WriterOptions::default()).unwrap().write(&Fake::at(1), |_, _| {}).unwrap();
    let out = dir.join("x.h5");
    let e = export_hdf5(&[Restore::open(&dir, None).unwrap()], &out, false).unwrap_err();
    assert!(e.to_string().contains("create the dataset \"grid/u/t\""), "{e}");
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock" && !n.to_string_lossy().starts_with("chain-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    fs::remove_dir_all(&dir).unwrap();
}

/// The bytes of each region of `space()` at version `v`.
fn region_bytes(v: u64) -> Vec<Vec<u8>> {
    let image = Fake::at(v).image();
    space().regions.iter().map(|r| image[r.first_page * PAGE + r.offset..][..r.bytes()].to_vec()).collect()
}

/// What a restart loaded, and the bytes it wrote into each region.
type Loaded = Option<(restart::Restarted, Vec<Vec<u8>>)>;

/// Restarts into buffers laid out unlike the checkpoint's page space (other offsets).
fn restart_into(dirs: &[&Path], regions: &[RegionInfo]) -> Result<Loaded, restart::RestartError> {
    let mut out: Vec<Vec<u8>> = regions.iter().map(|r| vec![0xee; r.bytes()]).collect();
    let found = restart::load(dirs, regions, |r, at, bytes| out[r][at..at + bytes.len()].copy_from_slice(bytes))?;
    Ok(found.map(|f| (f, out)))
}

fn moved_regions() -> Vec<RegionInfo> {
    let mut regions = space().regions;
    regions.reverse();
    regions[0].offset = 0;
    regions[1].offset = 100;
    regions
}

#[test]
fn restart_takes_the_newest_complete_version_of_any_level() {
    let (local, persistent) = (scratch("restart-local"), scratch("restart-persistent"));
    let regions = moved_regions();
    let missing = local.join("not-yet");
    assert!(restart_into(&[&missing, &persistent], &regions).unwrap().is_none(), "no checkpoint: a first run");
    write(&local, &[1, 3], WriterOptions::default());
    write(&persistent, &[2, 5], WriterOptions::default());
    let (found, bytes) = restart_into(&[&local, &persistent], &regions).unwrap().unwrap();
    assert_eq!((found.version, found.dir.as_path()), (5, persistent.as_path()));
    let mut expected = region_bytes(5);
    expected.reverse();
    assert!(bytes == expected);
    // The same version on both levels: the first directory is read; a damaged copy there
    // gives way to the intact one.
    write(&local, &[5], WriterOptions::default());
    let (found, _) = restart_into(&[&local, &persistent], &regions).unwrap().unwrap();
    assert_eq!(found.dir, local);
    let chain = format::chain_dir(&local, 2);
    flip(&format::data_path(&chain, 5), format::DATA_HEADER as u64 + 7);
    let (found, bytes) = restart_into(&[&local, &persistent], &regions).unwrap().unwrap();
    assert_eq!(found.dir, persistent);
    assert!(bytes == expected);
    // Damaged on the only level: refused, nothing written.
    fs::remove_dir_all(&persistent).unwrap();
    let mut out = vec![Vec::new(); 2];
    let e = restart::load(&[&local, &persistent], &regions, |r, _, _| out[r].push(1)).unwrap_err();
    assert!(matches!(e, restart::RestartError::Checkpoint(CheckpointError::ChunkChecksum { chunk: 0, .. })), "{e}");
    assert!(out.iter().all(|o| o.is_empty()), "memory touched");
    fs::remove_dir_all(&local).unwrap();
}

#[test]
fn restart_refuses_another_layout_naming_what_differs() {
    let dir = scratch("restart-layout");
    write(&dir, &[1, 2], WriterOptions::default());
    let refused = |regions: Vec<RegionInfo>| {
        let mut touched = false;
        let e = restart::load(&[&dir], &regions, |_, _, _| touched = true).unwrap_err();
        assert!(!touched, "memory touched by a refused restart");
        e.to_string()
    };
    let mut renamed = moved_regions();
    renamed[0].name = "temperature".into();
    let e = refused(renamed);
    assert!(e.contains("no region \"temperature\"") && e.contains("\"grid/u\""), "{e}");
    let mut retyped = moved_regions();
    retyped[0].dtype = Dtype::I64;
    let e = refused(retyped);
    assert!(e.contains("region \"t\"") && e.contains("holds f64") && e.contains("i64"), "{e}");
    let mut reshaped = moved_regions();
    reshaped[1].shape = vec![100 * PAGE / 3 + 1, 3];
    let e = refused(reshaped);
    assert!(e.contains("region \"grid/u\"") && e.contains("shape"), "{e}");
    let e = refused(moved_regions()[..1].to_vec());
    assert!(e.contains("region \"grid/u\" this producer does not"), "{e}");
    // A newer format: refused by name of file and format.
    let manifest = format::manifest_path(&format::chain_dir(&dir, 1), 2);
    let mut b = fs::read(&manifest).unwrap();
    b[8] = 9;
    fs::write(&manifest, b).unwrap();
    let e = refused(moved_regions());
    assert!(e.contains("checkpoint format 9") && e.contains("v000000000002.manifest"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flushes_carry_base_and_increments_and_restore_on_their_own() {
    let (local, persistent) = (scratch("flush-local"), scratch("flush-persistent"));
    fs::create_dir_all(&persistent).unwrap();
    let mut w = Writer::create(&local, space(), WriterOptions::default()).unwrap();
    let mut f = Flusher::create(&local, &persistent, Some(1)).unwrap();
    for v in [1, 2, 5] {
        w.write(&Fake::at(v), |_, _| {}).unwrap();
    }
    // Version 5 alone is asked for: its base and increments come with it.
    let flushed = f.flush(1, 5, |_, _| {}).unwrap();
    assert_eq!((flushed.chain, flushed.copied.as_slice()), (1, [1, 2, 5].as_slice()));
    assert!(restored(&persistent, Some(5)).unwrap() == Fake::at(5).image());
    w.write(&Fake::at(6), |_, _| {}).unwrap();
    w.write(&Fake::at(7), |_, _| {}).unwrap();
    assert_eq!(f.flush(1, 7, |_, _| {}).unwrap().copied, [6, 7]);
    assert!(restored(&persistent, None).unwrap() == Fake::at(7).image());
    assert!(verify(&persistent).unwrap().intact());
    // A damaged local chunk is refused, never copied with a fresh checksum; the persistent
    // side keeps restoring what was flushed completely.
    w.write(&Fake::at(8), |_, _| {}).unwrap();
    flip(&format::data_path(&format::chain_dir(&local, 1), 8), format::DATA_HEADER as u64 + 1);
    assert!(matches!(f.flush(1, 8, |_, _| {}), Err(CheckpointError::ChunkChecksum { .. })));
    assert!(restored(&persistent, None).unwrap() == Fake::at(7).image());
    // A new local base starts a new persistent chain; the old one is retired (keep 1).
    w.start_new_chain();
    w.write(&Fake::at(9), |_, _| {}).unwrap();
    let flushed = f.flush(2, 9, |_, _| {}).unwrap();
    assert_eq!(
        (flushed.chain, flushed.copied.as_slice(), flushed.retired.as_slice()),
        (2, [9].as_slice(), [1].as_slice())
    );
    assert!(restored(&persistent, None).unwrap() == Fake::at(9).image());
    // One flusher per persistent directory; a missing one is refused with what to do.
    assert!(matches!(Flusher::create(&local, &persistent, None), Err(CheckpointError::Busy { .. })));
    let e = Flusher::create(&local, &persistent.join("absent"), None).err().unwrap().to_string();
    assert!(e.contains("create it"), "{e}");
    fs::remove_dir_all(&local).unwrap();
    fs::remove_dir_all(&persistent).unwrap();
}
