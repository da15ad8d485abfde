//! Shared by the integration tests: a private endpoint directory, the kernel-feature gate,
//! and for child processes a watchdog, their output line by line, and a copy of the test
//! binary that another user can run.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Points `TCASM_DIR` at a fresh directory for this test process, once, and returns it.
/// Tests of one binary run on parallel threads and share it, so each test uses endpoint
/// names of its own; `test` only labels the directory of the first test to ask.
pub fn endpoint_dir(test: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tcasm-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("TCASM_DIR", &dir);
        dir
    })
    .clone()
}

/// A fresh endpoint directory of test `test`'s own, inside this process's, for child
/// processes given it as `TCASM_DIR`.
pub fn private_dir(test: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = endpoint_dir(test).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    dir
}

/// A fresh scratch directory for test `test` of the test file `suite`, under the system's
/// temporary directory.
pub fn scratch(suite: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcasm-{suite}-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What a skipped test lacked, and the variable that makes such a skip a failure: CI sets
/// both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lacks {
    /// A kernel feature, or a privilege (root, a group) the test needs:
    /// `TCASM_REQUIRE_KERNEL=1`.
    Kernel,
    /// A tool (a compiler, Python): `TCASM_REQUIRE_TOOLS=1`.
    Tool,
}

impl Lacks {
    fn gate(self) -> &'static str {
        match self {
            Lacks::Kernel => "TCASM_REQUIRE_KERNEL",
            Lacks::Tool => "TCASM_REQUIRE_TOOLS",
        }
    }
}

/// Skips test `test` for `why` and returns false, or fails it when the variable `lacks`
/// names is 1. A skip is said where libtest does not capture it (straight to stderr, not
/// through `eprintln!`, whose lines of a passing test are dropped), and appended to the file
/// `TCASM_SKIP_LOG` names, when set: `.ci/run` fails when that file holds a line.
pub fn skip(test: &str, why: &str, lacks: Lacks) -> bool {
    use std::io::Write;
    let gate = lacks.gate();
    if std::env::var(gate).as_deref() == Ok("1") {
        panic!("{test}: {gate}=1 but {why}");
    }
    let line = format!("SKIP {test}: {why} (set {gate}=1 to make this a failure)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("TCASM_SKIP_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!("{test} skips, and cannot say so in TCASM_SKIP_LOG ({}): {e}", Path::new(&log).display());
        }
    }
    false
}

/// Whether async tracking works here. When it does not, says why; under
/// `TCASM_REQUIRE_KERNEL=1` (CI) that is a failure instead of a skip.
pub fn async_tracking_available(test: &str) -> bool {
    let d = tcasm::track::detect();
    d.async_ok || skip(test, &d.describe(), Lacks::Kernel)
}

/// Whether the sync trackers can take the kernel's own writes into protected pages
/// (`read(2)` into a region): only with `CAP_SYS_PTRACE` or `vm.unprivileged_userfaultfd=1`;
/// without, such a read fails with `EFAULT`, as the tracker documents.
pub fn kernel_faults_allowed(test: &str) -> bool {
    tcasm::track::kernel_faults_allowed()
        || skip(test, "no CAP_SYS_PTRACE and vm.unprivileged_userfaultfd=0, so the sync trackers cannot take read(2) into a protected page", Lacks::Kernel)
}

/// Whether this process runs as root, which the tests that run observers as another user
/// need.
pub fn root(test: &str) -> bool {
    nix::unistd::geteuid().is_root() || skip(test, "needs root to run processes as another user", Lacks::Kernel)
}

/// Waits for `child` up to `limit`, killing it (and failing) if it takes longer.
pub fn wait_with_watchdog(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    wait_or_kill(child, limit)
        .unwrap_or_else(|| panic!("{what} did not finish within {limit:?}: killed by the watchdog"))
}

/// Waits for `child` up to `limit`; kills it and returns `None` if it takes longer.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lines a child writes to `out` (its piped stdout), as they come, read by a thread so
/// that the test can wait for them with a timeout.
pub fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The `tcasm` binary built for these tests.
pub fn tcasm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tcasm")
}

/// `tcasm ARGS`, with `TCASM_DIR` set to `endpoint`.
pub fn tcasm(endpoint: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(tcasm_bin());
    c.args(args).env("TCASM_DIR", endpoint);
    c
}

/// Runs `tcasm ARGS` to the end; a panic in it fails the test, whatever its exit status.
pub fn run_tcasm(endpoint: &Path, args: &[&str]) -> Output {
    let out = tcasm(endpoint, args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "tcasm {args:?} panicked:\n{stderr}");
    out
}

/// What a child printed, stdout then stderr.
pub fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A copy of this test binary in a fresh directory anyone may enter, for child processes
/// run as another user (the build directory may be out of their reach, e.g. under /root).
pub fn runnable_by_anyone(test: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tcasm-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join(test);
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

/// The tools' generator (SplitMix64), shared so that tests and tools draw the same way.
#[path = "../../tools/tcasm/rng.rs"]
#[allow(dead_code)]
mod rng;

/// Deterministic from a seed, or seeded from the clock (unless `TCASM_TEST_SEED` says) with
/// the seed printed, so that a failing run can be repeated.
pub struct Rng(rng::Rng);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(rng::Rng::new(seed))
    }

    pub fn from_clock(test: &str) -> Rng {
        let seed = std::env::var("TCASM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        eprintln!("{test}: TCASM_TEST_SEED={seed}");
        Rng::seeded(seed)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.next() % n
    }

    /// An index below `n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}
