//! Child processes of the tools and what they report. `demo`, `stress` and `bench coverage`
//! start observer processes of their own (this executable, run with a hidden subcommand);
//! each child writes its reports on stdout, one JSON object a line ([`report`]), and the
//! parent reads them as they come, on a thread ([`ChildProcess::reports`]), so that it can
//! wait for them with a timeout and keep what a child said before it was killed. A line that
//! is not a report (a child's own message) is passed on to stderr.
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Writes `r` as one JSON line on stdout, at once (the parent may be waiting for it).
pub fn report<T: Serialize>(r: &T) -> crate::Result {
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()?;
    Ok(())
}

/// A child process of this executable and the reports of type `T` it writes.
pub struct ChildProcess<T> {
    child: Child,
    stdin: Option<ChildStdin>,
    reports: Receiver<T>,
    reader: JoinHandle<()>,
}

impl<T: DeserializeOwned + Send + 'static> ChildProcess<T> {
    /// Starts this executable with `args`, its stdout read as reports; its stdin is a pipe
    /// that [`ChildProcess::close_stdin`] closes when `stdin` (a way to tell it to finish),
    /// or nothing. `label` prefixes the lines it writes that are not reports.
    pub fn start(
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        stdin: bool,
        label: &str,
    ) -> std::io::Result<ChildProcess<T>> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, reports) = mpsc::channel();
        let label = label.to_string();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<T>(&line) {
                    Ok(r) => {
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("{label}: {line}"),
                }
            }
        });
        Ok(ChildProcess { stdin: child.stdin.take(), child, reports, reader })
    }

    /// The reports received so far and those to come (the channel ends with the child's
    /// stdout).
    pub fn reports(&self) -> &Receiver<T> {
        &self.reports
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGKILLs the child and waits for it.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        self.child.kill()?;
        self.child.wait()
    }

    /// Every report not yet taken, once the child has exited (or been killed): the reader
    /// ends with its stdout.
    pub fn remaining(self) -> Vec<T> {
        let _ = self.reader.join();
        self.reports.try_iter().collect()
    }
}
