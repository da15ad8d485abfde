//! The C ABI from C: the header is current, `examples/heat.c` (a simulation with five lines
//! added for tcasm) publishes exactly the fields it computes, as a Rust observer sees them,
//! and `tests/ffi/checks.c` gets the right status and message for every misuse and failure
//! (each status once; INTERNAL in tcasm-capi's unit test) and can wrap
//! heap and static arrays. Built with the system C compiler against the libtcasm that
//! `cargo build --release -p tcasm-capi` makes in this target directory.
mod common;
mod ffi;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tcasm::{Dtype, Observer, Producer, ProducerOptions, TrackerKind};

const LIMIT: Duration = Duration::from_secs(120);

fn cc_available(test: &str) -> bool {
    ffi::tool_available(test, "cc", &[])
}

/// Compiles C `sources` into `out` with the warnings that keep examples honest.
fn compile(sources: &[&Path], out: &Path, link: &[String]) -> PathBuf {
    let mut cc = Command::new("cc");
    cc.args(["-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(ffi::root().join("include"))
        .args(sources)
        .args(link)
        .arg("-o")
        .arg(out);
    ffi::run(&mut cc, &format!("compiling {}", out.display()));
    out.to_path_buf()
}

fn shared_link(lib: &Path) -> Vec<String> {
    vec![format!("-L{}", lib.display()), "-ltcasm".into(), format!("-Wl,-rpath,{}", lib.display())]
}

/// tcasm-capi's own tests: its header test compares what cbindgen makes of capi/src/lib.rs
/// with include/tcasm.h (TCASM_BLESS=1 rewrites it, except under CI), and its unit test
/// makes a panic inside a call, which must give `TCASM_ERR_INTERNAL` and leave the producer
/// good for destroy only.
#[test]
fn header_is_current_and_panics_are_internal() {
    let out = ffi::run(
        ffi::cargo().args(["test", "--release", "-p", "tcasm-capi", "--", "--nocapture"]),
        "tcasm-capi's tests",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    for test in ["header_is_current", "a_caught_panic_is_internal_and_only_destroy_works_after"] {
        assert!(said.contains(&format!("{test} ... ok")), "tcasm-capi's test {test} did not run:\n{said}");
    }
}

#[test]
fn header_compiles_as_c_and_cpp() {
    if !cc_available("header_compiles_as_c_and_cpp") {
        return;
    }
    let include = ffi::root().join("include/tcasm.h");
    for std in ["-std=c99", "-std=c11"] {
        ffi::run(
            Command::new("cc")
                .args([std, "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c"])
                .arg(&include),
            &format!("tcasm.h with cc {std}"),
        );
    }
    if ffi::tool_available("header_compiles_as_c_and_cpp", "c++", &[]) {
        ffi::run(
            Command::new("c++")
                .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++"])
                .arg(&include),
            "tcasm.h with c++",
        );
    }
}

#[test]
fn heat_example_publishes_every_step() {
    if !cc_available("heat_example_publishes_every_step") {
        return;
    }
    common::endpoint_dir("capi");
    let lib = ffi::capi_lib();
    let scratch = ffi::scratch("heat-c");
    let source = ffi::root().join("examples/heat.c");
    let text = std::fs::read_to_string(&source).unwrap();

    // At most five lines were added for tcasm and three for restarting, and without them it
    // is the plain simulation.
    let (added, plain) = ffi::tcasm_lines(&text, "/* tcasm");
    eprintln!("examples/heat.c: {} lines added for tcasm", added.len());
    assert!(added.len() <= 8, "examples/heat.c has {} tcasm lines: {added:#?}", added.len());
    let plain_source = scratch.join("heat-plain.c");
    std::fs::write(&plain_source, plain).unwrap();
    let plain_bin = compile(&[&plain_source], &scratch.join("heat-plain"), &[]);
    let plain_out = ffi::run(Command::new(&plain_bin).args(["40", "0"]), "the plain heat simulation");

    let bin = compile(&[&source], &scratch.join("heat"), &shared_link(lib));
    let steps: u64 = 120;
    let mut child =
        Command::new(&bin).args([&steps.to_string(), "15", "heat-c"]).stdout(Stdio::piped()).spawn().unwrap();
    let checked = ffi::follow_heat("heat-c", &mut child, LIMIT);
    let status = common::wait_with_watchdog(&mut child, LIMIT, "examples/heat.c");
    assert!(status.success(), "heat exited with {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    eprintln!("checked versions {checked:?}");
    assert!(checked.len() >= 3, "saw only versions {checked:?} of {steps}");
    let last = ffi::heat_field(steps)[ffi::NY / 2 * ffi::NX + ffi::NX / 2];
    assert_eq!(out.trim(), format!("heat-c: {steps} steps, t[48][64] = {last:.6}"));

    // The plain simulation computed the same thing.
    let forty = ffi::heat_field(40)[ffi::NY / 2 * ffi::NX + ffi::NX / 2];
    assert_eq!(String::from_utf8_lossy(&plain_out.stdout).trim(), format!("heat: 40 steps, t[48][64] = {forty:.6}"));
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn heat_example_links_statically() {
    if !cc_available("heat_example_links_statically") {
        return;
    }
    common::endpoint_dir("capi");
    let lib = ffi::capi_lib();
    let scratch = ffi::scratch("heat-static");
    let link = vec![lib.join("libtcasm.a").display().to_string(), "-lpthread".into(), "-ldl".into(), "-lm".into()];
    let bin = compile(&[&ffi::root().join("examples/heat.c")], &scratch.join("heat-static"), &link);
    let mut child = Command::new(&bin).args(["60", "10", "heat-c-static"]).stdout(Stdio::null()).spawn().unwrap();
    let checked = ffi::follow_heat("heat-c-static", &mut child, LIMIT);
    let status = common::wait_with_watchdog(&mut child, LIMIT, "static heat");
    assert!(status.success() && !checked.is_empty(), "{status}, versions {checked:?}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// examples/heat.c, SIGKILLed mid-run while `tcasm checkpoint` follows it, and started again
/// with its checkpoint directories, continues from the restored step: every version it
/// publishes afterwards is, bit for bit, the field of a run that never stopped, to the last.
#[test]
fn heat_example_killed_and_restarted_ends_as_if_never_stopped() {
    if !cc_available("heat_example_killed_and_restarted_ends_as_if_never_stopped") {
        return;
    }
    common::endpoint_dir("capi");
    let lib = ffi::capi_lib();
    let scratch = ffi::scratch("heat-restart");
    let bin = compile(&[&ffi::root().join("examples/heat.c")], &scratch.join("heat"), &shared_link(lib));
    let (name, steps) = ("heat-c-restart", 150);
    let out = ffi::kill_and_restart_heat(&bin, name, steps, &scratch, LIMIT);
    let last = ffi::heat_field(steps)[ffi::NY / 2 * ffi::NX + ffi::NX / 2];
    assert_eq!(out.trim(), format!("{name}: {steps} steps, t[48][64] = {last:.6}"));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Runs tests/ffi/checks.c with `tracker` and checks what it published.
fn checks(tracker: &str) {
    let test = format!("checks_{tracker}");
    if !cc_available(&test) {
        return;
    }
    common::endpoint_dir("capi");
    let lib = ffi::capi_lib();
    let scratch = ffi::scratch(&test);
    let bin = compile(&[&ffi::root().join("tests/ffi/checks.c")], &scratch.join("checks"), &shared_link(lib));
    let name = format!("capi-checks-{tracker}");
    // checks.c provokes TCASM_ERR_IO through the deferred tracker, where it works.
    let deferred = Producer::create(
        &format!("{name}-probe"),
        ProducerOptions { tracker: TrackerKind::Deferred, ..Default::default() },
    )
    .map_err(|e| {
        common::skip(
            &test,
            &format!("the deferred tracker does not work here ({e}), so TCASM_ERR_IO is not provoked"),
            common::Lacks::Kernel,
        )
    })
    .is_ok();
    let mut command = Command::new(&bin);
    if deferred {
        // Its threads' stacks are the 2 MiB Rust gives them by default, which checks.c counts on.
        command.env("TCASM_CHECKS_DEFERRED", "1").env_remove("RUST_MIN_STACK");
    }
    let (mut child, mut stdout, fields) =
        ffi::start_checks_with(command, &name, tracker, &format!("checks.c ({tracker})"));
    let version: u64 = fields[0].parse().unwrap();
    let with_table = fields[2] == "table";
    // The copy tracker never refuses memory (checks.c fails if it does).
    assert!(with_table || fields[1] != "copy", "the copy tracker refused initialised static data");
    eprintln!(
        "checks.c ({tracker}): version {version}, tracker {}, initialised static data wrapped: {with_table}",
        fields[1]
    );

    let observer: Observer = ffi::attach(&name, LIMIT);
    let snap = observer.latest().unwrap();
    assert_eq!(snap.version(), version);
    let regions: Vec<(String, Dtype, Vec<usize>)> =
        snap.regions().iter().map(|r| (r.name.clone(), r.dtype, r.shape.clone())).collect();
    let mut want =
        vec![("heap".to_string(), Dtype::F64, vec![30, 50]), ("static/counters".into(), Dtype::U32, vec![64, 64])];
    if with_table {
        want.push(("static/table".into(), Dtype::I16, vec![100]));
    }
    assert_eq!(regions, want);
    let heap = snap.view::<f64>("heap").unwrap();
    assert_eq!(heap[0], -1.0);
    assert!((1..1500).all(|i| heap[i] == i as f64 * 0.25));
    let counters = snap.view::<u32>("static/counters").unwrap();
    assert!((0..4095).all(|i| counters[i] == (i as u32).wrapping_mul(2654435761)));
    assert_eq!(counters[4095], 7);
    if with_table {
        let table = snap.view::<i16>("static/table").unwrap();
        assert_eq!((&table[..4], table[98], table[99]), (&[1, 2, 3, 0][..], 0, -99));
    }
    drop(snap);

    // Destroying the producer tells the observer, while the program still runs.
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "destroyed", "checks.c ({tracker})");
    // Only a hang reaches the deadline: a timeout would return Ok.
    match observer.wait_newer(version, LIMIT) {
        Err(tcasm::ReadError::ProducerGone { last_version, .. }) => assert_eq!(last_version, version),
        other => panic!("checks.c ({tracker}): after destroy, wait_newer gave {other:?}"),
    }
    assert!(matches!(observer.latest(), Err(tcasm::ReadError::ProducerGone { .. })));
    assert!(child.try_wait().unwrap().is_none(), "checks.c ({tracker}) exited before the observer was told");
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let status = common::wait_with_watchdog(&mut child, LIMIT, "checks.c");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "checks.c ({tracker}) failed: {status}\n{err}");
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn checks_auto() {
    checks("auto");
}

#[test]
fn checks_copy() {
    checks("copy");
}

/// tests/ffi/already_wrapped.c: a C program wrapping a buffer that another of its producers
/// wraps already is told so by `tcasm_last_error()` (the real cause and what to do), not
/// that the tracker cannot track such memory; once the other producer is destroyed, the
/// wrap works. A kernel tracker is needed (the copy tracker shares buffers freely).
#[test]
fn wrapping_what_another_producer_wraps_names_the_cause_in_c() {
    let test = "wrapping_what_another_producer_wraps_names_the_cause_in_c";
    if !cc_available(test) || !common::async_tracking_available(test) {
        return;
    }
    common::endpoint_dir("capi");
    let lib = ffi::capi_lib();
    let scratch = ffi::scratch("already-wrapped");
    let bin = compile(
        &[&ffi::root().join("tests/ffi/already_wrapped.c")],
        &scratch.join("already_wrapped"),
        &shared_link(lib),
    );
    let mut child = Command::new(&bin)
        .args(["capi-already-wrapped", "async"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_with_watchdog(&mut child, LIMIT, "already_wrapped.c");
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success() && out.trim() == "ok", "already_wrapped.c: {status}\n{out}");
    let _ = std::fs::remove_dir_all(&scratch);
}
