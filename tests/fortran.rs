//! The Fortran module from Fortran, built with gfortran against the libtcasm this target
//! directory holds: `examples/heat.f90` (an ALLOCATABLE heat simulation, a few lines added
//! for tcasm) publishes exactly the fields it computes, and `tests/ffi/checks.f90` gets the
//! right statuses and shares arrays of every kind, ranks 1 to 7 and a scalar, in C order
//! (dimensions reversed), as a Rust observer sees them.
mod common;
mod ffi;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tcasm::Dtype;

const LIMIT: Duration = Duration::from_secs(120);

fn gfortran_available(test: &str) -> bool {
    ffi::tool_available(test, "gfortran", &[])
}

/// Compiles `program` into `out`, with the tcasm module and library when `with_tcasm`
/// (module files go to `out`'s directory).
fn compile(program: &Path, out: &Path, with_tcasm: bool) -> PathBuf {
    let dir = out.parent().unwrap();
    let mut fc = Command::new("gfortran");
    fc.args(["-O2", "-ffp-contract=off", "-Wall", "-std=f2018"]).arg(format!("-J{}", dir.display()));
    if with_tcasm {
        let lib = ffi::capi_lib();
        fc.arg(ffi::root().join("fortran/tcasm.f90"))
            .arg(program)
            .arg(format!("-L{}", lib.display()))
            .arg("-ltcasm")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    } else {
        fc.arg(program);
    }
    fc.arg("-o").arg(out);
    ffi::run(&mut fc, &format!("compiling {}", out.display()));
    out.to_path_buf()
}

#[test]
fn heat_example_publishes_every_step() {
    if !gfortran_available("heat_example_publishes_every_step") {
        return;
    }
    common::endpoint_dir("fortran");
    let scratch = ffi::scratch("heat-f");
    let source = ffi::root().join("examples/heat.f90");
    let text = std::fs::read_to_string(&source).unwrap();

    // The lines marked for tcasm, and the program without them (the declaration marked
    // "tcasm: target" only gained that attribute).
    let (added, _) = ffi::tcasm_lines(&text, "! tcasm");
    eprintln!("examples/heat.f90: {} lines marked for tcasm: {added:#?}", added.len());
    assert!(added.len() <= 10, "examples/heat.f90 has {} tcasm lines", added.len());
    let plain: String = text
        .lines()
        .filter_map(|l| match l.find("! tcasm") {
            Some(at) if l.contains("! tcasm: target") => Some(l[..at].replace(", target", "").trim_end().to_string()),
            Some(_) => None,
            None => Some(l.to_string()),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let plain_source = scratch.join("heat-plain.f90");
    std::fs::write(&plain_source, plain).unwrap();
    let plain_bin = compile(&plain_source, &scratch.join("heat-plain"), false);
    let plain_out = ffi::run(Command::new(&plain_bin).args(["40", "0", "plain"]), "the plain Fortran heat simulation");
    let at = |steps| ffi::heat_field(steps)[ffi::NY / 2 * ffi::NX + ffi::NX / 2];
    assert_eq!(
        String::from_utf8_lossy(&plain_out.stdout).trim(),
        format!("heat-f: 40 steps, t(65, 49) = {:.6}", at(40))
    );

    let bin = compile(&source, &scratch.join("heat-f"), true);
    let steps: u64 = 120;
    let mut child =
        Command::new(&bin).args([&steps.to_string(), "15", "heat-fortran"]).stdout(Stdio::piped()).spawn().unwrap();
    let checked = ffi::follow_heat("heat-fortran", &mut child, LIMIT);
    let status = common::wait_with_watchdog(&mut child, LIMIT, "examples/heat.f90");
    assert!(status.success(), "heat-f exited with {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    eprintln!("checked versions {checked:?}");
    assert!(checked.len() >= 3, "saw only versions {checked:?} of {steps}");
    assert_eq!(out.trim(), format!("heat-f: {steps} steps, t(65, 49) = {:.6}", at(steps)));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// examples/heat.f90, SIGKILLed and restarted from its checkpoints, ends as if it never
/// stopped (see `ffi::kill_and_restart_heat`).
#[test]
fn heat_example_killed_and_restarted_ends_as_if_never_stopped() {
    if !gfortran_available("heat_example_killed_and_restarted_ends_as_if_never_stopped") {
        return;
    }
    common::endpoint_dir("fortran");
    let scratch = ffi::scratch("heat-f-restart");
    let bin = compile(&ffi::root().join("examples/heat.f90"), &scratch.join("heat-f"), true);
    let steps = 150;
    let out = ffi::kill_and_restart_heat(&bin, "heat-f-restart", steps, &scratch, LIMIT);
    let at = ffi::heat_field(steps)[ffi::NY / 2 * ffi::NX + ffi::NX / 2];
    assert_eq!(out.trim(), format!("heat-f: {steps} steps, t(65, 49) = {at:.6}"));
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn checks() {
    if !gfortran_available("checks") {
        return;
    }
    common::endpoint_dir("fortran");
    let scratch = ffi::scratch("checks-f");
    let bin = compile(&ffi::root().join("tests/ffi/checks.f90"), &scratch.join("checks-f"), true);
    let name = "fortran-checks";
    let (mut child, mut stdout, fields) = ffi::start_checks(&bin, name, "auto", "checks.f90");
    let version: u64 = fields[0].parse().unwrap();
    assert!(["auto", "copy"].contains(&fields[1].as_str()), "tracker {}", fields[1]);

    let observer = ffi::attach(name, Duration::from_secs(10));
    let snap = observer.latest().unwrap();
    assert_eq!(snap.version(), version);
    let regions: Vec<(&str, Dtype, &[usize])> =
        snap.regions().iter().map(|r| (r.name.as_str(), r.dtype, r.shape.as_slice())).collect();
    assert_eq!(
        regions,
        [
            ("a", Dtype::F64, &[3, 5][..]),
            ("b", Dtype::F32, &[2, 3, 4][..]),
            ("counts", Dtype::I32, &[7][..]),
            ("step", Dtype::I64, &[1][..]),
            ("phase", Dtype::F64, &[5, 2, 1, 4, 2, 3][..]),
            ("flags", Dtype::I32, &[2, 2, 1, 3, 2, 1, 2][..]),
        ]
    );
    // phase(3, 2, 4, 1, 2, 5) and flags(2, 1, 2, 3, 1, 2, 2) hold their memory order index:
    // the reversed shape in C order is the same memory, element for element.
    let phase = snap.view::<f64>("phase").unwrap();
    assert!(phase.len() == 240 && phase.iter().enumerate().all(|(n, &x)| x == n as f64), "{phase:?}");
    let flags = snap.view::<i32>("flags").unwrap();
    assert!(flags.len() == 48 && flags.iter().enumerate().all(|(n, &x)| x == n as i32), "{flags:?}");
    // a(i, j) = 10 i + j is a[j-1][i-1] in C order.
    let a = snap.view::<f64>("a").unwrap();
    assert!((1..=3).all(|j| (1..=5).all(|i| a[(j - 1) * 5 + (i - 1)] == (10 * i + j) as f64)), "{a:?}");
    let b = snap.view::<f32>("b").unwrap();
    let b_at = |i: usize, j: usize, k: usize| b[((k - 1) * 3 + (j - 1)) * 4 + (i - 1)];
    assert!((1..=2).all(|k| (1..=3).all(|j| (1..=4).all(|i| b_at(i, j, k) == (100 * i + 10 * j + k) as f32))), "{b:?}");
    assert_eq!(snap.view::<i32>("counts").unwrap(), &[1, 4, 9, 16, 25, 36, 49]);
    assert_eq!(snap.view::<i64>("step").unwrap(), &[42]);
    drop(snap);

    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let status = common::wait_with_watchdog(&mut child, LIMIT, "checks.f90");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success() && rest.trim() == "done 0", "checks.f90 failed: {status}\n{rest}\n{err}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The README's Fortran snippet, as written, inside a program that gives it the variables and
/// the `advance` it leaves to the reader: it compiles with nothing but `use tcasm`, and runs.
#[test]
fn readme_snippet_compiles_and_runs() {
    if !gfortran_available("readme_snippet_compiles_and_runs") {
        return;
    }
    common::endpoint_dir("fortran");
    let readme = std::fs::read_to_string(ffi::root().join("README.md")).unwrap();
    let snippet = readme
        .split("```fortran\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a ```fortran block in README.md");
    let (first, rest) = snippet.split_once('\n').unwrap();
    assert_eq!(first.trim(), "use tcasm", "the snippet starts with its use line");
    let program = format!(
        "program readme\n{first}\nimplicit none\ninteger :: nx = 16, ny = 8, steps = 3, step\n{rest}\
         contains\nsubroutine advance(t)\nreal(c_double), intent(inout) :: t(:,:)\nt = t + 1\nend subroutine\nend program\n"
    );
    let scratch = ffi::scratch("readme-f");
    let source = scratch.join("readme.f90");
    std::fs::write(&source, program).unwrap();
    let bin = compile(&source, &scratch.join("readme-f"), true);
    let status = Command::new(&bin).status().unwrap();
    assert!(status.success(), "the README's Fortran snippet failed: {status}");
    let _ = std::fs::remove_dir_all(&scratch);
}
