//! `tcasm stress` end to end, with each tracker, and under chaos: one producer process and
//! observer processes that check every byte of every snapshot. Short runs, to catch a torn
//! snapshot, a lost write or leaked memory on every test run; long runs are for the tool
//! itself.
mod common;

use std::fs::File;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use tcasm::TrackerKind;

/// A finished `tcasm stress` run: its summary line, and what to show when an assertion on
/// it fails (exit status, that line, and its stderr: progress and the details of failures).
struct Run {
    last: String,
    context: String,
}

impl Run {
    /// Runs a short stress with `args` as test `test`.
    fn new(test: &str, args: &[&str]) -> Run {
        let dir = common::private_dir(test);
        let log = dir.join("stderr");
        let mut child = Command::new(common::tcasm_bin())
            .arg("stress")
            .args(args)
            .env("TCASM_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let status = common::wait_with_watchdog(&mut child, Duration::from_secs(60), test);
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let last = out.lines().last().unwrap_or_default().to_string();
        let context =
            format!("{test}: {status}, last line {last:?}, stderr:\n{}", std::fs::read_to_string(&log).unwrap());
        let _ = std::fs::remove_dir_all(dir);
        assert!(status.success(), "{context}");
        Run { last, context }
    }

    fn field(&self, key: &str) -> u64 {
        self.last
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in the last line; {}", self.context))
    }

    /// No snapshot was torn, and every one taken was checked whole (16 MiB each).
    fn assert_whole(&self) {
        assert_eq!(self.field("torn"), 0, "{}", self.context);
        assert!(self.field("versions") > 1, "{}", self.context);
        assert!(self.field("acquisitions") > 0, "{}", self.context);
        let pages = (16 << 20) / tcasm::sys::page_size() as u64;
        assert_eq!(self.field("verified_pages"), self.field("acquisitions") * pages, "{}", self.context);
    }
}

fn stress(tracker: TrackerKind) {
    let tracker = tracker.to_string();
    let run = Run::new(
        &format!("stress-{tracker}"),
        &["--observers", "3", "--seconds", "3", "--size", "16MiB", "--tracker", &tracker],
    );
    run.assert_whole();
}

#[test]
fn stress_with_async_tracker() {
    if common::async_tracking_available("stress_with_async_tracker") {
        stress(TrackerKind::Async);
    }
}

#[test]
fn stress_with_copy_tracker() {
    stress(TrackerKind::Copy);
}

/// Observers killed, stopped and restarted at random while the producer publishes: every
/// snapshot any of them verified was whole, and once they are all gone the store holds the
/// latest version and nothing more.
#[test]
fn stress_under_chaos() {
    let run = Run::new("stress-chaos", &["--observers", "4", "--seconds", "4", "--size", "16MiB", "--chaos"]);
    run.assert_whole();
    assert_eq!(run.field("leaked_bytes"), 0, "{}", run.context);
}
