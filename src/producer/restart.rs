//! Restart: loading the newest complete checkpoint into the producer's regions before its
//! first publish (the rules are in [`crate::checkpoint::restart`]).
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use super::Producer;
use crate::checkpoint::restart::{self, RestartError, Restarted};
use crate::region::RegionHandle;

impl Producer {
    /// Loads the newest complete checkpoint found in `dirs` (level 1 first, e.g. node-local
    /// scratch, then the parallel file system; the newest complete version wins, the first
    /// directory on a tie) into this producer's regions, and numbers the next published
    /// version after it. Call it after adding every region and before the first
    /// [`Producer::publish`]. `Ok(None)`: no checkpoint in any directory (a first run); a
    /// directory that does not exist holds none.
    ///
    /// A rank producer of an MPI job (its name held `%r`) loads instead its part of the
    /// newest *global* checkpoint, from `DIR/<its name>` of the first level holding it: every
    /// rank restores the same version ([`crate::checkpoint::restart::load_job`]).
    ///
    /// `handles`: every [`crate::Region`] handle of this producer that is still alive, so
    /// that none of its slices is borrowed while the region is written. Buffers lent with
    /// [`Producer::wrap_raw`] are written too, under that function's contract.
    ///
    /// Every region must match the checkpoint's by name, element type and shape, and every
    /// chunk read must check out, before anything is written: on error the regions are
    /// untouched (except [`RestartError::ChangedWhileRestoring`]).
    ///
    /// ```no_run
    /// # use std::path::Path;
    /// # use tcasm::{Producer, ProducerOptions};
    /// let mut p = Producer::create("heat", ProducerOptions::default())?;
    /// let mut t = p.region::<f64>("temperature", &[512, 512])?;
    /// let mut step = p.region::<u64>("step", &[1])?;
    /// p.restore(&[Path::new("/local/ckpt"), Path::new("/pfs/ckpt")], &mut [&mut t, &mut step])?;
    /// while step[0] < 1000 {
    ///     step[0] += 1;
    ///     t[0] += 1.0;
    ///     p.publish()?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore(
        &mut self,
        dirs: &[&Path],
        handles: &mut [&mut dyn RegionHandle],
    ) -> Result<Option<Restarted>, RestartError> {
        if self.store.is_some() {
            return Err(RestartError::AfterFirstPublish);
        }
        // A handle still alive that was not passed could hold a borrowed slice.
        for r in &self.regions {
            let alive = Arc::strong_count(&r.memory) > 1;
            if alive && !handles.iter().any(|h| Arc::ptr_eq(h.memory(), &r.memory)) {
                return Err(RestartError::HandleNotPassed { region: r.info.name.clone() });
            }
        }
        let infos = self.regions();
        let memory: Vec<_> = self.regions.iter().map(|r| r.memory.clone()).collect();
        let write = |r: usize, at: usize, bytes: &[u8]| {
            // SAFETY: `restart::load` stays inside region `r`'s bytes. No slice of an owned
            // region is borrowed: its handle is dropped or exclusively borrowed by this call
            // (checked above), and the producer itself touches region memory only in its own
            // `&mut self` methods; lent memory is unaliased during this call by the contract
            // of `wrap_raw`.
            unsafe { memory[r].write_at(at, bytes) }
        };
        let found = match self.job {
            Some(_) => restart::load_job(dirs, &self.name, &infos, write)?,
            None => restart::load(dirs, &infos, write)?,
        };
        if let Some(f) = &found {
            self.restored = f.version;
        }
        Ok(found)
    }
}
