//! `tcasm ls` and `tcasm inspect`: which producers run here, and what state one is in, read
//! from the outside the way any observer reads it. `inspect` attaches as an observer, so
//! while it runs it holds one pin slot (and pins nothing); the slot table marks it.
use std::time::Duration;

use indicatif::HumanBytes;
use tcasm::monotonic_ns;

#[derive(clap::Args)]
pub struct Args {
    /// The producer's name, as `tcasm ls` shows it.
    name: String,
    /// How many of the newest versions to show.
    #[arg(long, default_value_t = 10)]
    versions: u64,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    wait: crate::wait::Wait,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Print JSON (`[{"name": ..., "pid": ...}]`) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn ls(args: LsArgs) -> crate::Result {
    let dir = tcasm::endpoint_directory()?;
    let producers = tcasm::list_producers()?;
    if args.json {
        let list: Vec<_> = producers.iter().map(|p| serde_json::json!({ "name": p.name, "pid": p.pid })).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if producers.is_empty() {
        println!("no live producers in {}", dir.display());
        return Ok(());
    }
    println!("live producers in {}:", dir.display());
    print_table(&["NAME", "PID"], producers.into_iter().map(|p| vec![p.name, p.pid.to_string()]).collect());
    Ok(())
}

pub fn run(args: Args) -> crate::Result {
    let observer = args.wait.attach(&args.name)?;
    let latest = observer.latest_version();
    let now = monotonic_ns();
    // The ring may have moved on while we read: show what it still holds.
    let first = latest.saturating_sub(args.versions.saturating_sub(1)).max(1);
    let versions: Vec<_> = (first..=latest).rev().filter_map(|v| observer.version_info(v)).collect();
    if args.json {
        let out = serde_json::json!({
            "name": args.name,
            "pid": observer.producer_pid(),
            "exiting": observer.producer_gone(),
            "latest_version": latest,
            "pages": observer.pages(),
            "regions": observer.regions().iter().map(|r| serde_json::json!({
                "name": r.name, "dtype": r.dtype.name(), "shape": r.shape, "bytes": r.bytes(),
                "first_page": r.first_page, "pages": r.pages,
            })).collect::<Vec<_>>(),
            "versions": versions.iter().map(|v| serde_json::json!({
                "version": v.version, "age_ns": now.saturating_sub(v.time_ns), "changed_pages": v.dirty_pages,
                "publish_ns": v.publish_ns, "runs": v.mapping_runs, "store_bytes": v.store_bytes,
                "reserve_bytes": v.reserve_bytes,
            })).collect::<Vec<_>>(),
            "observers": observer.slots().iter().map(|s| serde_json::json!({
                "slot": s.slot, "pid": s.pid, "pinned": s.pins, "this_inspect": s.ours,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let gone = if observer.producer_gone() { " (exiting)" } else { "" };
    println!("producer {:?}: pid {}{gone}, latest version {latest}", args.name, observer.producer_pid());

    let regions = observer.regions();
    let region_bytes: usize = regions.iter().map(|r| r.bytes()).sum();
    println!("\nregions ({} pages, {}):", observer.pages(), HumanBytes(region_bytes as u64));
    print_table(
        &["NAME", "DTYPE", "SHAPE", "BYTES", "PAGES"],
        regions
            .iter()
            .map(|r| {
                let shape: Vec<String> = r.shape.iter().map(|d| d.to_string()).collect();
                vec![
                    r.name.clone(),
                    r.dtype.to_string(),
                    shape.join(" x "),
                    HumanBytes(r.bytes() as u64).to_string(),
                    format!("{} (from {})", r.pages, r.first_page),
                ]
            })
            .collect(),
    );

    println!("\nnewest versions:");
    print_table(
        &["VERSION", "AGE", "CHANGED", "PUBLISH", "RUNS", "STORE", "RESERVE"],
        versions
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    human_time(Duration::from_nanos(now.saturating_sub(v.time_ns))),
                    v.dirty_pages.to_string(),
                    human_time(Duration::from_nanos(v.publish_ns)),
                    v.mapping_runs.to_string(),
                    HumanBytes(v.store_bytes).to_string(),
                    HumanBytes(v.reserve_bytes).to_string(),
                ]
            })
            .collect(),
    );

    println!("\nobservers (as of the last publish):");
    print_table(
        &["SLOT", "PID", "PINNED", ""],
        observer
            .slots()
            .into_iter()
            .map(|s| {
                let pins: Vec<String> = s.pins.iter().map(|v| v.to_string()).collect();
                let note = if s.ours { "this inspect" } else { "" };
                vec![
                    s.slot.to_string(),
                    s.pid.to_string(),
                    if pins.is_empty() { "-".into() } else { pins.join(" ") },
                    note.into(),
                ]
            })
            .collect(),
    );

    if let Some(v) = versions.first() {
        println!(
            "\nstore memory: {} at version {} ({:.2}x the regions), of which {} free slots kept for the next publishes",
            HumanBytes(v.store_bytes),
            v.version,
            v.store_bytes as f64 / region_bytes as f64,
            HumanBytes(v.reserve_bytes)
        );
    }
    Ok(())
}

/// Prints `rows` under `header` in left-aligned columns.
pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(header).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
        println!("  {}", cells.join("  ").trim_end());
    }
}

/// A duration for people: 850 ns, 12.3 µs, 4.56 ms, 1.20 s.
pub fn human_time(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    match ns {
        _ if ns < 1e3 => format!("{ns} ns"),
        _ if ns < 1e6 => format!("{:.1} µs", ns / 1e3),
        _ if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        _ => format!("{:.2} s", ns / 1e9),
    }
}
