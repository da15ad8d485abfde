//! A version's page map: where each page of the page space lives in the pool, and at which
//! version its bytes were last written, as runs.
//!
//! A run is encoded in two words: `first_page | count << 32` and `plane | written << 16`.
//! Adjacent pages share a run when they sit in the same plane and were written at the same
//! version; for mapping, adjacent runs in the same plane merge further (planes keep page `p`
//! at file offset `(plane * pages + p) * PAGE`, so neighbours in a plane are neighbours in the
//! file).
use std::ops::Range;

/// Pages with equal plane and written version, contiguous in the page space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u32,
    pub count: u32,
    pub plane: u16,
    /// The version whose publish last wrote these pages' bytes.
    pub written: u64,
}

impl Run {
    pub fn pages(&self) -> Range<usize> {
        self.first as usize..self.first as usize + self.count as usize
    }

    pub fn encode(&self) -> [u64; 2] {
        [self.first as u64 | (self.count as u64) << 32, self.plane as u64 | self.written << 16]
    }

    pub fn decode(w: [u64; 2]) -> Run {
        Run {
            first: w[0] as u32,
            count: (w[0] >> 32) as u32,
            plane: w[1] as u16,
            written: w[1] >> 16,
        }
    }
}

/// The greatest version a run can name.
pub const MAX_VERSION: u64 = (1 << 48) - 1;

/// A version's complete page map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageMap {
    pub runs: Vec<Run>,
}

impl PageMap {
    /// Builds the map from per-page plane and written version.
    pub fn from_pages(plane: &[u16], written: &[u64]) -> PageMap {
        let mut runs: Vec<Run> = Vec::new();
        for (p, (&k, &w)) in plane.iter().zip(written).enumerate() {
            match runs.last_mut() {
                Some(r) if r.plane == k && r.written == w => r.count += 1,
                _ => runs.push(Run { first: p as u32, count: 1, plane: k, written: w }),
            }
        }
        PageMap { runs }
    }

    /// Checks a map read from shared memory: runs in order, without gaps or overlaps,
    /// covering exactly `pages` pages, in existing planes, written at versions `1..=version`.
    pub fn validate(&self, pages: usize, planes: usize, version: u64) -> Result<(), String> {
        let mut next = 0usize;
        for (i, r) in self.runs.iter().enumerate() {
            if r.first as usize != next || r.count == 0 {
                return Err(format!("run {i} starts at page {} with {} pages, expected page {next}", r.first, r.count));
            }
            if r.plane as usize >= planes {
                return Err(format!("run {i} names plane {} of {planes}", r.plane));
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

    /// Runs merged for mapping: maximal stretches of pages contiguous in one plane.
    pub fn mapping_runs(&self) -> impl Iterator<Item = (Range<usize>, u16)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let first = self.runs.get(i)?;
            let mut end = first.pages().end;
            i += 1;
            while let Some(r) = self.runs.get(i).filter(|r| r.plane == first.plane) {
                end = r.pages().end;
                i += 1;
            }
            Some((first.pages().start..end, first.plane))
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

    /// The plane of each page, expanded.
    pub fn planes(&self) -> Vec<u16> {
        let mut v = Vec::new();
        for r in &self.runs {
            v.extend(std::iter::repeat_n(r.plane, r.count as usize));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_merge_for_mapping() {
        let map = PageMap::from_pages(&[0, 0, 1, 1, 1, 0], &[3, 3, 3, 5, 5, 2]);
        assert_eq!(map.runs.len(), 4);
        for r in &map.runs {
            assert_eq!(Run::decode(r.encode()), *r);
        }
        let m: Vec<_> = map.mapping_runs().collect();
        assert_eq!(m, vec![(0..2, 0), (2..5, 1), (5..6, 0)]);
        assert_eq!(map.changed_since(2), vec![0..5]);
        assert_eq!(map.changed_since(3), vec![3..5]);
        assert!(map.validate(6, 2, 5).is_ok());
        assert!(map.validate(7, 2, 5).is_err());
        assert!(map.validate(6, 1, 5).is_err());
        assert!(map.validate(6, 2, 4).is_err());
    }

    #[test]
    fn gaps_and_overlaps_are_rejected() {
        let mut map = PageMap::from_pages(&[0, 1, 0], &[1, 1, 1]);
        map.runs[1].first = 2;
        assert!(map.validate(3, 2, 1).is_err());
        map.runs[1].first = 0;
        assert!(map.validate(3, 2, 1).is_err());
    }
}
