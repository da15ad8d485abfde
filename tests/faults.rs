//! Faults and misbehaving parties, with real processes: observers SIGKILLed at random points
//! while pinned, stopped with SIGSTOP, scribbling over their pin page and attacking the files
//! they receive, too many of them, out of mappings; a producer whose pool cannot grow, a
//! producer killed while it publishes; and who may attach at all (the producer's user, a
//! group, nobody else). In every case the producer goes on publishing, its
//! memory returns to what the latest version needs, snapshots held by others never change,
//! and whoever fails or is refused gets a clear error.
//!
//! The other processes are this test binary re-executed as the test that needs them, with
//! `TCASM_TEST_ROLE` naming the part to play ([`playing`]); they talk to the test line by
//! line (stdin, stdout) under watchdogs. Producers use the copy tracker (these tests are about
//! the store and the endpoint, not about finding written pages) and `Freed::Release`, so that
//! the store's memory is exact: the latest version plus what pinned versions hold.
mod common;

use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};
use tcasm::store::control::ControlHeader;
use tcasm::store::layout::PINS_PER_SLOT;
use tcasm::sys::max_map_count;
use tcasm::sys::mem::{Access, Mapping, PrivateMapping};
use tcasm::sys::memfd::SharedFile;
use tcasm::sys::page_size;
use tcasm::{
    CreateError, EndpointError, Freed, Observer, Producer, ProducerOptions, PublishError, ReadError, Region,
    TrackerKind,
};

const ROLE: &str = "TCASM_TEST_ROLE";
const NAME: &str = "TCASM_TEST_NAME";
const GROUP: &str = "TCASM_TEST_GROUP";
/// The producers' one region: `PAGES` pages of u64.
const REGION: &str = "field";
const PAGES: usize = 256;
/// How long another process may take to answer, and to exit.
const LIMIT: Duration = Duration::from_secs(20);

fn words_per_page() -> usize {
    page_size() / 8
}

fn region_bytes() -> u64 {
    (PAGES * page_size()) as u64
}

/// Every word of page `page` as version `version` writes it.
fn word(page: usize, version: u64) -> u64 {
    version << 32 | page as u64
}

/// Checks that `field` is a consistent version `v`: each page holds the words of one
/// version that wrote it, no later than `v`.
fn check_field(field: &[u64], v: u64) -> Result<(), String> {
    for (p, page) in field.chunks_exact(words_per_page()).enumerate() {
        let writer = page[0] >> 32;
        if writer == 0 || writer > v || page.iter().any(|&w| w != word(p, writer)) {
            return Err(format!("version {v}: page {p} is torn or foreign (first word {:#x})", page[0]));
        }
    }
    Ok(())
}

/// A producer sharing `PAGES` pages of u64.
struct Source {
    producer: Producer,
    field: Region<u64>,
}

impl Source {
    fn options() -> ProducerOptions {
        ProducerOptions { tracker: TrackerKind::Copy, freed: Freed::Release, ..Default::default() }
    }

    /// Creates producer `name`, before its first version.
    fn create(name: &str, options: ProducerOptions) -> Source {
        let mut producer = Producer::create(name, options).unwrap();
        let field = producer.region::<u64>(REGION, &[PAGES * words_per_page()]).unwrap();
        Source { producer, field }
    }

    /// Creates producer `name` and publishes version 1.
    fn new(name: &str, options: ProducerOptions) -> Source {
        let mut source = Source::create(name, options);
        source.publish(0..PAGES);
        source
    }

    /// Writes `pages` as the next version does and publishes it.
    fn try_publish(&mut self, pages: impl IntoIterator<Item = usize>) -> Result<u64, PublishError> {
        let v = self.producer.stats().versions + 1;
        let words = words_per_page();
        for p in pages {
            self.field[p * words..(p + 1) * words].fill(word(p, v));
        }
        self.producer.publish()
    }

    fn publish(&mut self, pages: impl IntoIterator<Item = usize>) -> u64 {
        self.try_publish(pages).unwrap()
    }

    /// Publishes `count` versions of every page; returns the time they took.
    fn publish_timed(&mut self, count: usize) -> Duration {
        let started = Instant::now();
        for _ in 0..count {
            self.publish(0..PAGES);
        }
        started.elapsed()
    }

    fn store_bytes(&self) -> u64 {
        self.producer.stats().store_bytes
    }

    /// Publishes until `n` observers are attached (the endpoint sees one hang up within a
    /// tick), then once more: the store then holds exactly what live versions need.
    fn settle(&mut self, n: usize) {
        let deadline = Instant::now() + LIMIT;
        while self.producer.observers() != n {
            assert!(
                Instant::now() < deadline,
                "{} observers still attached after {LIMIT:?}, expected {n}",
                self.producer.observers()
            );
            self.publish(0..PAGES);
            std::thread::sleep(Duration::from_millis(5));
        }
        self.publish(0..PAGES);
    }
}

/// Another process playing a role: this binary (or a copy of it) re-executed. Dropping it
/// kills it.
struct Player {
    child: Child,
    lines: Receiver<String>,
    what: String,
}

impl Player {
    /// The command that runs `exe` as test `test` playing `role` against endpoint `name`.
    fn command(exe: &Path, test: &str, role: &str, name: &str) -> Command {
        let mut command = Command::new(exe);
        command
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(NAME, name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        command
    }

    fn start(mut command: Command, what: String) -> Player {
        let mut child = command.spawn().unwrap();
        let lines = common::lines_of(child.stdout.take().unwrap());
        Player { child, lines, what }
    }

    fn spawn(test: &str, role: &str, name: &str) -> Player {
        let command = Player::command(&std::env::current_exe().unwrap(), test, role, name);
        Player::start(command, format!("{role} process for {name:?}"))
    }

    /// Its next line on stdout.
    fn line(&self) -> String {
        self.lines.recv_timeout(LIMIT).unwrap_or_else(|e| panic!("{}: no answer within {LIMIT:?} ({e})", self.what))
    }

    /// The rest of its next line that has `mark` in it.
    fn expect(&self, mark: &str) -> String {
        loop {
            if let Some((_, rest)) = self.line().split_once(mark) {
                return rest.trim().to_string();
            }
        }
    }

    /// Whether it has said a line with `mark` in it, without waiting.
    fn said(&self, mark: &str) -> bool {
        self.lines.try_iter().any(|l| l.contains(mark))
    }

    fn say(&mut self, line: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Closes its stdin, waits for it to exit cleanly, and returns its stderr if piped.
    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let status = common::wait_with_watchdog(&mut self.child, LIMIT, &self.what);
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
        }
        assert!(status.success(), "{}: {status}\n{stderr}", self.what);
        stderr
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When this process is a re-executed player, plays its role and returns true.
fn playing() -> bool {
    let Ok(role) = std::env::var(ROLE) else { return false };
    let name = std::env::var(NAME).unwrap();
    match role.as_str() {
        "looping" => looping(&name),
        "holding" => holding(&name),
        "scribbling" => scribbling(&name),
        "exhausted" => exhausted(&name),
        "publishing" => publishing(&name),
        "limited" => limited(&name),
        "group-producer" => group_producer(&name),
        "group-observer" => group_observer(&name),
        "endpoint" => endpoint(&name),
        other => panic!("no role {other:?}"),
    }
    true
}

// ---- The roles ----

/// Takes snapshots one after the other, checking each and holding it a random moment,
/// until killed.
fn looping(name: &str) {
    let observer = Observer::attach(name).unwrap();
    let mut rng = common::Rng::seeded(u64::from(std::process::id()));
    let mut snapshot = observer.latest().unwrap();
    println!("pinned {}", snapshot.version());
    loop {
        check_field(snapshot.view(REGION).unwrap(), snapshot.version()).unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        drop(snapshot);
        snapshot = observer.latest().unwrap();
    }
}

/// Holds one snapshot and answers on stdin: `check` (is it as it was?) and `drop`.
fn holding(name: &str) {
    let observer = Observer::attach(name).unwrap();
    let mut snapshot = Some(observer.latest().unwrap());
    let held = snapshot.as_ref().unwrap().view::<u64>(REGION).unwrap().to_vec();
    let version = snapshot.as_ref().unwrap().version();
    check_field(&held, version).unwrap();
    println!("pinned {version}");
    for line in std::io::stdin().lines() {
        match line.unwrap().as_str() {
            "check" => {
                let now = snapshot.as_ref().expect("a held snapshot").view::<u64>(REGION).unwrap();
                println!("held {}", if now == &held[..] { "unchanged" } else { "CHANGED" });
            }
            "drop" => {
                snapshot = None;
                println!("dropped");
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// An observer that attacks: tries to write, resize or punch the files it receives, saying
/// which attempts were refused, then writes random words all over its pin page (pins near
/// the latest version, to keep as much memory as it can) until killed.
fn scribbling(name: &str) {
    let attached = tcasm::endpoint::attach(name, LIMIT).unwrap();
    let [control, pool, pins] = &attached.files;
    let page = page_size() as u64;
    let attacks = [
        ("growing the pool", pool.set_len(pool.size().unwrap() + page).is_ok()),
        ("truncating the pool", pool.set_len(0).is_ok()),
        ("truncating the control block", control.set_len(0).is_ok()),
        ("punching a hole in the pool", pool.punch_hole(0, page).is_ok()),
        ("writing the pool", pool.try_clone().unwrap().into_file().write_at(&[1], 0).is_ok()),
        ("writing the control block", control.try_clone().unwrap().into_file().write_at(&[1], 0).is_ok()),
        ("mapping the pool writable", Mapping::shared(pool, 0, page as usize, Access::ReadWrite).is_ok()),
        ("mapping the control block writable", Mapping::shared(control, 0, page as usize, Access::ReadWrite).is_ok()),
        ("growing its pin page", pins.set_len(2 * page).is_ok()),
        ("truncating its pin page", pins.set_len(0).is_ok()),
    ];
    for (attack, done) in attacks {
        println!("attack {}: {attack}", if done { "ALLOWED" } else { "refused" });
    }
    let control = Mapping::shared(control, 0, page as usize, Access::ReadOnly).unwrap();
    let pin_page = Mapping::shared(pins, 0, page as usize, Access::ReadWrite).unwrap();
    let mut rng = common::Rng::seeded(u64::from(std::process::id()));
    println!("scribbling");
    loop {
        let latest = ControlHeader::new(control.words()).latest();
        for w in pin_page.words() {
            let value = match rng.below(4) {
                0 => rng.below(u64::MAX),
                1 => u64::MAX,
                _ => (latest + 4).saturating_sub(rng.below(40)),
            };
            w.store(value, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Fills this process's mappings up to `vm.max_map_count`: one-page mappings of a memfd
/// laid every other page of a reservation, two mappings each, until the kernel refuses one.
struct Filler {
    _reservation: PrivateMapping,
}

impl Filler {
    fn fill() -> Filler {
        let page = page_size();
        let file = SharedFile::create("filler").unwrap();
        file.set_len(page as u64).unwrap();
        let slots = max_map_count() / 2 + 8;
        let mut reservation = PrivateMapping::anonymous(2 * slots * page).unwrap();
        let mut mapped = 0;
        while reservation.map_file_at((2 * mapped + 1) * page, &file, 0, page).is_ok() {
            mapped += 1;
            assert!(mapped < slots, "vm.max_map_count was never reached");
        }
        Filler { _reservation: reservation }
    }
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().count()
}

/// An observer whose process has no mappings left: `latest()` must fail with a map
/// error and leave no mapping behind, and succeed once mappings are free again. Its first
/// snapshot (one run) makes its view a mapped one, so that the next needs a mapping per run.
fn exhausted(name: &str) {
    let observer = Observer::attach(name).unwrap();
    let before = mappings();
    drop(observer.latest().unwrap());
    println!("ready");
    std::io::stdin().lines().next();
    let filler = Filler::fill();
    let outcome = match observer.latest() {
        Err(ReadError::Map(e)) => format!("map error: {e}"),
        Err(e) => format!("another error: {e}"),
        Ok(s) => format!("a snapshot of version {}", s.version()),
    };
    drop(filler);
    println!("out of mappings: {outcome}; {} mappings left behind", mappings() as i64 - before as i64);
    std::io::stdin().lines().next();
    let snapshot = observer.latest().unwrap();
    check_field(snapshot.view(REGION).unwrap(), snapshot.version()).unwrap();
    println!("mappings back: version {}", snapshot.version());
}

/// A producer that publishes every page, version after version, until killed.
fn publishing(name: &str) {
    let mut source = Source::new(name, Source::options());
    println!("published");
    loop {
        source.publish(0..PAGES);
    }
}

/// Sets the soft limit of `resource` (the hard one stays), or lifts it to the hard one.
fn set_limit(resource: Resource, soft: Option<u64>) {
    let (_, hard) = getrlimit(resource).unwrap();
    setrlimit(resource, soft.unwrap_or(hard), hard).unwrap();
}

/// This process's address space in bytes.
fn address_space() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmSize:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kb << 10
}

/// A producer short of memory: first the pool's address space cannot be reserved
/// (RLIMIT_AS), then the pool cannot grow past two planes (RLIMIT_FSIZE) while an observer
/// pins the first version. Each publish that cannot have its memory fails with a clear
/// error, and once there is room the next one publishes what the failed one missed.
fn limited(name: &str) {
    let mut source = Source::create(name, Source::options());
    // Room for what threads map as they start (stacks, malloc arenas), not for the pool's
    // reservation (a plane per possible live version: 514 MiB here).
    set_limit(Resource::RLIMIT_AS, Some(address_space() + (256 << 20)));
    println!("no address space: {}", source.try_publish(0..PAGES).unwrap_err());
    set_limit(Resource::RLIMIT_AS, None);
    assert_eq!(source.publish(0..PAGES), 1);

    let observer = Observer::attach(name).unwrap();
    let first = observer.latest().unwrap();
    // SAFETY: ignoring SIGXFSZ installs no handler; ftruncate then fails with EFBIG instead.
    unsafe { nix::sys::signal::signal(Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) }.unwrap();
    set_limit(Resource::RLIMIT_FSIZE, Some(2 * region_bytes()));
    assert_eq!(source.publish(0..PAGES), 2);
    // Version 1 (pinned) and 2 (the latest) fill both planes: version 3 needs a third.
    let e = source.try_publish(0..PAGES).unwrap_err();
    assert!(matches!(e, PublishError::Store { .. }), "{e:?}");
    println!("pool cannot grow: {e}");
    let second = observer.latest().unwrap();
    assert_eq!(second.version(), 2);
    assert!(second.view::<u64>(REGION).unwrap().iter().enumerate().all(|(i, &w)| w == word(i / words_per_page(), 2)));
    set_limit(Resource::RLIMIT_FSIZE, None);
    assert_eq!(source.publish([]), 3);
    let third = observer.latest().unwrap();
    assert!(third.view::<u64>(REGION).unwrap().iter().enumerate().all(|(i, &w)| w == word(i / words_per_page(), 3)));
    check_field(first.view(REGION).unwrap(), 1).unwrap();
    println!("recovered: version {}", third.version());
}

/// A producer admitting the group `TCASM_TEST_GROUP` names (if any), logging to stderr,
/// until its stdin closes.
fn group_producer(name: &str) {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let group = std::env::var(GROUP).ok();
    let _source = Source::new(name, ProducerOptions { group, ..Source::options() });
    println!("published");
    std::io::stdin().lines().for_each(drop);
}

/// An observer run under another uid: attaches and checks a snapshot, then tries to reopen
/// the read-only files it received for writing, and to change their mode.
fn group_observer(name: &str) {
    let outcome = match Observer::attach_timeout(name, LIMIT) {
        Err(ReadError::Endpoint(EndpointError::Refused { why, .. })) => format!("refused: {why}"),
        Err(e) => format!("error: {e}"),
        Ok(observer) => {
            let snapshot = observer.latest().unwrap();
            check_field(snapshot.view(REGION).unwrap(), snapshot.version()).unwrap();
            let files = tcasm::endpoint::attach(name, LIMIT).unwrap().files;
            let reopened = files[..2].iter().any(|f| f.reopen(true).is_ok());
            let chmod = files[..2].iter().any(|f| {
                f.try_clone().unwrap().into_file().set_permissions(std::fs::Permissions::from_mode(0o666)).is_ok()
            });
            format!("admitted; reopened for writing: {reopened}; mode changed: {chmod}")
        }
    };
    println!("outcome: {outcome}");
}

/// A producer creating its endpoint where `TCASM_DIR` (or the default) says, admitting the
/// group `TCASM_TEST_GROUP` names (if any): says whether it could.
fn endpoint(name: &str) {
    let group = std::env::var(GROUP).ok();
    let outcome = match Producer::create(name, ProducerOptions { group, ..Source::options() }) {
        Ok(_) => "created".to_string(),
        Err(e) => format!("{e}"),
    };
    println!("outcome: {outcome}");
}

// ---- The tests ----

/// Observers SIGKILLed at random points of taking, checking and dropping snapshots, many
/// times: the producer publishes all along (its cost is printed against a quiet baseline;
/// benchmarks measure it), notices each death (the
/// connection), and its memory returns to the latest version alone.
#[test]
fn observers_killed_at_random_points_cost_the_producer_nothing() {
    const TEST: &str = "observers_killed_at_random_points_cost_the_producer_nothing";
    const KILLS: usize = 24;
    if playing() {
        return;
    }
    common::endpoint_dir("faults");
    let name = "killed-observers";
    let mut rng = common::Rng::from_clock(TEST);
    let mut source = Source::new(name, Source::options());
    let baseline = source.store_bytes();
    assert_eq!(baseline, region_bytes());
    let quiet = source.publish_timed(100) / 100;

    // Each observer is killed at a random moment up to 60 ms after it was started: most
    // while they loop over snapshots, some while they start or attach.
    let spawn = |rng: &mut common::Rng| {
        (Player::spawn(TEST, "looping", name), Instant::now() + Duration::from_micros(rng.below(60_000)))
    };
    let mut players: Vec<(Player, Instant)> = (0..3).map(|_| spawn(&mut rng)).collect();
    let (mut kills, mut pinned, mut publishes, mut busy, mut slowest) = (0, 0, 0u32, Duration::ZERO, Duration::ZERO);
    while kills < KILLS {
        let took = source.publish_timed(1);
        (busy, slowest) = (busy + took, slowest.max(took));
        publishes += 1;
        for (player, due) in &mut players {
            if Instant::now() >= *due {
                pinned += usize::from(player.said("pinned"));
                (*player, *due) = spawn(&mut rng); // dropping the old one SIGKILLs it
                kills += 1;
            }
        }
    }
    drop(players);
    source.settle(0);
    assert_eq!(source.store_bytes(), baseline, "memory after {KILLS} observers were killed");
    let during = busy / publishes;
    eprintln!(
        "{TEST}: {kills} kills ({pinned} after a first snapshot), {publishes} publishes meanwhile, {during:?} each ({:.1}x the {quiet:?} before), slowest {slowest:?}",
        during.as_secs_f64() / quiet.as_secs_f64()
    );
    assert!(pinned > 0, "no observer was killed while it held a snapshot");
    // Speed is measured by benchmarks (tcasm bench), not asserted here: what this test
    // asserts is that publishes keep completing, none held up for good by a dying observer.
    assert!(slowest < LIMIT, "a publish hung for {slowest:?} while observers were killed");
}

/// An observer stopped (SIGSTOP) while it holds a snapshot: the producer keeps publishing, holding at most one more region (every page changed since the pin); once the
/// observer runs again its snapshot is intact, and once it drops it the memory goes back.
#[test]
fn a_stopped_observer_holds_at_most_one_region() {
    const TEST: &str = "a_stopped_observer_holds_at_most_one_region";
    if playing() {
        return;
    }
    common::endpoint_dir("faults");
    let name = "stopped-observer";
    let mut source = Source::new(name, Source::options());
    let baseline = source.store_bytes();
    let quiet = source.publish_timed(100) / 100;
    let mut holder = Player::spawn(TEST, "holding", name);
    holder.expect("pinned");
    holder.signal(Signal::SIGSTOP);
    let (mut busy, mut slowest, mut most) = (Duration::ZERO, Duration::ZERO, 0);
    // A number of publishes, not a time: the stopped observer must not stop them.
    const PUBLISHES: u32 = 200;
    for _ in 0..PUBLISHES {
        let took = source.publish_timed(1);
        (busy, slowest) = (busy + took, slowest.max(took));
        most = most.max(source.store_bytes());
    }
    holder.signal(Signal::SIGCONT);
    assert!(most <= baseline + region_bytes(), "{most} bytes with a stopped observer, baseline {baseline}");
    let during = busy / PUBLISHES;
    eprintln!(
        "{TEST}: {PUBLISHES} publishes, {during:?} each ({:.1}x the {quiet:?} before), slowest {slowest:?}",
        during.as_secs_f64() / quiet.as_secs_f64()
    );
    // Publishes kept completing (speed is for benchmarks): none hung on the stopped observer.
    assert!(slowest < LIMIT, "a publish hung for {slowest:?} with a stopped observer");
    holder.say("check");
    assert_eq!(holder.expect("held"), "unchanged");
    holder.say("drop");
    holder.expect("dropped");
    source.publish(0..PAGES);
    assert_eq!(source.store_bytes(), baseline, "memory once the stopped observer dropped its snapshot");
    holder.finish();
}

/// An observer that scribbles over its pin page can keep versions alive (memory, bounded
/// by its pin words), but another observer's snapshot stays as it was and the producer goes
/// on; writing, resizing or punching the files it received is refused.
#[test]
fn a_scribbling_observer_only_delays_reclamation() {
    const TEST: &str = "a_scribbling_observer_only_delays_reclamation";
    if playing() {
        return;
    }
    common::endpoint_dir("faults");
    let name = "scribbled";
    let mut source = Source::new(name, Source::options());
    let baseline = source.store_bytes();
    let mut holder = Player::spawn(TEST, "holding", name);
    holder.expect("pinned");
    let scribbler = Player::spawn(TEST, "scribbling", name);
    let mut allowed = Vec::new();
    loop {
        let line = scribbler.line();
        if let Some((_, attack)) = line.split_once("attack ALLOWED: ") {
            allowed.push(attack.to_string());
        }
        if line.contains("scribbling") {
            break;
        }
    }
    assert!(allowed.is_empty(), "an observer could do: {allowed:?}");
    let mut most = 0;
    for _ in 0..300 {
        source.publish(0..PAGES);
        most = most.max(source.store_bytes());
    }
    // The latest version, the holder's, and one per pin word of the scribbler.
    let bound = (2 + PINS_PER_SLOT as u64) * region_bytes();
    assert!(most <= bound, "{most} bytes with a scribbling observer, bound {bound}");
    holder.say("check");
    assert_eq!(holder.expect("held"), "unchanged");
    drop(scribbler);
    source.settle(1);
    holder.say("drop");
    holder.expect("dropped");
    source.publish(0..PAGES);
    assert_eq!(source.store_bytes(), baseline, "memory once the scribbler is gone");
    holder.finish();
}

/// The observer past `max_observers` is refused with `Full`; the producer and the observers
/// it has are unaffected, and a slot freed by an observer's death is taken by the next.
#[test]
fn observers_past_the_limit_are_refused_and_the_producer_goes_on() {
    const TEST: &str = "observers_past_the_limit_are_refused_and_the_producer_goes_on";
    if playing() {
        return;
    }
    common::endpoint_dir("faults");
    let name = "full";
    let mut source = Source::new(name, ProducerOptions { max_observers: 2, ..Source::options() });
    let mut holders: Vec<Player> = (0..2).map(|_| Player::spawn(TEST, "holding", name)).collect();
    for h in &holders {
        h.expect("pinned");
    }
    match Observer::attach(name) {
        Err(ReadError::Endpoint(EndpointError::Full { .. })) => {}
        Err(e) => panic!("expected Full, got {e}"),
        Ok(_) => panic!("a third observer attached to a producer that admits two"),
    }
    source.publish(0..PAGES);
    for h in &mut holders {
        h.say("check");
        assert_eq!(h.expect("held"), "unchanged");
    }
    drop(holders.pop());
    source.settle(1);
    let v = source.publish(0..PAGES);
    assert_eq!(Observer::attach(name).unwrap().latest().unwrap().version(), v);
}

/// A producer whose pool cannot be reserved or grown fails that publish with a clear error,
/// and publishes again once it has the memory ([`limited`]).
#[test]
fn a_pool_that_cannot_grow_fails_publish_cleanly() {
    const TEST: &str = "a_pool_that_cannot_grow_fails_publish_cleanly";
    if playing() {
        return;
    }
    common::endpoint_dir("faults");
    let producer = Player::spawn(TEST, "limited", "limited");
    let reserve = producer.expect("no address space:");
    assert!(reserve.contains("map address space for the pool"), "{reserve}");
    let grow = producer.expect("pool cannot grow:");
    assert!(
        grow.contains("grow the pool") && grow.contains("too large") && grow.contains("raise the file size limit"),
        "{grow}"
    );
    assert_eq!(producer.expect("recovered:"), "version 3");
    producer.finish();
}

/// An observer that cannot map its view (its process is at `vm.max_map_count`) gets
/// `ReadError::Map` and keeps no mapping of the failed view; the producer is unaffected and
/// the observer's next `latest()` works once mappings are free.
#[test]
fn an_observer_out_of_mappings_gets_a_map_error() {
    const TEST: &str = "an_observer_out_of_mappings_gets_a_map_error";
    if playing() {
        return;
    }
    // Only written pages are copied: the copy tracker would make every version one run.
    if !common::async_tracking_available(TEST) {
        return;
    }
    common::endpoint_dir("faults");
    let name = "no-mappings";
    let mut source = Source::new(name, ProducerOptions { tracker: TrackerKind::Async, ..Source::options() });
    // Every other block of 32 pages written again, into another plane: eight mapped runs.
    let blocks = |v: usize| (0..PAGES).filter(move |p| p / 32 % 2 == v % 2);
    let mut exhausted = Player::spawn(TEST, "exhausted", name);
    exhausted.expect("ready");
    source.publish(blocks(0));
    exhausted.say("go");
    let outcome = exhausted.expect("out of mappings:");
    assert!(outcome.starts_with("map error") && outcome.ends_with("; 0 mappings left behind"), "{outcome}");
    for v in 1..4 {
        source.publish(blocks(v));
    }
    assert_eq!(source.producer.observers(), 1);
    exhausted.say("go");
    exhausted.expect("mappings back:");
    exhausted.finish();
}

/// A producer SIGKILLed at a random point while it publishes, several times over under the
/// same name: the observer's snapshot stays readable and intact, `latest()` and a waiting
/// `wait_newer()` report `ProducerGone` at once, and each new producer takes the stale
/// endpoint over. (tests/snapshots.rs kills a producer between publishes.)
#[test]
fn a_producer_killed_while_publishing_leaves_snapshots_readable() {
    const TEST: &str = "a_producer_killed_while_publishing_leaves_snapshots_readable";
    if playing() {
        return;
    }
    common::endpoint_dir("faults");
    let name = "killed-producer";
    let mut rng = common::Rng::from_clock(TEST);
    for round in 0..4 {
        let producer = Player::spawn(TEST, "publishing", name);
        producer.expect("published");
        let observer = Observer::attach(name).unwrap();
        let snapshot = observer.latest().unwrap();
        let held = snapshot.view::<u64>(REGION).unwrap().to_vec();
        check_field(&held, snapshot.version()).unwrap();
        let waiter = {
            let observer = observer.clone();
            // Only a hang reaches the deadline: a timeout would return Ok, not ProducerGone.
            std::thread::spawn(move || observer.wait_newer(u64::MAX, LIMIT))
        };
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        drop(producer);
        match observer.latest() {
            Err(ReadError::ProducerGone { last_version, .. }) => assert!(last_version >= snapshot.version()),
            Err(e) => panic!("round {round}: expected ProducerGone, got {e}"),
            Ok(s) => panic!("round {round}: a snapshot of version {} from a dead producer", s.version()),
        }
        assert!(
            snapshot.view::<u64>(REGION).unwrap() == &held[..],
            "round {round}: the snapshot changed when its producer died"
        );
        match waiter.join().unwrap() {
            Err(ReadError::ProducerGone { .. }) => {}
            other => panic!("round {round}: wait_newer gave {other:?}"),
        }
    }
}

/// Who may observe: by default the producer's user only (the socket is out of reach of
/// others, and its peer-credential check refuses them even when it is not); with a group,
/// its members too, by primary or supplementary group, and a member of another uid cannot
/// reopen the read-only files it receives for writing nor change their mode. Run as root,
/// with observers under uid 65534.
#[test]
fn only_the_producers_user_or_group_may_observe() {
    const TEST: &str = "only_the_producers_user_or_group_may_observe";
    if playing() {
        return;
    }
    if !common::root(TEST) {
        return;
    }
    let Some(member) = nix::unistd::Group::from_gid(Gid::from_raw(100)).ok().flatten().map(|g| g.name) else {
        common::skip(TEST, "no group 100 here (.ci/run creates one)", common::Lacks::Kernel);
        return;
    };
    match Producer::create(
        "no-group",
        ProducerOptions { group: Some("no-such-group-tcasm".into()), ..Source::options() },
    ) {
        Err(CreateError::Endpoint(EndpointError::NoSuchGroup { .. })) => {}
        other => panic!("expected NoSuchGroup, got {:?}", other.err()),
    }
    let exe = common::runnable_by_anyone(TEST);
    const ADMITTED: &str = "admitted; reopened for writing: false; mode changed: false";
    let visits = [
        Visit {
            admit_group: false,
            gid: 65534,
            groups: &[],
            opened: false,
            outcome: "refused: no permission to connect",
        },
        Visit {
            admit_group: false,
            gid: 65534,
            groups: &[],
            opened: true,
            outcome: "refused: uid 65534 may not observe",
        },
        Visit { admit_group: true, gid: 65534, groups: &[100], opened: false, outcome: ADMITTED },
        Visit { admit_group: true, gid: 100, groups: &[], opened: false, outcome: ADMITTED },
        Visit { admit_group: true, gid: 65534, groups: &[65534], opened: true, outcome: "refused: uid 65534" },
    ];
    for (i, visit) in visits.iter().enumerate() {
        let group = visit.admit_group.then(|| member.clone());
        let what =
            format!("case {i}: producer admits {group:?}, observer of gid {} and groups {:?}", visit.gid, visit.groups);
        let dir = common::private_dir(&format!("group-{i}"));
        let name = format!("group-{i}");
        let mut command = Player::command(&std::env::current_exe().unwrap(), TEST, "group-producer", &name);
        command.env("TCASM_DIR", &dir).stderr(Stdio::piped());
        if let Some(g) = &group {
            command.env(GROUP, g);
        }
        let producer = Player::start(command, format!("producer of {what}"));
        producer.expect("published");
        if visit.opened {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(dir.join(format!("{name}.sock")), std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        let mut command = Player::command(&exe, TEST, "group-observer", &name);
        command.env("TCASM_DIR", &dir);
        as_user(&mut command, 65534, visit.gid, visit.groups);
        let outcome = Player::start(command, format!("observer of {what}")).expect("outcome:");
        assert!(outcome.starts_with(visit.outcome), "{what}: {outcome}");
        let log = producer.finish();
        if visit.opened {
            assert!(log.contains("refused an observer"), "{what}: the producer did not log the refusal:\n{log}");
        }
    }
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

/// An observer of uid 65534 visiting a producer: whether the producer admits group 100, the
/// observer's primary and supplementary groups, whether the endpoint's files are opened to
/// anyone (so that only the peer-credential check stands), and how its outcome line starts.
struct Visit {
    admit_group: bool,
    gid: u32,
    groups: &'static [u32],
    opened: bool,
    outcome: &'static str,
}

/// Makes `command` run as `uid` with primary group `gid` and supplementary `groups`.
fn as_user(command: &mut Command, uid: u32, gid: u32, groups: &[u32]) {
    let groups: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
    // SAFETY: between fork and exec the closure makes three system calls, which are
    // async-signal-safe, and allocates nothing (the group list is built before).
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(Gid::from_raw(gid))?;
            nix::unistd::setuid(Uid::from_raw(uid))?;
            Ok(())
        });
    }
}

/// Endpoint directories where someone else could replace the sockets are refused, each with
/// what to do: one anyone may write (`TCASM_DIR`), another user's default directory, and a
/// directory a group the producer admits cannot enter, which is not the producer's to fix.
/// The last two need root: to run the producer as uid 65534, and to use another user's
/// directory at all.
#[test]
fn endpoint_directories_others_could_write_are_refused() {
    const TEST: &str = "endpoint_directories_others_could_write_are_refused";
    if playing() {
        return;
    }
    use std::os::unix::fs::chown;
    let base = common::private_dir("directories");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let producer = |exe: &Path, env: &[(&str, &Path)], group: Option<&str>, user: bool| {
        let mut command = Player::command(exe, TEST, "endpoint", "refused");
        command.env_remove("TCASM_DIR").env_remove("XDG_RUNTIME_DIR");
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some(g) = group {
            command.env(GROUP, g);
        }
        if user {
            as_user(&mut command, 65534, 65534, &[]);
        }
        Player::start(command, format!("producer with {env:?}")).expect("outcome:")
    };
    let this = std::env::current_exe().unwrap();

    let open = base.join("anyone-writes");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let outcome = producer(&this, &[("TCASM_DIR", &open)], None, false);
    assert!(outcome.contains("anyone may write it; `chmod o-w` it or set TCASM_DIR elsewhere"), "{outcome}");

    if !common::root(TEST) {
        return;
    }
    let exe = common::runnable_by_anyone(TEST);
    // XDG_RUNTIME_DIR/tcasm, the default, made by root before.
    let runtime = base.join("runtime");
    std::fs::create_dir_all(runtime.join("tcasm")).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outcome = producer(&exe, &[("XDG_RUNTIME_DIR", &runtime)], None, true);
    assert!(
        outcome.contains("owned by uid 0, not by you (uid 65534); set TCASM_DIR to a directory of yours"),
        "{outcome}"
    );

    // Another user's directory, which root may use but group 100 (admitted) cannot enter:
    // not root's to open to the group.
    let shared = base.join("group");
    std::fs::create_dir(&shared).unwrap();
    chown(&shared, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    let group = nix::unistd::Group::from_gid(Gid::from_raw(100)).ok().flatten().map(|g| g.name);
    let Some(group) = group else {
        common::skip(TEST, "no group 100 here (.ci/run creates one)", common::Lacks::Kernel);
        return;
    };
    let outcome = producer(&this, &[("TCASM_DIR", &shared)], Some(&group), false);
    let advice = format!(
        "its owner may `chgrp {group} {d} && chmod g=rx {d}`, or set TCASM_DIR to a directory of yours",
        d = shared.display()
    );
    assert!(
        outcome.contains(&format!("group {group:?} cannot enter it, or may write it")) && outcome.contains(&advice),
        "{outcome}"
    );
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
    let _ = std::fs::remove_dir_all(&base);
}
