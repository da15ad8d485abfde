//! `tcasm bench coverage`, tiny and end to end (a real observer process per row): the JSON
//! holds one object per (tracker, coverage, observers) with the fields the README table and
//! the plot are made from, and the plot is written. No timing is checked.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

const FIELDS: [&str; 13] = [
    "tracker",
    "pattern",
    "coverage",
    "observers",
    "size",
    "publish_us",
    "write_overhead_us",
    "producer_us",
    "memory_bytes",
    "observer_lag_us",
    "iterations",
    "memcpy_ref_us",
    "vs_memcpy",
];

#[test]
fn coverage_json_has_a_row_per_tracker_coverage_and_observer_count() {
    let dir = common::private_dir("bench-coverage");
    let (json, svg) = (dir.join("out.json"), dir.join("out.svg"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcasm"))
        .args(["bench", "coverage", "--size", "4MiB", "--coverage", "1,100", "--observers", "0,1"])
        .args(["--tracker", "copy,memcpy", "--iterations", "2", "--warmup", "1"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .env("TCASM_DIR", &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let status = common::wait_with_watchdog(&mut child, Duration::from_secs(60), "tcasm bench coverage");
    assert!(status.success(), "tcasm bench coverage failed: {status}");

    let rows: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2, "trackers x coverages x observer counts");
    for row in &rows {
        for field in FIELDS {
            assert!(row.get(field).is_some(), "no {field:?} in {row}");
        }
        assert_eq!(row["size"], 4 << 20);
        assert_eq!(row["pattern"], "strided");
        assert_eq!(row["iterations"], 2);
        assert!(row["producer_us"].as_f64().unwrap().is_finite());
        assert!(row["memory_bytes"].as_u64().unwrap() >= 4 << 20, "a snapshot holds the region: {row}");
        if row["observers"] == 0 {
            assert!(row["observer_lag_us"].is_null(), "no observers, no lag: {row}");
        }
    }
    let mut seen: Vec<(String, f64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["tracker"].as_str().unwrap().to_string(),
                r["coverage"].as_f64().unwrap(),
                r["observers"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
    seen.dedup();
    assert_eq!(seen.len(), rows.len(), "each row once");
    for memcpy in rows.iter().filter(|r| r["tracker"] == "memcpy") {
        assert_eq!(memcpy["vs_memcpy_row"], 1.0);
        assert!(memcpy["vs_memcpy"].as_f64().unwrap() > 0.0);
    }
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}
