//! What a newcomer meets first on the command line: every command ends quietly on a closed
//! pipe, exit codes say what happened (a directory with no checkpoint, a producer killed
//! with SIGKILL, a file where a directory belongs), and the commands that attach wait for a
//! producer started after them, saying so.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tcasm::{Producer, ProducerOptions, TrackerKind};

const ROLE: &str = "TCASM_CLI_TEST_ROLE";
const LIMIT: Duration = Duration::from_secs(30);

fn endpoint() -> PathBuf {
    common::endpoint_dir("cli")
}

/// Serves as a producer publishing every 10 ms until killed, when started as one.
#[test]
fn producer_role() {
    let Ok(name) = std::env::var(ROLE) else { return };
    let mut p = Producer::create(&name, ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
    let mut t = p.region::<f64>("temperature", &[64, 64]).unwrap();
    for v in 1u64.. {
        t[(v % 4096) as usize] = v as f64;
        p.publish().unwrap();
        if v == 1 {
            println!("ready");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A producer child process named `name`, once it has published.
fn start_producer(name: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["producer_role", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, name)
        .env("TCASM_DIR", endpoint())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let ready = out.lines().map_while(Result::ok).any(|l| l.ends_with("ready"));
    assert!(ready, "producer {name} did not publish");
    child
}

/// `tcasm inspect NAME | head -1`: the reader closes the pipe early; tcasm ends quietly.
#[test]
fn a_closed_pipe_ends_every_listing_quietly() {
    let mut producer = start_producer("pipe");
    for args in [&["inspect", "pipe"][..], &["ls"], &["--help"], &["show", "pipe"], &["completions", "bash"]] {
        let mut child = common::tcasm(&endpoint(), args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Read nothing and close: every line tcasm prints meets a closed pipe.
        drop(child.stdout.take());
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let status = common::wait_with_watchdog(&mut child, LIMIT, "tcasm with a closed stdout");
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "tcasm {args:?}: {stderr}");
        assert!(stderr.is_empty(), "tcasm {args:?} said on a closed pipe: {stderr}");
        use std::os::unix::process::ExitStatusExt;
        assert!(status.success() || status.signal() == Some(libc::SIGPIPE), "tcasm {args:?}: {status}");
    }
    producer.kill().unwrap();
    producer.wait().unwrap();
}

#[test]
fn verify_fails_where_there_is_no_checkpoint() {
    let empty = common::scratch("cli", "verify-empty");
    let foreign = common::scratch("cli", "verify-foreign");
    std::fs::write(foreign.join("notes.txt"), "not a checkpoint").unwrap();
    for dir in [&empty, &foreign] {
        let out = common::run_tcasm(&endpoint(), &["verify", dir.to_str().unwrap()]);
        let text = common::output_text(&out);
        assert!(!out.status.success(), "verify passed on {}: {text}", dir.display());
        assert!(text.contains("no complete checkpoint"), "{text}");
    }
}

#[test]
fn a_file_where_a_directory_belongs_is_not_a_directory() {
    let file = common::scratch("cli", "not-a-dir").join("file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    let runs: [&[&str]; 2] =
        [&["checkpoint", "nobody", "--dir", file, "--wait", "0"], &["restore", "/nonexistent", "--out", file]];
    for args in runs {
        let out = common::run_tcasm(&endpoint(), args);
        let text = common::output_text(&out);
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(text.contains("ot a directory"), "{args:?}: {text}");
        assert!(!text.contains("File exists"), "{args:?}: {text}");
    }
}

/// `kill -9` of the producer: `top` and `checkpoint` say it died and exit non-zero.
#[test]
fn a_killed_producer_is_reported_as_died() {
    let dir = common::scratch("cli", "killed");
    let mut producer = start_producer("killed");
    let mut top = common::tcasm(&endpoint(), &["top", "killed", "--interval", "0.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut checkpoint =
        common::tcasm(&endpoint(), &["checkpoint", "killed", "--dir", dir.join("ckpt").to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let started = Instant::now();
    while tcasm::checkpoint::verify(&dir.join("ckpt")).map_or(true, |r| r.restorable.is_empty()) {
        assert!(started.elapsed() < LIMIT, "no checkpoint was written");
        std::thread::sleep(Duration::from_millis(50));
    }
    producer.kill().unwrap();
    producer.wait().unwrap();
    for (what, child) in [("top", &mut top), ("checkpoint", &mut checkpoint)] {
        let status = common::wait_with_watchdog(child, LIMIT, what);
        let mut text = String::new();
        child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
        assert!(!status.success(), "{what} exited 0 after the producer was killed: {text}");
        assert!(text.contains("died without closing its endpoint"), "{what}: {text}");
        if what == "checkpoint" {
            assert!(text.contains(" free"), "the progress line shows the directory's use and free space: {text}");
        }
        assert!(!text.contains("-0"), "{what}: {text}");
        assert!(!text.contains("panicked"), "{what}: {text}");
    }
}

/// The one wait rule: `checkpoint`, `top` and `inspect` started before their producer wait
/// for it, and say so.
#[test]
fn commands_wait_for_a_producer_started_after_them() {
    let dir = common::scratch("cli", "later");
    let name = "later";
    let runs: [Vec<&str>; 3] = [
        vec!["inspect", name],
        vec!["top", name, "--count", "1", "--interval", "0.1"],
        vec!["checkpoint", name, "--dir", dir.to_str().unwrap(), "--count", "1"],
    ];
    let children: Vec<(Vec<&str>, Child)> = runs
        .into_iter()
        .map(|args| {
            let child =
                common::tcasm(&endpoint(), &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            (args, child)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let mut producer = start_producer(name);
    for (args, mut child) in children {
        let status = common::wait_with_watchdog(&mut child, LIMIT, "tcasm");
        let mut text = String::new();
        child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
        assert!(status.success(), "{args:?}: {text}");
        assert!(text.contains("waiting up to 10 s for producer \"later\""), "{args:?}: {text}");
    }
    producer.kill().unwrap();
    producer.wait().unwrap();
}

/// The options a `--help` lists (`-h, --help` and `-V, --version` aside).
fn help_options(command: &[&str]) -> std::collections::BTreeSet<String> {
    let mut args = command.to_vec();
    args.push("--help");
    let out = common::run_tcasm(&endpoint(), &args);
    assert!(out.status.success(), "tcasm {args:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            if line.starts_with("-h, --help") || line.starts_with("-V, --version") {
                return None;
            }
            let flag = line.strip_prefix("--")?.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).next()?;
            Some(format!("--{flag}"))
        })
        .collect()
}

/// The README's Tools table and `--help` agree: a row for every command, and each command's
/// rows name exactly the options its `--help` lists.
#[test]
fn the_readme_tools_table_names_every_command_and_option() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let table = readme.split("\n## Tools\n").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut rows: std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<String>> = Default::default();
    for usage in table.lines().filter_map(|l| l.strip_prefix("| `tcasm ")?.split("` |").next()) {
        let path: Vec<String> = usage
            .split(' ')
            .take_while(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
            .map(String::from)
            .collect();
        let flags = usage
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--"))
            .map(String::from);
        rows.entry(path).or_default().extend(flags);
    }
    // The commands `tcasm --help` lists, and those of `tcasm bench --help`.
    let commands = |of: &[&str]| -> Vec<String> {
        let mut args = of.to_vec();
        args.push("--help");
        let out = common::run_tcasm(&endpoint(), &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let listed = text.split("Commands:\n").nth(1).unwrap().split("\n\n").next().unwrap().to_string();
        listed.lines().filter_map(|l| l.split_whitespace().next().map(String::from)).filter(|c| c != "help").collect()
    };
    let mut expected: Vec<Vec<String>> = Vec::new();
    for c in commands(&[]) {
        if c == "bench" {
            expected.extend(commands(&["bench"]).into_iter().map(|b| vec!["bench".to_string(), b]));
        } else {
            expected.push(vec![c]);
        }
    }
    let documented: Vec<Vec<String>> = rows.keys().cloned().collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(documented, sorted, "the Tools table's commands (left) and `tcasm --help`'s (right)");
    for path in expected {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        assert_eq!(
            rows[&path],
            help_options(&args),
            "options of `tcasm {}`: the README's Tools table (left), --help (right)",
            path.join(" ")
        );
    }
}

/// `tcasm show`: a live producer's newest version and a checkpoint's, as a table, as JSON
/// and as a PNG heatmap; `ls` and `inspect` speak JSON too.
#[test]
fn show_prints_statistics_json_and_a_heatmap() {
    let dir = common::scratch("cli", "show");
    let mut producer = start_producer("show");
    let out = common::run_tcasm(&endpoint(), &["show", "show"]);
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("temperature") && text.contains("f64") && text.contains("64 x 64") && text.contains("MEAN"),
        "{text}"
    );

    let out = common::run_tcasm(
        &endpoint(),
        &["show", "show", "temperature", "--json", "--png", dir.join("t.png").to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", common::output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = json["version"].as_u64().unwrap();
    let region = &json["regions"][0];
    assert_eq!(region["name"], "temperature");
    assert_eq!(region["shape"], serde_json::json!([64, 64]));
    // Element v % 4096 was set to v at version v: the largest is the newest version.
    assert_eq!(region["max"].as_f64().unwrap(), version as f64, "{json}");
    assert_eq!(region["min"].as_f64().unwrap(), 0.0, "{json}");
    let png = std::fs::read(dir.join("t.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!((&png[16..20], &png[20..24]), (&64u32.to_be_bytes()[..], &64u32.to_be_bytes()[..]), "64 x 64 pixels");

    // A checkpoint of it, shown from the directory.
    let ckpt = dir.join("ckpt");
    let out = common::run_tcasm(&endpoint(), &["checkpoint", "show", "--dir", ckpt.to_str().unwrap(), "--count", "1"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let out = common::run_tcasm(&endpoint(), &["show", ckpt.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = json["version"].as_u64().unwrap();
    assert_eq!(json["regions"][0]["max"].as_f64().unwrap(), version as f64, "{json}");

    // What cannot be drawn or found says why.
    for (args, says) in [
        (vec!["show", "show", "nothing"], "no region named \"nothing\""),
        (vec!["show", "show", "temperature", "--png", "x.png", "--slice", "0=1"], "is 2-D"),
        (vec!["show", "show", "--version", "1"], "version 1 is no longer held by producer \"show\""),
    ] {
        let out = common::run_tcasm(&endpoint(), &args);
        let text = common::output_text(&out);
        assert!(!out.status.success() && text.contains(says), "{args:?}: {text}");
    }

    let out = common::run_tcasm(&endpoint(), &["ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.as_array().unwrap().iter().any(|p| p["name"] == "show" && p["pid"] == producer.id()), "{list}");
    let out = common::run_tcasm(&endpoint(), &["inspect", "show", "--json"]);
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["pid"], producer.id());
    assert_eq!(state["regions"][0]["name"], "temperature");
    assert!(state["versions"].as_array().is_some_and(|v| !v.is_empty()), "{state}");
    producer.kill().unwrap();
    producer.wait().unwrap();
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = common::run_tcasm(&endpoint(), &["completions", shell]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("checkpoint") && text.contains("flush-to"), "{shell}: {text}");
    }
}

/// The endpoint directory keeps nothing of producers that are gone: a producer that exits
/// removes its socket and lock file, `tcasm ls` removes those of a killed one.
#[test]
fn the_endpoint_directory_keeps_nothing_of_producers_that_are_gone() {
    let dir = endpoint();
    let files = |name: &str| ["sock", "lock"].map(|ext| dir.join(format!("{name}.{ext}")).exists());
    {
        let mut p =
            Producer::create("tidy-exits", ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() })
                .unwrap();
        let _r = p.region::<u8>("r", &[10]).unwrap();
        p.publish().unwrap();
        assert_eq!(files("tidy-exits"), [true, true]);
    }
    assert_eq!(files("tidy-exits"), [false, false], "left by a producer that exited");
    let mut killed = start_producer("tidy-killed");
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(files("tidy-killed"), [true, true]);
    let out = common::run_tcasm(&dir, &["ls"]);
    assert!(
        out.status.success() && !common::output_text(&out).contains("tidy-killed"),
        "{}",
        common::output_text(&out)
    );
    assert_eq!(files("tidy-killed"), [false, false], "left by a killed producer after `tcasm ls`");
}

/// Removing lock files does not let two producers hold one name: two threads take and
/// drop the same name over and over while a third lists (and so tidies) the directory.
#[test]
fn two_producers_never_hold_one_name_while_the_directory_is_tidied() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    endpoint();
    let holders = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let lister = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                tcasm::endpoint::list().unwrap();
            }
        });
        let takers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..200 {
                        let Ok(p) = Producer::create(
                            "tidy-race",
                            ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() },
                        ) else {
                            continue;
                        };
                        assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two producers hold \"tidy-race\"");
                        std::thread::yield_now();
                        holders.fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                })
            })
            .collect();
        for t in takers {
            t.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        lister.join().unwrap();
    });
}

/// `tcasm show NAME --version V` of a live producer: its newest version is shown; a version
/// not published yet is waited for (up to --wait); an older one is refused, saying where
/// older versions are.
#[test]
fn show_of_a_live_producer_takes_its_newest_version_or_says_where_older_ones_are() {
    let name = "show-versions";
    endpoint();
    let mut p = Producer::create(name, ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
    let mut t = p.region::<f64>("t", &[8]).unwrap();
    for v in 1..=3 {
        t.fill(v as f64);
        assert_eq!(p.publish().unwrap(), v);
    }
    let out = common::run_tcasm(&endpoint(), &["show", name, "--version", "3", "--json"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["version"].as_u64(), json["regions"][0]["max"].as_f64()), (Some(3), Some(3.0)), "{json}");

    let out = common::run_tcasm(&endpoint(), &["show", name, "--version", "1"]);
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("version 1 is no longer held by producer \"show-versions\" (latest is 3)"), "{text}");
    assert!(text.contains("tcasm show DIR --version 1"), "{text}");

    let out = common::run_tcasm(&endpoint(), &["show", name, "--version", "9", "--wait", "0.3"]);
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("has not published version 9 yet (latest is 3"), "{text}");

    // A version published while `show` waits for it.
    let mut waiting = common::tcasm(&endpoint(), &["show", name, "--version", "4", "--json", "--wait", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    t.fill(4.0);
    assert_eq!(p.publish().unwrap(), 4);
    let status = common::wait_with_watchdog(&mut waiting, LIMIT, "tcasm show --version 4");
    let mut text = String::new();
    waiting.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let mut err = String::new();
    waiting.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{text}{err}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!((json["version"].as_u64(), json["regions"][0]["max"].as_f64()), (Some(4), Some(4.0)), "{json}");
}

/// Bytes of pages the complete checkpoints in `dir` hold, from their manifests.
fn checkpointed_bytes(dir: &std::path::Path) -> (usize, u64) {
    let catalog = tcasm::checkpoint::Catalog::open(dir).unwrap();
    let mut count = 0;
    let mut bytes = 0;
    for chain in &catalog.chains {
        for &v in &chain.complete {
            let restore = tcasm::checkpoint::Restore::open_in_chain(dir, chain.number, v).unwrap();
            let m = restore.manifest();
            bytes += m.chunks.iter().map(|c| (c.pages * m.space.page_size) as u64).sum::<u64>();
            count += 1;
        }
    }
    (count, bytes)
}

/// `checkpoint --max-rate`: over a run, the bytes written stay within the budget times the
/// time the run took, plus one increment, against a producer that rewrites every page of
/// 1 MiB every 5 ms (unpaced, the checkpointer writes several MiB in a fraction of a
/// second); with --every-version, and with --interval (both limits apply).
#[test]
fn max_rate_keeps_the_bytes_written_within_the_budget() {
    let name = "max-rate";
    endpoint();
    let mut p = Producer::create(name, ProducerOptions { tracker: TrackerKind::Copy, ..Default::default() }).unwrap();
    let page_words = tcasm::sys::page_size() / 8;
    let mut field = p.region::<u64>("field", &[(1 << 20) / 8]).unwrap();
    let increment = (1u64 << 20).div_ceil(tcasm::sys::page_size() as u64) * tcasm::sys::page_size() as u64;
    let mut version = 0;
    let mut publish = || {
        version += 1;
        field.iter_mut().step_by(page_words).for_each(|x| *x = version);
        p.publish().unwrap();
    };
    publish();
    let rate: u64 = 2 << 20;
    for (run, pacing) in [("every", "--every-version"), ("interval", "--interval=0.1")] {
        let dir = common::scratch("cli", &format!("max-rate-{run}"));
        let started = Instant::now();
        let mut child = common::tcasm(
            &endpoint(),
            &["checkpoint", name, "--dir", dir.to_str().unwrap(), pacing, "--max-rate", "2MiB", "--count", "4"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < LIMIT, "tcasm checkpoint --max-rate did not finish in {LIMIT:?}");
            publish();
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "{pacing}: {err}");
        let (count, bytes) = checkpointed_bytes(&dir);
        assert_eq!(count, 4, "{pacing}: {err}");
        let budget = (rate as f64 * elapsed.as_secs_f64()) as u64 + increment;
        assert!(
            bytes <= budget,
            "{pacing}: {bytes} bytes written in {elapsed:?}, more than the budget of 2 MiB/s allows ({budget} with one increment)\n{err}"
        );
        assert!(err.contains("budget 2.00 MiB/s"), "the progress line shows the budget: {err}");
    }
}

/// The low-disk warning: `--min-free` above what the file system has free makes it fire;
/// with ample free space (the default threshold, two bases, or a small `--min-free`) it
/// stays quiet.
#[test]
fn the_low_disk_warning_fires_below_min_free_only() {
    // Killed however the test ends: a failed assertion leaves no producer behind.
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _producer = Killed(start_producer("min-free"));
    for (run, min_free, warns) in
        [("default", None, false), ("small", Some("1MiB"), false), ("huge", Some("100000000GiB"), true)]
    {
        let dir = common::scratch("cli", &format!("min-free-{run}"));
        let mut args =
            vec!["checkpoint", "min-free", "--dir", dir.to_str().unwrap(), "--count", "2", "--interval", "0.1"];
        args.extend(min_free.iter().flat_map(|m| ["--min-free", *m]));
        let out = common::run_tcasm(&endpoint(), &args);
        let text = common::output_text(&out);
        assert!(out.status.success(), "{args:?}: {text}");
        let warned = text.matches("warning: ").count();
        if warns {
            assert_eq!(warned, 1, "warned once while short of space: {text}");
            assert!(
                text.contains(&format!("{} has ", dir.display())) && text.contains(" free, less than --min-free "),
                "{text}"
            );
            assert!(text.contains("--keep-bytes"), "the warning says what to do: {text}");
        } else {
            assert_eq!(warned, 0, "{args:?} warned with ample free space: {text}");
        }
    }
}
