//! Which stored chunk each page of a checkpoint is read from. This is the one place that
//! decides what restoring a checkpoint reads, and so what a damaged chunk or file costs:
//! [`super::Restore::read`] reads exactly the chunks a plan needs, and [`super::verify`] calls
//! a checkpoint unrestorable exactly when its plan needs a damaged one.
//!
//! A page is read from the newest checkpoint of the chain that holds it. So a chunk (or a
//! whole data file) that is damaged costs only the checkpoints that still take a page from
//! it: a later increment that rewrote all of its pages does not need it, whether the damage
//! is a flipped byte, a truncated file or a missing one. A damaged *manifest* or chain link
//! is different: without it the chain cannot be followed, so it costs every checkpoint
//! written on it.
use std::ops::Range;

use super::format::{Chunk, Manifest};

/// For one checkpoint, the checkpoint of its chain each page is read from.
pub(super) struct ReadPlan {
    /// Per page, the index (in the chain, base first) of the newest checkpoint holding it.
    owner: Vec<u32>,
}

impl ReadPlan {
    /// The plan of the last checkpoint of `chain` (base first; the base holds every page).
    pub(super) fn new<'a>(chain: impl IntoIterator<Item = &'a Manifest>) -> ReadPlan {
        let mut owner = Vec::new();
        for (i, m) in chain.into_iter().enumerate() {
            owner.resize(m.space.page_count, 0);
            for c in &m.chunks {
                owner[c.page_range()].fill(i as u32);
            }
        }
        ReadPlan { owner }
    }

    /// Whether chunk `chunk` of checkpoint `i` of the chain delivers any page.
    pub(super) fn needs(&self, i: usize, chunk: &Chunk) -> bool {
        self.owner[chunk.page_range()].contains(&(i as u32))
    }

    /// Whether checkpoint `i` of the chain delivers any page (needs its data file at all).
    pub(super) fn needs_file(&self, i: usize, m: &Manifest) -> bool {
        m.chunks.iter().any(|c| self.needs(i, c))
    }

    /// The stretches of `chunk`'s pages that checkpoint `i` delivers.
    pub(super) fn delivered(&self, i: usize, chunk: &Chunk) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for p in chunk.page_range().filter(|&p| self.owner[p] == i as u32) {
            match out.last_mut() {
                Some(r) if r.end == p => r.end += 1,
                _ => out.push(p..p + 1),
            }
        }
        out
    }
}

/// What a problem found by [`super::verify`] makes unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// One chunk of the checkpoint's data file (by index).
    Chunk(usize),
    /// Its whole data file (missing, foreign header, bytes past the end).
    Data,
    /// Its manifest or its link to its parent: the chain cannot be followed through it.
    Link,
}
