//! Naming and attaching: a producer's endpoint is a Unix socket `NAME.sock` in the endpoint
//! directory, guarded by an OFD lock on `NAME.lock`. An observer connects to the socket and
//! receives the store's files with SCM_RIGHTS. Only the directory needs to be shared (a bind
//! mount between containers is enough): no shared /dev/shm, IPC or pid namespace.
//!
//! Directory: `$TCASM_DIR`, else `$XDG_RUNTIME_DIR/tcasm`, else `/tmp/tcasm-$UID`; created
//! with mode 0700 and refused when anyone may write it. A producer's directory must be its
//! user's (or root's): whoever owns it could replace the socket. An observer also accepts
//! another user's directory when `TCASM_DIR` names it, which is how the members of a group
//! reach a producer that admits them.
//!
//! Exclusivity: a producer holds the OFD lock of `NAME.lock` for its whole life and writes its
//! pid there. A second producer fails to take the lock (`NameInUse`); a lock left by a dead
//! producer is free again (the kernel drops OFD locks with the last descriptor), so the next
//! producer of that name takes it and replaces the stale socket.
//!
//! Tidiness: a producer removes its socket and lock file when it exits, while it still holds
//! the lock; what a killed producer left is removed by [`list`] (`tcasm ls`), which first
//! takes the free lock itself. Removing a lock file could let two producers each lock a
//! different file of the same name (one locks the unlinked file, the other a new one), so a
//! producer owns the name only once it has locked the file the path still names
//! ([`Server::bind`] checks the inode after locking, and starts over if it changed).
//!
//! Who may attach, and the threat model. The producer's user and root are trusted (they
//! could ptrace the producer anyway). By default no one else may attach: the directory is
//! 0700, the socket and lock file the user's alone, and behind those modes the accept thread
//! checks the peer's credentials (`SO_PEERCRED`), in case the files were opened up. With a
//! group ([`crate::ProducerOptions::group`]) the directory becomes enterable by the group,
//! the socket 0660 and the lock file 0640, both the group's, and the accept thread also
//! admits peers whose primary group (`SO_PEERCRED`) or supplementary groups
//! (`/proc/PID/status`, when readable) include it. Members are trusted to read snapshots,
//! not to change them: they receive read-only descriptors of files owned by another uid,
//! mode 0400 and sealed against shrinking, which they can neither reopen for writing nor
//! chmod, and a pin page of their own, through which they can only delay reclamation
//! (memory, bounded by their pin words; see [`crate::store`]). Whoever is refused is told
//! why, and the producer logs it. Observers in turn must treat all they receive as input
//! ([`crate::store::reader`]): `TCASM_DIR` may name a directory someone else controls. The
//! directory's ancestors must let the group through too: the usual `$XDG_RUNTIME_DIR` is
//! 0700, so a producer that admits a group needs `TCASM_DIR`.
//!
//! Handshake: the producer's accept thread checks the peer's credentials and answers with
//! one message: [`HELLO`], a status word and the observer's slot; on success it carries the
//! control block and pool (read-only) and the observer's own pin page
//! ([`crate::store::pins`]). The connection then stays open for the observer's life, and is
//! how each side learns the other is gone: the producer drops a hung-up observer's pins, an
//! observer sees a hung-up producer as `ProducerGone`.
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::EndpointError;
use crate::store::pins::PinBoard;
use crate::sys::fdpass;
use crate::sys::lock;
use crate::sys::memfd::SharedFile;

/// First bytes of every handshake message.
pub const HELLO: &[u8; 8] = b"TCASMEP1";
const STATUS_OK: u32 = 0;
const STATUS_REFUSED: u32 = 1;
const STATUS_FULL: u32 = 2;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EndpointError {
    let what = what.into();
    move |source| EndpointError::Io { what, source }
}

/// Checks an endpoint name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with '.'.
pub fn check_name(name: &str) -> Result<(), EndpointError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EndpointError::BadName { name: name.to_string() })
    }
}

/// The endpoint directory, created if missing. Another user's directory is accepted only
/// when `TCASM_DIR` names it (an observer reaching a producer that admits its group).
pub fn directory() -> Result<PathBuf, EndpointError> {
    let named = std::env::var_os("TCASM_DIR").filter(|d| !d.is_empty());
    let dir = match &named {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("tcasm"),
            _ => PathBuf::from(format!("/tmp/tcasm-{}", nix::unistd::geteuid())),
        },
    };
    if let Err(e) = DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
        return Err(EndpointError::Directory {
            dir,
            what: format!("cannot create it: {e}; set TCASM_DIR to a writable directory"),
        });
    }
    let meta = std::fs::metadata(&dir).map_err(io(format!("reading {}", dir.display())))?;
    if named.is_none() {
        check_owner(&dir, &meta)?;
    }
    if meta.mode() & 0o002 != 0 {
        return Err(EndpointError::Directory {
            dir,
            what: "anyone may write it; `chmod o-w` it or set TCASM_DIR elsewhere".into(),
        });
    }
    Ok(dir)
}

/// Refuses a directory another user owns (unless we are root): its owner could replace the
/// sockets in it.
fn check_owner(dir: &Path, meta: &std::fs::Metadata) -> Result<(), EndpointError> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && me != 0 {
        return Err(EndpointError::Directory {
            dir: dir.to_path_buf(),
            what: format!("owned by uid {}, not by you (uid {me}); set TCASM_DIR to a directory of yours", meta.uid()),
        });
    }
    Ok(())
}

/// A group a producer admits.
#[derive(Clone, Debug)]
struct Group {
    name: String,
    gid: u32,
}

impl Group {
    fn named(name: &str) -> Result<Group, EndpointError> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Group { name: name.to_string(), gid: g.gid.as_raw() }),
            Ok(None) => Err(EndpointError::NoSuchGroup { group: name.to_string() }),
            Err(e) => Err(io(format!("looking up group {name:?}"))(e.into())),
        }
    }

    /// Gives the group `path` (socket or lock file) with `mode`.
    fn share(&self, path: &Path, mode: u32) -> Result<(), EndpointError> {
        std::os::unix::fs::chown(path, None, Some(self.gid))
            .and_then(|()| std::fs::set_permissions(path, Permissions::from_mode(mode)))
            .map_err(io(format!(
                "giving group {:?} {} (the producer's user must be a member of it)",
                self.name,
                path.display()
            )))
    }

    /// Lets the group enter `dir`, and never write it (members could replace the socket):
    /// if it cannot, and the directory is ours, it becomes the group's with group `r-x`.
    fn open_directory(&self, dir: &Path) -> Result<(), EndpointError> {
        let meta = std::fs::metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
        let (mode, same) = (meta.mode() & 0o7777, meta.gid() == self.gid);
        let enters = (same && mode & 0o010 != 0) || mode & 0o001 != 0;
        if enters && !(same && mode & 0o020 != 0) {
            return Ok(());
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(EndpointError::Directory {
                dir: dir.to_path_buf(),
                what: format!(
                    "group {g:?} cannot enter it, or may write it (mode {mode:o}, gid {}); its owner may `chgrp {g} {d} && chmod g=rx {d}`, or set TCASM_DIR to a directory of yours",
                    meta.gid(),
                    g = self.name,
                    d = dir.display()
                ),
            });
        }
        self.share(dir, (mode & !0o070) | 0o050)
    }
}

/// Who may attach, as the accept thread checks it.
struct Admission {
    uid: u32,
    group: Option<Group>,
}

impl Admission {
    /// Why the peer (from `SO_PEERCRED`) may not attach, or `None` when it may.
    fn refusal(&self, uid: u32, gid: u32, pid: i32) -> Option<String> {
        if uid == self.uid || uid == 0 {
            return None;
        }
        match &self.group {
            None => Some(format!(
                "uid {uid} may not observe a producer of uid {}; the producer may admit a group (ProducerOptions::group)",
                self.uid
            )),
            Some(g) if gid == g.gid || supplementary_groups(pid).contains(&g.gid) => None,
            Some(g) => Some(format!("uid {uid} (pid {pid}) is not in group {:?}, which producer of uid {} admits", g.name, self.uid)),
        }
    }
}

/// The supplementary groups of process `pid`, from /proc; none when that cannot be read.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.sock")), dir.join(format!("{name}.lock")))
}

/// The pid written in a lock file, if any.
fn read_pid(file: &mut File) -> i32 {
    let mut s = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut s));
    s.trim().parse().unwrap_or(0)
}

/// A live endpoint seen in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// The producer's pid in its own pid namespace (a container's may differ from ours).
    pub pid: i32,
    /// Tells this producer from an earlier or later one of the same name, across pid
    /// namespaces too (where pids repeat): from the inode and change time of the socket it
    /// bound.
    pub incarnation: u64,
}

/// Whether `path` still names the file open as `file` (it was not unlinked or replaced).
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes what a producer killed without closing its endpoint left (`NAME.sock`,
/// `NAME.lock`), when the lock file at `lock_path` is ours to lock and no one holds it:
/// holding its lock, nothing can take the name meanwhile, and a producer that opened the
/// file before the unlink finds it gone ([`Server::bind`] checks) and starts over.
fn tidy_dead(lock_path: &Path, socket_path: &Path) {
    let Ok(file) = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(lock_path) else {
        return;
    };
    if lock::try_lock(&file, 0, 0) == Ok(true) && still_at(&file, lock_path) {
        let _ = std::fs::remove_file(socket_path);
        let _ = std::fs::remove_file(lock_path);
    }
}

/// The endpoints whose producer is alive and has its socket bound. What a dead producer
/// left is removed on the way, where this user may.
pub fn list() -> Result<Vec<Listed>, EndpointError> {
    let dir = directory()?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".lock")) else { continue };
        let Ok(mut f) = File::open(entry.path()) else { continue };
        if lock::is_locked_by_other(&f, 0, 0).unwrap_or(false) {
            // No socket: a producer still binding or already closing, not one to attach to.
            let Ok(socket) = std::fs::metadata(paths(&dir, name).0) else { continue };
            // A socket made again may get the inode number just freed: its change time too.
            use std::os::unix::fs::MetadataExt;
            let made = (socket.ctime() as u64).wrapping_mul(1_000_000_000).wrapping_add(socket.ctime_nsec() as u64);
            let incarnation = made ^ socket.ino().rotate_left(32);
            out.push(Listed { name: name.to_string(), pid: read_pid(&mut f), incarnation });
        } else {
            tidy_dead(&entry.path(), &paths(&dir, name).0);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The producer's side: the name lock, the socket, and the thread that answers observers.
pub struct Server {
    socket_path: PathBuf,
    lock_path: PathBuf,
    _lock_file: File,
    stop: Arc<AtomicBool>,
    store: Arc<Mutex<Option<Offer>>>,
    thread: Option<JoinHandle<()>>,
}

/// What observers receive once there is a version to see.
struct Offer {
    files: [OwnedFd; 2],
    board: Arc<PinBoard>,
}

impl Server {
    /// Takes the name and starts answering observers, the producer's user and, when
    /// `group` names one, that group's members. Until [`Server::offer`] is called, observers
    /// that connect wait for the first version.
    pub fn bind(name: &str, group: Option<&str>) -> Result<Server, EndpointError> {
        check_name(name)?;
        let group = group.map(Group::named).transpose()?;
        let dir = directory()?;
        let meta = std::fs::metadata(&dir).map_err(io(format!("reading {}", dir.display())))?;
        check_owner(&dir, &meta)?;
        if let Some(g) = &group {
            g.open_directory(&dir)?;
        }
        let (socket_path, lock_path) = paths(&dir, name);
        let mut lock_file = loop {
            let mut lock_file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&lock_path)
                .map_err(io(format!("opening {}", lock_path.display())))?;
            // An earlier producer of this name may have shared the file with another group.
            match &group {
                Some(g) => g.share(&lock_path, 0o640)?,
                None => {
                    lock_file.set_permissions(Permissions::from_mode(0o600)).map_err(io("restricting the lock file"))?
                }
            }
            let locked = lock::try_lock(&lock_file, 0, 0)
                .map_err(|e| io(format!("locking {}", lock_path.display()))(e.into()))?;
            if !locked {
                return Err(EndpointError::NameInUse { name: name.to_string(), pid: read_pid(&mut lock_file) });
            }
            // The lock file is removed by the producer that exits and by `list` when its
            // producer died: a file unlinked between our open and our lock guards nothing,
            // so the name is ours only if the path still leads to the file we locked.
            if still_at(&lock_file, &lock_path) {
                break lock_file;
            }
        };
        // The name is ours: a socket still there was left by a dead producer.
        let _ = std::fs::remove_file(&socket_path);
        lock_file.set_len(0).and_then(|_| lock_file.rewind()).map_err(io("writing the lock file"))?;
        write!(lock_file, "{}", std::process::id()).map_err(io("writing the lock file"))?;
        let listener = UnixListener::bind(&socket_path).map_err(io(format!("binding {}", socket_path.display())))?;
        if let Some(g) = &group {
            g.share(&socket_path, 0o660)?;
        }
        listener.set_nonblocking(true).map_err(io("configuring the socket"))?;
        let admission = Admission { uid: nix::unistd::geteuid().as_raw(), group };
        let stop = Arc::new(AtomicBool::new(false));
        let store = Arc::new(Mutex::new(None));
        let thread = {
            let stop = stop.clone();
            let store = store.clone();
            std::thread::Builder::new()
                .name(format!("tcasm-endpoint-{name}"))
                .spawn(move || serve(listener, &admission, &stop, &store))
                .map_err(io("starting the endpoint thread"))?
        };
        Ok(Server { socket_path, lock_path, _lock_file: lock_file, stop, store, thread: Some(thread) })
    }

    /// From now on observers receive these files (the control block and the pool), and a
    /// pin page of their own on `board`.
    pub fn offer(&self, files: [SharedFile; 2], board: Arc<PinBoard>) {
        let files = files.map(|f| OwnedFd::from(f.into_file()));
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(Offer { files, board });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Socket first, then the lock file, while the lock is still held (the fields are
        // dropped after this body): the directory keeps nothing of a producer that exited.
        let _ = std::fs::remove_file(&self.socket_path);
        let _ = std::fs::remove_file(&self.lock_path);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TICK: Duration = Duration::from_millis(50);

fn serve(listener: UnixListener, admission: &Admission, stop: &AtomicBool, store: &Mutex<Option<Offer>>) {
    let mut waiting: Vec<(UnixStream, i32)> = Vec::new();
    let mut served: Vec<(UnixStream, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16));
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Out of descriptors (EMFILE) or memory: the connection stays queued and
                    // the listener readable, so wait a tick rather than spin on it.
                    tracing::warn!("accepting an observer failed: {e}");
                    std::thread::sleep(TICK);
                    break;
                }
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            match fdpass::peer(&stream) {
                Ok((uid, gid, pid)) => match admission.refusal(uid, gid, pid) {
                    None => waiting.push((stream, pid)),
                    Some(why) => refuse(&stream, STATUS_REFUSED, &why),
                },
                Err(e) => refuse(&stream, STATUS_REFUSED, &format!("cannot read peer credentials: {e}")),
            }
        }
        let offer = store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(offer) = offer.as_ref() {
            for (stream, pid) in waiting.drain(..) {
                match offer.board.admit(pid.max(0) as u32) {
                    Ok(Some((slot, pins))) => {
                        let raw = [offer.files[0].as_raw_fd(), offer.files[1].as_raw_fd(), pins.as_fd().as_raw_fd()];
                        if fdpass::send(&stream, &hello(STATUS_OK, slot as u32, ""), &raw).is_ok() {
                            served.push((stream, slot));
                        } else {
                            offer.board.leave(slot);
                        }
                    }
                    Ok(None) => refuse(
                        &stream,
                        STATUS_FULL,
                        "every observer slot is taken; raise ProducerOptions::max_observers",
                    ),
                    Err(e) => refuse(&stream, STATUS_REFUSED, &format!("cannot create a pin page: {e}")),
                }
            }
            // Observers that hung up: their pins no longer count.
            served.retain(|(s, slot)| {
                let mut p = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
                let gone = matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0);
                if gone {
                    offer.board.leave(*slot);
                }
                !gone
            });
        }
    }
}

fn hello(status: u32, slot: u32, text: &str) -> Vec<u8> {
    let mut m = HELLO.to_vec();
    m.extend_from_slice(&status.to_le_bytes());
    m.extend_from_slice(&slot.to_le_bytes());
    m.extend_from_slice(text.as_bytes());
    m
}

/// Tells the peer why it is not admitted, and logs it: a refusal is the producer's news too.
fn refuse(stream: &UnixStream, status: u32, why: &str) {
    tracing::warn!("endpoint refused an observer: {why}");
    let _ = fdpass::send(stream, &hello(status, 0, why), &[]);
}

/// What an observer receives: the connection, the control block, the pool and its own pin
/// page, and its slot.
pub struct Attached {
    pub stream: UnixStream,
    pub files: [SharedFile; 3],
    pub slot: usize,
}

/// How long a producer that is there has to answer an observer's handshake, whatever the
/// observer's own timeout.
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// The observer's side: connects to `name` and receives the store's files, waiting up to
/// `timeout` for the producer to appear and publish its first version (a producer already
/// there gets at least [`HANDSHAKE_GRACE`] to answer). A zero `timeout` does not wait for a
/// producer that is not there: that name is `NotFound` at once.
pub fn attach(name: &str, timeout: Duration) -> Result<Attached, EndpointError> {
    check_name(name)?;
    let dir = directory()?;
    let (socket_path, _) = paths(&dir, name);
    let waiting = Instant::now();
    let absent =
        |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused);
    let connected = loop {
        match UnixStream::connect(&socket_path) {
            Err(e) if absent(&e) && waiting.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => break result,
        }
    };
    let stream = connected.map_err(|e| match e.kind() {
        _ if absent(&e) => EndpointError::NotFound { name: name.to_string(), dir: dir.clone() },
        std::io::ErrorKind::PermissionDenied => EndpointError::Refused {
            name: name.to_string(),
            why: format!(
                "no permission to connect to {}: the producer admits only its own user, unless it names a group of yours (ProducerOptions::group)",
                socket_path.display()
            ),
        },
        _ => EndpointError::Io { what: format!("connecting to {}", socket_path.display()), source: e },
    })?;
    let timeout = timeout.saturating_sub(waiting.elapsed());
    let started = Instant::now();
    stream.set_read_timeout(Some(timeout.max(HANDSHAKE_GRACE))).map_err(io("configuring the socket"))?;
    let mut buf = [0u8; 512];
    let (n, fds) = fdpass::recv(&stream, &mut buf).map_err(|e| match e {
        nix::Error::EAGAIN => {
            EndpointError::NotReady { name: name.to_string(), waited_ms: started.elapsed().as_millis() as u64 }
        }
        e => EndpointError::Protocol { name: name.to_string(), what: format!("receiving the handshake: {e}") },
    })?;
    let protocol = |what: &str| EndpointError::Protocol { name: name.to_string(), what: what.to_string() };
    if n == 0 {
        return Err(protocol("the producer closed the connection (it is exiting)"));
    }
    let Some((status, slot, text)) = parse_handshake(&buf[..n]) else {
        return Err(protocol("unexpected handshake: not a tcasm producer of this release"));
    };
    let text = String::from_utf8_lossy(text).into_owned();
    match status {
        STATUS_OK => {}
        STATUS_REFUSED => return Err(EndpointError::Refused { name: name.to_string(), why: text }),
        STATUS_FULL => return Err(EndpointError::Full { name: name.to_string() }),
        s => return Err(protocol(&format!("unknown handshake status {s}"))),
    }
    let files: [SharedFile; 3] = fds
        .into_iter()
        .map(|fd| SharedFile::from_file(File::from(fd)))
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| protocol("the handshake did not carry the store's three files"))?;
    stream.set_read_timeout(None).map_err(io("configuring the socket"))?;
    stream.set_nonblocking(true).map_err(io("configuring the socket"))?;
    Ok(Attached { stream, files, slot })
}

/// The handshake's words: [`HELLO`], the status, the observer's slot, then text (why it was
/// refused). None when `msg` is too short or does not start with [`HELLO`].
fn parse_handshake(msg: &[u8]) -> Option<(u32, usize, &[u8])> {
    let (hello, rest) = msg.split_first_chunk::<8>()?;
    let (status, rest) = rest.split_first_chunk::<4>()?;
    let (slot, text) = rest.split_first_chunk::<4>()?;
    (hello == HELLO).then(|| (u32::from_le_bytes(*status), u32::from_le_bytes(*slot) as usize, text))
}

/// Whether the producer at the other end of an attached stream has hung up.
pub fn hung_up(stream: &UnixStream) -> bool {
    let mut p = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    match poll(&mut p, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => {
            let mut b = [0u8; 16];
            match (&*stream).read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_reads_back_what_the_producer_wrote() {
        let msg = hello(STATUS_REFUSED, 7, "not in group 'sim'");
        assert_eq!(parse_handshake(&msg), Some((STATUS_REFUSED, 7, &b"not in group 'sim'"[..])));
        assert_eq!(parse_handshake(&hello(STATUS_OK, 0, "")), Some((STATUS_OK, 0, &b""[..])));
    }

    #[test]
    fn a_short_or_foreign_handshake_is_refused_not_a_panic() {
        let msg = hello(STATUS_OK, 3, "");
        for n in 0..msg.len() {
            assert_eq!(parse_handshake(&msg[..n]), None, "{n} bytes");
        }
        let mut foreign = msg.clone();
        foreign[0] ^= 1;
        assert_eq!(parse_handshake(&foreign), None);
    }
}
