//! Shared by the integration tests: a private endpoint directory, the kernel-feature gate,
//! and a watchdog for child processes.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Child;
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

/// Whether async tracking works here. When it does not, says why; under
/// `TCASM_REQUIRE_KERNEL=1` (CI) that is a failure instead of a skip.
pub fn async_tracking_available(test: &str) -> bool {
    let d = tcasm::track::detect();
    if d.async_ok {
        return true;
    }
    let why = d.describe();
    if std::env::var("TCASM_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("{test}: TCASM_REQUIRE_KERNEL=1 but {why}");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// Waits for `child` up to `limit`, killing it (and failing) if it takes longer.
pub fn wait_with_watchdog(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}: killed by the watchdog");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `tcasm` binary built for these tests.
pub fn tcasm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tcasm")
}
