//! Grouping taps into sets: pure decisions, no I/O.
//!
//! A set is eight files with taps 1..=8 from the same device whose unix seconds span at most
//! `window_s`. Rule: per device, the earliest complete window wins: windows are tried from the
//! earliest pending file on, and the window ends at the first file that completes the eight
//! taps (with any other file of that same second). Inside it, a sensor tapped twice takes its
//! latest file: an operator taps a sensor again because the first tap was bad.
//!
//! Once a set is formed, no file of its device as old as the set's newest file ever joins a
//! later set: such a file (a re-tap that came too late, the rest of a set that never
//! completed) is a leftover, and [`Grouper::take_stale`] hands it to the caller to be set
//! aside with its reason. Other files that form no set stay pending until a later file
//! completes them or the caller takes them out with [`Grouper::remove`].
//!
//! A caller that cannot read a set it took (a file turned unreadable) withdraws it
//! ([`Grouper::withdraw`]) and gives its readable files back: the device's mark goes back to
//! the sets still standing, so those files wait for another tap of that sensor (a re-tap)
//! instead of becoming leftovers. A set is open to that until the caller settles it
//! ([`Grouper::settle`], once its results are saved).

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

use crate::device::{N_SENSORS, TapName};
use crate::result::ResultName;

/// One pending file: its parsed name and an opaque key chosen by the caller (a path, an index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending<K> {
    pub name: TapName,
    pub key: K,
}

/// A complete set, taps in order: `members[k]` is the file of tap k+1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapSet<K> {
    /// `None` for legacy device-less names.
    pub device: Option<String>,
    /// Smallest unix seconds among the eight files: the set's time.
    pub unix_s: i64,
    pub members: [Pending<K>; N_SENSORS],
    /// The set's survey file, if the caller attached one (the grouper never does).
    pub survey: Option<K>,
}

impl<K> TapSet<K> {
    /// Whether `unix_s` lies in the set's window: its time .. + `window_s`.
    pub fn window_holds(&self, unix_s: i64, window_s: i64) -> bool {
        (self.unix_s..=self.unix_s.saturating_add(window_s)).contains(&unix_s)
    }

    /// The name of the set's results.
    pub fn result_name(&self) -> ResultName {
        ResultName::new(self.device.as_deref(), self.unix_s)
    }

    /// Largest unix seconds among the eight files: no older file of the device joins a later
    /// set.
    pub fn newest_s(&self) -> i64 {
        self.members
            .iter()
            .map(|p| p.name.unix_s)
            .max()
            .unwrap_or(self.unix_s)
    }
}

/// A pending file that can never join a set: it is not newer than a set already formed
/// from its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale<K> {
    pub file: Pending<K>,
    /// The result stem of that set, and its newest file's unix seconds.
    pub set_stem: String,
    pub set_newest_s: i64,
}

impl<K> Stale<K> {
    /// Why the file is set aside, for the reason file and the log.
    pub fn reason(&self) -> String {
        format!(
            "tap {} at {} s is not newer than set {} (its newest tap at {} s), which was already formed: a leftover never joins a later set",
            self.file.name.tap, self.file.name.unix_s, self.set_stem, self.set_newest_s
        )
    }
}

/// Groups pending files into sets.
#[derive(Debug)]
pub struct Grouper<K> {
    window_s: i64,
    /// Per device, pending files sorted by (unix seconds, tap, upload id).
    pending: BTreeMap<Option<String>, Vec<Pending<K>>>,
    /// The keys in `pending`, so that adding a file does not compare it with every other one.
    keys: HashSet<K>,
    /// Per device, the sets formed and the mark they make.
    formed: BTreeMap<Option<String>, Formed>,
}

/// A set's time and its newest file's unix seconds.
type Mark = (i64, i64);

/// The sets formed from one device.
#[derive(Debug, Default)]
struct Formed {
    /// The set with the newest file among those settled (no longer open to a withdrawal).
    settled: Option<Mark>,
    /// The sets formed and not settled, in the order formed.
    open: Vec<Mark>,
    /// The set with the newest file among all of them (the later one on a tie): no file of
    /// the device as old as its newest file joins a later set.
    mark: Option<Mark>,
}

impl Formed {
    /// Notes a set formed.
    fn push(&mut self, set: Mark) {
        self.open.push(set);
        self.mark = newest([self.mark, Some(set)].into_iter().flatten());
    }

    /// Takes out the open set at `unix_s` (the last formed, if several).
    fn take_open(&mut self, unix_s: i64) -> Option<Mark> {
        let k = self.open.iter().rposition(|&(t, _)| t == unix_s)?;
        Some(self.open.remove(k))
    }

    /// The mark of the settled sets and the open ones that `keep` accepts.
    fn mark_of(&self, keep: impl Fn(&Mark) -> bool) -> Option<Mark> {
        newest(
            self.settled
                .into_iter()
                .chain(self.open.iter().copied().filter(keep)),
        )
    }
}

/// The mark with the newest file, the later one on a tie.
fn newest(marks: impl Iterator<Item = Mark>) -> Option<Mark> {
    marks.max_by_key(|&(_, newest_s)| newest_s)
}

impl<K: Clone + Eq + Hash> Grouper<K> {
    /// `window_s`: the largest allowed span of unix seconds inside one set (15 minutes by default).
    pub fn new(window_s: i64) -> Self {
        Grouper {
            window_s,
            pending: BTreeMap::new(),
            keys: HashSet::new(),
            formed: BTreeMap::new(),
        }
    }

    /// Adds a file. Adding the same key twice is ignored.
    pub fn add(&mut self, name: TapName, key: K) {
        if !self.keys.insert(key.clone()) {
            return;
        }
        let files = self.pending.entry(name.device.clone()).or_default();
        let pos = files.partition_point(|p| {
            (p.name.unix_s, p.name.tap, &p.name.upload_id)
                <= (name.unix_s, name.tap, &name.upload_id)
        });
        files.insert(pos, Pending { name, key });
    }

    /// Takes out every complete set, earliest window first.
    pub fn take_complete(&mut self) -> Vec<TapSet<K>> {
        self.take_complete_of(|_| true)
    }

    /// Takes out the complete sets of the devices `ready` accepts. The caller holds back a
    /// device whose files are still arriving: a backlog copied in at once arrives in any
    /// order, and a later set formed first would make the earlier ones leftovers.
    pub fn take_complete_of(&mut self, ready: impl Fn(&Option<String>) -> bool) -> Vec<TapSet<K>> {
        let mut sets = Vec::new();
        for (device, files) in self.pending.iter_mut() {
            if !ready(device) {
                continue;
            }
            loop {
                // Files not newer than a set already formed never join another one.
                let mark = self.formed.get(device).and_then(|f| f.mark);
                let first = mark.map_or(0, |(_, newest)| {
                    files.partition_point(|p| p.name.unix_s <= newest)
                });
                let Some(chosen) = earliest_complete_window(&files[first..], self.window_s) else {
                    break;
                };
                let chosen: Vec<usize> = chosen.into_iter().map(|i| i + first).collect();
                // Remove from the back so indices stay valid.
                let mut members: Vec<(usize, Pending<K>)> = Vec::with_capacity(N_SENSORS);
                let mut by_index = chosen;
                by_index.sort_unstable();
                for &i in by_index.iter().rev() {
                    let member = files.remove(i);
                    self.keys.remove(&member.key);
                    members.push((i, member));
                }
                members.sort_by_key(|(_, p)| p.name.tap);
                let members: Vec<Pending<K>> = members.into_iter().map(|(_, p)| p).collect();
                let unix_s = members.iter().map(|p| p.name.unix_s).min().unwrap_or(0);
                let Ok(members) = <[Pending<K>; N_SENSORS]>::try_from(members) else {
                    unreachable!("a complete window has exactly one file per tap");
                };
                let set = TapSet {
                    device: device.clone(),
                    unix_s,
                    members,
                    survey: None,
                };
                let formed = self.formed.entry(device.clone()).or_default();
                formed.push((unix_s, set.newest_s()));
                sets.push(set);
            }
        }
        self.pending.retain(|_, files| !files.is_empty());
        sets.sort_by(|a, b| (a.unix_s, &a.device).cmp(&(b.unix_s, &b.device)));
        sets
    }

    /// Takes out the pending files that can never join a set: those not newer than the
    /// newest set already formed from their device.
    pub fn take_stale(&mut self) -> Vec<Stale<K>> {
        let mut stale = Vec::new();
        for (device, formed) in &self.formed {
            let Some((set_unix_s, newest_s)) = formed.mark else {
                continue;
            };
            let Some(files) = self.pending.get_mut(device) else {
                continue;
            };
            // Sorted by time: the stale files are a prefix.
            let n = files.partition_point(|p| p.name.unix_s <= newest_s);
            let set_stem = ResultName::new(device.as_deref(), set_unix_s).stem();
            for file in files.drain(..n) {
                self.keys.remove(&file.key);
                stale.push(Stale {
                    file,
                    set_stem: set_stem.clone(),
                    set_newest_s: newest_s,
                });
            }
        }
        self.pending.retain(|_, files| !files.is_empty());
        stale
    }

    /// Removes a pending file (it vanished or was rejected). Returns whether it was there.
    pub fn remove(&mut self, key: &K) -> bool {
        if !self.keys.remove(key) {
            return false;
        }
        let mut found = false;
        for files in self.pending.values_mut() {
            if let Some(i) = files.iter().position(|p| &p.key == key) {
                files.remove(i);
                found = true;
            }
        }
        self.pending.retain(|_, files| !files.is_empty());
        found
    }

    /// Withdraws the device's open set at `unix_s`, for a caller that could not read it: the
    /// device's mark goes back to the sets still standing. The caller gives the set's files
    /// back with [`Grouper::add`], or with [`Grouper::give_back`] which does both (and may
    /// form sets again with [`Grouper::take_complete_again`]). Returns whether such an open
    /// set was there.
    pub fn withdraw(&mut self, device: &Option<String>, unix_s: i64) -> bool {
        let Some(formed) = self.formed.get_mut(device) else {
            return false;
        };
        if formed.take_open(unix_s).is_none() {
            return false;
        }
        formed.mark = formed.mark_of(|_| true);
        true
    }

    /// Withdraws the device's open set at `unix_s` ([`Grouper::withdraw`]) and adds `files`
    /// (those of its files still to be grouped) back.
    pub fn give_back(
        &mut self,
        device: &Option<String>,
        unix_s: i64,
        files: impl IntoIterator<Item = (TapName, K)>,
    ) {
        self.withdraw(device, unix_s);
        for (name, key) in files {
            self.add(name, key);
        }
    }

    /// Settles the device's open set at `unix_s` (its results are saved): it is no longer
    /// withdrawn, and only the newest settled set is remembered.
    pub fn settle(&mut self, device: &Option<String>, unix_s: i64) {
        if let Some(formed) = self.formed.get_mut(device)
            && let Some(set) = formed.take_open(unix_s)
        {
            formed.settled = newest(formed.settled.into_iter().chain([set]));
        }
    }

    /// The device's complete sets, formed as if none of its open sets at or after `unix_s`
    /// had been: for a caller that withdrew the set at `unix_s` (and those of the device it
    /// had not started) and gave their files back, while later sets it started stand. Then
    /// the mark comes back to the newest set formed.
    pub fn take_complete_again(&mut self, device: &Option<String>, unix_s: i64) -> Vec<TapSet<K>> {
        let formed = self.formed.entry(device.clone()).or_default();
        formed.mark = formed.mark_of(|&(t, _)| t < unix_s);
        let sets = self.take_complete_of(|d| d == device);
        if let Some(formed) = self.formed.get_mut(device) {
            formed.mark = formed.mark_of(|_| true);
        }
        sets
    }

    /// Files that are in no set yet.
    pub fn pending(&self) -> impl Iterator<Item = &Pending<K>> {
        self.pending.values().flatten()
    }

    pub fn n_pending(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }
}

/// Indices (into `files`, sorted by time) of the earliest complete window, one per tap: from
/// the earliest file on, up to the first file that completes the eight taps and the files of
/// that same second; a tap found twice takes its later file.
fn earliest_complete_window<K>(files: &[Pending<K>], window_s: i64) -> Option<Vec<usize>> {
    for start in 0..files.len() {
        let t0 = files[start].name.unix_s;
        let mut chosen: [Option<usize>; N_SENSORS] = [None; N_SENSORS];
        let mut complete_at: Option<i64> = None;
        for (i, file) in files.iter().enumerate().skip(start) {
            let t = file.name.unix_s;
            if t - t0 > window_s || complete_at.is_some_and(|end| t > end) {
                break;
            }
            chosen[file.name.tap as usize - 1] = Some(i);
            if complete_at.is_none() && chosen.iter().all(Option::is_some) {
                complete_at = Some(t);
            }
        }
        if complete_at.is_some() {
            return Some(chosen.iter().flatten().copied().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(device: &str, unix_s: i64, tap: u8) -> TapName {
        TapName {
            device: Some(device.to_string()),
            upload_id: "u".into(),
            unix_s,
            tap,
        }
    }

    fn add_set(g: &mut Grouper<String>, device: &str, t0: i64, step: i64) {
        for tap in 1..=8u8 {
            let t = t0 + step * (tap as i64 - 1);
            g.add(name(device, t, tap), format!("{device}-{t}-{tap}"));
        }
    }

    #[test]
    fn a_device_held_back_forms_its_sets_in_order_once_ready() {
        let mut g = Grouper::new(900);
        // Two sets of one device, the later one complete first (a backlog copied in).
        for t in 1..=8u8 {
            g.add(name("D", 2000 + i64::from(t), t), format!("late-{t}"));
        }
        for t in 1..=7u8 {
            g.add(name("D", 1000 + i64::from(t), t), format!("early-{t}"));
        }
        assert!(g.take_complete_of(|d| d.as_deref() != Some("D")).is_empty());
        g.add(name("D", 1008, 8), "early-8".to_string());
        let sets = g.take_complete();
        assert_eq!(sets.len(), 2);
        assert_eq!((sets[0].unix_s, sets[1].unix_s), (1001, 2001));
        assert!(g.take_stale().is_empty());
    }

    #[test]
    fn one_complete_set_in_order() {
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 1000, 10);
        let sets = g.take_complete();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].unix_s, 1000);
        assert_eq!(sets[0].result_name().json(), "result_A_1000.json");
        for (k, m) in sets[0].members.iter().enumerate() {
            assert_eq!(m.name.tap as usize, k + 1);
        }
        assert_eq!(g.n_pending(), 0);
    }

    #[test]
    fn incomplete_set_stays_pending_until_completed() {
        let mut g = Grouper::new(900);
        for tap in 1..=7u8 {
            g.add(name("A", 1000 + tap as i64, tap), format!("{tap}"));
        }
        assert!(g.take_complete().is_empty());
        assert_eq!(g.n_pending(), 7);
        g.add(name("A", 1100, 8), "8".to_string());
        assert_eq!(g.take_complete().len(), 1);
        assert_eq!(g.n_pending(), 0);
    }

    #[test]
    fn out_of_order_arrival() {
        let mut g = Grouper::new(900);
        for tap in [5u8, 3, 8, 1, 2, 7, 4, 6] {
            g.add(name("A", 2000 + tap as i64 * 7, tap), format!("{tap}"));
            if tap != 6 {
                assert!(g.take_complete().is_empty());
            }
        }
        let sets = g.take_complete();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].unix_s, 2007);
    }

    #[test]
    fn span_over_window_is_not_a_set() {
        let mut g = Grouper::new(900);
        for tap in 1..=7u8 {
            g.add(name("A", 1000 + tap as i64, tap), format!("{tap}"));
        }
        g.add(name("A", 1001 + 900 + 1, 8), "late8".into());
        assert!(g.take_complete().is_empty());
        assert_eq!(g.n_pending(), 8);
    }

    #[test]
    fn span_exactly_window_is_a_set() {
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 0, 0);
        g.remove(&"A-0-8".to_string());
        g.add(name("A", 900, 8), "edge8".into());
        assert_eq!(g.take_complete().len(), 1);
    }

    #[test]
    fn a_re_tap_inside_the_set_replaces_the_first_tap_which_is_then_stale() {
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 1000, 10);
        g.add(name("A", 1015, 2), "retap2".into());
        let sets = g.take_complete();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].members[1].key, "retap2");
        let left: Vec<_> = g.pending().map(|p| p.key.clone()).collect();
        assert_eq!(left, vec!["A-1010-2".to_string()]);
        let stale = g.take_stale();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].file.key, "A-1010-2");
        assert_eq!(stale[0].set_stem, "result_A_1000");
        assert!(
            stale[0].reason().contains("result_A_1000"),
            "{}",
            stale[0].reason()
        );
        assert_eq!(g.n_pending(), 0);
    }

    #[test]
    fn a_leftover_tap_never_joins_a_later_set() {
        // Set A, then a re-tap of sensor 3 that came after A was formed, then set B 400 s
        // later: B takes its own tap 3 and the leftover is set aside, also when it arrives
        // after B was formed.
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 0, 10);
        assert_eq!(g.take_complete().len(), 1);
        g.add(name("A", 100, 3), "late3".into());
        assert!(g.take_complete().is_empty());
        assert!(
            g.take_stale().is_empty(),
            "newer than A: it may still start a set"
        );
        add_set(&mut g, "A", 500, 10);
        let sets = g.take_complete();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].members[2].key, "A-520-3");
        let stale: Vec<_> = g.take_stale().into_iter().map(|s| s.file.key).collect();
        assert_eq!(stale, vec!["late3".to_string()]);
        g.add(name("A", 560, 5), "later5".into());
        assert_eq!(g.take_stale()[0].file.key, "later5");
        g.add(name("B", 10, 5), "other-device".into());
        assert!(g.take_stale().is_empty());
    }

    /// Set A at 0..70 s, a re-tap of sensor 3 at 100 s and set B at 500..570 s of device A:
    /// the two sets formed.
    fn two_sets_and_a_re_tap(g: &mut Grouper<String>) -> Vec<TapSet<String>> {
        add_set(g, "A", 0, 10);
        g.add(name("A", 100, 3), "retap3".into());
        add_set(g, "A", 500, 10);
        let sets = g.take_complete();
        assert_eq!(sets.len(), 2);
        sets
    }

    /// Gives a set's files back to the grouper, all but A's unreadable tap 3.
    fn give_back_but_tap_3_of_a(g: &mut Grouper<String>, set: TapSet<String>) {
        for m in set.members {
            if m.key != "A-20-3" {
                g.add(m.name, m.key);
            }
        }
    }

    #[test]
    fn a_withdrawn_set_forms_again_with_a_re_tap_once_its_mark_is_reset() {
        // Set A at 0..70 s and set B at 500 s form together; A's tap 3 turns out unreadable.
        // A's other files go back with B's (not started), both are withdrawn, and A forms
        // again with the re-tap of sensor 3 at 100 s, then B.
        let a = Some("A".to_string());
        let mut g = Grouper::new(900);
        for set in two_sets_and_a_re_tap(&mut g) {
            give_back_but_tap_3_of_a(&mut g, set);
        }
        assert!(
            g.take_complete().is_empty(),
            "the mark is B's: A's files are old"
        );
        assert!(g.withdraw(&a, 0));
        assert!(g.withdraw(&a, 500));
        assert!(!g.withdraw(&a, 500), "withdrawn already");
        let sets = g.take_complete();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].members[2].key, "retap3");
        assert_eq!(sets[1].members[2].key, "A-520-3");
        assert!(g.take_stale().is_empty());
    }

    #[test]
    fn a_withdrawn_set_forms_again_beside_a_later_set_that_stands() {
        // A (0..70 s) and B (500..570 s) formed; B was started and stands, A is withdrawn with
        // its tap 3 unreadable. Grouped again as if A had not formed, A takes the re-tap at
        // 100 s; then the mark is B's again, and a file older than B's newest is a leftover.
        let a = Some("A".to_string());
        let mut g = Grouper::new(900);
        let mut sets = two_sets_and_a_re_tap(&mut g);
        sets.truncate(1);
        assert!(g.withdraw(&a, 0));
        give_back_but_tap_3_of_a(&mut g, sets.remove(0));
        assert!(g.take_complete().is_empty(), "B's mark stands");
        let again = g.take_complete_again(&a, 0);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].unix_s, 0);
        assert_eq!(again[0].members[2].key, "retap3");
        g.add(name("A", 560, 1), "old".into());
        let stale = g.take_stale();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].set_stem, "result_A_500");
    }

    #[test]
    fn a_settled_set_is_not_withdrawn_and_keeps_the_mark() {
        let a = Some("A".to_string());
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 0, 10);
        add_set(&mut g, "A", 500, 10);
        assert_eq!(g.take_complete().len(), 2);
        g.settle(&a, 500);
        assert!(!g.withdraw(&a, 500), "settled: no longer open");
        // Withdrawing the older open set leaves the mark at the settled one.
        assert!(g.withdraw(&a, 0));
        g.add(name("A", 560, 1), "old".into());
        let stale = g.take_stale();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].set_stem, "result_A_500");
        // Another device's sets are its own.
        assert!(!g.withdraw(&Some("B".into()), 0));
    }

    #[test]
    fn a_window_ends_where_the_set_is_complete() {
        // A backlog of three sets 400 s apart, all pending at once: each is its own set.
        let mut g = Grouper::new(900);
        for t0 in [0, 400, 800] {
            add_set(&mut g, "A", t0, 10);
        }
        let sets = g.take_complete();
        assert_eq!(
            sets.iter().map(|s| s.unix_s).collect::<Vec<_>>(),
            vec![0, 400, 800]
        );
        assert!(g.take_stale().is_empty());
    }

    #[test]
    fn same_file_added_twice_counts_once() {
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 1000, 10);
        g.add(name("A", 1000, 1), "A-1000-1".into());
        assert_eq!(g.take_complete().len(), 1);
        assert_eq!(g.n_pending(), 0);
    }

    #[test]
    fn two_interleaved_sets_from_one_device_form_one_of_the_latest_taps() {
        // One device cannot tap two sets at once; if its files interleave, the first window
        // takes each sensor's later file and the rest is stale.
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 1000, 10);
        add_set(&mut g, "A", 1005, 10);
        let sets = g.take_complete();
        assert_eq!(sets.len(), 1);
        for tap in 0..7 {
            assert_eq!(sets[0].members[tap].name.unix_s, 1005 + 10 * tap as i64);
        }
        assert_eq!(sets[0].members[7].name.unix_s, 1070);
        assert_eq!(g.take_stale().len(), 7);
        assert_eq!(g.n_pending(), 1, "the second tap 8, newer than the set");
    }

    #[test]
    fn earliest_complete_window_wins_over_later_ones() {
        let mut g = Grouper::new(900);
        // A stray tap 3 long before, then a complete set: the stray stays pending.
        g.add(name("A", 0, 3), "stray3".into());
        add_set(&mut g, "A", 5000, 1);
        // A second complete set much later.
        add_set(&mut g, "A", 9000, 1);
        let sets = g.take_complete();
        assert_eq!(
            sets.iter().map(|s| s.unix_s).collect::<Vec<_>>(),
            vec![5000, 9000]
        );
        let left: Vec<_> = g.pending().map(|p| p.key.clone()).collect();
        assert_eq!(left, vec!["stray3".to_string()]);
    }

    #[test]
    fn devices_are_never_mixed() {
        let mut g = Grouper::new(900);
        for tap in 1..=4u8 {
            g.add(name("A", 1000, tap), format!("A{tap}"));
        }
        for tap in 5..=8u8 {
            g.add(name("B", 1000, tap), format!("B{tap}"));
        }
        assert!(g.take_complete().is_empty());
        add_set(&mut g, "B", 1001, 0);
        let sets = g.take_complete();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].device.as_deref(), Some("B"));
        assert_eq!(g.n_pending(), 8);
    }

    #[test]
    fn extra_taps_stay_pending_as_leftovers() {
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 1000, 1);
        add_set(&mut g, "A", 1000, 1);
        for tap in 1..=3u8 {
            g.add(name("A", 1000, tap), format!("extra{tap}"));
        }
        // Keys differ, so there are three files per tap 1..=3 and two per tap 4..=8.
        let sets = g.take_complete();
        assert_eq!(
            sets.len(),
            1,
            "the same keys were added twice and count once"
        );
        assert_eq!(g.n_pending(), 3);
    }

    #[test]
    fn legacy_names_group_together() {
        let mut g = Grouper::new(900);
        for tap in 1..=8u8 {
            let n = TapName {
                device: None,
                upload_id: String::new(),
                unix_s: 77 + tap as i64,
                tap,
            };
            g.add(n, tap);
        }
        let sets = g.take_complete();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].result_name().stem(), "result_78");
    }

    #[test]
    fn remove_takes_a_file_out() {
        let mut g = Grouper::new(900);
        add_set(&mut g, "A", 1000, 1);
        assert!(g.remove(&"A-1003-4".to_string()));
        assert!(!g.remove(&"nope".to_string()));
        assert!(g.take_complete().is_empty());
        assert_eq!(g.n_pending(), 7);
    }
}
