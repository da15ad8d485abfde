//! A version's page map: where each page of the page space lives in the pool, and at which
//! version its bytes were last written, as runs.
//!
//! A run is encoded in [`RUN_WORDS`] words: `first_page | count << 32`, the pool slot of its
//! first page (slot `s` is bytes `[s * PAGE, (s + 1) * PAGE)` of the pool), and the version
//! that wrote it. A run's pages are contiguous in the page space and in the pool, and share
//! their version; for mapping, adjacent runs contiguous in the pool merge further.
use std::ops::Range;

/// Words a run takes in a record.
pub const RUN_WORDS: usize = 3;

/// Pages contiguous in the page space and in the pool, written at the same version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u32,
    pub count: u32,
    /// The pool slot of the run's first page; page `first + i` is in slot `slot + i`.
    pub slot: u64,
    /// The version whose publish last wrote these pages' bytes.
    pub written: u64,
}

impl Run {
    pub fn pages(&self) -> Range<usize> {
        self.first as usize..self.first as usize + self.count as usize
    }

    /// The slot holding page `p` of the run.
    pub fn slot_of(&self, p: usize) -> u64 {
        self.slot + (p - self.first as usize) as u64
    }

    pub fn encode(&self) -> [u64; RUN_WORDS] {
        [self.first as u64 | (self.count as u64) << 32, self.slot, self.written]
    }

    pub fn decode(w: [u64; RUN_WORDS]) -> Run {
        Run { first: w[0] as u32, count: (w[0] >> 32) as u32, slot: w[1], written: w[2] }
    }
}

/// A version's complete page map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageMap {
    pub runs: Vec<Run>,
}

impl PageMap {
    /// Builds the map from per-page slot and written version.
    pub fn from_pages(slot: &[u64], written: &[u64]) -> PageMap {
        let mut runs: Vec<Run> = Vec::new();
        for (p, (&s, &w)) in slot.iter().zip(written).enumerate() {
            match runs.last_mut() {
                Some(r) if r.slot + r.count as u64 == s && r.written == w => r.count += 1,
                _ => runs.push(Run { first: p as u32, count: 1, slot: s, written: w }),
            }
        }
        PageMap { runs }
    }

    /// The map after `pieces` (sorted, disjoint runs) replaced what it said of their pages:
    /// the same map [`PageMap::from_pages`] builds from the pages, in time proportional to
    /// the runs rather than the pages.
    pub fn overwrite(&self, pieces: &[Run]) -> PageMap {
        fn push(out: &mut Vec<Run>, r: Run) {
            match out.last_mut() {
                Some(l)
                    if l.pages().end == r.first as usize
                        && l.slot_of(r.first as usize) == r.slot
                        && l.written == r.written =>
                {
                    l.count += r.count
                }
                _ if r.count > 0 => out.push(r),
                _ => {}
            }
        }
        let part = |r: &Run, from: usize, to: usize| Run {
            first: from as u32,
            count: (to - from) as u32,
            slot: r.slot_of(from),
            written: r.written,
        };
        let mut out = Vec::with_capacity(self.runs.len() + 2 * pieces.len());
        let mut pieces = pieces.iter().peekable();
        // Pages before this are decided: kept from a run, or covered by a piece.
        let mut done = 0usize;
        for r in &self.runs {
            let end = r.pages().end;
            while let Some(&&p) = pieces.peek().filter(|p| (p.first as usize) < end) {
                if (p.first as usize) > done.max(r.first as usize) {
                    push(&mut out, part(r, done.max(r.first as usize), p.first as usize));
                }
                push(&mut out, p);
                done = p.pages().end;
                pieces.next();
            }
            if done.max(r.first as usize) < end {
                push(&mut out, part(r, done.max(r.first as usize), end));
                done = end;
            }
        }
        for &p in pieces {
            push(&mut out, p);
        }
        PageMap { runs: out }
    }

    /// Checks a map read from shared memory: runs in order, without gaps or overlaps,
    /// covering exactly `pages` pages, in the pool's `slots` slots, written at versions
    /// `1..=version`.
    pub fn validate(&self, pages: usize, slots: u64, version: u64) -> Result<(), String> {
        let mut next = 0usize;
        for (i, r) in self.runs.iter().enumerate() {
            if r.first as usize != next || r.count == 0 {
                return Err(format!("run {i} starts at page {} with {} pages, expected page {next}", r.first, r.count));
            }
            if r.slot.checked_add(r.count as u64).is_none_or(|end| end > slots) {
                return Err(format!("run {i} names slots {}+{} of a pool of {slots}", r.slot, r.count));
            }
            if r.written == 0 || r.written > version {
                return Err(format!("run {i} was written at version {}, after version {version}", r.written));
            }
            next += r.count as usize;
        }
        if next != pages {
            return Err(format!("map covers {next} pages, the page space has {pages}"));
        }
        Ok(())
    }

    /// Runs merged for mapping: maximal stretches of pages contiguous in the page space and
    /// in the pool, with the slot of the first.
    pub fn mapping_runs(&self) -> impl Iterator<Item = (Range<usize>, u64)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let first = self.runs.get(i)?;
            let mut end = first.pages().end;
            i += 1;
            while let Some(r) = self.runs.get(i).filter(|r| r.slot == first.slot_of(end)) {
                end = r.pages().end;
                i += 1;
            }
            Some((first.pages().start..end, first.slot))
        })
    }

    /// Number of mappings an observer needs for this version.
    pub fn mapping_count(&self) -> usize {
        self.mapping_runs().count()
    }

    /// Pages whose bytes changed after version `since`, as ranges.
    pub fn changed_since(&self, since: u64) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for r in self.runs.iter().filter(|r| r.written > since) {
            match out.last_mut() {
                Some(last) if last.end == r.first as usize => last.end = r.pages().end,
                _ => out.push(r.pages()),
            }
        }
        out
    }

    /// The slot of each page, expanded.
    pub fn slots(&self) -> Vec<u64> {
        self.runs.iter().flat_map(|r| r.pages().map(move |p| r.slot_of(p))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_merge_for_mapping() {
        // Pages 0-1 in slots 10-11, 2-4 in 12-14 but written later, 5 in slot 3.
        let map = PageMap::from_pages(&[10, 11, 12, 13, 14, 3], &[3, 3, 5, 5, 5, 2]);
        assert_eq!(map.runs.len(), 3);
        for r in &map.runs {
            assert_eq!(Run::decode(r.encode()), *r);
        }
        let m: Vec<_> = map.mapping_runs().collect();
        assert_eq!(m, vec![(0..5, 10), (5..6, 3)]);
        assert_eq!(map.slots(), vec![10, 11, 12, 13, 14, 3]);
        assert_eq!(map.changed_since(2), vec![0..5]);
        assert_eq!(map.changed_since(3), vec![2..5]);
        assert!(map.validate(6, 15, 5).is_ok());
        assert!(map.validate(7, 15, 5).is_err());
        assert!(map.validate(6, 14, 5).is_err());
        assert!(map.validate(6, 15, 4).is_err());
    }

    /// Overwriting runs gives what building from the pages gives, on random maps and
    /// random pieces.
    #[test]
    fn overwrite_equals_building_from_pages() {
        let mut rng = crate::test_rng::Rng::new(0x2545_f491_4f6c_dd1d);
        let mut next = |n: u64| rng.next() % n;
        for _ in 0..500 {
            let pages = 1 + next(60) as usize;
            let mut slot: Vec<u64> = (0..pages as u64).map(|p| if next(3) == 0 { next(200) } else { p }).collect();
            let mut written: Vec<u64> = (0..pages).map(|_| 1 + next(3)).collect();
            let map = PageMap::from_pages(&slot, &written);
            let mut pieces = Vec::new();
            let mut p = next(4) as usize;
            while p < pages {
                let count = (1 + next(6) as usize).min(pages - p);
                let s = 1000 + next(50);
                pieces.push(Run { first: p as u32, count: count as u32, slot: s, written: 9 });
                for i in 0..count {
                    slot[p + i] = s + i as u64;
                    written[p + i] = 9;
                }
                p += count + next(5) as usize;
            }
            assert_eq!(map.overwrite(&pieces), PageMap::from_pages(&slot, &written), "{map:?} with {pieces:?}");
        }
        assert_eq!(
            PageMap::default().overwrite(&[Run { first: 0, count: 3, slot: 7, written: 1 }]),
            PageMap::from_pages(&[7, 8, 9], &[1, 1, 1])
        );
    }

    #[test]
    fn gaps_overlaps_and_slot_overflow_are_rejected() {
        let mut map = PageMap::from_pages(&[0, 5, 2], &[1, 1, 1]);
        map.runs[1].first = 2;
        assert!(map.validate(3, 8, 1).is_err());
        map.runs[1].first = 0;
        assert!(map.validate(3, 8, 1).is_err());
        let mut map = PageMap::from_pages(&[0], &[1]);
        map.runs[0].slot = u64::MAX;
        assert!(map.validate(1, u64::MAX, 1).is_err());
    }
}
