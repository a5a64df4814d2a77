//! Class stacking: the rays of one chord class aligned against each other.
//!
//! Rays of the same chord length through sound wood carry the same waveform, shifted by their
//! tap instants and sub-sample phases. GCC-PHAT between neighbouring rays of a class measures
//! their relative arrivals; a least-squares fit ([`solve_differences`]) gives them all, and
//! the onset of the class's stacked waveform gives their common level: a hinge fitted to the
//! stacked rises where the rays carry one waveform ([`shares_one_waveform`]), else where the
//! stacked curve crosses a level. Where the rays carry one waveform, a ray picked on the other
//! side than most of its class picked a later lobe (its first one stayed under its threshold),
//! and the alignment may move it back to the first. The level is common to the class, so its
//! error is too: with eight evenly spaced sensors an error common to the diameters draws a
//! slow or fast core in the tomogram. A class whose waveforms do not agree
//! ([`waveforms_differ`]) keeps its picks.

use super::baseline::Baseline;
use super::lsq::solve_differences;
use super::pick::{Pick, hinge_fit_with};
use super::{COHERENT_SNR, COHERENT_VALUE, Picks, grid_dt, resample, waveforms_differ};
use crate::engine::gcc::{self, PairBatch};
use crate::engine::{Prepared, median};
use crate::geometry::N_SENSORS;

/// Rays of one chord class and their pairs in the batch.
#[derive(Clone, Debug)]
pub(super) struct ClassPlan {
    rays: Vec<(usize, usize)>,
    /// Start of each ray's window, µs in its file's time axis (common grid `dt`).
    starts: Vec<f64>,
    /// `(a, b, pair index)`: ray b's window correlated against ray a's.
    pairs: Vec<(usize, usize, u32)>,
}

/// Each ray of a class is correlated with this many of the next rays in the class.
const CLASS_NEIGHBOURS: usize = 6;
/// A class with fewer picked, unclipped rays is left to its picks.
const MIN_CLASS_RAYS: usize = 3;
/// How far (in samples) a ray-to-ray lag is searched beyond the difference of the two picks.
const CLASS_LAG_SLACK: f64 = 1.5;
/// How far (in samples) the lag between two rays picked on lobes of opposite sign is searched
/// beyond the difference of their picks.
const FLIPPED_LAG_SLACK: f64 = 3.5;
/// How far (in samples) the class alignment may move a ray picked on a later lobe than most of
/// its class's rays (the other sign) before its pick, where the class carries one waveform.
const FLIPPED_MOVE: f64 = 3.5;
/// The least GCC-PHAT peak value of a ray-to-ray correlation that makes an equation.
const MIN_CLASS_VALUE: f64 = 0.2;

/// For each chord class (sensors 1 to 4 apart) with enough picked, unclipped rays from files
/// that are not mis-tapped, cuts each ray's window and pairs it with its next
/// [`CLASS_NEIGHBOURS`] in the class, appending both to `batch`.
pub(super) fn plan_classes(
    set: &[Prepared; N_SENSORS],
    picks: &Picks,
    mismatched: &[bool; N_SENSORS],
    dt: f64,
    batch: &mut PairBatch,
) -> Vec<ClassPlan> {
    let mut classes = Vec::new();
    for m in 1..=N_SENSORS / 2 {
        let rays: Vec<(usize, usize)> = (0..N_SENSORS)
            .flat_map(|i| (0..N_SENSORS).map(move |j| (i, j)))
            .filter(|&(i, j)| {
                let d = i.abs_diff(j);
                i != j
                    && d.min(N_SENSORS - d) == m
                    && !mismatched[i]
                    && picks[i][j].is_some_and(|p| !p.clipped)
            })
            .collect();
        if rays.len() < MIN_CLASS_RAYS {
            continue;
        }
        let mut starts = Vec::with_capacity(rays.len());
        let mut windows = Vec::with_capacity(rays.len());
        for &(i, j) in &rays {
            let (start, w) = ray_window(&set[i], j, picks[i][j].map_or(0.0, |p| p.t_us), dt);
            starts.push(start);
            windows.push(batch.push_window(&w));
        }
        let mut pairs = Vec::new();
        for a in 0..rays.len() {
            for b in (a + 1)..rays.len().min(a + 1 + CLASS_NEIGHBOURS) {
                pairs.push((a, b, batch.push_pair(windows[a], windows[b])));
            }
        }
        classes.push(ClassPlan {
            rays,
            starts,
            pairs,
        });
    }
    classes
}

/// Samples in the window that the ray-to-ray correlations look at.
const RAY_WINDOW: usize = 16;
/// Quiet samples kept before the pick in that window.
const RAY_PRE: usize = 3;

/// The early part of ray i→j on the set's common grid `dt`, from `RAY_PRE` intervals before
/// its pick; the tail is tapered. Returns the window's start (µs in the file's time axis).
fn ray_window(tap: &Prepared, j: usize, pick_us: f64, dt: f64) -> (f64, Vec<f32>) {
    let start = (pick_us - RAY_PRE as f64 * dt).max(0.0);
    let mut window = resample(&tap.channels[j], &tap.t_us, start, dt, RAY_WINDOW);
    // The tail's weights, computed once (the same expression, so the same values).
    static TAIL: std::sync::OnceLock<[f32; RAY_WINDOW / 2]> = std::sync::OnceLock::new();
    let tail = TAIL.get_or_init(|| {
        std::array::from_fn(|m| {
            let x = m as f64 / (RAY_WINDOW / 2) as f64;
            (0.5 + 0.5 * (std::f64::consts::PI * x).cos()) as f32
        })
    });
    for (v, w) in window[RAY_WINDOW / 2..].iter_mut().zip(tail) {
        *v *= w;
    }
    (start, window)
}

/// Rays of the same chord length through sound wood carry the same waveform, shifted by
/// their different tap instants and sub-sample phases. GCC-PHAT between them measures their
/// relative arrival far better than a pick can (a pick with one rising sample is only known
/// within one sample). The class's absolute level comes from the onset of the stacked
/// waveform ([`stacked_onset`]), or the median of the picks where that fails.
pub(super) fn refine_class(
    set: &[Prepared; N_SENSORS],
    bases: &[Baseline; N_SENSORS],
    picks: &mut Picks,
    class: &ClassPlan,
    batch: &PairBatch,
    corr: &[f32],
) {
    let rays = &class.rays;
    let dt = grid_dt(set);
    let pick_of = |(i, j): (usize, usize)| picks[i][j].map_or(0.0, |p| p.t_us);
    let equation = |a: usize, b: usize, pair: u32, slack: f64| {
        let (pa, pb) = (pick_of(rays[a]), pick_of(rays[b]));
        let (ta, tb) = (class.starts[a], class.starts[b]);
        let expect = ((pb - tb) - (pa - ta)) / dt;
        let lo = (expect - slack).floor() as isize;
        let hi = (expect + slack).ceil() as isize;
        gcc::find_peak(batch.correlation(corr, pair), lo, hi)
            .filter(|p| !p.on_edge && p.value > MIN_CLASS_VALUE)
            .map(|p| (a, b, tb - ta + p.lag * dt, p.value))
    };
    let mut found: Vec<Option<(usize, usize, f64, f64)>> = class
        .pairs
        .iter()
        .map(|&(a, b, pair)| equation(a, b, pair, CLASS_LAG_SLACK))
        .collect();
    let mut snrs: Vec<f64> = rays
        .iter()
        .filter_map(|&(i, j)| picks[i][j].map(|p| p.snr))
        .collect();
    let median_snr = median(&mut snrs).unwrap_or(0.0);
    // The side most of the class's picks rise to. Where the rays carry one waveform (judged
    // on the pairs picked on the same side), a ray picked on the other side picked a later
    // lobe, its first one having stayed under its threshold: the difference of the two
    // picks does not bound the lag between two such rays, and its own bracket does not
    // bound its arrival from below.
    let polarity_of = |(i, j): (usize, usize)| picks[i][j].map_or(0.0, |p| p.polarity);
    let majority: f64 = rays.iter().map(|&r| polarity_of(r)).sum::<f64>().signum();
    let mut flipped: Vec<bool> = rays
        .iter()
        .map(|&r| majority != 0.0 && polarity_of(r) == -majority)
        .collect();
    if flipped.contains(&true) {
        let mut same: Vec<f64> = class
            .pairs
            .iter()
            .zip(&found)
            .filter(|(p, _)| flipped[p.0] == flipped[p.1])
            .map(|(_, e)| e.map_or(0.0, |e| e.3))
            .collect();
        if shares_one_waveform(median(&mut same).unwrap_or(0.0), median_snr) {
            for (&(a, b, pair), e) in class.pairs.iter().zip(found.iter_mut()) {
                if flipped[a] != flipped[b] {
                    *e = equation(a, b, pair, FLIPPED_LAG_SLACK);
                }
            }
        } else {
            flipped.fill(false);
        }
    }
    let equations: Vec<(usize, usize, f64, f64)> = found.into_iter().flatten().collect();
    let x = solve_differences(rays.len(), &equations);
    // Pairs that gave no equation count as incoherent.
    let mut values: Vec<f64> = equations.iter().map(|e| e.3).collect();
    values.resize(class.pairs.len(), 0.0);
    let coherence = median(&mut values).unwrap_or(0.0);
    if waveforms_differ(coherence, median_snr) {
        return;
    }
    let mut offsets: Vec<f64> = rays.iter().zip(&x).map(|(&r, &x)| pick_of(r) - x).collect();
    let median_level = median(&mut offsets).unwrap_or(0.0);
    let clipped: Vec<bool> = rays
        .iter()
        .map(|&(i, j)| picks[i][j].is_some_and(|p| p.clipped))
        .collect();
    let stack = Stack {
        set,
        bases,
        rays,
        clipped: &clipped,
        x: &x,
        guess: median_level,
        dt,
    };
    let one_waveform = shares_one_waveform(coherence, median_snr) && stack.phases_spread();
    let level = if one_waveform {
        stack.fitted_onset()
    } else {
        stack.crossing_onset()
    }
    .unwrap_or(median_level);
    // Each ray's own pick brackets its arrival: after its last quiet sample (less a little
    // slack for a slow rise) and no later than its first risen one. A ray picked on a later
    // lobe has its first lobe among its "quiet" samples: only its first risen one bounds it.
    let inside = |p: &Pick, refined: f64, flipped: bool| {
        let (quiet, risen) = p.bracket_us;
        refined <= risen && (flipped || refined >= quiet - BRACKET_SLACK * dt)
    };
    let n_inside = |level: f64| {
        rays.iter()
            .zip(&x)
            .zip(&flipped)
            .filter(|&((&(i, j), &x), &f)| picks[i][j].is_some_and(|p| inside(&p, x + level, f)))
            .count()
    };
    // Beyond half a sample from the median of the class's picks, the level crossed on noise
    // (whole classes came out a sample early), or the picks' median is the one that is off:
    // a pick on one rising sample is only known within that sample, and at 30 dB whole
    // classes' medians came out late by up to half a sample. A fitted onset there stands
    // where it keeps at least three rays in four within their own brackets; a crossing
    // gives way to the median.
    let level = if (level - median_level).abs() > LEVEL_GUARD_SAMPLES * dt
        && (!one_waveform || STACK_KEEPS_DEN * n_inside(level) < STACK_KEEPS_NUM * rays.len())
    {
        median_level
    } else {
        level
    };
    let moves = |p: &Pick, refined: f64, flipped: bool, dt_us: f64| {
        let near = (refined - p.t_us).abs() < dt_us
            || (flipped
                && one_waveform
                && refined < p.t_us
                && p.t_us - refined < FLIPPED_MOVE * dt_us);
        near && inside(p, refined, flipped)
    };
    for ((&(i, j), &x), &f) in rays.iter().zip(&x).zip(&flipped) {
        if let Some(p) = picks[i][j].as_mut() {
            p.one_waveform = one_waveform;
            let refined = x + level;
            // A ray the correlations disagree with by over a sample keeps its pick (but for one
            // picked on a later lobe of its class's one waveform, which they may move earlier
            // by up to FLIPPED_MOVE samples), and so does one they would put after its first
            // sample that stands out of the noise: no arrival comes after a sample that already
            // shows it (the correlations of waveforms that differ beyond their first arrival
            // lock onto later phases).
            if moves(p, refined, f, set[i].dt_us) {
                p.t_us = refined;
            }
        }
    }
}

/// Whether a class's rays carry one waveform closely enough to be fitted as one: their median
/// correlation is at least [`ONE_WAVEFORM_VALUE`] where noise cannot lower it (median SNR
/// above [`COHERENT_SNR`]), at least [`COHERENT_VALUE`] below. Measured on 30 varied sets
/// per model (10th percentile and median of the classes): `shared` 0.93 and 0.95 at 40 dB
/// (SNRs below 100 but for 3 classes in 120), 0.81 and 0.89 at 30 dB; `field-close` 0.69 and
/// 0.80 at SNRs above 100 (a pulse of each path's own); `field` 0.2 and 0.39. With 0.9 instead
/// of 0.95 the few `field-close` classes above 0.9 were fitted and the velocity p90 rose from
/// 12.0 to 12.2 %.
fn shares_one_waveform(value: f64, snr: f64) -> bool {
    value
        >= if snr > COHERENT_SNR {
            ONE_WAVEFORM_VALUE
        } else {
            COHERENT_VALUE
        }
}

/// The aligned rays of a class, ready to be stacked: each ray's samples shifted by its
/// relative arrival `x` and scaled by its first lobe. Since the rays' sub-sample phases
/// differ, together they draw the common early waveform about `rays.len()` times more densely
/// than one ray does. Onsets are on the `x` axis (ray r's arrival is `x[r] + onset`); `guess`
/// is the median of the class's picks on that axis.
struct Stack<'a> {
    set: &'a [Prepared; N_SENSORS],
    bases: &'a [Baseline; N_SENSORS],
    rays: &'a [(usize, usize)],
    clipped: &'a [bool],
    x: &'a [f64],
    guess: f64,
    dt: f64,
}

/// One ray's first lobe in a [`Stack`].
struct Lobe<'a> {
    t_us: &'a [f64],
    raw: &'a [f32],
    rest: f64,
    /// The ray's relative arrival.
    x: f64,
    /// The first sample looked at, the lobe's largest one and its signed deviation.
    k0: usize,
    kmax: usize,
    amp: f64,
}

impl Lobe<'_> {
    fn dev(&self, k: usize) -> f64 {
        self.raw[k] as f64 - self.rest
    }
}

impl Stack<'_> {
    /// Each unclipped ray's first lobe: its largest deviation between [`LOBE_BEFORE`] and
    /// [`LOBE_AFTER`] sampling intervals around its aligned arrival. A clipped ray's shape is
    /// cut off: it is aligned, but not stacked.
    fn lobes(&self) -> impl Iterator<Item = Lobe<'_>> {
        let dt = self.dt;
        self.rays
            .iter()
            .zip(self.x)
            .zip(self.clipped)
            .filter(|&(_, &clipped)| !clipped)
            .filter_map(move |((&(i, j), &xr), _)| {
                let tap = &self.set[i];
                let arrival = xr + self.guess;
                let k0 = tap
                    .t_us
                    .partition_point(|&t| t < arrival - LOBE_BEFORE * dt);
                let k1 = tap
                    .t_us
                    .partition_point(|&t| t < arrival + LOBE_AFTER * dt)
                    .min(tap.raw[j].len());
                let mut lobe = Lobe {
                    t_us: &tap.t_us,
                    raw: &tap.raw[j],
                    rest: self.bases[j].rest,
                    x: xr,
                    k0,
                    kmax: k0,
                    amp: 0.0,
                };
                for k in k0..k1 {
                    if lobe.dev(k).abs() > lobe.amp.abs() {
                        (lobe.kmax, lobe.amp) = (k, lobe.dev(k));
                    }
                }
                (k1 > k0 && lobe.amp.abs() >= 1e-9 && lobe.kmax > k0).then_some(lobe)
            })
    }

    /// Where the stacked curve, each ray scaled by its window's largest sample, first crosses
    /// [`STACK_LEVEL`] of its lobe, moved back along the local slope to zero. Used where the
    /// rays' waveforms differ ([`shares_one_waveform`]).
    fn crossing_onset(&self) -> Option<f64> {
        let (dt, guess) = (self.dt, self.guess);
        let mut points: Vec<(f64, f64)> = Vec::new();
        for lobe in self.lobes() {
            for k in lobe.k0..=lobe.kmax {
                points.push((lobe.t_us[k] - lobe.x, lobe.dev(k) / lobe.amp));
            }
        }
        if points.len() < MIN_STACK_POINTS {
            return None;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Smoothed curve by local linear regression over ±dt/8.
        let half = dt / STACK_SMOOTHING;
        let local = |tau: f64| -> Option<(f64, f64)> {
            let lo = points.partition_point(|p| p.0 < tau - half);
            let hi = points.partition_point(|p| p.0 <= tau + half);
            let pts = &points[lo..hi];
            if pts.len() < 3 {
                return None;
            }
            let n = pts.len() as f64;
            let mt = pts.iter().map(|p| p.0).sum::<f64>() / n;
            let mv = pts.iter().map(|p| p.1).sum::<f64>() / n;
            let stt: f64 = pts.iter().map(|p| (p.0 - mt).powi(2)).sum();
            let stv: f64 = pts.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
            let slope = if stt > 0.0 { stv / stt } else { 0.0 };
            Some((mv + slope * (tau - mt), slope))
        };
        let start = guess - SCAN_BEFORE * dt;
        // Kept as first written: the float quotient rounds down to 299 steps for about one
        // interval in eleven, and the estimates depend on it.
        let steps = (SCAN_SAMPLES * dt / (dt / SCAN_STEPS_PER_SAMPLE)) as usize;
        (0..steps).find_map(|s| {
            let tau = start + s as f64 * dt / SCAN_STEPS_PER_SAMPLE;
            local(tau)
                .filter(|&(v, slope)| v > STACK_LEVEL && slope > 0.0)
                .map(|(v, slope)| tau - v / slope)
        })
    }

    /// Where a hinge `y = a·h + b·h²`, `h = (t − t₀)₊`, fitted by least squares to the
    /// stacked quiet samples and rises, leaves zero. Each ray is scaled by its first lobe's
    /// top (followed past the window while the lobe still grows, and interpolated between
    /// samples) and enters with its samples up to the first that reaches [`FIT_TOP`] of it.
    /// Every ray's samples weigh in, so one ray aligned a few µs off moves the onset by its
    /// share; the crossing followed the earliest rays and a slope measured on three points.
    /// Whether the rays' arrivals fall at different phases of their sampling intervals (no
    /// gap between neighbouring phases, around the circle, wider than [`MAX_PHASE_GAP`] of an
    /// interval), so that together they draw the rise densely enough for a fit. Rays that all
    /// sample it at one phase (a symmetric synthetic trunk) give the fit a few points on a
    /// curve, and its line back to zero missed by up to 13 % of the time of flight; the
    /// crossing does not depend on it.
    fn phases_spread(&self) -> bool {
        let mut phases: Vec<f64> = self
            .lobes()
            .filter_map(|lobe| {
                let t0 = *lobe.t_us.first()?;
                Some(((lobe.x + self.guess - t0) / self.dt).rem_euclid(1.0))
            })
            .collect();
        if phases.len() < 2 {
            return false;
        }
        phases.sort_by(f64::total_cmp);
        let wrap = phases[0] + 1.0 - phases[phases.len() - 1];
        let widest = phases.windows(2).map(|w| w[1] - w[0]).fold(wrap, f64::max);
        widest <= MAX_PHASE_GAP
    }

    fn fitted_onset(&self) -> Option<f64> {
        let dt = self.dt;
        let mut points: Vec<(f64, f64)> = Vec::new();
        for lobe in self.lobes() {
            let top = lobe_top(&lobe);
            for k in lobe.k0..=lobe.kmax.max(top.0) {
                let y = lobe.dev(k) / top.1;
                points.push((lobe.t_us[k] - lobe.x, y));
                if y >= FIT_TOP {
                    break;
                }
            }
        }
        if points.len() < MIN_STACK_POINTS {
            return None;
        }
        Some(hinge_fit_with(
            &points,
            self.guess - FIT_BEFORE * dt,
            self.guess + FIT_AFTER * dt,
            true,
            FIT_STEPS,
        ))
    }
}

/// The top of a ray's first lobe: from its window's largest sample on while the lobe still
/// grows (at most [`TOP_FOLLOW`] samples), its value interpolated by a parabola through the
/// top sample and its neighbours. Returns the top sample and the signed amplitude. A lobe
/// cut off by the window's end, or sampled away from its top, would scale the ray's rise up.
fn lobe_top(lobe: &Lobe) -> (usize, f64) {
    let n = lobe.raw.len().min(lobe.t_us.len());
    let sign = lobe.amp.signum();
    let mut k = lobe.kmax;
    while k + 1 < n && k < lobe.kmax + TOP_FOLLOW && sign * lobe.dev(k + 1) > sign * lobe.dev(k) {
        k += 1;
    }
    let b = lobe.dev(k);
    if k + 1 >= n || k <= lobe.k0 {
        return (k, b);
    }
    let (a, c) = (lobe.dev(k - 1), lobe.dev(k + 1));
    let den = a - 2.0 * b + c;
    if den.abs() <= 1e-9 {
        return (k, b);
    }
    let u = (0.5 * (a - c) / den).clamp(-0.5, 0.5);
    (k, b - 0.25 * (a - c) * u)
}

/// How far (in samples) before a ray's last quiet sample its aligned arrival may lie: a slow
/// rise can stay within the noise for part of a sample.
const BRACKET_SLACK: f64 = 0.5;
/// How far (in samples) the stacked onset may lie from the median of the class's picks
/// without being held against the rays' brackets.
const LEVEL_GUARD_SAMPLES: f64 = 0.5;
/// Beyond the guard, a fitted onset stands where it keeps at least `NUM / DEN` of the
/// class's rays within their own brackets.
const STACK_KEEPS_NUM: usize = 3;
const STACK_KEEPS_DEN: usize = 4;
/// Correlation a class's rays must reach, where noise cannot lower it, to be fitted as one
/// waveform ([`shares_one_waveform`]).
const ONE_WAVEFORM_VALUE: f64 = 0.95;
/// The widest gap between the phases of a class's arrivals in their sampling intervals, in
/// intervals, that still lets its stacked rises be fitted ([`Stack::phases_spread`]).
const MAX_PHASE_GAP: f64 = 0.75;
/// Each ray's first lobe is looked for from this many sampling intervals before its aligned
/// arrival...
const LOBE_BEFORE: f64 = 2.0;
/// ...to this many after.
const LOBE_AFTER: f64 = 1.5;
/// A lobe's top is followed at most this many samples past that window's largest sample.
const TOP_FOLLOW: usize = 4;
/// Each ray's samples enter the stacked fit up to the first that reaches this fraction of its
/// first lobe: the early rise, where a hinge with a quadratic bend describes the pulse.
const FIT_TOP: f64 = 0.5;
/// Fewer stacked points than this draw no curve.
const MIN_STACK_POINTS: usize = 8;
/// The fitted onset is searched from this many sampling intervals before the median pick...
const FIT_BEFORE: f64 = 1.5;
/// ...to this many after it...
const FIT_AFTER: f64 = 1.0;
/// ...over this many candidate onsets (0.17 µs apart at 27 µs).
const FIT_STEPS: usize = 400;
/// Crossing level of the stacked curve, as a fraction of the first peak.
const STACK_LEVEL: f64 = 0.15;
/// The curve is smoothed over ±dt / this.
const STACK_SMOOTHING: f64 = 8.0;
/// The crossing is searched from this many sampling intervals before the median pick...
const SCAN_BEFORE: f64 = 1.5;
/// ...over this many intervals...
const SCAN_SAMPLES: f64 = 3.0;
/// ...in steps of one interval over this.
const SCAN_STEPS_PER_SAMPLE: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onset::testing::prepared;

    const DT: f64 = 27.0;

    #[test]
    fn a_ray_window_starts_before_the_pick_and_fades_out() {
        let tap = prepared(std::array::from_fn(|_| vec![100.0; 64]));
        let (start, w) = ray_window(&tap, 2, 10.0 * DT, DT);
        assert_eq!(start, (10 - RAY_PRE) as f64 * DT);
        assert_eq!(w.len(), RAY_WINDOW);
        assert!(
            w[..=RAY_WINDOW / 2]
                .iter()
                .all(|&v| (v - 100.0).abs() < 1e-3)
        );
        assert!(w[RAY_WINDOW - 1] < 5.0, "{w:?}");
        // A pick at the very start cannot reach before the record.
        assert_eq!(ray_window(&tap, 2, DT, DT).0, 0.0);
    }

    #[test]
    fn the_stacked_onset_of_rays_at_many_phases_is_where_their_rise_begins() {
        // Twelve rays rise from 270 µs plus a phase of r/12 of an interval to a top of 300
        // counts over a rest of 2000. Aligned by their phases they draw one rise twelve times
        // more densely than a ray does. A linear ramp to a flat top over one interval, and a
        // quarter sine over two (a linear start that bends over, as a first half-cycle does).
        let ramp = |h: f64| h.clamp(0.0, 1.0);
        let quarter_sine = |h: f64| (0.25 * std::f64::consts::PI * h.clamp(0.0, 2.0)).sin();
        let rays: Vec<(usize, usize)> = (0..N_SENSORS)
            .flat_map(|i| (0..N_SENSORS).map(move |j| (i, j)))
            .filter(|&(i, j)| i != j)
            .take(12)
            .collect();
        let phase = |r: usize| r as f64 * DT / 12.0;
        let set_of = |shape: &dyn Fn(f64) -> f64| -> [Prepared; N_SENSORS] {
            std::array::from_fn(|i| {
                prepared(std::array::from_fn(|j| {
                    let t0 = rays
                        .iter()
                        .position(|&ray| ray == (i, j))
                        .map_or(f64::INFINITY, |r| 270.0 + phase(r));
                    (0..64)
                        .map(|k| (2000.0 + 300.0 * shape((k as f64 * DT - t0) / DT)) as f32)
                        .collect()
                }))
            })
        };
        let bases = [Baseline {
            rest: 2000.0,
            sigma: 2.0,
        }; N_SENSORS];
        let x: Vec<f64> = (0..rays.len()).map(phase).collect();
        let clipped = vec![false; rays.len()];
        let (ramp_set, sine_set) = (set_of(&ramp), set_of(&quarter_sine));
        let stack = |set: &'static str, n: usize| Stack {
            set: if set == "ramp" { &ramp_set } else { &sine_set },
            bases: &bases,
            rays: &rays[..n],
            clipped: &clipped[..n],
            x: &x[..n],
            guess: 275.0,
            dt: DT,
        };
        let crossing = stack("ramp", rays.len()).crossing_onset().unwrap();
        assert!((crossing - 270.0).abs() < 0.5, "{crossing}");
        let fitted = stack("sine", rays.len()).fitted_onset().unwrap();
        assert!((fitted - 270.0).abs() < 0.5, "{fitted}");
        // Too few rays draw no curve.
        assert_eq!(stack("sine", 1).fitted_onset(), None);
        assert_eq!(stack("ramp", 1).crossing_onset(), None);
    }
}
