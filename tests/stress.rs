//! `tcasm stress` end to end, with each tracker: one producer process and three observer
//! processes that check every byte of every snapshot. A short run, to catch a torn snapshot
//! or a lost write on every test run; long runs are for the tool itself.
mod common;

use std::fs::File;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use tcasm::TrackerKind;

/// Runs a short stress with `tracker` and checks its summary line. Its stderr (progress, and
/// the details of any failure) goes to a file that failures print.
fn stress(tracker: TrackerKind) {
    let test = format!("stress-{tracker}");
    let dir = common::private_dir(&test);
    let log = dir.join("stderr");
    let mut child = Command::new(common::tcasm_bin())
        .args(["stress", "--observers", "3", "--seconds", "3", "--size", "16MiB"])
        .args(["--tracker", &tracker.to_string()])
        .env("TCASM_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = common::wait_with_watchdog(&mut child, Duration::from_secs(60), &test);
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let last = out.lines().last().unwrap_or_default();
    let context = format!("{test}: {status}, last line {last:?}, stderr:\n{}", std::fs::read_to_string(&log).unwrap());
    let field = |key: &str| -> u64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in the last line; {context}"))
    };
    assert_eq!(field("torn"), 0, "{context}");
    assert!(field("versions") > 1, "{context}");
    assert!(field("acquisitions") > 0, "{context}");
    let pages = (16 << 20) / tcasm::sys::page_size() as u64;
    assert_eq!(field("verified_pages"), field("acquisitions") * pages, "{context}");
    assert!(status.success(), "{context}");
    let _ = std::fs::remove_dir_all(dir);
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
