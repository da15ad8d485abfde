//! The pool's free slots, as extents: the *reserve* (free slots that hold memory, so that
//! writing one costs a copy) and the *holes* (free slots that hold none: never written, or
//! punched; writing one makes the kernel allocate and zero a page first, ~9 copies' worth).
//!
//! A publish takes slots lowest first, reserve before holes, so that the pages it writes
//! land in ascending slots (pages written together stay one run for observers) and the pool
//! stays packed towards its start. Trimming punches the highest reserve extents first for
//! the same reason.
//!
//! The reserve changes every publish by as many extents as the publish wrote runs (a
//! scattered version frees and takes hundreds of single slots), so it is a sorted deque
//! rather than a tree: a slot freed is pushed to a pending list, and one sort-and-merge pass
//! folds the pending extents in before slots are taken or trimmed. The publish's frees then
//! cost a push each and the pass O(n log n) at worst, O(n) when they come sorted, as a
//! version's slots mostly do; taking the lowest and trimming the highest pop the deque's
//! ends. The holes change rarely (a plane added, a trim, a defragmentation) and stay a tree.
use std::collections::{BTreeMap, VecDeque};

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
    reserve: Reserve,
    holes: BTreeMap<u64, u64>,
}

/// Free slots that hold memory: extents sorted by start, none touching the next, and the
/// extents freed since the last [`Reserve::merge`], in any order.
#[derive(Debug, Default)]
struct Reserve {
    extents: VecDeque<(u64, u64)>,
    pending: Vec<(u64, u64)>,
    /// Slots in both.
    slots: u64,
    /// The previous pass's deque, kept for its memory.
    spare: VecDeque<(u64, u64)>,
}

/// Appends the extent `(start, count)` to `extents`, whose last extent ends at or before
/// `start`, joining that extent when it ends at `start`.
fn append(extents: &mut VecDeque<(u64, u64)>, (start, count): (u64, u64)) {
    match extents.back_mut() {
        Some(last) if last.0 + last.1 == start => last.1 += count,
        Some(last) => {
            debug_assert!(last.0 + last.1 < start, "slot {start} freed twice");
            extents.push_back((start, count));
        }
        None => extents.push_back((start, count)),
    }
}

impl Reserve {
    fn free(&mut self, start: u64, count: u64) {
        self.pending.push((start, count));
        self.slots += count;
    }

    /// Folds the pending extents into the sorted ones.
    fn merge(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable();
        let after_all = self.extents.back().is_none_or(|&(s, c)| s + c <= self.pending[0].0);
        if after_all {
            for &e in &self.pending {
                append(&mut self.extents, e);
            }
        } else {
            let mut merged = std::mem::take(&mut self.spare);
            merged.clear();
            let (mut old, mut new) = (self.extents.iter().copied().peekable(), self.pending.iter().copied().peekable());
            loop {
                let next = match (old.peek(), new.peek()) {
                    (Some(a), Some(b)) if a.0 <= b.0 => old.next(),
                    (Some(_), Some(_)) | (None, Some(_)) => new.next(),
                    (Some(_), None) => old.next(),
                    (None, None) => break,
                };
                append(&mut merged, next.expect("peeked"));
            }
            self.spare = std::mem::replace(&mut self.extents, merged);
        }
        self.pending.clear();
    }

    /// Takes up to `want` slots, lowest first.
    fn take_lowest(&mut self, want: u64, out: &mut Vec<Stretch>) -> u64 {
        self.merge();
        let mut taken = 0;
        while taken < want {
            let Some(first) = self.extents.front_mut() else { break };
            let n = first.1.min(want - taken);
            out.push(Stretch { start: first.0, count: n, fresh: false });
            if n < first.1 {
                first.0 += n;
                first.1 -= n;
            } else {
                self.extents.pop_front();
            }
            taken += n;
        }
        self.slots -= taken;
        taken
    }

    /// Gives up the highest slots until at most `keep` are left, as extents.
    fn trim(&mut self, keep: u64, mut gone: impl FnMut(u64, u64)) {
        self.merge();
        while self.slots > keep {
            let Some(last) = self.extents.back_mut() else { break };
            let drop = last.1.min(self.slots - keep);
            let at = last.0 + last.1 - drop;
            if drop < last.1 {
                last.1 -= drop;
            } else {
                self.extents.pop_back();
            }
            self.slots -= drop;
            gone(at, drop);
        }
    }
}

/// Adds the extent `[start, start + count)` to the holes `map`, merging it with its
/// neighbours.
fn insert(map: &mut BTreeMap<u64, u64>, mut start: u64, mut count: u64) {
    // Planes are added, and trims punch, in ascending order: appending after the last
    // extent needs one lookup, not three.
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
        self.reserve.slots
    }

    /// Slots that hold no memory: never written, or punched.
    pub fn add_holes(&mut self, start: u64, count: u64) {
        insert(&mut self.holes, start, count);
    }

    /// Slots no live version needs any more; they still hold memory.
    pub fn free(&mut self, start: u64, count: u64) {
        self.reserve.free(start, count);
    }

    /// Takes `want` slots (reserve first, then holes, each lowest first) as stretches
    /// appended to `out`; returns how many it found.
    pub fn take(&mut self, want: u64, out: &mut Vec<Stretch>) -> u64 {
        let from_reserve = self.reserve.take_lowest(want, out);
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
        let holes = &mut self.holes;
        self.reserve.trim(keep, |at, count| {
            insert(holes, at, count);
            punched.push((at, count));
        });
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

    proptest! {
        /// Frees, takes and trims in any interleaving behave as sets of slots would: a take
        /// gives the lowest free slots, the reserve's before the holes; a trim punches the
        /// highest of the reserve; no slot is ever lost or handed out twice.
        #[test]
        fn interleaved_operations_match_a_model_of_sets(ops in prop::collection::vec((0u8..3, 0u64..200, 1u64..12), 1..120)) {
            use std::collections::BTreeSet;
            const SLOTS: u64 = 200;
            let mut f = FreeSlots::default();
            let mut taken: BTreeSet<u64> = (0..SLOTS).collect();
            let (mut reserve, mut holes) = (BTreeSet::new(), BTreeSet::new());
            for (kind, a, b) in ops {
                match kind {
                    0 => {
                        // Free a run of taken slots from the a-th taken one on.
                        let Some(&start) = taken.iter().nth((a as usize) % taken.len().max(1)) else { continue };
                        let count = (start..start + b).take_while(|s| taken.contains(s)).count() as u64;
                        f.free(start, count);
                        for s in start..start + count {
                            taken.remove(&s);
                            reserve.insert(s);
                        }
                    }
                    1 => {
                        let mut out = Vec::new();
                        let got = f.take(b, &mut out);
                        let want: Vec<(u64, bool)> = reserve.iter().map(|&s| (s, false)).chain(holes.iter().map(|&s| (s, true))).take(b as usize).collect();
                        prop_assert_eq!(got as usize, want.len());
                        let slots: Vec<(u64, bool)> = out.iter().flat_map(|x| (x.start..x.start + x.count).map(move |s| (s, x.fresh))).collect();
                        prop_assert_eq!(&slots, &want);
                        for (s, fresh) in slots {
                            if fresh { holes.remove(&s); } else { reserve.remove(&s); }
                            taken.insert(s);
                        }
                    }
                    _ => {
                        let keep = a % 20;
                        let mut punched: Vec<u64> = f.trim(keep).iter().flat_map(|&(s, c)| s..s + c).collect();
                        punched.sort_unstable();
                        let over = reserve.len().saturating_sub(keep as usize);
                        let want: Vec<u64> = reserve.iter().rev().take(over).rev().copied().collect();
                        prop_assert_eq!(&punched, &want);
                        for s in punched {
                            reserve.remove(&s);
                            holes.insert(s);
                        }
                    }
                }
                prop_assert_eq!(f.reserve_slots(), reserve.len() as u64);
            }
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
