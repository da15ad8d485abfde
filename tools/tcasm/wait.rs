//! The one wait rule of the commands that attach to a producer (`checkpoint`, `top`,
//! `inspect`, `show`): each waits up to `--wait SECONDS` (by default as long as the library's
//! [`Observer::attach`] and Python's `tcasm.attach`) for the producer to appear and publish,
//! and says on stderr that it waits, so that a walkthrough pasted as one block works.
use std::time::Duration;

use tcasm::observer::ATTACH_TIMEOUT;
use tcasm::Observer;

#[derive(clap::Args)]
pub struct Wait {
    /// Seconds to wait for the producer to appear and publish its first version (0: fail at
    /// once when it is not there).
    #[arg(long, value_name = "SECONDS", default_value_t = ATTACH_TIMEOUT.as_secs_f64(), value_parser = parse_wait)]
    wait: f64,
}

fn parse_wait(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && (0.0..1e9).contains(x))
        .ok_or_else(|| format!("{s:?} is not a number of seconds (0 or more)"))
}

impl Wait {
    /// How long `--wait` says to wait.
    pub fn seconds(&self) -> Duration {
        Duration::from_secs_f64(self.wait)
    }

    /// Attaches to `name`, waiting as the rule says.
    pub fn attach(&self, name: &str) -> crate::Result<Observer> {
        let there = tcasm::list_producers().map(|live| live.iter().any(|p| p.name == name)).unwrap_or(false);
        if !there && self.wait > 0.0 {
            eprintln!("tcasm: waiting up to {} s for producer {name:?} to appear (--wait)", self.wait);
        }
        Ok(Observer::attach_timeout(name, self.seconds())?)
    }
}
