//! A weak first arrival of the other polarity, seen on both recordings of a path.
//!
//! On some wood (the simulator's `field` models) the first arrival is a weak lobe, a few noise
//! sigmas out, of the opposite polarity to the main phase that follows it within a few samples.
//! The picker's threshold crosses on the main phase, and its walk back only follows samples on
//! the main phase's side, so the pick lands one to three samples late, on both recordings of the
//! path alike. One recording is too noisy to tell such a lobe from the noise, but the two
//! recordings of a path (i→j and j→i) carry the same waveform, offset by the difference of the
//! two tap instants, and independent noise: a lobe that stands out on both at the same instant
//! is an arrival (within the sample the other recording's phase allows,
//! [`Record::against_around`]).
//!
//! Where one recording's lobe crossed its threshold and the other's did not, the two picks rise
//! to opposite sides, the second one on the main phase a sample or more later: the same test on
//! both recordings, on the first pick's side, finds the lobe the second one missed
//! ([`one_side_missed`]).

use super::Picks;
use super::baseline::Baseline;
use super::pick::Pick;
use crate::engine::Prepared;
use crate::geometry::N_SENSORS;

/// The two recordings' sum must stand this many of its noise sigmas out (the sum's sigma is the
/// root of the sum of the two rays' squared sigmas): about 2.8 sigmas on each recording.
const JOINT_SIGMAS: f64 = 4.0;
/// Each of the two recordings must stand at least this many of its own noise sigmas out, on
/// the same side: one recording far out and the other within the noise is no common arrival
/// (measured with `evaluate`: without it, `shared` p90 rose by up to 0.84 point).
const EACH_SIGMAS: f64 = 2.0;
/// Samples before a pick's first risen sample searched for the lobe. 6 rather than 4
/// (measured with `evaluate`, seeds 1–5 and 7): at 20 dB a weak lobe lies that far before a
/// main phase picked late, and every 20 dB cell of `field` and `dispersive` gained (p90 by 0.4
/// to 3.4 points) with no cell at 40 or 30 dB worse by more than 0.07 point.
const JOINT_BACK: usize = 6;
/// Samples before a pick's first risen sample within which the other recording may show the
/// lobe on the larger of its two samples around the instant rather than on the line between
/// them ([`Record::against_around`]): there the other recording's next sample may already be on
/// the main phase of the other sign.
const NEAR_BACK: usize = 3;
/// [`JOINT_SIGMAS`] where the other recording's larger sample is taken: the larger of two
/// samples is the larger of two noise draws, so the pair must stand further out. Measured with
/// `evaluate` (30 sets, seeds 1–5 and 7, both triggers): at 4, or at 4.5 without
/// [`NEAR_BACK`], rays of `shared` at 40 and 30 dB (seed 2) and of `field` at 30 dB (seeds 3
/// and 7) moved 3–5 samples early onto noise, errors of 63–91 %.
const NEAR_SIGMAS: f64 = 4.5;

/// One recording of a path: its samples, their instants, the rest level, its noise sigma and
/// the side its pick rises to.
struct Record<'a> {
    raw: &'a [f32],
    t_us: &'a [f64],
    rest: f64,
    sigma: f64,
    polarity: f64,
}

impl Record<'_> {
    fn len(&self) -> usize {
        self.raw.len().min(self.t_us.len())
    }

    /// Sample `k`'s deviation from rest on the side opposite to the pick's rise.
    fn against(&self, k: usize) -> f64 {
        -self.polarity * (self.raw[k] as f64 - self.rest)
    }

    /// [`Record::against`] at instant `t`: by linear interpolation between the two samples
    /// around it, and the larger of the two; `None` outside the record. The two recordings of a
    /// path are sampled at different phases (their taps' leads differ), so a lobe about a
    /// sample long that one recording shows on one sample can fall, in the other's time,
    /// between the sample that shows it and the first one of the main phase of the other sign:
    /// the line between the two mixes the lobe with that phase and loses it.
    fn against_around(&self, t: f64) -> Option<(f64, f64)> {
        let n = self.len();
        if n < 2 || t < self.t_us[0] || t > self.t_us[n - 1] {
            return None;
        }
        let k = self.t_us[..n].partition_point(|&s| s <= t).clamp(1, n - 1);
        let (t0, t1) = (self.t_us[k - 1], self.t_us[k]);
        let u = (t - t0) / (t1 - t0);
        let (before, after) = (self.against(k - 1), self.against(k));
        Some(((1.0 - u) * before + u * after, before.max(after)))
    }
}

/// The bracket (last quiet sample, first risen one; µs in `x`'s time) of the first sample of
/// `x` within [`JOINT_BACK`] samples before `risen` (the pick's first risen sample), and not
/// before `earliest`, where `x` and `other` (carried over: `x`'s time is `other`'s plus `d`)
/// together stand out against the pick's side; `None` where there is none. The other
/// recording's value is the line between its two samples around the instant, or, within
/// [`NEAR_BACK`] samples of the pick, the larger of the two at [`NEAR_SIGMAS`].
fn joint_bracket(
    x: &Record,
    other: &Record,
    d: f64,
    risen: f64,
    earliest: f64,
) -> Option<(f64, f64)> {
    let n = x.len();
    let k_s = x.t_us[..n].partition_point(|&t| t < risen - 1e-9);
    if k_s < 2 || k_s >= n {
        return None;
    }
    let sigma = (x.sigma * x.sigma + other.sigma * other.sigma).sqrt();
    let stands = |k: usize| -> bool {
        let Some((line, larger)) = other.against_around(x.t_us[k] - d) else {
            return false;
        };
        let y = x.against(k);
        let together = |y_other: f64, sigmas: f64| {
            y + y_other > sigmas * sigma
                && y > EACH_SIGMAS * x.sigma
                && y_other > EACH_SIGMAS * other.sigma
        };
        together(line, JOINT_SIGMAS) || (k + NEAR_BACK >= k_s && together(larger, NEAR_SIGMAS))
    };
    let lo = k_s
        .saturating_sub(JOINT_BACK)
        .max(1)
        .max(x.t_us[..n].partition_point(|&t| t < earliest) + 1);
    let k = (lo..k_s).find(|&k| stands(k))?;
    Some((x.t_us[k - 1], x.t_us[k]))
}

/// Moves the picks of both directions of a path earlier where both recordings show a lobe of
/// the other polarity before them, together ([`JOINT_SIGMAS`]) and each ([`EACH_SIGMAS`]), on
/// both recordings' own samples: each pick goes to the middle of the two new brackets' overlap
/// (each its own bracket's middle where they do not overlap), and no later than the overlap's
/// end. Paths whose picks rise to opposite sides go to [`one_side_missed`]. `leads` are the tap
/// instants (µs before each file's first sample), `earliest(i, j)` the least time of flight of
/// ray i→j (µs).
pub(super) fn joint_onsets(
    set: &[Prepared; N_SENSORS],
    bases: &[Baseline; N_SENSORS],
    picks: &mut Picks,
    leads: &[f64; N_SENSORS],
    mismatched: &[bool; N_SENSORS],
    earliest: impl Fn(usize, usize) -> f64,
) {
    for i in 0..N_SENSORS {
        for j in (i + 1)..N_SENSORS {
            if mismatched[i] || mismatched[j] {
                continue;
            }
            let (Some(a), Some(b)) = (picks[i][j], picks[j][i]) else {
                continue;
            };
            // i→j's time is j→i's plus d.
            let d = leads[j] - leads[i];
            // Ray tap → receiver as its pick `p` saw it.
            let record = |tap: usize, receiver: usize, p: &Pick| Record {
                raw: &set[tap].raw[receiver],
                t_us: &set[tap].t_us,
                rest: bases[receiver].rest,
                sigma: p.sigma,
                polarity: p.polarity,
            };
            let (ra, rb) = (record(i, j, &a), record(j, i, &b));
            let tof_min = earliest(i, j);
            if a.polarity != b.polarity {
                one_side_missed(
                    picks,
                    (i, j),
                    (a, b),
                    (&ra, &rb),
                    d,
                    (tof_min - leads[i], tof_min - leads[j]),
                );
                continue;
            }
            let (Some(ba), Some(bb)) = (
                joint_bracket(&ra, &rb, d, a.bracket_us.1, tof_min - leads[i]),
                joint_bracket(&rb, &ra, -d, b.bracket_us.1, tof_min - leads[j]),
            ) else {
                continue;
            };
            let lo = ba.0.max(bb.0 + d);
            let hi = ba.1.min(bb.1 + d);
            let (ta, tb) = if lo < hi {
                (0.5 * (lo + hi), 0.5 * (lo + hi) - d)
            } else {
                (0.5 * (ba.0 + ba.1), 0.5 * (bb.0 + bb.1))
            };
            if let Some(p) = picks[i][j].as_mut() {
                p.t_us = p.t_us.min(hi.max(ba.0)).min(ta);
            }
            if let Some(p) = picks[j][i].as_mut() {
                p.t_us = p.t_us.min((hi - d).max(bb.0)).min(tb);
            }
        }
    }
}

/// `r` with its pick's side set to `polarity` ([`Record::against`] then reads the other side).
fn turned<'a>(r: &Record<'a>, polarity: f64) -> Record<'a> {
    Record { polarity, ..*r }
}

/// A path whose two picks rise to opposite sides: one direction picked its first lobe, the
/// other one missed it (it stayed under that recording's threshold) and picked the main phase
/// of the other side, a sample or more later. Where exactly one direction's record shows,
/// within [`JOINT_BACK`] samples before its first risen sample, a lobe on the other
/// direction's side that stands out on both recordings at the same instant (as
/// [`joint_bracket`] asks), that pick goes to the middle of that lobe's bracket's overlap with
/// the other direction's own bracket, never later than it was; the other pick, where it lies
/// after that overlap, comes back to its middle too (one lying before it stays: a smooth
/// start may lie before its last quiet sample). `a` and `b` are the picks of i→j and j→i,
/// `ra` and `rb` their records; `d`: i→j's time is j→i's plus `d`; `earliest`: the earliest
/// possible arrival of each direction in its own file's time.
fn one_side_missed(
    picks: &mut Picks,
    (i, j): (usize, usize),
    (a, b): (Pick, Pick),
    (ra, rb): (&Record, &Record),
    d: f64,
    (earliest_a, earliest_b): (f64, f64),
) {
    let found_a = joint_bracket(ra, &turned(rb, a.polarity), d, a.bracket_us.1, earliest_a);
    let found_b = joint_bracket(rb, &turned(ra, b.polarity), -d, b.bracket_us.1, earliest_b);
    // The missed lobe's bracket (in the missing direction's time), the other direction's own
    // bracket carried over, the two picks (the one to move first), and what the other
    // direction's time is in the missing one's.
    let (found, (lo, hi), (missed, other), shift) = match (found_a, found_b) {
        (Some(ba), None) => (ba, b.bracket_us, ((i, j), (j, i)), d),
        (None, Some(bb)) => (bb, a.bracket_us, ((j, i), (i, j)), -d),
        _ => return,
    };
    let (lo, hi) = (found.0.max(lo + shift), found.1.min(hi + shift));
    if lo >= hi {
        return;
    }
    let middle = 0.5 * (lo + hi);
    if let Some(p) = picks[missed.0][missed.1].as_mut() {
        p.t_us = p.t_us.min(middle);
    }
    // The other direction's pick, where it lies after the overlap, comes back to its middle.
    if let Some(q) = picks[other.0][other.1].as_mut()
        && q.t_us + shift > hi
    {
        q.t_us = middle - shift;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onset::pick::pick;
    use crate::engine::onset::testing::prepared;

    const QUIET: Baseline = Baseline {
        rest: 2000.0,
        sigma: 2.0,
    };

    /// A record of 30 samples at rest 2000 with ±1 count of noise, a lobe of `lobe` counts at
    /// sample `at` (before 9) and a main phase from sample 9.
    fn record_at(lobe: f32, at: usize) -> Vec<f32> {
        let main = [300.0, 900.0, 1400.0, 1000.0, 200.0];
        (0..30)
            .map(|k| {
                let noise = [1.0, -1.0, 0.0, 1.0, -1.0][k % 5];
                let wave = match k {
                    9..=13 => main[k - 9],
                    _ if k == at => lobe,
                    _ => 0.0,
                };
                2000.0 + noise + wave
            })
            .collect()
    }

    fn set_with(lobe_01: f32, lobe_10: f32) -> [Prepared; N_SENSORS] {
        set_with_at(lobe_01, lobe_10, 8)
    }

    /// Paths 0→1 and 1→0 with lobes `lobe_01` and `lobe_10` at sample `at`; the rest at rest.
    fn set_with_at(lobe_01: f32, lobe_10: f32, at: usize) -> [Prepared; N_SENSORS] {
        std::array::from_fn(|i| {
            prepared(std::array::from_fn(|j| match (i, j) {
                (0, 1) => record_at(lobe_01, at),
                (1, 0) => record_at(lobe_10, at),
                _ => vec![2000.0; 30],
            }))
        })
    }

    fn picked(set: &[Prepared; N_SENSORS]) -> Picks {
        let mut picks: Picks = [[None; N_SENSORS]; N_SENSORS];
        picks[0][1] = pick(&set[0].raw[1], &set[0].t_us, QUIET, 0.002, 25);
        picks[1][0] = pick(&set[1].raw[0], &set[1].t_us, QUIET, 0.002, 25);
        picks
    }

    /// [`joint_onsets`] with every channel at [`QUIET`], taps at the first samples, no
    /// mis-tapped file and no least time of flight.
    fn joint_at_rest(set: &[Prepared; N_SENSORS], picks: &mut Picks) {
        joint_with_leads(set, picks, &[0.0; N_SENSORS]);
    }

    /// [`joint_at_rest`] with the tap instants `leads`.
    fn joint_with_leads(set: &[Prepared; N_SENSORS], picks: &mut Picks, leads: &[f64; N_SENSORS]) {
        let bases = [QUIET; N_SENSORS];
        let none = [false; N_SENSORS];
        joint_onsets(set, &bases, picks, leads, &none, |_, _| 0.0);
    }

    /// Paths 0→1 and 1→0 with a lobe of `lobe` counts at sample 8 on both, and their picks,
    /// checked to be on the main phase (it rises from sample 9).
    fn picked_on_the_main_phase(lobe: f32) -> ([Prepared; N_SENSORS], Picks) {
        let set = set_with(lobe, lobe);
        let picks = picked(&set);
        for p in [picks[0][1], picks[1][0]] {
            assert_eq!(p.unwrap().bracket_us, (8.0 * 27.0, 9.0 * 27.0), "{p:?}");
        }
        (set, picks)
    }

    /// The joint search moves neither pick of `set`.
    fn assert_unmoved(set: &[Prepared; N_SENSORS]) {
        let before = picked(set);
        let mut picks = before;
        joint_at_rest(set, &mut picks);
        assert_eq!(picks, before);
    }

    #[test]
    fn a_weak_lobe_of_the_other_polarity_on_both_recordings_is_the_arrival() {
        // A lobe of −10 counts (about 3.6 of the rays' sigmas) before a main phase that rises
        // from sample 9: the picks are on the main phase, the lobe is the first arrival.
        let (set, mut picks) = picked_on_the_main_phase(-10.0);
        joint_at_rest(&set, &mut picks);
        assert_eq!(picks[0][1].unwrap().t_us, 7.5 * 27.0);
        assert_eq!(picks[1][0].unwrap().t_us, 7.5 * 27.0);
        // The lobe on one recording only is noise as far as the pair can tell.
        assert_unmoved(&set_with(-10.0, 0.0));
    }

    #[test]
    fn a_one_sample_lobe_is_found_between_the_other_recordings_samples() {
        // Tap 1's impact half a sample (13.5 µs) after its file's first sample, tap 0's at its
        // first sample: each recording's one-sample lobe (−12 counts at sample 8, 216 µs)
        // falls half way between two samples of the other one, the later of them on the main
        // phase of the other sign. The line between those two mixes the lobe with that phase;
        // the larger of them shows it.
        let (set, mut picks) = picked_on_the_main_phase(-12.0);
        let mut leads = [0.0; N_SENSORS];
        leads[1] = -13.5;
        joint_with_leads(&set, &mut picks, &leads);
        // The brackets 189–216 µs (0→1) and 189–216 µs (1→0, 175.5–202.5 in 0→1's time)
        // overlap on 189–202.5 µs; each pick goes to its middle.
        assert_eq!(picks[0][1].unwrap().t_us, 195.75);
        assert_eq!(picks[1][0].unwrap().t_us, 195.75 + 13.5);
    }

    #[test]
    fn a_weak_lobe_up_to_six_samples_before_the_main_phase_is_found() {
        // At 20 dB the main phase is often picked several samples behind the weak first lobe:
        // a lobe 5 samples before the first risen sample (9) is searched for, one 7 before
        // is not.
        let set = set_with_at(-10.0, -10.0, 4);
        let mut picks = picked(&set);
        assert_eq!(picks[0][1].unwrap().bracket_us, (8.0 * 27.0, 9.0 * 27.0));
        joint_at_rest(&set, &mut picks);
        assert_eq!(picks[0][1].unwrap().t_us, 3.5 * 27.0);
        assert_eq!(picks[1][0].unwrap().t_us, 3.5 * 27.0);
        assert_unmoved(&set_with_at(-10.0, -10.0, 2));
    }

    #[test]
    fn a_lobe_one_direction_picked_and_the_other_missed_moves_the_later_pick() {
        // 1→0's lobe (−60 counts) crosses its threshold (3 % of the main phase, 42 counts) and
        // is picked, on the negative side; 0→1's (−20) does not, and 0→1 is picked on the
        // main phase a sample later, on the positive side.
        let set = set_with(-20.0, -60.0);
        let mut picks = picked(&set);
        let (a, b) = (picks[0][1].unwrap(), picks[1][0].unwrap());
        assert_eq!((a.polarity, b.polarity), (1.0, -1.0));
        assert_eq!(a.bracket_us, (8.0 * 27.0, 9.0 * 27.0));
        assert_eq!(b.bracket_us, (7.0 * 27.0, 8.0 * 27.0));
        joint_at_rest(&set, &mut picks);
        assert_eq!(picks[0][1].unwrap().t_us, 7.5 * 27.0);
        assert_eq!(picks[1][0], Some(b));
        // Where the later one's record shows nothing there, neither pick moves.
        assert_unmoved(&set_with(0.0, -60.0));
    }

    #[test]
    fn the_other_pick_after_the_overlap_comes_back_to_its_middle() {
        // As above, with tap 1 three quarters of a sample (20.25 µs) before tap 0: 1→0's
        // bracket (189–216 µs, its pick in the middle at 202.5) is 209.25–236.25 µs in 0→1's
        // time, the lobe 0→1 missed 189–216 µs, their overlap 209.25–216 µs. 0→1's pick goes
        // to its middle (212.625 µs), and 1→0's, after the overlap, too (212.625 − 20.25).
        let set = set_with(-20.0, -60.0);
        let mut picks = picked(&set);
        let b = picks[1][0].unwrap();
        assert_eq!((b.t_us, b.bracket_us), (202.5, (189.0, 216.0)));
        let mut leads = [0.0; N_SENSORS];
        leads[1] = 20.25;
        joint_with_leads(&set, &mut picks, &leads);
        assert_eq!(picks[0][1].unwrap().t_us, 212.625);
        assert_eq!(picks[1][0].unwrap().t_us, 212.625 - 20.25);
        // Half a sample (13.5 µs): 1→0's pick sits at the overlap's end and stays.
        let mut picks = picked(&set);
        leads[1] = 13.5;
        joint_with_leads(&set, &mut picks, &leads);
        assert_eq!(picks[0][1].unwrap().t_us, 209.25);
        assert_eq!(picks[1][0], Some(b));
    }
}
