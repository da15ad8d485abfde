//! The Python package from Python: built with maturin into a virtual environment kept in the
//! target directory (created once, with maturin and numpy from PyPI), then
//! `python/tests/check_observer.py` checks, against a producer this test runs, that snapshots
//! are read-only numpy arrays equal to what was published, that an array keeps its version
//! pinned, that `wait_newer` waits (for a publish, its whole timeout, or without a deadline
//! for `float('inf')`), that an observer holds at most 8 snapshots, and that checkpoints
//! written by `tcasm checkpoint` read back equal to the versions they hold.
mod common;
mod ffi;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tcasm::{Producer, ProducerOptions, Region};

const LIMIT: Duration = Duration::from_secs(120);

/// The regions the Python script expects, and what version `v` writes into them.
struct Regions {
    grid: Region<f64>,
    counts: Region<i32>,
    bytes: Region<u8>,
    constant: Region<u64>,
    small: Region<f32>,
}

impl Regions {
    fn new(p: &mut Producer) -> Regions {
        let mut r = Regions {
            grid: p.region::<f64>("grid/t", &[64, 100]).unwrap(),
            counts: p.wrap_vec("counts", vec![0i32; 1000], &[1000]).unwrap(),
            bytes: p.region::<u8>("bytes", &[3, 5, 300]).unwrap(),
            constant: p.region::<u64>("const", &[2048]).unwrap(),
            small: p.wrap_vec("small", vec![0f32; 120], &[2, 1, 3, 1, 4, 1, 5, 1]).unwrap(),
        };
        for (i, x) in r.constant.iter_mut().enumerate() {
            *x = i as u64 * 3;
        }
        r
    }

    /// Writes what version `v` holds (check_observer.py's `expected`).
    fn write(&mut self, v: u64) {
        for (i, x) in self.grid.iter_mut().enumerate() {
            *x = i as f64 + v as f64 * 1e4;
        }
        for (i, x) in self.counts.iter_mut().enumerate() {
            *x = (i as i64 * 7 + v as i64) as i32;
        }
        for (i, x) in self.bytes.iter_mut().enumerate() {
            *x = ((i as u64 + v) % 256) as u8;
        }
        for (i, x) in self.small.iter_mut().enumerate() {
            *x = i as f32 * 0.5 + v as f32;
        }
    }
}

fn publish(p: &mut Producer, regions: &mut Regions) -> u64 {
    let next = p.stats().versions + 1;
    regions.write(next);
    let v = p.publish().unwrap();
    assert_eq!(v, next);
    v
}

#[test]
fn python_observer_sees_what_was_published() {
    let test = "python_observer_sees_what_was_published";
    let started = Instant::now();
    let Some(venv) = ffi::python_package(test) else { return };
    eprintln!("virtual environment ready: {:.1} s", started.elapsed().as_secs_f64());
    common::endpoint_dir("python");
    let scratch = ffi::scratch("python");
    let name = "python-observer";
    let mut producer = Producer::create(name, ProducerOptions::default()).unwrap();
    let mut regions = Regions::new(&mut producer);
    publish(&mut producer, &mut regions);

    // Two checkpoints (a base and an increment) by the tcasm tool, while versions go by.
    let checkpoints = scratch.join("checkpoints");
    ffi::checkpoint_while_publishing(name, &checkpoints, 2, LIMIT, || {
        publish(&mut producer, &mut regions);
    });

    let mut python = Command::new(venv.join("bin/python"))
        .arg(ffi::root().join("python/tests/check_observer.py"))
        .arg(name)
        .arg(&checkpoints)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = python.stdin.take().unwrap();
    let mut lines = BufReader::new(python.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    let mut producer = Some(producer);
    while let Some(line) = lines.next().transpose().unwrap() {
        said.push(line.clone());
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["pinned", v] => {
                // Newer versions while Python holds `v`.
                let p = producer.as_mut().unwrap();
                let v: u64 = v.parse().unwrap();
                let mut newest = 0;
                while newest < v + 3 {
                    newest = publish(p, &mut regions);
                }
                writeln!(input, "published {newest}").unwrap();
            }
            ["waiting", _] => {
                // One version more, once Python is likely asleep in wait_newer(v, inf).
                std::thread::sleep(Duration::from_millis(200));
                publish(producer.as_mut().unwrap(), &mut regions);
            }
            ["ok"] => {
                drop(producer.take());
                writeln!(input, "gone").unwrap();
            }
            _ => {}
        }
    }
    let status = common::wait_with_watchdog(&mut python, LIMIT, "check_observer.py");
    assert!(status.success(), "check_observer.py failed ({status}); it said {said:?}");
    assert_eq!(said.last().map(String::as_str), Some("done"), "{said:?}");
    eprintln!("python test: {:.1} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&scratch);
}

/// `tcasm.attach` started before its producer says, once and only after a second, that it
/// waits, in the words of the tcasm commands' `--wait` (python/tests/check_attach_wait.py
/// checks what it wrote to sys.stderr; this test starts the producer 2.5 s after it asks).
#[test]
fn python_attach_says_it_is_waiting() {
    let test = "python_attach_says_it_is_waiting";
    let Some(venv) = ffi::python_package(test) else { return };
    common::endpoint_dir("python");
    let name = "python-attach-wait";
    let mut python = Command::new(venv.join("bin/python"))
        .arg(ffi::root().join("python/tests/check_attach_wait.py"))
        .arg(name)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(python.stdout.take().unwrap()).lines();
    let first = lines.next().transpose().unwrap();
    assert_eq!(first.as_deref(), Some("attaching"));
    std::thread::sleep(Duration::from_millis(2500));
    let mut producer = Producer::create(name, ProducerOptions::default()).unwrap();
    let mut regions = Regions::new(&mut producer);
    publish(&mut producer, &mut regions);
    let said: Vec<String> = lines.map_while(Result::ok).collect();
    let status = common::wait_with_watchdog(&mut python, LIMIT, "check_attach_wait.py");
    assert!(status.success(), "check_attach_wait.py failed ({status}); it said {said:?}");
    assert_eq!(said, ["ok"]);
}
