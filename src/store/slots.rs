//! The pool's free slots, as extents: the *reserve* (free slots that hold memory, so that
//! writing one costs a copy) and the *holes* (free slots that hold none: never written, or
//! punched; writing one makes the kernel allocate and zero a page first, ~9 copies' worth).
//!
//! A publish takes slots lowest first, reserve before holes, so that the pages it writes
//! land in ascending slots (pages written together stay one run for observers) and the pool
//! stays packed towards its start. Trimming punches the highest reserve extents first for
//! the same reason.
use std::collections::BTreeMap;

/// A stretch of consecutive slots taken for a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stretch {
    pub start: u64,
    pub count: u64,
    /// Whether the slots hold no memory yet.
    pub fresh: bool,
}

#[derive(Debug, Default)]
pub struct FreeSlots {
    reserve: BTreeMap<u64, u64>,
    reserve_slots: u64,
    holes: BTreeMap<u64, u64>,
}

/// Adds the extent `[start, start + count)` to `map`, merging it with its neighbours.
fn insert(map: &mut BTreeMap<u64, u64>, mut start: u64, mut count: u64) {
    // Slots are mostly freed in ascending order (a version's pages hold ascending slots):
    // appending after the last extent needs one lookup, not three.
    match map.last_entry() {
        None => {
            map.insert(start, count);
            return;
        }
        Some(mut last) if *last.key() + *last.get() == start => {
            *last.get_mut() += count;
            return;
        }
        Some(last) if *last.key() + *last.get() < start => {
            map.insert(start, count);
            return;
        }
        Some(_) => {}
    }
    if let Some((&s, &c)) = map.range(..start).next_back() {
        debug_assert!(s + c <= start, "slot {start} freed twice");
        if s + c == start {
            map.remove(&s);
            start = s;
            count += c;
        }
    }
    if let Some(c) = map.remove(&(start + count)) {
        count += c;
    }
    map.insert(start, count);
}

/// Takes up to `want` slots from `map`, lowest first.
fn take_lowest(map: &mut BTreeMap<u64, u64>, want: u64, fresh: bool, out: &mut Vec<Stretch>) -> u64 {
    let mut taken = 0;
    while taken < want {
        let Some((start, count)) = map.pop_first() else { break };
        let n = count.min(want - taken);
        if n < count {
            map.insert(start + n, count - n);
        }
        out.push(Stretch { start, count: n, fresh });
        taken += n;
    }
    taken
}

impl FreeSlots {
    /// Free slots that hold memory.
    pub fn reserve_slots(&self) -> u64 {
        self.reserve_slots
    }

    /// Slots that hold no memory: never written, or punched.
    pub fn add_holes(&mut self, start: u64, count: u64) {
        insert(&mut self.holes, start, count);
    }

    /// Slots no live version needs any more; they still hold memory.
    pub fn free(&mut self, start: u64, count: u64) {
        insert(&mut self.reserve, start, count);
        self.reserve_slots += count;
    }

    /// Takes `want` slots (reserve first, then holes, each lowest first) as stretches
    /// appended to `out`; returns how many it found.
    pub fn take(&mut self, want: u64, out: &mut Vec<Stretch>) -> u64 {
        let from_reserve = take_lowest(&mut self.reserve, want, false, out);
        self.reserve_slots -= from_reserve;
        from_reserve + take_lowest(&mut self.holes, want - from_reserve, true, out)
    }

    /// Gives back slots taken and not used: to the reserve, or to the holes if fresh.
    pub fn untake(&mut self, stretches: &[Stretch]) {
        for s in stretches {
            if s.fresh {
                self.add_holes(s.start, s.count);
            } else {
                self.free(s.start, s.count);
            }
        }
    }

    /// Takes `want` consecutive holes, from the lowest extent long enough, if there is one.
    pub fn take_contiguous(&mut self, want: u64) -> Option<Stretch> {
        let (&start, &count) = self.holes.iter().find(|(_, &c)| c >= want)?;
        self.holes.remove(&start);
        if count > want {
            self.holes.insert(start + want, count - want);
        }
        Some(Stretch { start, count: want, fresh: true })
    }

    /// Shrinks the reserve to at most `keep` slots, highest extents first; the extents it
    /// gives up become holes and are returned, for the caller to punch.
    pub fn trim(&mut self, keep: u64) -> Vec<(u64, u64)> {
        let mut punched = Vec::new();
        while self.reserve_slots > keep {
            let Some((start, count)) = self.reserve.pop_last() else { break };
            let drop = count.min(self.reserve_slots - keep);
            if drop < count {
                self.reserve.insert(start, count - drop);
            }
            let at = start + count - drop;
            self.reserve_slots -= drop;
            insert(&mut self.holes, at, drop);
            punched.push((at, drop));
        }
        punched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Disjoint extents (gaps between some of them), in a random order.
    fn shuffled_extents() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((1u64..5, any::<bool>()), 1..60)
            .prop_map(|lengths| {
                let mut at = 0;
                let mut extents = Vec::new();
                for (len, gap) in lengths {
                    at += u64::from(gap);
                    extents.push((at, len));
                    at += len;
                }
                extents
            })
            .prop_shuffle()
    }

    proptest! {
        /// Extents freed in any order merge into exactly the slots freed, and trimming and
        /// taking give each slot back once.
        #[test]
        fn extents_hold_exactly_the_slots_freed(extents in shuffled_extents(), keep in 0u64..40) {
            let mut f = FreeSlots::default();
            for &(start, count) in &extents {
                f.free(start, count);
            }
            let freed: u64 = extents.iter().map(|e| e.1).sum();
            prop_assert_eq!(f.reserve_slots(), freed);
            let punched: u64 = f.trim(keep).iter().map(|p| p.1).sum();
            prop_assert_eq!(punched, freed.saturating_sub(keep));
            let mut out = Vec::new();
            prop_assert_eq!(f.take(u64::MAX / 2, &mut out), freed);
            let mut got: Vec<u64> = out.iter().flat_map(|s| s.start..s.start + s.count).collect();
            got.sort_unstable();
            let mut want: Vec<u64> = extents.iter().flat_map(|&(s, c)| s..s + c).collect();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn takes_reserve_before_holes_lowest_first_and_trims_highest_first() {
        let mut f = FreeSlots::default();
        f.add_holes(0, 100);
        let mut out = Vec::new();
        assert_eq!(f.take(30, &mut out), 30);
        assert_eq!(out, vec![Stretch { start: 0, count: 30, fresh: true }]);
        f.free(10, 5);
        f.free(20, 5);
        f.free(15, 5); // merges into 10..25
        assert_eq!(f.reserve_slots(), 15);
        out.clear();
        assert_eq!(f.take(20, &mut out), 20);
        assert_eq!(
            out,
            vec![Stretch { start: 10, count: 15, fresh: false }, Stretch { start: 30, count: 5, fresh: true }]
        );
        // Taken now: 0..35. Free 0..10 and 25..35, keep 12: the highest 8 are punched.
        f.free(0, 10);
        f.free(25, 10);
        assert_eq!(f.trim(12), vec![(27, 8)]);
        assert_eq!(f.reserve_slots(), 12);
        out.clear();
        assert_eq!(f.take(1000, &mut out), 12 + 73);
        assert_eq!(
            out,
            vec![
                Stretch { start: 0, count: 10, fresh: false },
                Stretch { start: 25, count: 2, fresh: false },
                Stretch { start: 27, count: 73, fresh: true },
            ]
        );
        // Given back, then one long stretch of holes wanted: the lowest long enough.
        f.untake(&out);
        assert_eq!(f.reserve_slots(), 12);
        assert_eq!(f.take_contiguous(74), None);
        assert_eq!(f.take_contiguous(50), Some(Stretch { start: 27, count: 50, fresh: true }));
        assert_eq!(f.take_contiguous(23), Some(Stretch { start: 77, count: 23, fresh: true }));
    }
}
