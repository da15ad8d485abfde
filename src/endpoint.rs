//! Naming and attaching: a producer's endpoint is a Unix socket `NAME.sock` in the endpoint
//! directory, guarded by an OFD lock on `NAME.lock`. An observer connects to the socket and
//! receives the store's files with SCM_RIGHTS. Only the directory needs to be shared (a bind
//! mount between containers is enough): no shared /dev/shm, IPC or pid namespace.
//!
//! Directory: `$TCASM_DIR`, else `$XDG_RUNTIME_DIR/tcasm`, else `/tmp/tcasm-$UID`; created
//! with mode 0700 and refused when another user owns it or anyone may write it.
//!
//! Exclusivity: a producer holds the OFD lock of `NAME.lock` for its whole life and writes its
//! pid there. A second producer fails to take the lock (`NameInUse`); a lock left by a dead
//! producer is free again (the kernel drops OFD locks with the last descriptor), so the next
//! producer of that name takes it and replaces the stale socket.
//!
//! Handshake: the producer's accept thread checks the peer's credentials (same uid, or root)
//! and answers with one message: [`HELLO`] and a status word; on success the message
//! carries the control block and pool (read-only) and the pin table. The connection then
//! stays open for the observer's life: its hang-up tells the observer the producer is gone.
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::EndpointError;
use crate::sys::fdpass;
use crate::sys::lock;
use crate::sys::memfd::SharedFile;

/// First bytes of every handshake message.
pub const HELLO: &[u8; 8] = b"TCASMEP1";
const STATUS_OK: u32 = 0;
const STATUS_REFUSED: u32 = 1;

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

/// The endpoint directory, created if missing.
pub fn directory() -> Result<PathBuf, EndpointError> {
    let dir = match std::env::var_os("TCASM_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("tcasm"),
            _ => PathBuf::from(format!("/tmp/tcasm-{}", nix::unistd::geteuid())),
        },
    };
    if let Err(e) = DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
        return Err(EndpointError::Directory { dir, what: format!("cannot create it: {e}; set TCASM_DIR to a writable directory") });
    }
    let meta = std::fs::metadata(&dir).map_err(io(format!("reading {}", dir.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && me != 0 {
        return Err(EndpointError::Directory {
            dir,
            what: format!("owned by uid {}, not by you (uid {me}); set TCASM_DIR to a directory of yours", meta.uid()),
        });
    }
    if meta.mode() & 0o002 != 0 {
        return Err(EndpointError::Directory {
            dir,
            what: "anyone may write it; `chmod o-w` it or set TCASM_DIR elsewhere".into(),
        });
    }
    Ok(dir)
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
    pub pid: i32,
}

/// The endpoints whose producer is alive.
pub fn list() -> Result<Vec<Listed>, EndpointError> {
    let dir = directory()?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".lock")) else { continue };
        let Ok(mut f) = File::open(entry.path()) else { continue };
        if lock::is_locked_by_other(&f, 0, 0).unwrap_or(false) {
            out.push(Listed { name: name.to_string(), pid: read_pid(&mut f) });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The producer's side: the name lock, the socket, and the thread that answers observers.
pub struct Server {
    socket_path: PathBuf,
    _lock_file: File,
    stop: Arc<AtomicBool>,
    files: Arc<(Mutex<Option<[OwnedFd; 3]>>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Takes the name and starts answering observers. Until [`Server::offer`] is called,
    /// observers that connect wait for the first version.
    pub fn bind(name: &str) -> Result<Server, EndpointError> {
        check_name(name)?;
        let dir = directory()?;
        let (socket_path, lock_path) = paths(&dir, name);
        let mut lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        let locked = lock::try_lock(&lock_file, 0, 0)
            .map_err(|e| io(format!("locking {}", lock_path.display()))(e.into()))?;
        if !locked {
            return Err(EndpointError::NameInUse { name: name.to_string(), pid: read_pid(&mut lock_file) });
        }
        // The name is ours: a socket still there was left by a dead producer.
        let _ = std::fs::remove_file(&socket_path);
        lock_file.set_len(0).and_then(|_| lock_file.rewind()).map_err(io("writing the lock file"))?;
        write!(lock_file, "{}", std::process::id()).map_err(io("writing the lock file"))?;
        let listener = UnixListener::bind(&socket_path).map_err(io(format!("binding {}", socket_path.display())))?;
        listener.set_nonblocking(true).map_err(io("configuring the socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let files: Arc<(Mutex<Option<[OwnedFd; 3]>>, Condvar)> = Arc::new((Mutex::new(None), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            let files = files.clone();
            std::thread::Builder::new()
                .name(format!("tcasm-endpoint-{name}"))
                .spawn(move || serve(listener, &stop, &files))
                .map_err(io("starting the endpoint thread"))?
        };
        Ok(Server { socket_path, _lock_file: lock_file, stop, files, thread: Some(thread) })
    }

    /// From now on observers receive these files.
    pub fn offer(&self, files: [SharedFile; 3]) {
        let fds = files.map(|f| OwnedFd::from(f.into_file()));
        *self.files.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(fds);
        self.files.1.notify_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket_path);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TICK: Duration = Duration::from_millis(50);

fn serve(listener: UnixListener, stop: &AtomicBool, files: &(Mutex<Option<[OwnedFd; 3]>>, Condvar)) {
    let me = nix::unistd::geteuid().as_raw();
    let mut waiting: Vec<UnixStream> = Vec::new();
    let mut served: Vec<UnixStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16));
        while let Ok((stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            match fdpass::peer(&stream) {
                Ok((uid, _, _)) if uid == me || uid == 0 => waiting.push(stream),
                Ok((uid, _, _)) => refuse(&stream, &format!("uid {uid} may not observe a producer of uid {me}")),
                Err(e) => refuse(&stream, &format!("cannot read peer credentials: {e}")),
            }
        }
        if !waiting.is_empty() {
            let ready = files.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fds) = ready.as_ref() {
                let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
                for s in waiting.drain(..) {
                    if fdpass::send(&s, &hello(STATUS_OK, ""), &raw).is_ok() {
                        served.push(s);
                    }
                }
            }
        }
        // Forget observers that hung up.
        served.retain(|s| {
            let mut p = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
            !matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0)
        });
    }
}

fn hello(status: u32, text: &str) -> Vec<u8> {
    let mut m = HELLO.to_vec();
    m.extend_from_slice(&status.to_le_bytes());
    m.extend_from_slice(text.as_bytes());
    m
}

fn refuse(stream: &UnixStream, why: &str) {
    let _ = fdpass::send(stream, &hello(STATUS_REFUSED, why), &[]);
}

/// The observer's side: connects to `name` and receives the store's files, waiting up to
/// `timeout` for the producer's first version.
pub fn attach(name: &str, timeout: Duration) -> Result<(UnixStream, [SharedFile; 3]), EndpointError> {
    check_name(name)?;
    let dir = directory()?;
    let (socket_path, _) = paths(&dir, name);
    let not_found = || EndpointError::NotFound { name: name.to_string(), dir: dir.clone() };
    let stream = UnixStream::connect(&socket_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => not_found(),
        _ => EndpointError::Io { what: format!("connecting to {}", socket_path.display()), source: e },
    })?;
    let started = Instant::now();
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).map_err(io("configuring the socket"))?;
    let mut buf = [0u8; 512];
    let (n, fds) = fdpass::recv(&stream, &mut buf).map_err(|e| match e {
        nix::Error::EAGAIN => EndpointError::NotReady { name: name.to_string(), waited_ms: started.elapsed().as_millis() as u64 },
        e => EndpointError::Protocol { name: name.to_string(), what: format!("receiving the handshake: {e}") },
    })?;
    let protocol = |what: &str| EndpointError::Protocol { name: name.to_string(), what: what.to_string() };
    if n == 0 {
        return Err(protocol("the producer closed the connection (it is exiting)"));
    }
    if n < 12 || &buf[..8] != HELLO {
        return Err(protocol("unexpected handshake: not a tcasm producer of this release"));
    }
    let status = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    let text = String::from_utf8_lossy(&buf[12..n]).into_owned();
    match status {
        STATUS_OK => {}
        STATUS_REFUSED => return Err(EndpointError::Refused { name: name.to_string(), why: text }),
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
    Ok((stream, files))
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
