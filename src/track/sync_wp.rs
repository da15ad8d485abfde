//! The sync tracker: userfaultfd write-protect faults served by a handler thread. The first
//! write to a protected page stops the writing thread; the handler records the page, calls
//! the [`FirstWrite`] hook (the deferred publish copies the page's previous bytes there),
//! removes the protection and lets the write go on. A publish re-protects exactly the pages
//! recorded since the last one, which are exactly the unprotected ones.
//!
//! Each fault costs two context switches: 10–120 µs on a busy 2-core VM
//! (docs/design.md#measured-facts), 100x
//! the async tracker. It is here because it is the literal copy-on-first-write mechanism, and
//! because it needs no `PAGEMAP_SCAN`.
//!
//! Invariant, kept by one mutex: a tracked page is unprotected if and only if it is in the
//! list of written pages. The handler records and unprotects under the mutex; a publish
//! re-protects and clears the list under it. So no write escapes between the two.
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Changes, Tracker, TrackerKind};
use crate::sys::page_size;
use crate::sys::uffd::{self, Uffd};

/// What the handler does with a page before letting its first write through.
pub trait FirstWrite: Send + Sync {
    /// `page` is the page-aligned address of a tracked page about to be written for the
    /// first time since it was last protected. Runs on the handler thread while the writer
    /// waits.
    fn first_write(&self, page: usize);
}

struct State {
    written: Vec<usize>,
    hook: Option<Arc<dyn FirstWrite>>,
    /// The first error the handler met; reported by the next `take_changes`.
    error: Option<nix::Error>,
}

struct Shared {
    uffd: Uffd,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct SyncTracker {
    shared: Arc<Shared>,
    ranges: Vec<Range<usize>>,
    /// Closing it stops the handler.
    stop: Option<OwnedFd>,
    handler: Option<JoinHandle<()>>,
}

/// Whether this process may take faults raised in kernel mode (`read(2)` into a tracked
/// buffer): with CAP_SYS_PTRACE or `vm.unprivileged_userfaultfd=1`. Without, the sync
/// tracker still works for the process's own writes, but a system call writing a protected
/// page fails with EFAULT.
pub fn kernel_faults_allowed() -> bool {
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_PTRACE).unwrap_or(false)
        || std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").is_ok_and(|s| s.trim() == "1")
}

impl SyncTracker {
    pub fn new() -> Result<SyncTracker, String> {
        let uffd = uffd::open(uffd::FEATURE_WP_UNPOPULATED, !kernel_faults_allowed())
            .map_err(|e| format!("opening a userfaultfd for write-protect faults: {e:?}; use the copy tracker"))?;
        let shared =
            Arc::new(Shared { uffd, state: Mutex::new(State { written: Vec::new(), hook: None, error: None }) });
        let (stop_read, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("creating the handler's stop pipe: {e}"))?;
        let handler = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tcasm-wp-faults".into())
                .spawn(move || serve(&shared, stop_read))
                .map_err(|e| format!("starting the fault handler: {e}"))?
        };
        Ok(SyncTracker { shared, ranges: Vec::new(), stop: Some(stop), handler: Some(handler) })
    }
}

fn serve(shared: &Shared, stop: OwnedFd) {
    let page = page_size();
    let mut faults = Vec::with_capacity(64);
    loop {
        let mut fds =
            [PollFd::new(shared.uffd.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue; // EINTR
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        faults.clear();
        if uffd::read_faults(&shared.uffd, &mut faults).is_err() {
            continue; // EAGAIN: another read took them
        }
        for &addr in &faults {
            let p = addr & !(page - 1);
            let mut state = shared.lock();
            if let Some(hook) = &state.hook {
                hook.first_write(p);
            }
            state.written.push(p);
            // The writer must never stay blocked: on failure still wake it (it faults again
            // and comes back here), and report the error at the next publish.
            if let Err(e) = uffd::unprotect(&shared.uffd, p, page) {
                state.error.get_or_insert(e);
                let _ = uffd::wake(&shared.uffd, p, page);
            }
        }
    }
}

impl SyncTracker {
    /// Sets (or clears) what the handler does before a first write goes through.
    pub fn set_first_write(&self, hook: Option<Arc<dyn FirstWrite>>) {
        self.shared.lock().hook = hook;
    }
}

impl Tracker for SyncTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::Sync
    }

    fn track(&mut self, range: Range<usize>) -> nix::Result<()> {
        let len = range.end - range.start;
        // Under the lock: the handler must not see a fault in this range half-registered.
        let _state = self.shared.lock();
        uffd::register_wp(&self.shared.uffd, range.start, len)?;
        if let Err(e) = uffd::write_protect(&self.shared.uffd, range.start, len) {
            let _ = uffd::unregister(&self.shared.uffd, range.start, len);
            return Err(e);
        }
        self.ranges.push(range);
        Ok(())
    }

    fn take_changes(&mut self, out: &mut Changes) -> nix::Result<()> {
        let page = page_size();
        let mut state = self.shared.lock();
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        let mut written = std::mem::take(&mut state.written);
        written.sort_unstable();
        written.dedup();
        let mut i = 0;
        while i < written.len() {
            let start = written[i];
            let mut end = start + page;
            i += 1;
            while i < written.len() && written[i] == end {
                end += page;
                i += 1;
            }
            uffd::write_protect(&self.shared.uffd, start, end - start)?;
            out.written.push(start..end);
        }
        Ok(())
    }

    fn as_sync(&self) -> Option<&SyncTracker> {
        Some(self)
    }
}

impl Drop for SyncTracker {
    fn drop(&mut self) {
        // Stop the handler, then let the uffd close with the Arc: closing it releases every
        // range and wakes any thread still waiting on a fault, which then writes unprotected.
        self.stop.take();
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
    }
}
