//! Checkpointing a running producer with the `tcasm` tools, end to end and in real processes:
//! every restored version equals exactly what the producer published, a checkpointer killed
//! at random moments never costs an earlier checkpoint, and damage is reported, not panicked on.
//!
//! The producer is this test binary re-executed as the test `producer_role` with
//! `TCASM_TEST_ROLE=checkpoint-producer`. What it publishes is a pure function of (region,
//! element, version) ([`value`], [`written_at`]), so the test can compute the bytes of any
//! version without asking it. It prints `ready` after its first version.
mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tcasm::sys::page_size;
use tcasm::{Observer, Producer, ProducerOptions, RegionInfo, TrackerKind};

const ROLE: &str = "TCASM_TEST_ROLE";
const NAME: &str = "TCASM_TEST_PRODUCER";
const ROWS: &str = "TCASM_TEST_ROWS";
const VERSIONS: &str = "TCASM_TEST_VERSIONS";
const PERIOD_US: &str = "TCASM_TEST_PERIOD_US";
const TRACKER: &str = "TCASM_TEST_TRACKER";
/// Elements in a row of the `grid/t` region.
const ROW: usize = 1024;
const LIMIT: Duration = Duration::from_secs(120);

/// The endpoint directory of this test process, shared by its tests (`TCASM_DIR` is
/// process-wide); each test names its producer after itself.
fn endpoint() -> PathBuf {
    common::endpoint_dir("checkpoint")
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcasm-ckpt-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The version at which page `page` of the page space was last written, as of version `v`:
/// every page at version 1, then page `page` at each version `u` with `(page + u) % 7 == 0`.
fn written_at(page: usize, v: u64) -> u64 {
    match v.checked_sub((page as u64 + v) % 7) {
        Some(u) if u >= 2 => u,
        _ => 1,
    }
}

/// The bits of element `i` of region number `region` as version `w` writes it.
fn value(region: usize, i: usize, w: u64) -> u64 {
    let mut x = (region as u64) << 56 ^ (i as u64) << 20 ^ w;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// An element type of the test regions, made from [`value`]'s bits.
trait Elem: tcasm::Element {
    fn from_bits(bits: u64) -> Self;
    fn push_le(self, out: &mut Vec<u8>);
}

impl Elem for f64 {
    fn from_bits(bits: u64) -> f64 {
        (bits >> 11) as f64
    }
    fn push_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Elem for i32 {
    fn from_bits(bits: u64) -> i32 {
        bits as i32
    }
    fn push_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Elem for u8 {
    fn from_bits(bits: u64) -> u8 {
        bits as u8
    }
    fn push_le(self, out: &mut Vec<u8>) {
        out.push(self);
    }
}

/// The elements of `info` whose bytes lie in its `k`-th page.
fn elements_of_page(info: &RegionInfo, k: usize) -> Range<usize> {
    let size = info.dtype.size();
    let lo = (k * page_size()).saturating_sub(info.offset).div_ceil(size);
    let hi = ((k + 1) * page_size() - info.offset).div_ceil(size);
    lo.min(info.elements())..hi.min(info.elements())
}

/// Writes the pages of region number `r` that version `v` writes.
fn publish_region<T: Elem>(data: &mut [T], r: usize, info: &RegionInfo, v: u64) {
    for k in 0..info.pages {
        if written_at(info.first_page + k, v) == v {
            for i in elements_of_page(info, k) {
                data[i] = T::from_bits(value(r, i, v));
            }
        }
    }
}

/// The bytes region number `r` holds at version `v`.
fn expected_region<T: Elem>(r: usize, info: &RegionInfo, v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(info.bytes());
    for k in 0..info.pages {
        let w = written_at(info.first_page + k, v);
        for i in elements_of_page(info, k) {
            T::from_bits(value(r, i, w)).push_le(&mut out);
        }
    }
    out
}

fn expected(regions: &[RegionInfo], v: u64) -> Vec<Vec<u8>> {
    regions
        .iter()
        .enumerate()
        .map(|(r, info)| match info.dtype {
            tcasm::Dtype::F64 => expected_region::<f64>(r, info, v),
            tcasm::Dtype::U8 => expected_region::<u8>(r, info, v),
            tcasm::Dtype::I32 => expected_region::<i32>(r, info, v),
            d => panic!("no test values for {d}"),
        })
        .collect()
}

/// Serves as the producer when this process was started as one.
#[test]
fn producer_role() {
    if std::env::var(ROLE).as_deref() != Ok("checkpoint-producer") {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let tracker = var(TRACKER).parse::<TrackerKind>().unwrap();
    let mut p = Producer::create(&var(NAME), ProducerOptions { tracker, ..Default::default() }).unwrap();
    let mut grid = p.region::<f64>("grid/t", &[var(ROWS).parse().unwrap(), ROW]).unwrap();
    let mut flags = p.region::<u8>("flags", &[5000]).unwrap();
    // Not page-aligned: its bytes start at an offset inside its first page.
    let mut counts = p.wrap_vec::<i32>("counts", vec![0; 3001], &[3001]).unwrap();
    let regions = p.regions();
    let period = Duration::from_micros(var(PERIOD_US).parse().unwrap());
    for v in 1..=var(VERSIONS).parse::<u64>().unwrap() {
        publish_region(&mut grid, 0, &regions[0], v);
        publish_region(&mut flags, 1, &regions[1], v);
        publish_region(&mut counts, 2, &regions[2], v);
        assert_eq!(p.publish().unwrap(), v);
        if v == 1 {
            println!("ready");
        }
        std::thread::sleep(period);
    }
}

/// A producer child process, ready (its first version published).
struct ProducerChild {
    child: Child,
    name: String,
    regions: Vec<RegionInfo>,
}

impl ProducerChild {
    fn start(name: &str, rows: usize, versions: u64, period_us: u64, tracker: TrackerKind) -> ProducerChild {
        endpoint();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["producer_role", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "checkpoint-producer")
            .env(NAME, name)
            .env(ROWS, rows.to_string())
            .env(VERSIONS, versions.to_string())
            .env(PERIOD_US, period_us.to_string())
            .env(TRACKER, tracker.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.ends_with("ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("producer {name} did not publish a first version");
        }
        let regions = Observer::attach(name).unwrap().regions().to_vec();
        assert_ne!(regions[2].offset, 0, "the wrapped region should start inside a page");
        ProducerChild { child, name: name.to_string(), regions }
    }
}

impl Drop for ProducerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcasm(args: &[&str]) -> Command {
    common::tcasm(&endpoint(), args)
}

fn run(args: &[&str]) -> Output {
    common::run_tcasm(&endpoint(), args)
}

fn text(out: &Output) -> String {
    common::output_text(out)
}

/// The data of a `.npy` file, after checking its header says `descr` and `shape`.
fn npy_data(path: &Path, descr: &str, shape: &[usize]) -> Vec<u8> {
    let file = fs::read(path).unwrap();
    assert_eq!(&file[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let len = u16::from_le_bytes([file[8], file[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "data is 64-byte aligned");
    let header = std::str::from_utf8(&file[10..10 + len]).unwrap();
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    assert!(header.contains(&format!("'descr': '{descr}'")), "{header}");
    assert!(header.contains(&format!("'shape': {shape}")), "{header}");
    assert!(header.contains("'fortran_order': False") && header.ends_with('\n'), "{header}");
    file[10 + len..].to_vec()
}

/// Restores `version` (the newest when `None`) from `dir` and checks every region against
/// what the producer published; returns the version restored.
fn assert_restores(dir: &Path, version: Option<u64>, regions: &[RegionInfo]) -> u64 {
    let out_dir = dir.with_extension(format!("restore-{}", version.map_or("newest".into(), |v| v.to_string())));
    let mut args = vec!["restore".to_string(), dir.display().to_string(), "--out".into(), out_dir.display().to_string()];
    if let Some(v) = version {
        args.extend(["--version".into(), v.to_string()]);
    }
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "restore {version:?} failed: {}", text(&out));
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    let v = manifest["version"].as_u64().unwrap();
    assert!(version.is_none_or(|asked| asked == v));
    for (info, bytes) in regions.iter().zip(expected(regions, v)) {
        let entry = manifest["regions"].as_array().unwrap().iter().find(|r| r["name"] == info.name.as_str()).unwrap();
        let data = npy_data(&out_dir.join(entry["file"].as_str().unwrap()), info.dtype.numpy_descr(), &info.shape);
        if let Some(at) = data.iter().zip(&bytes).position(|(a, b)| a != b) {
            panic!("version {v}, region {:?}: byte {at} differs from what the producer published", info.name);
        }
        assert_eq!(data.len(), bytes.len());
    }
    fs::remove_dir_all(&out_dir).unwrap();
    v
}

/// The complete checkpoints of `dir`, as (chain, version).
fn complete(dir: &Path) -> Vec<(u64, u64)> {
    let catalog = tcasm::checkpoint::Catalog::open(dir).unwrap();
    catalog.chains.iter().flat_map(|c| c.complete.iter().map(move |&v| (c.number, v))).collect()
}

fn follow_and_restore(tracker: TrackerKind) {
    let test = format!("follow-{tracker}");
    let scratch = scratch(&test);
    let producer = ProducerChild::start(&test, 64, 200, 8_000, tracker);
    let every = scratch.join("every");
    let interval = scratch.join("interval");
    let follow = |dir: &Path, how: &[&str]| {
        let mut args = vec!["checkpoint", &producer.name, "--dir", dir.to_str().unwrap()];
        args.extend(how);
        tcasm(&args).stderr(Stdio::piped()).spawn().unwrap()
    };
    let checkpointers = [follow(&every, &["--every-version", "--full-every", "5"]), follow(&interval, &["--interval", "0.2"])];
    let mut logs = Vec::new();
    for mut c in checkpointers {
        let status = common::wait_with_watchdog(&mut c, LIMIT, "checkpointer");
        let mut log = String::new();
        std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut log).unwrap();
        assert!(status.success(), "{log}");
        assert!(log.contains("exited"), "the checkpointer says the producer is gone: {log}");
        logs.push(log);
    }
    assert!(logs[1].contains("versions skipped"), "the interval checkpointer skips versions: {}", logs[1]);
    for dir in [&every, &interval] {
        let ckpts = complete(dir);
        assert!(ckpts.len() >= 5, "{} holds {ckpts:?}", dir.display());
        // The first and last of each chain, and some in between.
        let mut picks: Vec<u64> = ckpts.iter().step_by(ckpts.len() / 4).map(|&(_, v)| v).collect();
        picks.push(ckpts.last().unwrap().1);
        for v in picks {
            assert_restores(dir, Some(v), &producer.regions);
        }
        assert_eq!(assert_restores(dir, None, &producer.regions), ckpts.last().unwrap().1);
        let out = run(&["verify", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let chains = complete(&every).iter().map(|&(c, _)| c).collect::<std::collections::BTreeSet<_>>();
    assert!(chains.len() >= 2, "--full-every 5 started new bases: {chains:?}");
    fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn restored_versions_equal_what_the_producer_published_copy_tracker() {
    follow_and_restore(TrackerKind::Copy);
}

#[test]
fn restored_versions_equal_what_the_producer_published_async_tracker() {
    if common::async_tracking_available("restored_versions_equal_what_the_producer_published_async_tracker") {
        follow_and_restore(TrackerKind::Async);
    }
}

#[test]
fn sigkilled_checkpointers_leave_every_complete_checkpoint_restorable() {
    const KILLS: usize = 24;
    let test = "sigkill";
    let scratch = scratch(test);
    let dir = scratch.join("ckpt");
    // 8 MiB of grid: a base takes long enough that kills land inside writes too.
    let producer = ProducerChild::start(test, 1024, 1 << 40, 3_000, TrackerKind::Auto);
    let mut rng = common::Rng::from_clock(test);
    let mut restored = Vec::new();
    // Kills that left a new unfinished checkpoint behind: they landed inside a write.
    let (mut inside_a_write, mut unfinished) = (0, std::collections::HashSet::new());
    for kill in 0..KILLS {
        let mut c = tcasm(&["checkpoint", &producer.name, "--dir", dir.to_str().unwrap(), "--full-every", "4", "--keep", "2"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        c.kill().unwrap();
        let status = c.wait().unwrap();
        assert!(status.code().is_none(), "kill {kill}: the checkpointer ended before its SIGKILL: {status}");
        let out = run(&["verify", dir.to_str().unwrap()]);
        assert!(out.status.success(), "kill {kill}: verify failed:\n{}", text(&out));
        let catalog = tcasm::checkpoint::Catalog::open(&dir).unwrap();
        let left: Vec<PathBuf> = catalog.chains.into_iter().flat_map(|c| c.incomplete).collect();
        if left.iter().any(|p| !unfinished.contains(p)) {
            inside_a_write += 1;
        }
        unfinished.extend(left);
        if !complete(&dir).is_empty() {
            restored.push(assert_restores(&dir, None, &producer.regions));
        }
    }
    eprintln!("{test}: {KILLS} kills, {inside_a_write} left an unfinished checkpoint; newest complete after each: {restored:?}");
    assert!(inside_a_write > 0, "no kill landed inside a checkpoint");
    assert!(restored.len() >= KILLS / 2, "most runs completed a checkpoint before their kill: {restored:?}");
    // --keep 2 leaves two chains with a base, three when a kill fell inside a retirement.
    let kept = complete(&dir).iter().map(|&(c, _)| c).collect::<std::collections::BTreeSet<_>>();
    assert!(kept.len() <= 3, "--keep 2 retired old chains: {kept:?}");
    let producer_still_publishes = Observer::attach(&producer.name).unwrap().latest_version();
    assert!(producer_still_publishes > *restored.iter().max().unwrap_or(&0));
    fs::remove_dir_all(&scratch).unwrap();
}

/// Copies a checkpoint directory (chain directories one level deep).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().map(Result::unwrap) {
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Checks that `tcasm restore` agrees with what `verify` says of every complete checkpoint of
/// `dir`: those it calls restorable restore exactly, the others fail.
fn assert_restore_agrees_with_verify(dir: &Path, regions: &[RegionInfo]) {
    let report = tcasm::checkpoint::verify(dir).unwrap();
    for (_, v) in complete(dir) {
        if report.restorable.iter().any(|&(_, r)| r == v) {
            assert_restores(dir, Some(v), regions);
        } else {
            let out = run(&["restore", dir.to_str().unwrap(), "--version", &v.to_string(), "--out", dir.with_extension("out").to_str().unwrap()]);
            assert!(!out.status.success(), "verify calls v{v} unrestorable, yet it restores");
        }
    }
}

#[test]
fn damage_is_named_by_verify_and_restore_and_nothing_panics() {
    let test = "damage";
    let scratch = scratch(test);
    let good = scratch.join("good");
    let producer = ProducerChild::start(test, 32, 60, 5_000, TrackerKind::Auto);
    let out = run(&["checkpoint", &producer.name, "--dir", good.to_str().unwrap(), "--every-version"]);
    assert!(out.status.success(), "{}", text(&out));
    let ckpts = complete(&good);
    assert!(ckpts.len() >= 4, "{ckpts:?}");
    let chain = |dir: &Path| dir.join(format!("chain-{:06}", ckpts[0].0));
    let name = |v: u64, ext: &str| format!("v{v:012}.{ext}");
    let (base, second, last) = (ckpts[0].1, ckpts[1].1, ckpts.last().unwrap().1);
    // Damages a copy of the checkpoints; returns it with what verify and a restore of
    // `version` said, both failing.
    let damaged = |what: &str, version: u64, damage: &dyn Fn(&Path)| {
        let dir = scratch.join(what);
        copy_dir(&good, &dir);
        damage(&chain(&dir));
        let verify = run(&["verify", dir.to_str().unwrap()]);
        assert!(!verify.status.success(), "{what}: verify passed:\n{}", text(&verify));
        let out = scratch.join("out");
        let restore = run(&["restore", dir.to_str().unwrap(), "--version", &version.to_string(), "--out", out.to_str().unwrap()]);
        assert!(!restore.status.success(), "{what}: restore of v{version} passed");
        assert!(!out.join("manifest.json").exists(), "{what}: a failed restore left a manifest.json");
        (dir, text(&verify), text(&restore))
    };

    // A flipped byte in the first chunk of the second checkpoint's data.
    let (dir, verify, restore) = damaged("flip", second, &|chain| {
        let path = chain.join(name(second, "data"));
        let mut b = fs::read(&path).unwrap();
        b[32 + 100] ^= 1;
        fs::write(&path, b).unwrap();
    });
    let chunk = format!("{}: chunk 0", name(second, "data"));
    assert!(verify.contains(&chunk) && verify.contains("checksum mismatch"), "{verify}");
    assert!(verify.contains(&format!("unrestorable in chain {}: v{second}", ckpts[0].0)), "{verify}");
    assert!(restore.contains(&chunk), "{restore}");
    assert_restore_agrees_with_verify(&dir, &producer.regions);

    // Half of the second checkpoint's data cut off: it no longer restores, while the later
    // ones that rewrote those pages still do, for verify and restore alike (page by page).
    let (dir, verify, restore) = damaged("truncate", second, &|chain| {
        let f = fs::OpenOptions::new().write(true).open(chain.join(name(second, "data"))).unwrap();
        f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    });
    assert!(verify.contains("truncated") && verify.contains(&name(second, "data")), "{verify}");
    assert!(restore.contains("truncated"), "{restore}");
    assert_restore_agrees_with_verify(&dir, &producer.regions);
    if last >= second + 7 {
        // Every page was written again since (`written_at`).
        assert_restores(&dir, Some(last), &producer.regions);
    }

    let (dir, verify, restore) = damaged("manifest", last, &|chain| fs::remove_file(chain.join(name(second, "manifest"))).unwrap());
    assert!(verify.contains(&format!("v{second} has no manifest")), "{verify}");
    assert!(restore.contains(&format!("v{second} has no manifest")), "{restore}");
    assert_restore_agrees_with_verify(&dir, &producer.regions);

    let (_, verify, restore) = damaged("base", last, &|chain| fs::remove_file(chain.join(name(base, "manifest"))).unwrap());
    assert!(verify.contains(&format!("the base v{base} has no manifest")), "{verify}");
    assert!(restore.contains(&format!("the base v{base} has no manifest")), "{restore}");

    let (_, verify, restore) = damaged("manifest-byte", last, &|chain| {
        let path = chain.join(name(last, "manifest"));
        let mut b = fs::read(&path).unwrap();
        b[20] ^= 1;
        fs::write(&path, b).unwrap();
    });
    assert!(verify.contains("manifest checksum mismatch") && restore.contains("manifest checksum mismatch"), "{verify}");
    fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn top_prints_plain_lines_with_rates_and_observers() {
    let test = "top";
    let scratch = scratch(test);
    let producer = ProducerChild::start(test, 16, 1 << 40, 10_000, TrackerKind::Auto);
    let mut checkpointer = tcasm(&["checkpoint", &producer.name, "--dir", scratch.join("ckpt").to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = run(&["top", &producer.name, "--interval", "0.3", "--count", "4"]);
    checkpointer.kill().unwrap();
    checkpointer.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "a header and one line per update:\n{stdout}");
    assert!(lines[0].contains("3 regions"), "{stdout}");
    for line in &lines[1..] {
        assert!(line.contains("versions/s") && line.contains("pages/version") && line.contains("publish"), "{line}");
    }
    assert!(lines[4].contains(&format!("pid {}", checkpointer.id())), "the checkpointer is listed:\n{stdout}");
    fs::remove_dir_all(&scratch).unwrap();
}
