//! An MPI job on two simulated nodes of this machine: `examples/heat_mpi.c` under OpenMPI's
//! `mpirun` (4 ranks, `--oversubscribe`), each "node" (ranks 0-1, ranks 2-3) with its own
//! endpoint directory and node-local checkpoint level and its own `tcasm checkpoint --all`,
//! one persistent level shared by both. Checked: the assembled global field equals a serial
//! run bit for bit; a rank killed and the job relaunched restores one global version on every
//! rank and ends equal to an uninterrupted run; a node's checkpointer killed never lets a
//! global manifest name a version that node lacks, and catches up once restarted.
//!
//! Skipped, saying why, where `mpicc` or `mpirun` is missing (a failure under
//! `TCASM_REQUIRE_TOOLS=1`, as CI runs).
mod common;
mod ffi;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tcasm::checkpoint::global;

const LIMIT: Duration = Duration::from_secs(120);
const RANKS: usize = 4;
const NODES: usize = 2;
const NY: usize = 96;
const NX: usize = 128;

fn mpi_available(test: &str) -> bool {
    ffi::tool_available(test, "mpicc", &["--showme:version"]) && ffi::tool_available(test, "mpirun", &["--version"])
}

/// `examples/heat_mpi.c`, built once per test process.
fn heat_mpi() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let lib = ffi::capi_lib();
        let out = ffi::scratch("heat-mpi-bin").join("heat_mpi");
        let mut cc = Command::new("mpicc");
        cc.args(["-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(ffi::root().join("include"))
            .arg(ffi::root().join("examples/heat_mpi.c"))
            .args([format!("-L{}", lib.display()), "-ltcasm".into(), format!("-Wl,-rpath,{}", lib.display())])
            .arg("-o")
            .arg(&out);
        ffi::run(&mut cc, "compiling examples/heat_mpi.c");
        out
    })
}

/// One test's job: the nodes' directories, the shared persistent level, and a launcher
/// script that puts each rank on its node (endpoint directory and checkpoint levels).
struct Job {
    base: PathBuf,
    /// The nodes' endpoint directories: in the system's temporary directory, whose path is
    /// short, as a node's run directory is (a socket's path has at most 107 bytes, and the
    /// target directory of a deep checkout may leave too few).
    endpoints: PathBuf,
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.endpoints);
    }
}

impl Job {
    fn new(test: &str) -> Job {
        let base = ffi::scratch(test);
        let endpoints = std::env::temp_dir().join(format!("tcasm-{test}-{}", std::process::id()));
        for n in 0..NODES {
            fs::create_dir_all(endpoints.join(format!("node{n}"))).unwrap();
        }
        fs::create_dir_all(base.join("pfs")).unwrap();
        let script = format!(
            "#!/bin/sh\n# rank -> simulated node, as a real launcher places ranks on hosts\nn=$((OMPI_COMM_WORLD_RANK * {NODES} / {RANKS}))\necho $$ > {base}/pid.$OMPI_COMM_WORLD_RANK\nexport TCASM_DIR={endpoints}/node$n\nexec {bin} \"$1\" \"$2\" 'heat.%r' \"{base}/local$n:{base}/pfs\" \"$3\"\n",
            base = base.display(),
            endpoints = endpoints.display(),
            bin = heat_mpi().display()
        );
        let launcher = base.join("on-node.sh");
        fs::write(&launcher, script).unwrap();
        fs::set_permissions(&launcher, <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755))
            .unwrap();
        Job { base, endpoints }
    }

    fn pfs(&self) -> PathBuf {
        self.base.join("pfs")
    }

    /// `mpirun` of the job: STEPS, milliseconds per step, the file of the final field.
    fn launch(&self, steps: u64, delay_ms: u64, out: &str) -> Child {
        mpirun(RANKS)
            .arg(self.base.join("on-node.sh"))
            .args([steps.to_string(), delay_ms.to_string()])
            .arg(self.base.join(out))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The node's checkpointer, following every rank there; its lines go to a file (a pipe
    /// nobody reads would stall it).
    fn checkpointer(&self, node: usize) -> Child {
        let b = &self.base;
        let log =
            fs::OpenOptions::new().create(true).append(true).open(b.join(format!("checkpointer{node}.log"))).unwrap();
        common::tcasm(
            &self.endpoints.join(format!("node{node}")),
            &["checkpoint", "--all", "heat.*", "--idle", "4", "--every-version"],
        )
        .arg("--dir")
        .arg(b.join(format!("local{node}")))
        .arg("--flush-to")
        .arg(b.join("pfs"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
    }

    fn rank_pid(&self, rank: usize) -> i32 {
        fs::read_to_string(self.base.join(format!("pid.{rank}"))).unwrap().trim().parse().unwrap()
    }

    fn newest_global(&self) -> u64 {
        global::read_all(&self.pfs()).unwrap().0.last().map_or(0, |g| g.version)
    }
}

fn mpirun(ranks: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").args([
        "--oversubscribe",
        "-n",
        &ranks.to_string(),
    ]);
    c
}

/// The field of an uninterrupted run of `steps` steps on one rank, as raw bytes.
fn serial_field(job: &Job, steps: u64) -> Vec<u8> {
    let out = job.base.join(format!("serial-{steps}.bin"));
    let endpoint = job.endpoints.join("serial");
    fs::create_dir_all(&endpoint).unwrap();
    ffi::run(
        mpirun(1)
            .env("TCASM_DIR", &endpoint)
            .arg(heat_mpi())
            .args([&steps.to_string(), "0", "serial.%r", ""])
            .arg(&out),
        "a serial run",
    );
    let field = fs::read(&out).unwrap();
    assert_eq!(field.len(), NY * NX * 8);
    field
}

fn wait_done(child: &mut Child, what: &str) -> String {
    let status = common::wait_with_watchdog(child, LIMIT, what);
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        std::io::Read::read_to_string(&mut s, &mut err).unwrap();
    }
    assert!(status.success(), "{what}: {status}\n{out}{err}");
    out + &err
}

/// The data of a `.npy` file (after its header).
fn npy_data(path: &Path) -> Vec<u8> {
    let b = fs::read(path).unwrap();
    let header = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + header..].to_vec()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(pfs: &Path) -> String {
    let out = common::run_tcasm(Path::new("/nonexistent"), &["verify", pfs.to_str().unwrap()]);
    let text = common::output_text(&out);
    assert!(out.status.success(), "verify {}:\n{text}", pfs.display());
    text
}

#[test]
fn two_nodes_checkpoint_a_global_field_equal_to_a_serial_run() {
    let test = "two_nodes_checkpoint_a_global_field_equal_to_a_serial_run";
    if !mpi_available(test) {
        return;
    }
    // At most five lines for tcasm and three for restarting.
    let text = fs::read_to_string(ffi::root().join("examples/heat_mpi.c")).unwrap();
    let (added, _) = ffi::tcasm_lines(&text, "/* tcasm");
    let (restart, _) = ffi::tcasm_lines(&text, "/* tcasm: restart");
    assert!(added.len() - restart.len() <= 5 && restart.len() <= 3, "{added:#?}");
    let job = Job::new("mpi-global");
    let mut ckpts: Vec<Child> = (0..NODES).map(|n| job.checkpointer(n)).collect();
    let steps = 40;
    let mut run = job.launch(steps, 20, "field.bin");
    let said = wait_done(&mut run, "the MPI job");
    assert!(said.contains(&format!("{RANKS} ranks, {steps} steps")), "{said}");
    ckpts.iter_mut().for_each(|c| drop(wait_done(c, "a node's checkpointer")));
    let logs: Vec<String> =
        (0..NODES).map(|n| fs::read_to_string(job.base.join(format!("checkpointer{n}.log"))).unwrap()).collect();
    assert!(logs.iter().all(|l| l.contains("followed 2 producers, 0 failed")), "{logs:#?}");

    let report = verify(&job.pfs());
    assert!(report.contains(&format!("global: v{steps} complete, {RANKS} ranks")), "{report}");
    let out = job.base.join("assembled");
    let restored = common::run_tcasm(
        &job.base,
        &["restore", job.pfs().to_str().unwrap(), "--global", "--out", out.to_str().unwrap()],
    );
    assert!(restored.status.success(), "{}", common::output_text(&restored));
    assert_eq!(npy_data(&out.join("step.npy")), (steps as i64).to_le_bytes());
    let serial = serial_field(&job, steps);
    assert!(
        npy_data(&out.join("temperature.npy")) == serial,
        "the assembled global field differs from the serial run's"
    );
    assert!(
        fs::read(job.base.join("field.bin")).unwrap() == serial,
        "the MPI run's field differs from the serial run's"
    );
    // Python reads the same global field.
    if let Some(venv) = ffi::python_package(test) {
        let script = format!(
            "import tcasm, numpy as np\nd = tcasm.read_checkpoint({pfs:?}, global_=True)\nassert d['temperature'].shape == ({NY}, {NX}) and d['step'][0] == {steps}\nassert d['temperature'].tobytes() == np.load({npy:?}).tobytes()\nprint('python ok')\n",
            pfs = job.pfs().to_str().unwrap(),
            npy = out.join("temperature.npy").to_str().unwrap()
        );
        let said = ffi::run(
            Command::new(venv.join("bin/python")).args(["-c", &script]),
            "tcasm.read_checkpoint(global_=True)",
        );
        assert!(String::from_utf8_lossy(&said.stdout).contains("python ok"));
    }
    // An older global version assembles too, equal to a serial run of that many steps.
    let older = global::read_all(&job.pfs())
        .unwrap()
        .0
        .iter()
        .map(|g| g.version)
        .find(|&v| v < steps)
        .expect("an older global version");
    let out = job.base.join("assembled-older");
    let restored = common::run_tcasm(
        &job.base,
        &[
            "restore",
            job.pfs().to_str().unwrap(),
            "--global",
            "--version",
            &older.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(restored.status.success(), "{}", common::output_text(&restored));
    assert!(npy_data(&out.join("temperature.npy")) == serial_field(&job, older));
    fs::remove_dir_all(&job.base).unwrap();
}

#[test]
fn a_rank_killed_and_the_job_relaunched_restores_one_global_version_everywhere() {
    let test = "a_rank_killed_and_the_job_relaunched_restores_one_global_version_everywhere";
    if !mpi_available(test) {
        return;
    }
    let job = Job::new("mpi-kill");
    let steps = 150;
    let mut ckpts: Vec<Child> = (0..NODES).map(|n| job.checkpointer(n)).collect();
    let mut run = job.launch(steps, 20, "field.bin");
    wait_until("a few global versions", || job.newest_global() >= 10);
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(job.rank_pid(2)), nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = common::wait_with_watchdog(&mut run, LIMIT, "the job after a rank was killed");
    assert!(!status.success(), "mpirun succeeded although a rank was killed");
    // The checkpointers flush what they hold and stop; then the job is relaunched.
    for c in &mut ckpts {
        wait_done(c, "a node's checkpointer");
    }
    let newest = job.newest_global();
    assert!(newest < steps);
    verify(&job.pfs());
    let mut ckpts: Vec<Child> = (0..NODES).map(|n| job.checkpointer(n)).collect();
    let relaunched = Instant::now();
    let mut run = job.launch(steps, 10, "field.bin");
    let said = wait_done(&mut run, "the relaunched job");
    eprintln!(
        "kill to relaunch {:.2} s (the checkpointers' idle wait), relaunch to the end {:.2} s",
        relaunched.duration_since(killed_at).as_secs_f64(),
        relaunched.elapsed().as_secs_f64()
    );
    assert!(said.contains(&format!("every rank restored step {newest}\n")), "{said}");
    assert!(
        fs::read(job.base.join("field.bin")).unwrap() == serial_field(&job, steps),
        "the relaunched job's field differs from an uninterrupted run's"
    );
    for c in &mut ckpts {
        wait_done(c, "a node's checkpointer");
    }
    verify(&job.pfs());
    assert!(job.newest_global() > newest, "no global version after the relaunch");
    fs::remove_dir_all(&job.base).unwrap();
}

#[test]
fn a_node_checkpointer_killed_never_lets_a_global_manifest_name_what_it_lacks() {
    let test = "a_node_checkpointer_killed_never_lets_a_global_manifest_name_what_it_lacks";
    if !mpi_available(test) {
        return;
    }
    let job = Job::new("mpi-ckpt-killed");
    let steps = 200;
    let mut ckpts: Vec<Child> = (0..NODES).map(|n| job.checkpointer(n)).collect();
    let mut run = job.launch(steps, 20, "field.bin");
    wait_until("a few global versions", || job.newest_global() >= 5);
    ckpts[1].kill().unwrap();
    ckpts[1].wait().unwrap();
    // What node 1's ranks hold complete on the persistent level now, and for a while.
    let held = |rank: usize| {
        tcasm::checkpoint::Restore::open(&global::rank_dir(&job.pfs(), &format!("heat.{rank}")), None)
            .map_or(0, |r| r.manifest().version)
    };
    let node1_newest = held(2).max(held(3));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(held(2).max(held(3)), node1_newest, "node 1's ranks got checkpoints without a checkpointer");
    for g in global::read_all(&job.pfs()).unwrap().0 {
        assert!(g.version <= node1_newest, "global v{} although node 1 holds up to v{node1_newest}", g.version);
    }
    verify(&job.pfs());
    // Restarted, it catches up.
    ckpts[1] = job.checkpointer(1);
    wait_until("global versions past the kill", || job.newest_global() > node1_newest + 5);
    wait_done(&mut run, "the MPI job");
    for c in &mut ckpts {
        wait_done(c, "a node's checkpointer");
    }
    let report = verify(&job.pfs());
    assert!(report.contains(&format!("global: v{steps} complete")), "{report}");
    fs::remove_dir_all(&job.base).unwrap();
}
