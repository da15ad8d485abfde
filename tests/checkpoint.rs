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
/// Set: once its versions are published, the producer publishes one more per line on its
/// stdin (saying `published N`) and stays until stdin closes.
const HOLD: &str = "TCASM_TEST_HOLD";
/// Elements in a row of the `grid/t` region.
const ROW: usize = 1024;
const LIMIT: Duration = Duration::from_secs(120);

/// The endpoint directory of this test process, shared by its tests (`TCASM_DIR` is
/// process-wide); each test names its producer after itself.
fn endpoint() -> PathBuf {
    common::endpoint_dir("checkpoint")
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
    let versions = var(VERSIONS).parse::<u64>().unwrap();
    let mut publish = |v: u64| {
        publish_region(&mut grid, 0, &regions[0], v);
        publish_region(&mut flags, 1, &regions[1], v);
        publish_region(&mut counts, 2, &regions[2], v);
        assert_eq!(p.publish().unwrap(), v);
    };
    for v in 1..=versions {
        publish(v);
        if v == 1 {
            println!("ready");
        }
        std::thread::sleep(period);
    }
    if std::env::var_os(HOLD).is_some() {
        println!("published {versions}");
        for (v, _) in (versions + 1..).zip(std::io::stdin().lines()) {
            publish(v);
            println!("published {v}");
        }
    }
}

/// A producer child process, ready (its first version published).
struct ProducerChild {
    child: Child,
    name: String,
    regions: Vec<RegionInfo>,
    /// Its lines after `ready`.
    said: std::sync::mpsc::Receiver<String>,
}

impl ProducerChild {
    fn start(name: &str, rows: usize, versions: u64, period_us: u64, tracker: TrackerKind) -> ProducerChild {
        ProducerChild::start_with(name, rows, versions, period_us, tracker, false)
    }

    /// With `hold`, the producer stays once its versions are published, and publishes one
    /// more per [`ProducerChild::publish_one`].
    fn start_with(
        name: &str,
        rows: usize,
        versions: u64,
        period_us: u64,
        tracker: TrackerKind,
        hold: bool,
    ) -> ProducerChild {
        endpoint();
        let mut command = Command::new(std::env::current_exe().unwrap());
        if hold {
            command.env(HOLD, "1");
        }
        let mut child = command
            .args(["producer_role", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "checkpoint-producer")
            .env(NAME, name)
            .env(ROWS, rows.to_string())
            .env(VERSIONS, versions.to_string())
            .env(PERIOD_US, period_us.to_string())
            .env(TRACKER, tracker.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, said) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                // The test harness prints its own lines around the role's.
                if line.ends_with("ready") || line.starts_with("published ") {
                    let _ = tx.send(line);
                }
            }
        });
        if said.recv_timeout(LIMIT).is_err() {
            let _ = child.kill();
            panic!("producer {name} did not publish a first version");
        }
        let regions = Observer::attach(name).unwrap().regions().to_vec();
        assert_ne!(regions[2].offset, 0, "the wrapped region should start inside a page");
        ProducerChild { child, name: name.to_string(), regions, said }
    }

    /// Waits for the producer to say `published V`; returns V.
    fn published(&self) -> u64 {
        let line =
            self.said.recv_timeout(LIMIT).unwrap_or_else(|e| panic!("producer {}: nothing published ({e})", self.name));
        line.strip_prefix("published ").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("producer said {line:?}"))
    }

    /// Has a holding producer publish one more version; returns it.
    fn publish_one(&mut self) -> u64 {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap(), "publish").unwrap();
        self.published()
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
    let mut args =
        vec!["restore".to_string(), dir.display().to_string(), "--out".into(), out_dir.display().to_string()];
    if let Some(v) = version {
        args.extend(["--version".into(), v.to_string()]);
    }
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "restore {version:?} failed: {}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
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
    let scratch = common::scratch("ckpt", &test);
    let producer = ProducerChild::start(&test, 64, 200, 8_000, tracker);
    let every = scratch.join("every");
    let interval = scratch.join("interval");
    let follow = |dir: &Path, how: &[&str]| {
        let mut args = vec!["checkpoint", &producer.name, "--dir", dir.to_str().unwrap()];
        args.extend(how);
        tcasm(&args).stderr(Stdio::piped()).spawn().unwrap()
    };
    let checkpointers =
        [follow(&every, &["--every-version", "--full-every", "5"]), follow(&interval, &["--interval", "0.2"])];
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
    let scratch = common::scratch("ckpt", test);
    let dir = scratch.join("ckpt");
    // 8 MiB of grid: a base takes long enough that kills land inside writes too.
    let producer = ProducerChild::start(test, 1024, 1 << 40, 3_000, TrackerKind::Auto);
    let mut rng = common::Rng::from_clock(test);
    // The newest complete version after each kill, and the kills after which it was newer
    // than before: those runs completed a checkpoint of their own before their kill.
    let (mut restored, mut completed) = (Vec::new(), 0);
    // Kills that left a new unfinished checkpoint behind: they landed inside a write.
    let (mut inside_a_write, mut unfinished) = (0, std::collections::HashSet::new());
    for kill in 0..KILLS {
        let mut c = tcasm(&[
            "checkpoint",
            &producer.name,
            "--dir",
            dir.to_str().unwrap(),
            "--full-every",
            "4",
            "--keep",
            "2",
            "--every-version",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        c.kill().unwrap();
        let status = c.wait().unwrap();
        assert!(status.code().is_none(), "kill {kill}: the checkpointer ended before its SIGKILL: {status}");
        let out = run(&["verify", dir.to_str().unwrap()]);
        let catalog = tcasm::checkpoint::Catalog::open(&dir).unwrap();
        if catalog.newest().is_some() {
            assert!(out.status.success(), "kill {kill}: verify failed:\n{}", text(&out));
        } else {
            // Killed before its first checkpoint was complete: nothing to restore, said.
            assert!(
                !out.status.success() && text(&out).contains("no complete checkpoint"),
                "kill {kill}: {}",
                text(&out)
            );
        }
        let left: Vec<PathBuf> = catalog.chains.into_iter().flat_map(|c| c.incomplete).collect();
        if left.iter().any(|p| !unfinished.contains(p)) {
            inside_a_write += 1;
        }
        unfinished.extend(left);
        if !complete(&dir).is_empty() {
            let newest = assert_restores(&dir, None, &producer.regions);
            completed += usize::from(restored.last().is_none_or(|&before| newest > before));
            restored.push(newest);
        }
    }
    eprintln!(
        "{test}: {KILLS} kills, {inside_a_write} left an unfinished checkpoint, {completed} followed a new complete checkpoint; newest complete after each: {restored:?}"
    );
    assert!(inside_a_write > 0, "no kill landed inside a checkpoint");
    assert!(
        completed >= KILLS / 2,
        "only {completed} of {KILLS} runs completed a checkpoint before their kill: {restored:?}"
    );
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
            let out = run(&[
                "restore",
                dir.to_str().unwrap(),
                "--version",
                &v.to_string(),
                "--out",
                dir.with_extension("out").to_str().unwrap(),
            ]);
            assert!(!out.status.success(), "verify calls v{v} unrestorable, yet it restores");
        }
    }
}

#[test]
fn damage_is_named_by_verify_and_restore_and_nothing_panics() {
    let test = "damage";
    let scratch = common::scratch("ckpt", test);
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
        let restore =
            run(&["restore", dir.to_str().unwrap(), "--version", &version.to_string(), "--out", out.to_str().unwrap()]);
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

    let (dir, verify, restore) =
        damaged("manifest", last, &|chain| fs::remove_file(chain.join(name(second, "manifest"))).unwrap());
    assert!(verify.contains(&format!("v{second} has no manifest")), "{verify}");
    assert!(restore.contains(&format!("v{second} has no manifest")), "{restore}");
    assert_restore_agrees_with_verify(&dir, &producer.regions);

    let (_, verify, restore) =
        damaged("base", last, &|chain| fs::remove_file(chain.join(name(base, "manifest"))).unwrap());
    assert!(verify.contains(&format!("the base v{base} has no manifest")), "{verify}");
    assert!(restore.contains(&format!("the base v{base} has no manifest")), "{restore}");

    let (_, verify, restore) = damaged("manifest-byte", last, &|chain| {
        let path = chain.join(name(last, "manifest"));
        let mut b = fs::read(&path).unwrap();
        b[20] ^= 1;
        fs::write(&path, b).unwrap();
    });
    assert!(
        verify.contains("manifest checksum mismatch") && restore.contains("manifest checksum mismatch"),
        "{verify}"
    );
    fs::remove_dir_all(&scratch).unwrap();
}

/// The pids of the observers attached to `name` other than `observer` itself, as its
/// producer saw them at its last publish.
fn attached(observer: &Observer) -> Vec<u64> {
    observer.slots().into_iter().filter(|s| !s.ours).map(|s| s.pid).collect()
}

/// `tcasm top` against a producer of known rate (a version every 10 ms at most, each writing
/// a seventh of its pages under async tracking) with a checkpointer attached: its rates lie
/// within generous bounds of those (the machine may be busy: not a measure of our speed), and
/// every line lists the checkpointer.
#[test]
fn top_prints_plain_lines_with_rates_and_observers() {
    let test = "top";
    let scratch = common::scratch("ckpt", test);
    let tracker = if common::async_tracking_available(test) { TrackerKind::Async } else { TrackerKind::Copy };
    let producer = ProducerChild::start(test, 16, 1 << 40, 10_000, tracker);
    let mut checkpointer =
        tcasm(&["checkpoint", &producer.name, "--dir", scratch.join("ckpt").to_str().unwrap(), "--every-version"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let observer = Observer::attach(&producer.name).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while !attached(&observer).contains(&u64::from(checkpointer.id())) {
        assert!(std::time::Instant::now() < deadline, "the checkpointer did not attach: {:?}", attached(&observer));
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = run(&["top", &producer.name, "--interval", "0.3", "--count", "4"]);
    checkpointer.kill().unwrap();
    checkpointer.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "a header and one line per update:\n{stdout}");
    let pages: usize = producer.regions.iter().map(|r| r.pages).sum();
    assert!(lines[0].contains(&format!("3 regions, {pages} pages")), "{stdout}");
    // Every version writes the pages p with (p + v) % 7 == 0 (and the wrapped Vec's pages
    // may take other heap writes); the copy tracker copies them all.
    let written = match tracker {
        TrackerKind::Copy => pages as f64..=pages as f64,
        _ => (pages / 7) as f64 - 1.0..=(pages.div_ceil(7) + 2) as f64,
    };
    for line in &lines[1..] {
        let number = |after: &str| -> f64 {
            let head = line.split(after).next().unwrap();
            head.rsplit([' ', ','])
                .find(|w| !w.is_empty())
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("no number before {after:?}: {line}"))
        };
        let (rate, per_version) = (number(" versions/s"), number(" pages/version"));
        assert!((2.0..=150.0).contains(&rate), "{rate} versions/s from a producer of at most 100: {line}");
        assert!(written.contains(&per_version), "{per_version} pages/version, expected {written:?}: {line}");
        assert!(line.contains("publish") && line.contains(&format!("pid {}", checkpointer.id())), "{line}");
    }
    fs::remove_dir_all(&scratch).unwrap();
}

/// `tcasm ls` and `tcasm inspect` against a producer of known regions, versions and pins: a
/// producer that published 6 versions, while this process holds version 5.
#[test]
fn ls_and_inspect_show_the_producer_as_it_is() {
    let test = "inspect";
    let mut producer = ProducerChild::start_with(test, 16, 5, 0, TrackerKind::Copy, true);
    assert_eq!(producer.published(), 5);
    let observer = Observer::attach(&producer.name).unwrap();
    let held = observer.latest().unwrap();
    assert_eq!(held.version(), 5);
    // The pin reaches the slot table at the next publish.
    assert_eq!(producer.publish_one(), 6);
    let pid = producer.child.id();

    let out = run(&["ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(ls.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [test, &pid.to_string()]), "{ls}");

    let out = run(&["inspect", test]);
    assert!(out.status.success(), "{}", text(&out));
    let inspect = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = inspect.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(inspect.starts_with(&format!("producer {test:?}: pid {pid}, latest version 6\n")), "{inspect}");
    // Regions: what the producer made (tests/checkpoint.rs `producer_role`).
    let pages = producer.regions.iter().map(|r| r.pages).sum::<usize>();
    assert!(inspect.contains(&format!("regions ({pages} pages, ")), "{inspect}");
    let want = [("grid/t", "f64", "16 x 1024"), ("flags", "u8", "5000"), ("counts", "i32", "3001")];
    for ((name, dtype, shape), info) in want.iter().zip(&producer.regions) {
        let row =
            rows.iter().find(|r| r.first() == Some(name)).unwrap_or_else(|| panic!("no region {name}:\n{inspect}"));
        let line = row.join(" ");
        assert!(line.starts_with(&format!("{name} {dtype} {shape} ")), "{line}");
        assert!(line.ends_with(&format!("{} (from {})", info.pages, info.first_page)), "{line}");
    }
    // Versions 6 down to 1, newest first, each with what the producer recorded.
    let versions: Vec<u64> = rows
        .iter()
        .skip_while(|r| r.first() != Some(&"VERSION"))
        .skip(1)
        .map_while(|r| r.first().and_then(|v| v.parse().ok()))
        .collect();
    assert_eq!(versions, [6, 5, 4, 3, 2, 1], "{inspect}");
    for v in 1..=6 {
        let info = observer.version_info(v).unwrap();
        let row = rows
            .iter()
            .skip_while(|r| r.first() != Some(&"VERSION"))
            .find(|r| r.first() == Some(&v.to_string().as_str()))
            .unwrap();
        // VERSION AGE(2 words) CHANGED: what the producer recorded; every page at v1.
        assert_eq!(row[3], info.dirty_pages.to_string(), "v{v}: {info:?}");
        assert!(v > 1 || info.dirty_pages == pages as u64, "v1 holds every page: {info:?}");
    }
    // Observers as of the last publish: this process, pinning 5 (the inspect attached after;
    // the observer that read the regions at the start may not have been seen gone yet).
    let me = std::process::id().to_string();
    let observers: Vec<&Vec<&str>> =
        rows.iter().skip_while(|r| r.first() != Some(&"SLOT")).skip(1).take_while(|r| !r.is_empty()).collect();
    assert!(observers.iter().any(|r| r[1..] == [me.as_str(), "5"]), "this process pins v5:\n{inspect}");
    assert!(
        observers.iter().all(|r| r[1] == me && (r[2] == "5" || r[2] == "-")),
        "only this process observes:\n{inspect}"
    );
    let store = observer.version_info(6).unwrap().store_bytes;
    assert!(inspect.contains(&format!("store memory: {} at version 6", indicatif::HumanBytes(store))), "{inspect}");
    drop(held);
}

/// The CLI's errors say what to do: a checkpoint of a producer that is not there, a second
/// checkpointer on a directory in use, a restore of a version that is not in the directory.
#[test]
fn cli_errors_say_what_to_do() {
    let test = "cli-errors";
    let scratch = common::scratch("ckpt", test);
    let dir = scratch.join("ckpt");

    let out = run(&["checkpoint", "no-such-producer", "--dir", dir.to_str().unwrap(), "--wait", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no producer named \"no-such-producer\"") && text(&out).contains("tcasm ls"),
        "{}",
        text(&out)
    );
    assert!(!dir.exists(), "a checkpoint of nothing made its directory");

    let producer = ProducerChild::start(test, 16, 1 << 40, 5_000, TrackerKind::Auto);
    let mut first = tcasm(&["checkpoint", &producer.name, "--dir", dir.to_str().unwrap(), "--every-version"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while !dir.join(".lock").exists() || complete(&dir).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first checkpointer wrote nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = run(&["checkpoint", &producer.name, "--dir", dir.to_str().unwrap(), "--every-version"]);
    assert!(!out.status.success(), "a second checkpointer ran on a directory in use");
    assert!(
        text(&out).contains("being written by another checkpointer; give each its own directory"),
        "{}",
        text(&out)
    );
    first.kill().unwrap();
    first.wait().unwrap();

    let absent = complete(&dir).iter().map(|&(_, v)| v).max().unwrap() + 1_000_000;
    let out_dir = scratch.join("restored");
    let out =
        run(&["restore", dir.to_str().unwrap(), "--version", &absent.to_string(), "--out", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!("no complete checkpoint of version {absent}")) && said.contains("complete ones:"),
        "{said}"
    );
    assert!(!out_dir.join("manifest.json").exists(), "a failed restore left a manifest.json");
    fs::remove_dir_all(&scratch).unwrap();
}

/// `tcasm bench checkpoint` runs end to end (small and short), prints its figures with
/// their spread over the rounds and no goal, and removes its scratch directory. The figures are not judged here: speed is for benchmarks.
#[test]
fn bench_checkpoint_runs() {
    let scratch = common::scratch("ckpt", "bench");
    let out = run(&["bench", "checkpoint", "--dir", scratch.to_str().unwrap(), "--size", "2MiB", "--checkpoints", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    for line in
        ["round 1:", "round 2:", "sequential write:", "checkpoint drain:", "drain / sequential:", "MiB/s (rounds "]
    {
        assert!(said.contains(line), "no {line:?} in:\n{said}");
    }
    assert!(!said.contains("goal"), "a user's output holds no goals:\n{said}");
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0, "the bench left files in {}", scratch.display());
    fs::remove_dir_all(&scratch).unwrap();
}
