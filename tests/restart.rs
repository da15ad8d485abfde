//! Restart and the second level, in real processes: a producer SIGKILLed mid-run and
//! restarted ends with the same bytes as one that never stopped; a checkpointer SIGKILLed
//! while flushing leaves the persistent level restorable; a full local level, a missing or
//! read-only persistent one, and checkpoints of another layout or damaged ones are each
//! reported clearly, and a refused restart leaves the producer's memory untouched. A producer
//! in a container (its own mount, pid, ipc and network namespaces, sharing only the
//! directories) is checkpointed by `tcasm checkpoint --all` from outside, killed, restarted in
//! another container, and followed again although its pid there repeats.
//!
//! The producer is this test binary re-executed as the test `producer_role` with
//! `TCASM_TEST_ROLE=restart-producer`. Its state is a field and a step counter, both regions;
//! each step rewrites a third of the field's rows as a pure function of the old values and
//! the step, and it prints a hash of its final bytes.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tcasm::checkpoint::Catalog;
use tcasm::{Producer, ProducerOptions};

const ROLE: &str = "TCASM_TEST_ROLE";
const NAME: &str = "TCASM_TEST_PRODUCER";
const DIRS: &str = "TCASM_TEST_DIRS";
const STEPS: &str = "TCASM_TEST_STEPS";
const ROWS_VAR: &str = "TCASM_TEST_ROWS";
const PERIOD_US: &str = "TCASM_TEST_PERIOD_US";
const LAYOUT: &str = "TCASM_TEST_LAYOUT";
const ROW: usize = 1024;
const LIMIT: Duration = Duration::from_secs(120);

fn endpoint() -> PathBuf {
    common::endpoint_dir("restart")
}

/// One step: rows with `(row + step) % 3 == 0` are rewritten from their old values.
fn advance(field: &mut [f64], step: u64) {
    for (r, row) in field.chunks_mut(ROW).enumerate() {
        if (r as u64 + step).is_multiple_of(3) {
            for (j, x) in row.iter_mut().enumerate() {
                *x = *x * 0.5 + step as f64 + j as f64 * 1e-3;
            }
        }
    }
}

/// FNV-1a of the field's bytes and the step.
fn hash(field: &[f64], step: u64) -> u64 {
    let bytes = field.iter().flat_map(|x| x.to_bits().to_le_bytes()).chain(step.to_le_bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Serves as the producer when this process was started as one. Prints `first run` or
/// `restored vV step S`, then `ready` after its first publish, and `done step S hash H` at
/// the end; or `refused: WHY` when the restore is refused (after checking that its memory
/// still holds what it held before).
#[test]
fn producer_role() {
    if std::env::var(ROLE).as_deref() != Ok("restart-producer") {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let dirs: Vec<PathBuf> = var(DIRS).split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect();
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let rows: usize = var(ROWS_VAR).parse().unwrap();
    let mut p = Producer::create(&var(NAME), ProducerOptions::default()).unwrap();
    let layout = var(LAYOUT);
    if layout == "retyped" {
        let mut field = p.region::<u64>("field", &[rows, ROW]).unwrap();
        let mut step = p.region::<u64>("step", &[1]).unwrap();
        field.fill(7);
        let e = p.restore(&dirs, &mut [&mut field, &mut step]).unwrap_err();
        assert!(field.iter().all(|&x| x == 7) && step[0] == 0, "a refused restore wrote memory");
        println!("refused: {e}");
        return;
    }
    let (name, shape) = match layout.as_str() {
        "renamed" => ("temperature", [rows, ROW]),
        "reshaped" => ("field", [ROW, rows]),
        _ => ("field", [rows, ROW]),
    };
    let mut field = p.region::<f64>(name, &shape).unwrap();
    let mut step = p.region::<u64>("step", &[1]).unwrap();
    field.iter_mut().enumerate().for_each(|(i, x)| *x = i as f64);
    let restored = match p.restore(&dirs, &mut [&mut field, &mut step]) {
        Ok(Some(r)) => {
            println!("restored v{} step {} from {}", r.version, step[0], r.dir.display());
            r.version
        }
        Ok(None) => {
            println!("first run");
            0
        }
        Err(e) => {
            let untouched = field.iter().enumerate().all(|(i, &x)| x == i as f64) && step[0] == 0;
            assert!(untouched, "a refused restore wrote memory");
            println!("refused: {e}");
            return;
        }
    };
    let period = Duration::from_micros(var(PERIOD_US).parse().unwrap());
    let steps: u64 = var(STEPS).parse().unwrap();
    let mut expected = restored;
    while step[0] < steps {
        step[0] += 1;
        let s = step[0];
        advance(&mut field, s);
        expected += 1;
        // Numbering continues after the restored version.
        assert_eq!(p.publish().unwrap(), expected);
        if expected == restored + 1 {
            println!("ready");
        }
        std::thread::sleep(period);
    }
    println!("done step {} hash {:016x}", step[0], hash(&field, step[0]));
}

/// A producer child and its stdout lines.
struct ProducerChild {
    child: Child,
    lines: Receiver<String>,
}

impl ProducerChild {
    fn start(name: &str, dirs: &str, rows: usize, steps: u64, period_us: u64, layout: &str) -> ProducerChild {
        ProducerChild::start_with(
            Command::new(std::env::current_exe().unwrap()),
            name,
            dirs,
            rows,
            steps,
            period_us,
            layout,
        )
    }

    /// `start` in a container of its own: new mount, pid, ipc and network namespaces
    /// (`unshare`), sharing the endpoint and checkpoint directories only. Killing it kills
    /// the producer (`--kill-child`).
    fn start_contained(name: &str, dirs: &str, rows: usize, steps: u64, period_us: u64) -> ProducerChild {
        let mut unshare = Command::new("unshare");
        unshare
            .args(["--mount", "--pid", "--ipc", "--net", "--fork", "--kill-child", "--mount-proc"])
            .arg(std::env::current_exe().unwrap());
        ProducerChild::start_with(unshare, name, dirs, rows, steps, period_us, "standard")
    }

    fn start_with(
        mut command: Command,
        name: &str,
        dirs: &str,
        rows: usize,
        steps: u64,
        period_us: u64,
        layout: &str,
    ) -> ProducerChild {
        endpoint();
        let mut child = command
            .args(["producer_role", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "restart-producer")
            .env(NAME, name)
            .env(DIRS, dirs)
            .env(ROWS_VAR, rows.to_string())
            .env(STEPS, steps.to_string())
            .env(PERIOD_US, period_us.to_string())
            .env(LAYOUT, layout)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = common::lines_of(child.stdout.take().unwrap());
        ProducerChild { child, lines }
    }

    /// The next line holding one of `prefixes`, from there on (the test harness may have
    /// written `test producer_role ... ` before it on the same line).
    fn expect(&self, prefixes: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = prefixes.iter().filter_map(|p| line.find(p)).min() {
                        return line[at..].to_string();
                    }
                }
                Err(_) => panic!("the producer said none of {prefixes:?}"),
            }
        }
    }

    fn finish(mut self) -> String {
        let line = self.expect(&["done"]);
        let status = common::wait_with_watchdog(&mut self.child, LIMIT, "the restart producer");
        assert!(status.success(), "the producer exited with {status}");
        line
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

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The newest complete checkpoint in `dir` (0: none).
fn newest(dir: &Path) -> u64 {
    Catalog::open(dir).ok().and_then(|c| c.newest()).map_or(0, |(_, v)| v)
}

/// Waits until `what` holds, failing after a minute.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A checkpointer child writing `local`, flushing to `persistent` when given.
fn checkpointer(name: &str, local: &Path, persistent: Option<&Path>, extra: &[&str]) -> Child {
    let mut args = vec!["checkpoint", name, "--dir", path(local), "--every-version"];
    if let Some(p) = persistent {
        args.extend(["--flush-to", path(p)]);
    }
    args.extend(extra);
    tcasm(&args).stderr(Stdio::piped()).spawn().unwrap()
}

/// Reads a child's lines until one contains `what`.
fn wait_for_line(lines: &Receiver<String>, what: &str) -> String {
    loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no line with {what:?}"));
        if line.contains(what) {
            return line;
        }
    }
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_producer_killed_and_restarted_ends_bit_identical() {
    let (rows, steps, period) = (48, 150, 4000);
    let uninterrupted = ProducerChild::start("restart-whole", "", rows, steps, period / 8, "standard");
    assert_eq!(uninterrupted.expect(&["first run"]), "first run");
    let whole = uninterrupted.finish();

    let dir = common::scratch("restart", "killed");
    let (local, persistent) = (dir.join("local"), dir.join("persistent"));
    fs::create_dir_all(&persistent).unwrap();
    let dirs = format!("{}:{}", local.display(), persistent.display());
    let first = ProducerChild::start("restart-killed", &dirs, rows, steps, period, "standard");
    first.expect(&["ready"]);
    let ckpt = checkpointer("restart-killed", &local, Some(&persistent), &["--flush-every", "5"]);
    wait_until("a local checkpoint of version 30", || newest(&local) >= 30);
    drop(first); // SIGKILL
    let log = stderr_of(ckpt);
    assert!(log.contains("flushed v"), "{log}");
    assert!((5..steps).contains(&newest(&persistent)), "flushed v{}\n{log}", newest(&persistent));

    // Restarted: it takes the newest complete version (level 1 first), numbering after it,
    // and a checkpointer continuing the same directories stays monotone.
    let second = ProducerChild::start("restart-killed", &dirs, rows, steps, period, "standard");
    let restored = second.expect(&["restored", "first run", "refused"]);
    let v: u64 = restored.split_whitespace().nth(1).unwrap()[1..].parse().unwrap();
    assert_eq!(v, newest(&local), "{restored}");
    assert!(restored.contains(&format!("step {v} ")), "{restored}");
    second.expect(&["ready"]);
    let mut ckpt = checkpointer("restart-killed", &local, Some(&persistent), &[]);
    assert_eq!(second.finish(), whole);
    common::wait_with_watchdog(&mut ckpt, LIMIT, "the second checkpointer");
    assert!(newest(&local) > v && newest(&persistent) > v, "checkpoints after the restart are not newer than v{v}");
    let flushed = newest(&persistent);

    // The node is gone with its local level: the persistent one alone restarts it.
    fs::remove_dir_all(&local).unwrap();
    let third = ProducerChild::start("restart-killed", &dirs, rows, steps, period / 8, "standard");
    let restored = third.expect(&["restored", "first run", "refused"]);
    assert!(
        restored.starts_with(&format!("restored v{flushed} step {flushed} from {}", persistent.display())),
        "{restored}"
    );
    assert_eq!(third.finish(), whole);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpointer_killed_while_flushing_leaves_persistent_restorable() {
    // 32 MiB a version, every page rewritten: each flush copies a whole base or more.
    let dir = common::scratch("restart", "flush-killed");
    let (local, persistent) = (dir.join("local"), dir.join("persistent"));
    fs::create_dir_all(&persistent).unwrap();
    let producer = ProducerChild::start("restart-flush", "", 4096, 1_000_000, 100_000, "standard");
    producer.expect(&["ready"]);
    let mut ckpt = checkpointer("restart-flush", &local, Some(&persistent), &[]);
    let lines = common::lines_of(ckpt.stderr.take().unwrap());
    // Kill it once a flush has completed and the next one is under way.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut flushed_once = false;
    loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no flush under way");
        flushed_once |= line.starts_with("flushed v");
        if flushed_once && line.contains("flushing v") {
            break;
        }
    }
    ckpt.kill().unwrap();
    ckpt.wait().unwrap();
    let verify = run(&["verify", path(&persistent)]);
    assert!(verify.status.success(), "{}", text(&verify));
    let out = dir.join("restored");
    let restore = run(&[
        "restore",
        "--from",
        &format!("{}:{}", dir.join("gone").display(), persistent.display()),
        "--out",
        path(&out),
    ]);
    assert!(restore.status.success(), "{}", text(&restore));
    assert!(out.join("manifest.json").exists() && out.join("field.npy").exists());
    // A new checkpointer takes both levels over and flushes again.
    let before = newest(&persistent);
    let again = checkpointer("restart-flush", &local, Some(&persistent), &["--count", "2"]);
    let log = stderr_of(again);
    assert!(log.contains("flushed v"), "{log}");
    assert!(newest(&persistent) > before, "{log}");
    let verify = run(&["verify", path(&persistent)]);
    assert!(verify.status.success(), "{}", text(&verify));
    drop(producer);
    fs::remove_dir_all(&dir).unwrap();
}

/// A tmpfs mounted for a test, unmounted on drop. `None` (the test skipped, with why) where
/// this process cannot mount; under `TCASM_REQUIRE_KERNEL=1` (CI runs as root) a failure.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(test: &str, at: &Path, options: &str) -> Option<Tmpfs> {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(at).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if std::env::var("TCASM_REQUIRE_KERNEL").as_deref() == Ok("1") {
                    panic!("{test}: TCASM_REQUIRE_KERNEL=1 but mounting a tmpfs failed: {why}");
                }
                eprintln!("SKIP {test}: mounting a tmpfs failed (needs root): {why}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_local_level_is_reported_and_checkpointing_resumes_when_space_returns() {
    let test = "a_full_local_level_is_reported_and_checkpointing_resumes_when_space_returns";
    let dir = common::scratch("restart", "full");
    let local = dir.join("local");
    let Some(_mount) = Tmpfs::mount(test, &local, "size=4m") else { return };
    // 3 MiB of ballast leave less than the 1 MiB base needs.
    let ballast = local.join("ballast");
    fs::write(&ballast, vec![1u8; 3 << 20]).unwrap();
    let producer = ProducerChild::start("restart-full", "", 128, 1_000_000, 20_000, "standard");
    producer.expect(&["ready"]);
    let mut ckpt = checkpointer("restart-full", &local, None, &[]);
    let lines = common::lines_of(ckpt.stderr.take().unwrap());
    let full = wait_for_line(&lines, "is full");
    assert!(
        full.contains("No space left on device") && full.contains("is full") && full.contains("none yet"),
        "{full}"
    );
    // The producer is unaffected: it goes on publishing.
    let observer = tcasm::Observer::attach("restart-full").unwrap();
    let seen = observer.latest_version();
    wait_until("the producer to go on publishing", || observer.latest_version() > seen + 5);
    assert_eq!(newest(&local), 0);
    fs::remove_file(&ballast).unwrap();
    let back = wait_for_line(&lines, "space again");
    assert!(back.contains("has space again"), "{back}");
    wait_until("a complete checkpoint", || newest(&local) > 0);
    ckpt.kill().unwrap();
    ckpt.wait().unwrap();
    let verify = run(&["verify", path(&local)]);
    assert!(verify.status.success(), "{}", text(&verify));
    drop(producer);
    drop(_mount);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_or_read_only_persistent_level_is_reported_and_level_one_goes_on() {
    let test = "a_missing_or_read_only_persistent_level_is_reported_and_level_one_goes_on";
    let dir = common::scratch("restart", "no-persistent");
    let producer = ProducerChild::start("restart-nopfs", "", 16, 1_000_000, 20_000, "standard");
    producer.expect(&["ready"]);
    // Three checkpoints to level 1 `l1` while flushing to `to`.
    let checkpoint = |l1: &Path, to: &Path| {
        run(&[
            "checkpoint",
            "restart-nopfs",
            "--dir",
            path(l1),
            "--flush-to",
            path(to),
            "--count",
            "3",
            "--every-version",
        ])
    };
    let out = checkpoint(&dir.join("l1"), &dir.join("missing"));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("--flush-to") && said.contains("create it") && said.contains("level 1"), "{said}");
    assert!(newest(&dir.join("l1")) > 0);
    let read_only = dir.join("read-only");
    if let Some(_mount) = Tmpfs::mount(test, &read_only, "ro,size=1m") {
        let out = checkpoint(&dir.join("l1b"), &read_only);
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        assert!(said.contains("Read-only file system") && said.contains("level 1"), "{said}");
        assert!(newest(&dir.join("l1b")) > 0);
    }
    drop(producer);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_of_another_layout_or_damaged_is_refused_and_memory_untouched() {
    let dir = common::scratch("restart", "refused");
    let ckpt = dir.join("ckpt");
    let producer =
        ProducerChild::start("restart-refused", &dir.join("none").display().to_string(), 8, 10, 20_000, "standard");
    producer.expect(&["ready"]);
    let out = run(&["checkpoint", "restart-refused", "--dir", path(&ckpt), "--count", "3", "--every-version"]);
    assert!(out.status.success(), "{}", text(&out));
    producer.finish();
    let refused = |layout: &str| {
        let p = ProducerChild::start("restart-refused", path(&ckpt), 8, 10, 1000, layout);
        p.expect(&["refused", "restored", "first run"])
    };
    let e = refused("renamed");
    assert!(e.contains("no region \"temperature\""), "{e}");
    let e = refused("reshaped");
    assert!(e.contains("region \"field\"") && e.contains("shape [8, 1024]") && e.contains("[1024, 8]"), "{e}");
    let e = refused("retyped");
    assert!(e.contains("region \"field\"") && e.contains("holds f64") && e.contains("u64"), "{e}");
    // Damage: a flipped byte, then a truncated file, then a newer format.
    let catalog = Catalog::open(&ckpt).unwrap();
    let chain = &catalog.chains[0];
    let v = *chain.complete.last().unwrap();
    let data = chain.dir.join(format!("v{v:012}.data"));
    let mut bytes = fs::read(&data).unwrap();
    bytes[40] ^= 1;
    fs::write(&data, &bytes).unwrap();
    let e = refused("standard");
    assert!(e.contains("checksum mismatch") && e.contains(&format!("v{v:012}.data")), "{e}");
    bytes[40] ^= 1;
    fs::write(&data, &bytes[..bytes.len() - 100]).unwrap();
    let e = refused("standard");
    assert!(e.contains("truncated") && e.contains(&format!("v{v:012}.data")), "{e}");
    // `tcasm restore` that fails leaves nothing under --out.
    let out_dir = dir.join("out");
    let restore = run(&["restore", path(&ckpt), "--out", path(&out_dir)]);
    assert!(!restore.status.success() && text(&restore).contains("truncated"), "{}", text(&restore));
    assert!(!out_dir.exists(), "a failed restore left {}", out_dir.display());
    assert!(fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial")));
    fs::write(&data, &bytes).unwrap();
    let manifest = chain.dir.join(format!("v{v:012}.manifest"));
    let mut m = fs::read(&manifest).unwrap();
    m[8] = 9;
    fs::write(&manifest, &m).unwrap();
    let e = refused("standard");
    assert!(e.contains("checkpoint format 9") && e.contains("this tcasm reads formats 1 and 2"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

/// Whether this process can make namespaces (`unshare` as root); a skip otherwise, a failure
/// under `TCASM_REQUIRE_KERNEL=1`.
fn namespaces_available(test: &str) -> bool {
    let out =
        Command::new("unshare").args(["--mount", "--pid", "--ipc", "--net", "--fork", "--mount-proc", "true"]).output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => common::skip(
            test,
            &format!("unshare cannot make namespaces here: {}", String::from_utf8_lossy(&o.stderr).trim()),
            common::Lacks::Kernel,
        ),
        Err(e) => common::skip(test, &format!("unshare cannot be run: {e}"), common::Lacks::Kernel),
    }
}

#[test]
fn a_producer_in_a_container_is_checkpointed_from_outside_and_restarted_in_another() {
    let test = "a_producer_in_a_container_is_checkpointed_from_outside_and_restarted_in_another";
    if !namespaces_available(test) {
        return;
    }
    let (rows, steps, period) = (48, 150, 4000);
    let mut field: Vec<f64> = (0..rows * ROW).map(|i| i as f64).collect();
    (1..=steps).for_each(|s| advance(&mut field, s));
    let whole = format!("done step {steps} hash {:016x}", hash(&field, steps));

    let dir = common::scratch("restart", "container");
    let name = "restart-contained";
    let ckpt_dir = dir.join(name); // where `--all` puts the producer's checkpoints
    let first = ProducerChild::start_contained(name, path(&ckpt_dir), rows, steps, period);
    assert_eq!(first.expect(&["first run", "restored", "refused"]), "first run");
    first.expect(&["ready"]);
    // One checkpointer outside, following the producer by its endpoint only; the pid it
    // reads there is the producer's in its own namespace.
    let ckpt =
        tcasm(&["checkpoint", "--all", "restart-contain*", "--idle", "3", "--every-version", "--dir", path(&dir)])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    wait_until("a checkpoint of version 20", || newest(&ckpt_dir) >= 20);
    drop(first); // SIGKILL to unshare, which kills the producer
                 // Restarted in a new container (its pid there likely the same as the first's): it
                 // restores, and the checkpointer follows it as a new producer.
    let second = ProducerChild::start_contained(name, path(&ckpt_dir), rows, steps, period);
    let restored = second.expect(&["restored", "first run", "refused"]);
    assert!(restored.starts_with("restored v"), "{restored}");
    let v: u64 = restored.split_whitespace().nth(1).unwrap()[1..].parse().unwrap();
    assert_eq!(second.finish(), whole);
    let log = stderr_of(ckpt);
    assert_eq!(log.matches(&format!("following {name}")).count(), 2, "{log}");
    assert!(newest(&ckpt_dir) > v, "no checkpoint of the restarted producer\n{log}");
    let verify = run(&["verify", path(&ckpt_dir)]);
    assert!(verify.status.success(), "{}", text(&verify));
    fs::remove_dir_all(&dir).unwrap();
}
