//! The copy tracker: no tracking. Every publish compares every page with the copy the
//! latest version holds and copies those that differ: it needs nothing from the kernel and
//! still stores only what changed.
use std::ops::Range;

use super::{Changes, Tracker, TrackerKind};

#[derive(Default)]
pub struct CopyTracker {
    ranges: Vec<Range<usize>>,
}

impl Tracker for CopyTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::Copy
    }

    fn track(&mut self, range: Range<usize>) -> nix::Result<()> {
        self.ranges.push(range);
        Ok(())
    }

    fn take_changes(&mut self, out: &mut Changes) -> nix::Result<()> {
        out.compare.extend(self.ranges.iter().cloned());
        Ok(())
    }
}
