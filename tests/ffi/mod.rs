//! Shared by the tests of the C ABI, the Fortran module and the Python package
//! (`tests/capi.rs`, `tests/fortran.rs`, `tests/python.rs`): finding tools, building the
//! C library with the cargo that runs the tests (into the same target directory), and the
//! heat field the examples compute.
//!
//! A test whose tool (cc, gfortran, python3) is missing is skipped with a message, unless
//! `TCASM_REQUIRE_TOOLS=1` (CI), where that is a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tcasm::{Observer, ReadError};

/// The repository root.
pub fn root() -> &'static Path {
    // This test belongs to the package in tools/tcasm.
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The target directory these tests were built into: builds made by the tests go there too.
pub fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`, whatever CARGO_TARGET_DIR or config said.
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
    })
}

/// A fresh scratch directory for test `test` under the target directory.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ffi-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether `tool` runs (`tool --version`, or `probe` when given). When it does not, says
/// why; under `TCASM_REQUIRE_TOOLS=1` that is a failure instead of a skip.
pub fn tool_available(test: &str, tool: &str, probe: &[&str]) -> bool {
    let args: &[&str] = if probe.is_empty() { &["--version"] } else { probe };
    let why = match Command::new(tool).args(args).output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!("`{tool} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("`{tool}` cannot be run: {e}"),
    };
    skip_or_fail(test, &why)
}

/// Skips test `test` for `why`, or fails it under `TCASM_REQUIRE_TOOLS=1`. Returns false.
pub fn skip_or_fail(test: &str, why: &str) -> bool {
    super::common::skip(test, why, super::common::Lacks::Tool)
}

/// A Python virtual environment `name` in the target directory with `packages` installed
/// from PyPI, made once and kept while `probe` (Python code, e.g. `import numpy`) runs in it.
/// `None` when Python cannot make one or pip cannot install the packages (a skip, or a
/// failure under TCASM_REQUIRE_TOOLS=1).
pub fn venv(test: &str, name: &str, packages: &[&str], probe: &str) -> Option<PathBuf> {
    let python = std::env::var("TCASM_PYTHON").unwrap_or_else(|_| "python3".into());
    if !tool_available(test, &python, &["-c", "import venv, ensurepip"]) {
        return None;
    }
    let venv = target_dir().join(name);
    let bin = venv.join("bin");
    let ready =
        |bin: &Path| Command::new(bin.join("python")).args(["-c", probe]).output().is_ok_and(|o| o.status.success());
    if !ready(&bin) {
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new(&python).args(["-m", "venv"]).arg(&venv), "creating the virtual environment");
        let pip = Command::new(bin.join("python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .output();
        match pip {
            Ok(out) if out.status.success() && ready(&bin) => {}
            Ok(out) => {
                let why = format!(
                    "pip could not install {}: {}",
                    packages.join(", "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let _ = std::fs::remove_dir_all(&venv);
                skip_or_fail(test, &why);
                return None;
            }
            Err(e) => panic!("running pip: {e}"),
        }
    }
    Some(venv)
}

/// Runs `tcasm checkpoint NAME --dir DIR --count COUNT` while calling `publish` every 30 ms
/// (the producer runs in the test process), until it has taken its checkpoints.
pub fn checkpoint_while_publishing(name: &str, dir: &Path, count: u64, limit: Duration, mut publish: impl FnMut()) {
    let mut checkpointer = Command::new(env!("CARGO_BIN_EXE_tcasm"))
        .args(["checkpoint", name, "--every-version", "--dir"])
        .arg(dir)
        .args(["--count", &count.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let since = Instant::now();
    let status = loop {
        if let Some(status) = checkpointer.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > limit {
            let _ = checkpointer.kill();
            panic!("tcasm checkpoint did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(30));
        publish();
    };
    assert!(status.success(), "tcasm checkpoint failed: {status}");
}

/// The cargo running these tests.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root()).env("CARGO_TARGET_DIR", target_dir());
    c
}

/// The virtual environment with maturin, numpy and this package built into it, made once
/// per target directory and rebuilt (incrementally) once per test binary. `None` when Python
/// cannot make one (a skip, or a failure under TCASM_REQUIRE_TOOLS=1).
pub fn python_package(test: &str) -> Option<PathBuf> {
    // Tests run on parallel threads, and two `maturin develop` into one environment at once
    // uninstall what the other installs: the first test builds, the others wait for it.
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(venv) = built.as_ref() {
        return Some(venv.clone());
    }
    let venv = venv(test, "tcasm-python-venv", &["maturin>=1.7,<2", "numpy"], "import numpy, maturin")?;
    let bin = venv.join("bin");
    let path = std::env::join_paths(
        std::iter::once(bin.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    run(
        Command::new(bin.join("maturin"))
            .args(["develop", "--release", "--quiet", "-m"])
            .arg(root().join("python/Cargo.toml"))
            .env("VIRTUAL_ENV", &venv)
            .env("PATH", path)
            .env("CARGO_TARGET_DIR", target_dir())
            .env("CARGO", std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
        "building the Python package (maturin develop --release)",
    );
    *built = Some(venv.clone());
    Some(venv)
}

/// Runs `command`, failing the test with its output unless it succeeds.
pub fn run(command: &mut Command, what: &str) -> Output {
    let started = Instant::now();
    let out = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {command:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// Builds libtcasm.so and libtcasm.a (`cargo build --release -p tcasm-capi`), once per test
/// process, and returns the directory holding them.
pub fn capi_lib() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        run(cargo().args(["build", "--release", "-p", "tcasm-capi"]), "building the C library");
        let dir = target_dir().join("release");
        assert!(
            dir.join("libtcasm.so").exists() && dir.join("libtcasm.a").exists(),
            "no libtcasm in {}",
            dir.display()
        );
        dir
    })
}

/// Attaches to `name`, waiting up to `limit` for the producer to appear and publish.
pub fn attach(name: &str, limit: Duration) -> Observer {
    Observer::attach_timeout(name, limit).unwrap_or_else(|e| panic!("attaching to {name:?}: {e}"))
}

/// The heat examples' grid (rows, columns), in C order.
pub const NY: usize = 96;
pub const NX: usize = 128;

/// The heat examples' field after `steps` steps, computed as examples/heat.c does (and
/// examples/heat.f90, whose t(nx, ny) is this in C order), operation for operation, so that
/// a correct snapshot equals it bit for bit.
pub fn heat_field(steps: u64) -> Vec<f64> {
    let heater = |i: usize, j: usize| (NY / 4..NY / 2).contains(&i) && (NX / 4..NX / 2).contains(&j);
    let mut t: Vec<f64> = (0..NY * NX).map(|k| if heater(k / NX, k % NX) { 100.0 } else { 0.0 }).collect();
    let mut next = vec![0.0; NY * NX];
    for _ in 0..steps {
        for i in 0..NY {
            for j in 0..NX {
                let k = i * NX + j;
                next[k] = if heater(i, j) {
                    100.0
                } else if i == 0 || j == 0 || i == NY - 1 || j == NX - 1 {
                    0.0
                } else {
                    t[k] + 0.2 * (t[k - NX] + t[k + NX] + t[k - 1] + t[k + 1] - 4.0 * t[k])
                };
            }
        }
        std::mem::swap(&mut t, &mut next);
    }
    t
}

/// Follows a heat example publishing one version per step as `name` until it exits:
/// every snapshot taken must equal the field after `version` steps, bit for bit. Returns
/// the versions checked.
pub fn follow_heat(name: &str, child: &mut std::process::Child, limit: Duration) -> Vec<u64> {
    let started = Instant::now();
    let observer = attach(name, Duration::from_secs(30));
    let region = &observer.regions()[0];
    assert_eq!(
        (region.name.as_str(), region.dtype, region.shape.as_slice()),
        ("temperature", tcasm::Dtype::F64, &[NY, NX][..])
    );
    let mut checked = Vec::new();
    let mut seen = 0;
    loop {
        assert!(started.elapsed() < limit, "{name} still running after {limit:?}");
        let snap = match observer.latest() {
            Ok(s) => s,
            Err(ReadError::ProducerGone { .. }) => break,
            Err(e) => panic!("snapshot of {name}: {e}"),
        };
        let v = snap.version();
        if v != seen {
            let t = snap.view_exact::<f64>("temperature", NY * NX).unwrap();
            let want = heat_field(v);
            if let Some(k) = (0..NY * NX).find(|&k| t[k].to_bits() != want[k].to_bits()) {
                panic!(
                    "{name} version {v}: t[{}][{}] is {}, the field after {v} steps has {}",
                    k / NX,
                    k % NX,
                    t[k],
                    want[k]
                );
            }
            checked.push(v);
            seen = v;
        }
        drop(snap);
        match observer.wait_newer(seen, Duration::from_millis(500)) {
            Ok(_) => {}
            Err(ReadError::ProducerGone { .. }) => break,
            Err(e) => panic!("waiting on {name}: {e}"),
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    checked
}

/// Runs heat example `bin` (`bin STEPS MS NAME DIRS`) as `name` with `tcasm checkpoint`
/// following it to a local and a persistent directory under `scratch`, SIGKILLs it once
/// version 30 is checkpointed, and runs it again with the same directories: the second run
/// must continue the numbering after the restored version and publish, bit for bit, the
/// field of a run that never stopped, up to the last step (checked with [`follow_heat`]).
/// Returns what the second run printed.
pub fn kill_and_restart_heat(bin: &Path, name: &str, steps: u64, scratch: &Path, limit: Duration) -> String {
    use std::process::Stdio;
    let (local, persistent) = (scratch.join("local"), scratch.join("persistent"));
    std::fs::create_dir_all(&persistent).unwrap();
    let dirs = format!("{}:{}", local.display(), persistent.display());
    let mut first =
        Command::new(bin).args([&steps.to_string(), "10", name, &dirs]).stdout(Stdio::null()).spawn().unwrap();
    attach(name, Duration::from_secs(30));
    let mut checkpointer = Command::new(env!("CARGO_BIN_EXE_tcasm"))
        .args(["checkpoint", name, "--every-version", "--dir"])
        .arg(&local)
        .arg("--flush-to")
        .arg(&persistent)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let newest = || tcasm::checkpoint::Catalog::open(&local).ok().and_then(|c| c.newest()).map_or(0, |(_, v)| v);
    let started = Instant::now();
    while newest() < 30 {
        assert!(started.elapsed() < limit, "no checkpoint of version 30 of {name} within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    crate::common::wait_with_watchdog(&mut checkpointer, limit, "the checkpointer");
    let restored = newest();
    assert!(restored < steps, "{name} ended before it was killed");

    // 40 ms a step, so that the observer sees the last version before the run exits.
    let mut again =
        Command::new(bin).args([&steps.to_string(), "40", name, &dirs]).stdout(Stdio::piped()).spawn().unwrap();
    let checked = follow_heat(name, &mut again, limit);
    let status = crate::common::wait_with_watchdog(&mut again, limit, "the restarted heat example");
    assert!(status.success(), "the restarted {name} exited with {status}");
    eprintln!("{name}: restored v{restored}; checked versions {checked:?}");
    assert!(
        checked.first().is_some_and(|&v| v > restored),
        "numbering did not continue after v{restored}: {checked:?}"
    );
    assert_eq!(checked.last(), Some(&steps), "the last version was not seen");
    let mut out = String::new();
    std::io::Read::read_to_string(again.stdout.as_mut().unwrap(), &mut out).unwrap();
    out
}

/// The lines of `source` marked as added for tcasm (`marker` in them), and the source with
/// them removed.
pub fn tcasm_lines(source: &str, marker: &str) -> (Vec<String>, String) {
    let (marked, plain): (Vec<&str>, Vec<&str>) = source.lines().partition(|l| l.contains(marker));
    (marked.into_iter().map(str::to_string).collect(), plain.join("\n") + "\n")
}

/// A running `checks` program, the rest of its output, and the fields of its `ready` line.
pub type Checks = (std::process::Child, std::io::BufReader<std::process::ChildStdout>, Vec<String>);

/// Starts one of the `checks` programs (`bin NAME TRACKER`) and reads its first line, which
/// must be `ready VERSION ...`: the child, the rest of its output, and the fields after
/// `ready`. `what` names it in failures.
pub fn start_checks(bin: &Path, name: &str, tracker: &str, what: &str) -> Checks {
    start_checks_with(Command::new(bin), name, tracker, what)
}

/// [`start_checks`] of `command` (the program, and what else it is to have).
pub fn start_checks_with(mut command: Command, name: &str, tracker: &str, what: &str) -> Checks {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = command
        .args([name, tracker])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    if fields.first().map(String::as_str) != Some("ready") {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("{what} said {line:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    (child, stdout, fields[1..].to_vec())
}
