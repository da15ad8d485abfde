//! The copy tracker: every tracked page counts as written at every publish.
use std::ops::Range;

use super::{Tracker, TrackerKind};

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

    fn take_written(&mut self, found: &mut dyn FnMut(usize, usize)) -> nix::Result<()> {
        for r in &self.ranges {
            found(r.start, r.end);
        }
        Ok(())
    }
}
