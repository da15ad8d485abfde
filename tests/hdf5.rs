//! `tcasm restore --format hdf5`, end to end: a producer (this test process) publishes regions
//! of ranks 1, 2, 3 and 6, `tcasm checkpoint` checkpoints some of its versions (increments
//! that hold only the pages written since), and the export is read back from Python by h5py
//! (bit-equal to the `.npy` restore of the same version and to what the producer published,
//! with the attributes) and by VTK's XDMF reader, the one ParaView uses (`python/tests/
//! check_hdf5.py`). Bad input: an existing output, a missing directory, a damaged chunk.
//!
//! Runs with the `hdf5` feature (`cargo test --release --features hdf5 --test hdf5`); without
//! it, the one test here checks that the command says how to get it.
mod common;
mod ffi;

use std::process::{Command, Output};

fn tcasm(args: &[&str]) -> Output {
    let out = Command::new(common::tcasm_bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "tcasm {args:?} panicked:\n{stderr}");
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[cfg(not(feature = "hdf5"))]
#[test]
fn without_the_feature_the_command_says_how_to_get_it() {
    let dir = std::env::temp_dir().join(format!("tcasm-hdf5-off-{}", std::process::id()));
    let out = tcasm(&[
        "restore",
        &dir.display().to_string(),
        "--format",
        "hdf5",
        "--out",
        &dir.join("x.h5").display().to_string(),
    ]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("apt-get install libhdf5-dev pkg-config") && said.contains("--features hdf5"), "{said}");
}

#[cfg(feature = "hdf5")]
mod export {
    use std::fs;
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use tcasm::checkpoint::Catalog;
    use tcasm::{Producer, ProducerOptions, Region};

    use super::{common, ffi, tcasm, text};

    const LIMIT: Duration = Duration::from_secs(120);

    /// Elements of `big` rewritten together: one page of i32.
    const BLOCK: usize = 1024;

    /// The version that last wrote block `b` of `big`, as of version `v`: every block at
    /// version 1, then block `b` at each version `u` with `(b + u) % 5 == 0` (check_hdf5.py's
    /// `written_at`).
    fn written_at(b: usize, v: u64) -> u64 {
        match v.checked_sub((b as u64 + v) % 5) {
            Some(u) if u >= 2 => u,
            _ => 1,
        }
    }

    /// The regions check_hdf5.py expects; version `v` writes what its `expected` says.
    struct Regions {
        grid: Region<f64>,
        rho: Region<f32>,
        phase: Region<f64>,
        flags: Region<u8>,
        big: Region<i32>,
        step: Region<i64>,
    }

    impl Regions {
        fn new(p: &mut Producer) -> Regions {
            Regions {
                grid: p.region::<f64>("grid/t", &[64, 100]).unwrap(),
                rho: p.region::<f32>("rho", &[6, 10, 12]).unwrap(),
                phase: p.region::<f64>("phase", &[2, 3, 2, 2, 3, 4]).unwrap(),
                // Not page-aligned: a wrapped buffer starts where the allocator put it.
                flags: p.wrap_vec("flags", vec![0u8; 1000], &[1000]).unwrap(),
                big: p.region::<i32>("big", &[400, 700]).unwrap(),
                step: p.region::<i64>("step", &[1]).unwrap(),
            }
        }

        fn write(&mut self, v: u64) {
            let vf = v as f64;
            self.grid.iter_mut().enumerate().for_each(|(i, x)| *x = i as f64 + vf * 1e4);
            self.rho.iter_mut().enumerate().for_each(|(i, x)| *x = (i % 1000) as f32 * 0.5 + v as f32);
            self.phase.iter_mut().enumerate().for_each(|(i, x)| *x = i as f64 * 0.25 - vf);
            self.flags.iter_mut().enumerate().for_each(|(i, x)| *x = ((i as u64 + v) % 256) as u8);
            for (b, block) in self.big.chunks_mut(BLOCK).enumerate() {
                if written_at(b, v) == v {
                    block
                        .iter_mut()
                        .enumerate()
                        .for_each(|(k, x)| *x = ((b * BLOCK + k) * 3) as i32 + v as i32 * 1_000_000);
                }
            }
            self.step[0] = v as i64 * 10;
        }
    }

    fn publish(p: &mut Producer, regions: &mut Regions) -> u64 {
        let next = p.stats().versions + 1;
        regions.write(next);
        assert_eq!(p.publish().unwrap(), next);
        next
    }

    /// `count` checkpoints of `name` in `dir` (a base and increments) while it publishes.
    fn checkpoint(name: &str, dir: &Path, count: u64, p: &mut Producer, regions: &mut Regions) {
        ffi::checkpoint_while_publishing(name, dir, count, LIMIT, || {
            publish(p, regions);
        });
    }

    fn ok(args: &[&str]) -> String {
        let out = tcasm(args);
        assert!(out.status.success(), "tcasm {args:?} failed: {}", text(&out));
        text(&out)
    }

    fn refused(args: &[&str], says: &str) -> String {
        let out = tcasm(args);
        let said = text(&out);
        assert!(!out.status.success(), "tcasm {args:?} succeeded: {said}");
        assert!(said.contains(says), "tcasm {args:?} said {said:?}, not {says:?}");
        said
    }

    /// Files in `dir` whose names start with `.` and contain `.tmp-`: what an export in
    /// progress writes to.
    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn h5py_and_vtk_read_the_export_as_published() {
        let test = "h5py_and_vtk_read_the_export_as_published";
        let Some(venv) =
            ffi::venv(test, "tcasm-hdf5-venv", &["numpy", "h5py", "vtk"], "import numpy, h5py, vtkmodules.vtkIOXdmf2")
        else {
            return;
        };
        common::endpoint_dir("hdf5");
        let scratch = common::scratch("hdf5", "read");
        let name = "hdf5-export";
        let mut producer = Producer::create(name, ProducerOptions::default()).unwrap();
        let mut regions = Regions::new(&mut producer);
        publish(&mut producer, &mut regions);
        let checkpoints = scratch.join("checkpoints");
        checkpoint(name, &checkpoints, 4, &mut producer, &mut regions);
        drop(producer);

        let versions = Catalog::open(&checkpoints).unwrap().versions();
        assert_eq!(versions.len(), 4, "{versions:?}");
        let dir = checkpoints.display().to_string();
        for v in &versions {
            ok(&[
                "restore",
                &dir,
                "--version",
                &v.to_string(),
                "--out",
                &scratch.join(format!("npy-{v}")).display().to_string(),
            ]);
        }
        let (first, last) = (versions[0], versions[3]);
        let one = scratch.join("one.h5").display().to_string();
        let said = ok(&["restore", &dir, "--version", &last.to_string(), "--format", "hdf5", "--out", &one]);
        assert!(said.contains(&format!("exported version {last} of \"{name}\"")) && said.contains("one.xmf"), "{said}");
        // Two of the versions, and all of them.
        let two = scratch.join("two.h5").display().to_string();
        ok(&[
            "restore",
            &dir,
            "--versions",
            &format!("{}..{}", versions[1], versions[2]),
            "--format",
            "hdf5",
            "--out",
            &two,
        ]);
        let series = scratch.join("series.h5").display().to_string();
        let said = ok(&["restore", &dir, "--versions", &format!("{first}.."), "--format", "hdf5", "--out", &series]);
        assert!(said.contains(&format!("exported 4 versions (v{first}..v{last})")), "{said}");

        let out = Command::new(venv.join("bin/python"))
            .arg(ffi::root().join("python/tests/check_hdf5.py"))
            .arg(&scratch)
            .arg(name)
            .args(versions.iter().map(|v| v.to_string()))
            .output()
            .unwrap();
        let said = text(&out);
        eprintln!("{said}");
        assert!(
            out.status.success() && said.trim_end().ends_with("ok"),
            "check_hdf5.py failed ({}):\n{said}",
            out.status
        );
        let _ = fs::remove_dir_all(&scratch);
    }

    #[test]
    fn bad_input_is_refused_and_leaves_no_partial_file() {
        common::endpoint_dir("hdf5");
        let scratch = common::scratch("hdf5", "bad");
        let name = "hdf5-bad-input";
        let mut producer = Producer::create(name, ProducerOptions::default()).unwrap();
        let mut regions = Regions::new(&mut producer);
        publish(&mut producer, &mut regions);
        let checkpoints = scratch.join("checkpoints");
        checkpoint(name, &checkpoints, 2, &mut producer, &mut regions);
        drop(producer);
        let dir = checkpoints.display().to_string();
        let out_dir = scratch.join("out");
        fs::create_dir(&out_dir).unwrap();
        let h5 = out_dir.join("x.h5");
        let h5s = h5.display().to_string();

        // No checkpoint directory, no such version, an empty range.
        refused(
            &["restore", &scratch.join("none").display().to_string(), "--format", "hdf5", "--out", &h5s],
            "listing",
        );
        refused(
            &["restore", &dir, "--version", "999999", "--format", "hdf5", "--out", &h5s],
            "no complete checkpoint of version 999999",
        );
        refused(
            &["restore", &dir, "--versions", "999990..999999", "--format", "hdf5", "--out", &h5s],
            "no complete checkpoint of a version in",
        );
        refused(
            &["restore", &dir, "--versions", "1..", "--out", &out_dir.join("npy").display().to_string()],
            "--format hdf5",
        );
        refused(
            &["restore", &dir, "--format", "hdf5", "--out", &out_dir.join("x.xmf").display().to_string()],
            "name the HDF5 file FILE.h5",
        );
        // A directory that does not exist, and one that is a file.
        refused(
            &["restore", &dir, "--format", "hdf5", "--out", &scratch.join("missing/x.h5").display().to_string()],
            "No such file or directory",
        );
        fs::write(scratch.join("file"), b"").unwrap();
        refused(
            &["restore", &dir, "--format", "hdf5", "--out", &scratch.join("file/x.h5").display().to_string()],
            "Not a directory",
        );
        assert!(!h5.exists() && leftovers(&out_dir).is_empty());

        // An existing output is kept unless --force.
        ok(&["restore", &dir, "--format", "hdf5", "--out", &h5s]);
        let before = fs::read(&h5).unwrap();
        refused(&["restore", &dir, "--format", "hdf5", "--out", &h5s], "exists; pass --force to replace it");
        fs::remove_file(&h5).unwrap();
        refused(&["restore", &dir, "--format", "hdf5", "--out", &h5s], "x.xmf exists; pass --force");
        ok(&["restore", &dir, "--format", "hdf5", "--out", &h5s, "--force"]);
        assert_eq!(fs::read(&h5).unwrap().len(), before.len());

        // A damaged chunk in the newest checkpoint's chain: the export fails naming it, the
        // files from before stay as they were, and nothing else is left behind.
        let catalog = Catalog::open(&checkpoints).unwrap();
        let (chain, newest) = catalog.newest().unwrap();
        let data = catalog.chains.iter().find(|c| c.number == chain).unwrap().dir.join(format!("v{newest:012}.data"));
        let mut bytes = fs::read(&data).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0xff;
        fs::write(&data, bytes).unwrap();
        let xmf_before = fs::read(out_dir.join("x.xmf")).unwrap();
        let before = fs::read(&h5).unwrap();
        refused(&["restore", &dir, "--format", "hdf5", "--out", &h5s, "--force"], "checksum mismatch");
        let fresh = out_dir.join("fresh.h5");
        refused(&["restore", &dir, "--format", "hdf5", "--out", &fresh.display().to_string()], "checksum mismatch");
        assert_eq!(fs::read(&h5).unwrap(), before);
        assert_eq!(fs::read(out_dir.join("x.xmf")).unwrap(), xmf_before);
        assert!(!fresh.exists() && !out_dir.join("fresh.xmf").exists());
        assert!(leftovers(&out_dir).is_empty(), "{:?}", leftovers(&out_dir));
        let _ = fs::remove_dir_all(&scratch);
    }
}
