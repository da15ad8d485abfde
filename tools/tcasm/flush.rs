//! The background flusher of `tcasm checkpoint --flush-to`: a thread that copies completed
//! local checkpoints to the persistent directory ([`tcasm::checkpoint::Flusher`]) while the
//! checkpointer goes on writing level 1.
//!
//! It never holds the checkpointer (and so never the producer) back: a request made while
//! an earlier one still waits replaces it (that flush is skipped, and said so). A skip means
//! PERSISTENT is slower than the checkpoints come, so it also asks the checkpointer for a
//! new local base: the next flush then copies one base and what follows it, instead of an
//! ever longer tail of increments.
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use indicatif::HumanBytes;
use std::path::PathBuf;

use tcasm::checkpoint::{global, Flushed, Flusher};

#[derive(Default)]
struct State {
    /// The next checkpoint to flush, as (local chain, version).
    pending: Option<(u64, u64)>,
    /// The version being flushed now.
    busy: Option<u64>,
    /// The last version flushed completely.
    flushed: Option<u64>,
    skipped: u64,
    flushes: u64,
    failures: u64,
    bytes: u64,
    spent: Duration,
    /// Lines for the checkpointer to print.
    events: Vec<String>,
    rebase: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Background {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
    persistent: String,
}

impl Background {
    /// Starts the flusher thread. `job`: the persistent directory of the MPI job the producer
    /// is a rank of, where each flush is followed by writing the global manifests it completes.
    pub fn start(mut flusher: Flusher, job: Option<PathBuf>) -> Background {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake: Condvar::new() });
        let persistent = flusher.persistent().display().to_string();
        let ours = shared.clone();
        let to = persistent.clone();
        let thread = thread::spawn(move || loop {
            let mut state = ours.lock();
            while state.pending.is_none() && !state.stop {
                state = ours.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let Some((chain, version)) = state.pending.take() else { break };
            state.busy = Some(version);
            drop(state);
            let result = flusher.flush(chain, version, |_, _| {});
            let mut state = ours.lock();
            state.busy = None;
            match result {
                Ok(f) => {
                    state.flushed = Some(version);
                    state.flushes += 1;
                    state.bytes += f.bytes;
                    state.spent += f.elapsed;
                    state.events.push(describe(&f, &to));
                    if let Some(dir) = &job {
                        match global::update(dir) {
                            Ok(vs) => state.events.extend(
                                vs.iter()
                                    .map(|v| format!("global v{v} complete on {}: every rank has it", dir.display())),
                            ),
                            Err(e) => state.events.push(format!(
                                "global manifests on {} not updated: {e}; the next flush retries",
                                dir.display()
                            )),
                        }
                    }
                }
                Err(e) => {
                    state.failures += 1;
                    state.events.push(format!(
                        "flush of v{version} to {to} failed: {e}; level 1 goes on, the next flush retries"
                    ));
                }
            }
            ours.wake.notify_all();
        });
        Background { shared, thread, persistent }
    }

    /// Asks for local checkpoint `version` of chain `chain` to be flushed. Returns the
    /// version whose flush it replaces (skipped: the flusher was still busy), after which
    /// [`Background::take_rebase`] asks for a new local base.
    pub fn request(&self, chain: u64, version: u64) -> Option<u64> {
        let mut state = self.shared.lock();
        let replaced = state.pending.replace((chain, version)).map(|(_, v)| v);
        if replaced.is_some() {
            state.skipped += 1;
            state.rebase = true;
        }
        self.shared.wake.notify_all();
        replaced
    }

    /// What happened since the last call, as lines to print.
    pub fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.lock().events)
    }

    /// Whether the flusher asked for a new local base (once).
    pub fn take_rebase(&self) -> bool {
        std::mem::take(&mut self.shared.lock().rebase)
    }

    /// Level 2 in a few words: "flushed v120, flushing v125, pending v130".
    pub fn status(&self) -> String {
        let state = self.shared.lock();
        let mut parts = vec![match state.flushed {
            Some(v) => format!("flushed v{v}"),
            None => "flushed none".into(),
        }];
        if let Some(v) = state.busy {
            parts.push(format!("flushing v{v}"));
        }
        if let Some((_, v)) = state.pending {
            parts.push(format!("pending v{v}"));
        }
        parts.join(", ")
    }

    /// Flushes `last` (the last local checkpoint, unless flushed already), waits for the
    /// thread, and sums up level 2.
    pub fn finish(self, last: Option<(u64, u64)>) -> (Vec<String>, String) {
        let mut state = self.shared.lock();
        if let Some((chain, version)) = last.filter(|(_, v)| state.flushed != Some(*v) && state.busy != Some(*v)) {
            state.pending = Some((chain, version));
        }
        state.stop = true;
        self.shared.wake.notify_all();
        drop(state);
        let _ = self.thread.join();
        let mut state = self.shared.lock();
        let rate = state.bytes as f64 / state.spent.as_secs_f64().max(1e-9);
        let summary = format!(
            "flushed to {}: {} flushes ({} skipped while busy, {} failed), last v{}, {} at {}/s",
            self.persistent,
            state.flushes,
            state.skipped,
            state.failures,
            state.flushed.map_or("-".into(), |v| v.to_string()),
            HumanBytes(state.bytes),
            HumanBytes(rate as u64),
        );
        (std::mem::take(&mut state.events), summary)
    }
}

fn describe(f: &Flushed, to: &str) -> String {
    let copied = match f.copied.as_slice() {
        [] => "nothing new".to_string(),
        [one] => format!("v{one}"),
        [first, .., last] => format!("v{first}..v{last} ({} checkpoints)", f.copied.len()),
    };
    let mut line = format!(
        "flushed v{} to {to} (chain {}): {copied}, {} in {:.1} ms",
        f.version,
        f.chain,
        HumanBytes(f.bytes),
        f.elapsed.as_secs_f64() * 1e3
    );
    if !f.retired.is_empty() {
        line += &format!(", retired chains {:?} there", f.retired);
    }
    line
}
