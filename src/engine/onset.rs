//! The onset method: physics-aware times of flight.
//!
//! 1. Rest level and noise of each channel are pooled over the seven taps where it receives,
//!    from the samples before any plausible arrival (faster than the fastest velocity).
//! 2. On each receiver the first arrival is the first sample beyond `ONSET_SIGMAS` noise
//!    sigmas and beyond a fraction of the ray's peak that follows the set's measured
//!    noise-to-peak ratio ([`onset_fraction`]), refined below one sample by a least-squares
//!    hinge fit `y = a·(t − t_a)₊` over the quiet samples before it and the first rising
//!    one(s): the onset `t_a` is where the rise leaves the rest level, not where it crosses a
//!    threshold. Rays of one chord class are aligned by GCC-PHAT between them where their
//!    waveforms agree ([`waveforms_differ`]).
//! 3. The tapped channel clips from its first samples, so it only says that the tap happened
//!    at most about one sample before the first sample. The tap instants relative to each
//!    other come from reciprocity: the recordings i→j and j→i travel the same path, so their
//!    onsets and their waveforms (GCC-PHAT between the two) differ only by the difference of
//!    the two tap instants. A robust (Cauchy-weighted) least-squares fit over the 28 pairs
//!    gives the eight instants up to a common offset; the offset is the prior that the
//!    trigger falls uniformly within the sample before the first one (`lead = dt/2` on
//!    average), or the device's own mean lead ([`EngineConfig::trigger_lead`]).

use super::gcc::{self, PairBatch};
use super::{
    EngineConfig, Prepared, RayFlag, SetEstimate, empty_estimate, finish, max_lag_samples,
};
use crate::geometry::N_SENSORS;
use crate::geometry::chord_m;

/// Threshold of the first-arrival detector, in noise standard deviations.
pub const ONSET_SIGMAS: f64 = 6.0;
/// The most the first-arrival threshold asks as a fraction of the largest deviation in the
/// window ([`onset_fraction`] picks the set's fraction up to this): the noise of a loud ray
/// stays below it. The noise sigma is pooled per channel, but where noise grows with the
/// signal a ray can be noisier than its channel's pool (a short chord's loud arrival brings
/// more vibration in absolute counts); at 30 dB a ray's noise is 3 % of its peak, so 15 % is
/// five of its own sigmas. Measured on 60 varied simulated sets at 30 dB, against 5 %: median
/// |ToF error| 5.4 µs instead of 5.9, velocity p90 8.0 % instead of 8.6 %.
pub const ONSET_FRACTION: f64 = 0.15;
/// The least fraction of the peak the threshold uses, however quiet the set
/// ([`onset_fraction`]): cross-talk and the hammer's first touch stay below it.
pub const MIN_ONSET_FRACTION: f64 = 0.03;
/// Noise floor in ADC counts (12-bit quantisation and the amplifier's hum).
pub const MIN_SIGMA: f64 = 2.0;
/// Counts of margin inside the clip levels seen on a channel.
const CLIP_MARGIN: f32 = 12.0;

/// A first arrival on one receiver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    /// µs after the first sample of the file.
    pub t_us: f64,
    /// Largest |deviation| in the window, in noise sigmas: the larger of the channel's pooled
    /// sigma and the set's [`noise_to_peak`] ratio times this peak. So where noise grows with
    /// the signal a loud ray is not louder than its own noise (at 10 dB on the `shared`
    /// simulator every ray is then below [`EngineConfig::min_snr`] and flagged, where the
    /// pooled sigma alone let 5 % through with a median velocity error of 30 %).
    pub snr: f64,
    /// The rise was clipped before two samples could be fitted.
    pub clipped: bool,
    /// The record stands out of the noise before the pick: the first arrival may be an
    /// earlier one too weak to pick, so the pick may be a later phase.
    pub hidden_arrival: bool,
}

/// Rest level and noise sigma of one channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    pub rest: f64,
    pub sigma: f64,
}

/// How many samples at the start of ray i→j (tap `i`, receiver `j`) are quiet for sure: the
/// wave cannot arrive before chord / v_max after the tap, and the tap is at most one sample
/// (or the trigger lead and half a sample) before the first sample. The first two count always.
fn quiet_len(cfg: &EngineConfig, tap: &Prepared, i: usize, j: usize) -> usize {
    let before_first_us = (cfg.trigger_lead + 0.5).max(1.0) * tap.dt_us;
    let earliest_us = chord_m(i, j, cfg.diameter_m) / cfg.max_velocity_m_s * 1e6 - before_first_us;
    let n = tap.t_us.len().min(tap.raw[j].len());
    (0..n)
        .take_while(|&k| k < 2 || tap.t_us[k] < earliest_us)
        .count()
}

/// Pools quiet samples of channel `j` over the taps where it receives.
pub fn baseline(cfg: &EngineConfig, set: &[Prepared; N_SENSORS], j: usize) -> Baseline {
    let mut quiet = Vec::new();
    for (i, tap) in set.iter().enumerate() {
        if i == j {
            continue;
        }
        quiet.extend(
            tap.raw[j][..quiet_len(cfg, tap, i, j)]
                .iter()
                .map(|&x| x as f64),
        );
    }
    let rest = super::median(&mut quiet).unwrap_or(2100.0);
    let mut dev: Vec<f64> = quiet.iter().map(|x| (x - rest).abs()).collect();
    let mad = super::median(&mut dev).unwrap_or(0.0);
    Baseline {
        rest,
        sigma: (1.4826 * mad).max(MIN_SIGMA),
    }
}

/// The set's noise-to-peak ratio: the median over the rays of the RMS deviation of their
/// quiet samples (those before the earliest possible arrival, as in [`baseline`]) over their
/// peak; infinite when no ray has both.
///
/// A ray's noise is taken as the larger of its channel's pooled sigma and this ratio times
/// its peak, and the onset threshold's fraction of the peak follows it ([`onset_fraction`]).
/// Where the noise grows with the signal (a loud ray carries more vibration in counts), the
/// pooled sigma underestimates a loud ray's noise and the ratio keeps the picker off it.
/// Where the noise is the amplifier's alone (real recordings: a few counts under arrivals of
/// hundreds), a fixed 15 % of the peak would skip a weak first arrival that precedes a much
/// bigger later phase and pick that phase instead, several samples late.
pub fn noise_to_peak(
    cfg: &EngineConfig,
    set: &[Prepared; N_SENSORS],
    bases: &[Baseline; N_SENSORS],
) -> f64 {
    let mut ratios = Vec::with_capacity(N_SENSORS * (N_SENSORS - 1));
    for (i, tap) in set.iter().enumerate() {
        let max_lag = max_lag_samples(cfg, tap.dt_us).max(2) as usize;
        for (j, base) in bases.iter().enumerate() {
            if i == j {
                continue;
            }
            let raw = &tap.raw[j];
            let n = raw.len().min(max_lag + 3).min(tap.t_us.len());
            let peak = raw[..n]
                .iter()
                .map(|&x| (x as f64 - base.rest).abs())
                .fold(0.0, f64::max);
            let n_quiet = quiet_len(cfg, tap, i, j).min(n);
            let sum_sq: f64 = raw[..n_quiet]
                .iter()
                .map(|&x| (x as f64 - base.rest).powi(2))
                .sum();
            if peak > 0.0 && n_quiet > 0 {
                ratios.push((sum_sq / n_quiet as f64).sqrt() / peak);
            }
        }
    }
    super::median(&mut ratios).unwrap_or(f64::INFINITY)
}

/// The onset threshold's fraction of a ray's peak: [`ONSET_SIGMAS`] times the set's
/// [`noise_to_peak`] ratio, between [`MIN_ONSET_FRACTION`] and [`ONSET_FRACTION`].
pub fn onset_fraction(noise_to_peak: f64) -> f64 {
    (ONSET_SIGMAS * noise_to_peak).clamp(MIN_ONSET_FRACTION, ONSET_FRACTION)
}

/// Deviation from rest, in ADC counts, that only the hammer's impact reaches within the first
/// samples: about 100 counts short of the amplifier's clip levels (≈ 1050 and 4080 around a
/// rest level of ≈ 2100).
pub const IMPACT_COUNTS: f64 = 900.0;

/// Another channel than the named one that carries the hammer's impact in one tap file, when
/// the data say so clearly: it deviates by [`IMPACT_COUNTS`] within its first two samples
/// while the channel the file names as tapped does so at least two samples later (or never).
/// `None` when the named channel is not beaten. A receiver cannot beat the tapped channel by
/// two samples: the tapped channel clips from its first samples.
///
/// On the real set one file named as the tap on sensor 5 has sensor 4 clipped from its first
/// sample, sensors 3 and 5 answering two samples later, and sensor 5 reaching the impact
/// level only at sample 5: the operator tapped sensor 4. Its rays are flagged instead of
/// being read as rays from sensor 5.
pub fn impact_channel(
    tap: &Prepared,
    named: usize,
    bases: &[Baseline; N_SENSORS],
) -> Option<usize> {
    let first_big = |c: usize| {
        tap.raw[c]
            .iter()
            .position(|&x| (x as f64 - bases[c].rest).abs() > IMPACT_COUNTS)
    };
    let named_first_big = first_big(named);
    (0..N_SENSORS)
        .filter(|&c| c != named)
        .filter_map(|c| Some((first_big(c)?, c)))
        .filter(|&(k, _)| k <= 1 && named_first_big.is_none_or(|n| n >= k + 2))
        .min()
        .map(|(_, c)| c)
}

/// Which file serves as each sensor's tap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reassignment {
    /// The file (by its named tap) used as the tap on each sensor.
    pub tap_source: [usize; N_SENSORS],
    /// Per file: the sensor its impact is on, when not the named one.
    pub impact_elsewhere: [Option<usize>; N_SENSORS],
}

/// Finds each file's impact channel ([`impact_channel`]) and uses a file that hit sensor `c`
/// instead of its named one as the tap on `c`, when `c`'s own file hit elsewhere too and no
/// other file claims `c`. So an operator who tapped sensor 4 for "tap 5" after tapping
/// sensor 3 for "tap 4" (the real set) still gives sensor 4 its row, from the file that
/// really holds it; sensor 5 has none and its row stays flagged. A sensor whose own file is
/// right keeps it: a second tap on it is left out.
pub fn reassign(cfg: &EngineConfig, set: &[Prepared; N_SENSORS]) -> Reassignment {
    let bases: [Baseline; N_SENSORS] = std::array::from_fn(|j| baseline(cfg, set, j));
    let impact_elsewhere: [Option<usize>; N_SENSORS] =
        std::array::from_fn(|i| impact_channel(&set[i], i, &bases));
    let tap_source = std::array::from_fn(|c| {
        let mut claims = (0..N_SENSORS).filter(|&i| impact_elsewhere[i] == Some(c));
        match (impact_elsewhere[c], claims.next(), claims.next()) {
            (Some(_), Some(i), None) => i,
            _ => c,
        }
    });
    Reassignment {
        tap_source,
        impact_elsewhere,
    }
}

/// Picks the first arrival on `raw` (one receiver of one tap) inside samples `..=max_lag`;
/// `noise_to_peak` is the set's [`noise_to_peak`] ratio.
pub fn pick(
    raw: &[f32],
    t_us: &[f64],
    base: Baseline,
    noise_to_peak: f64,
    max_lag: usize,
) -> Option<Pick> {
    pick_from(raw, t_us, base, noise_to_peak, 1, max_lag)
}

/// [`pick`] searching from sample `first` (at least 1) up to `max_lag`.
pub fn pick_from(
    raw: &[f32],
    t_us: &[f64],
    base: Baseline,
    noise_to_peak: f64,
    first: usize,
    max_lag: usize,
) -> Option<Pick> {
    let first = first.max(1);
    let n = raw.len().min(max_lag + 3).min(t_us.len());
    if n < 3 || first + 1 >= n {
        return None;
    }
    let (lo_clip, hi_clip) = raw
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let clipped_at = |x: f32| {
        // A channel is only considered clipped at its extremes if they are far from rest.
        (x >= hi_clip - CLIP_MARGIN && (hi_clip as f64 - base.rest) > 800.0)
            || (x <= lo_clip + CLIP_MARGIN && (base.rest - lo_clip as f64) > 800.0)
    };
    let dev = |k: usize| raw[k] as f64 - base.rest;
    let peak = (first..n).map(|k| dev(k).abs()).fold(0.0, f64::max);
    let thr = (ONSET_SIGMAS * base.sigma).max(onset_fraction(noise_to_peak) * peak);
    let k1 = (first..n.min(max_lag + 1)).find(|&k| dev(k).abs() > thr)?;
    let polarity = dev(k1).signum();
    let y = |k: usize| polarity * dev(k);
    let sigma = if noise_to_peak.is_finite() {
        base.sigma.max(noise_to_peak * peak)
    } else {
        base.sigma
    };
    // The threshold can sit well up a slow rise: samples before k1 that already stand clearly
    // out of the noise on the same side belong to the arrival, which began before them.
    let mut k_s = k1;
    while k_s > first && y(k_s - 1) > RISE_SIGMAS * sigma {
        k_s -= 1;
    }
    // Fit window: up to three quiet samples before k_s, the rise up to k1, and k1+1, k1+2
    // while it still rises and is not clipped.
    let k_lo = k_s.saturating_sub(3);
    let mut k_hi = k1;
    while k_hi + 1 < n && k_hi < k1 + 2 && y(k_hi + 1) > y(k_hi) && !clipped_at(raw[k_hi + 1]) {
        k_hi += 1;
    }
    let clipped = clipped_at(raw[k1]);
    let fit_end = if clipped { k1 - 1 } else { k_hi };
    let t_a = if clipped || fit_end <= k_s {
        // One rising sample (or a clipped one): the onset lies between the last quiet sample
        // and it, and nothing inside says where; the middle is unbiased. The chord-class
        // refinement below narrows it down with the help of the other rays.
        0.5 * (t_us[k_s - 1] + t_us[k_s])
    } else {
        hinge_fit(
            &(k_lo..=fit_end)
                .map(|k| (t_us[k], y(k)))
                .collect::<Vec<_>>(),
            t_us[k_s - 1],
            t_us[k_s],
        )
    };
    // Before the pick the record must be quiet: samples that stand out of the noise there
    // are an earlier arrival too weak to pick (or one the threshold put below itself), and the
    // pick is a later phase. The noise is the larger of the pooled sigma and the set's ratio
    // times this ray's peak; the rest is the first samples' own (a tap can shift a channel's
    // rest by tens of counts). Two samples beyond four sigmas before the rise: pure noise
    // does that in well under one ray in a hundred.
    let quiet_end = k_s.saturating_sub(1);
    let rest = if quiet_end >= 2 {
        0.5 * (dev(0) + dev(1))
    } else {
        dev(0)
    };
    let loud_before = (0..quiet_end)
        .filter(|&k| (dev(k) - rest).abs() > HIDDEN_SIGMAS * sigma)
        .count();
    Some(Pick {
        t_us: t_a,
        snr: peak / sigma,
        clipped,
        hidden_arrival: loud_before >= HIDDEN_SAMPLES,
    })
}

/// A sample before the threshold crossing this many noise sigmas out, on the arrival's side,
/// is part of the rise ([`pick_from`]). Measured on 40 varied sets per model, against no
/// walking back: `shared` 30 dB ToF median 4.75 µs instead of 5.00, `field` 40 dB 9.1 µs
/// instead of 9.5; at 3 sigmas the gains were a little larger but the worst velocity errors
/// grew from 30 to 50 % (noise walked over) and one more real ray left 300–3000 m/s.
const RISE_SIGMAS: f64 = 5.0;
/// A sample this many noise sigmas from the first samples' level counts as signal (the
/// check for an arrival hidden before the pick, in [`pick_from`]).
const HIDDEN_SIGMAS: f64 = 4.0;
/// That many such samples before the pick flag the ray.
const HIDDEN_SAMPLES: usize = 2;

/// Least-squares fit of `y = a·h + b·h²`, `h = (t − t_a)₊`, over `points`, `t_a` searched in
/// `[lo, hi]`. The quadratic term follows the bend of the first half-cycle, which a straight
/// line would extrapolate too early; with fewer than three rising points it is left out.
fn hinge_fit(points: &[(f64, f64)], lo: f64, hi: f64) -> f64 {
    let n_rising = points.iter().filter(|&&(t, _)| t >= hi).count();
    let quadratic = n_rising >= 3;
    let residual = |t_a: f64| {
        let (mut s11, mut s12, mut s22, mut y1, mut y2, mut yy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for &(t, y) in points {
            let h = (t - t_a).max(0.0);
            let h2 = if quadratic { h * h } else { 0.0 };
            s11 += h * h;
            s12 += h * h2;
            s22 += h2 * h2;
            y1 += y * h;
            y2 += y * h2;
            yy += y * y;
        }
        let det = s11 * s22 - s12 * s12;
        if quadratic && det > 1e-12 * s11 * s22 {
            let a = (y1 * s22 - y2 * s12) / det;
            let b = (s11 * y2 - s12 * y1) / det;
            yy - a * y1 - b * y2
        } else if s11 > 0.0 {
            yy - y1 * y1 / s11
        } else {
            yy
        }
    };
    let steps = 200;
    let mut best = (hi, f64::MAX);
    for s in 0..=steps {
        let t_a = lo + (hi - lo) * s as f64 / steps as f64;
        let r = residual(t_a);
        if r < best.1 {
            best = (t_a, r);
        }
    }
    best.0
}

/// What the first phase leaves for the correlations: picks and which windows were paired.
#[derive(Clone, Debug)]
pub struct OnsetPlan {
    picks: [[Option<Pick>; N_SENSORS]; N_SENSORS],
    bases: [Baseline; N_SENSORS],
    /// The set's [`noise_to_peak`] ratio.
    noise_to_peak: f64,
    /// Taps whose impact is on another channel than the one the file names.
    mismatched: [bool; N_SENSORS],
    classes: Vec<ClassPlan>,
    reciprocal: Vec<ReciprocalPlan>,
}

/// Rays of one chord class and their pairs in the batch.
#[derive(Clone, Debug)]
struct ClassPlan {
    rays: Vec<(usize, usize)>,
    /// First sample of each ray's window.
    /// Start of each ray's window, µs in its file's time axis (common grid `dt`).
    starts: Vec<f64>,
    /// `(a, b, pair index)`: ray b's window correlated against ray a's.
    pairs: Vec<(usize, usize, u32)>,
}

/// The pair i→j against j→i, both windows cut from the same sample.
#[derive(Clone, Debug)]
struct ReciprocalPlan {
    i: usize,
    j: usize,
    pair: u32,
}

/// The common time grid of a set's correlation windows: its mean sampling interval, µs.
fn grid_dt(set: &[Prepared; N_SENSORS]) -> f64 {
    set.iter().map(|t| t.dt_us).sum::<f64>() / N_SENSORS as f64
}

/// Phase one: baselines and picks, and the windows and pairs the correlator must compute
/// (appended to `batch`, whose `n_fft` must be at least 32).
pub fn plan(cfg: &EngineConfig, set: &[Prepared; N_SENSORS], batch: &mut PairBatch) -> OnsetPlan {
    let bases: [Baseline; N_SENSORS] = std::array::from_fn(|j| baseline(cfg, set, j));
    let mismatched: [bool; N_SENSORS] =
        std::array::from_fn(|i| impact_channel(&set[i], i, &bases).is_some());
    let dt = grid_dt(set);
    let noise_to_peak = noise_to_peak(cfg, set, &bases);
    let mut picks = [[None::<Pick>; N_SENSORS]; N_SENSORS];
    for (i, tap) in set.iter().enumerate() {
        let max_lag = max_lag_samples(cfg, tap.dt_us).max(2) as usize;
        for j in 0..N_SENSORS {
            if i != j {
                picks[i][j] = pick(&tap.raw[j], &tap.t_us, bases[j], noise_to_peak, max_lag);
            }
        }
    }
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
        if rays.len() < 3 {
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
    let mut reciprocal = Vec::new();
    for i in 0..N_SENSORS {
        for j in (i + 1)..N_SENSORS {
            let (Some(a), Some(b)) = (picks[i][j], picks[j][i]) else {
                continue;
            };
            if mismatched[i] || mismatched[j] {
                continue;
            }
            let (wa, wb) = reciprocal_windows(&set[i], &set[j], i, j, a.t_us, b.t_us, dt);
            let (ra, rb) = (batch.push_window(&wa), batch.push_window(&wb));
            reciprocal.push(ReciprocalPlan {
                i,
                j,
                pair: batch.push_pair(rb, ra),
            });
        }
    }
    OnsetPlan {
        picks,
        bases,
        noise_to_peak,
        mismatched,
        classes,
        reciprocal,
    }
}

/// Phase two: from the correlations of the plan's pairs to the estimate.
pub fn solve(
    cfg: &EngineConfig,
    set: &[Prepared; N_SENSORS],
    plan: &OnsetPlan,
    batch: &PairBatch,
    corr: &[f32],
) -> SetEstimate {
    let mut est = empty_estimate(set);
    let mut picks = plan.picks;
    for class in &plan.classes {
        refine_class(set, &plan.bases, &mut picks, class, batch, corr);
    }
    // Relative tap instants: lead_j − lead_i = α_ij − α_ji (picks) and the GCC-PHAT lag
    // between the reciprocal recordings.
    let dt = grid_dt(set);
    let mut gcc_equations: Vec<(usize, usize, f64, f64)> = Vec::new();
    for r in &plan.reciprocal {
        let (Some(a), Some(b)) = (picks[r.i][r.j], picks[r.j][r.i]) else {
            continue;
        };
        let expect = (a.t_us - b.t_us) / dt;
        let (lo, hi) = (
            (expect - 2.0).floor() as isize,
            (expect + 2.0).ceil() as isize,
        );
        if let Some(p) = gcc::find_peak(batch.correlation(corr, r.pair), lo, hi)
            .filter(|p| !p.on_edge && p.sharpness >= 1.2)
            .filter(|p| !waveforms_differ(p.value, a.snr.min(b.snr)))
        {
            gcc_equations.push((r.i, r.j, p.lag * dt, RECIPROCAL_GCC_WEIGHT));
        }
    }
    let leads_from = |picks: &[[Option<Pick>; N_SENSORS]; N_SENSORS]| {
        let mut equations = gcc_equations.clone();
        for i in 0..N_SENSORS {
            for j in (i + 1)..N_SENSORS {
                if plan.mismatched[i] || plan.mismatched[j] {
                    continue;
                }
                if let (Some(a), Some(b)) = (picks[i][j], picks[j][i]) {
                    equations.push((i, j, a.t_us - b.t_us, 1.0));
                }
            }
        }
        solve_leads(&equations, dt, cfg.trigger_lead * dt)
    };
    let mut leads = leads_from(&picks);
    // A pick before the earliest possible arrival (the tap instant plus the chord at the
    // fastest velocity) caught something else: on real recordings, the wiggles of a trigger
    // that fired before the hammer's real impact. Pick again from that instant on, and solve
    // the tap instants again.
    for _pass in 0..3 {
        let mut repicked = false;
        for i in 0..N_SENSORS {
            let tap = &set[i];
            for j in 0..N_SENSORS {
                let Some(p) = picks[i][j].filter(|_| i != j && !plan.mismatched[i]) else {
                    continue;
                };
                let earliest =
                    -leads[i] + chord_m(i, j, cfg.diameter_m) / cfg.max_velocity_m_s * 1e6;
                if p.t_us < earliest - 0.5 * dt {
                    let first = tap.t_us.partition_point(|&t| t < earliest);
                    let max_lag = first + max_lag_samples(cfg, tap.dt_us).max(2) as usize;
                    picks[i][j] = pick_from(
                        &tap.raw[j],
                        &tap.t_us,
                        plan.bases[j],
                        plan.noise_to_peak,
                        first,
                        max_lag,
                    );
                    repicked = true;
                }
            }
        }
        if !repicked {
            break;
        }
        leads = leads_from(&picks);
    }
    est.tap_lead_us = leads;
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i == j {
                continue;
            }
            match picks[i][j] {
                _ if plan.mismatched[i] => {
                    est.flags[i][j] = RayFlag::TapMismatch;
                    if let Some(p) = picks[i][j] {
                        est.tof_us[i][j] = p.t_us + leads[i];
                    }
                }
                None => est.flags[i][j] = RayFlag::NoPeak,
                Some(p) => {
                    est.tof_us[i][j] = p.t_us + leads[i];
                    est.flags[i][j] = if p.snr < cfg.min_snr || p.hidden_arrival {
                        RayFlag::LowSnr
                    } else {
                        RayFlag::Ok
                    };
                }
            }
        }
    }
    finish(cfg, &mut est);
    est
}

/// Each ray of a class is correlated with this many of the next rays in the class.
const CLASS_NEIGHBOURS: usize = 6;

/// Samples in the window that the ray-to-ray correlations look at.
const RAY_WINDOW: usize = 16;
/// Quiet samples kept before the pick in that window.
const RAY_PRE: usize = 3;

/// The early part of ray i→j on the set's common grid `dt`, from `RAY_PRE` intervals before
/// its pick; the tail is tapered. Returns the window's start (µs in the file's time axis).
fn ray_window(tap: &Prepared, j: usize, pick_us: f64, dt: f64) -> (f64, Vec<f32>) {
    let start = (pick_us - RAY_PRE as f64 * dt).max(0.0);
    let mut window = resample(&tap.channels[j], &tap.t_us, start, dt, RAY_WINDOW);
    for (k, v) in window.iter_mut().enumerate().skip(RAY_WINDOW / 2) {
        let x = (k - RAY_WINDOW / 2) as f64 / (RAY_WINDOW / 2) as f64;
        *v *= (0.5 + 0.5 * (std::f64::consts::PI * x).cos()) as f32;
    }
    (start, window)
}

/// `len` values of `x` (sampled at the instants `t_us`) at `t0 + k·dt`, by Catmull–Rom cubic
/// interpolation in each sample interval; 0 outside the record. Files of one set are sampled
/// at intervals up to 3 % apart and jitter by ±0.5 µs, so windows must share one time grid
/// before they are correlated: over ten samples 3 % is already a third of a sample.
pub fn resample(x: &[f32], t_us: &[f64], t0: f64, dt: f64, len: usize) -> Vec<f32> {
    let n = x.len().min(t_us.len());
    let at = |k: isize| -> f64 { x[k.clamp(0, n as isize - 1) as usize] as f64 };
    let mut k = 0usize;
    (0..len)
        .map(|i| {
            let t = t0 + i as f64 * dt;
            if n < 2 || t < t_us[0] || t > t_us[n - 1] {
                return 0.0;
            }
            while k + 2 < n && t_us[k + 1] <= t {
                k += 1;
            }
            let u = (t - t_us[k]) / (t_us[k + 1] - t_us[k]);
            let k = k as isize;
            let (p0, p1, p2, p3) = (at(k - 1), at(k), at(k + 1), at(k + 2));
            let v = p1
                + 0.5
                    * u
                    * (p2 - p0
                        + u * (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3
                            + u * (3.0 * (p1 - p2) + p3 - p0)));
            v as f32
        })
        .collect()
}

/// Rays of the same chord length through sound wood carry the same waveform, shifted by
/// their different tap instants and sub-sample phases. GCC-PHAT between them measures their
/// relative arrival far better than a pick can (a pick with one rising sample is only known
/// within one sample). The class's absolute level comes from the onset of the stacked
/// waveform ([`stacked_onset`]), or the median of the picks where that fails.
fn refine_class(
    set: &[Prepared; N_SENSORS],
    bases: &[Baseline; N_SENSORS],
    picks: &mut [[Option<Pick>; N_SENSORS]; N_SENSORS],
    class: &ClassPlan,
    batch: &PairBatch,
    corr: &[f32],
) {
    let rays = &class.rays;
    let dt_grid = grid_dt(set);
    let pick_of = |(i, j): (usize, usize)| picks[i][j].map_or(0.0, |p| p.t_us);
    let mut equations = Vec::new();
    for &(a, b, pair) in &class.pairs {
        let (pa, pb) = (pick_of(rays[a]), pick_of(rays[b]));
        let (ta, tb) = (class.starts[a], class.starts[b]);
        let dt = dt_grid;
        let expect = ((pb - tb) - (pa - ta)) / dt;
        let lo = (expect - 1.5).floor() as isize;
        let hi = (expect + 1.5).ceil() as isize;
        if let Some(p) = gcc::find_peak(batch.correlation(corr, pair), lo, hi)
            .filter(|p| !p.on_edge && p.value > 0.2)
        {
            equations.push((a, b, tb - ta + p.lag * dt, p.value));
        }
    }
    let x = solve_differences(rays.len(), &equations);
    // Pairs that gave no equation count as incoherent.
    let mut values: Vec<f64> = equations.iter().map(|e| e.3).collect();
    values.resize(class.pairs.len(), 0.0);
    let coherence = super::median(&mut values).unwrap_or(0.0);
    let mut snrs: Vec<f64> = rays
        .iter()
        .filter_map(|&(i, j)| picks[i][j].map(|p| p.snr))
        .collect();
    if waveforms_differ(coherence, super::median(&mut snrs).unwrap_or(0.0)) {
        return;
    }
    let mut offsets: Vec<f64> = rays.iter().zip(&x).map(|(&r, &x)| pick_of(r) - x).collect();
    let median_level = super::median(&mut offsets).unwrap_or(0.0);
    let dt = set.iter().map(|t| t.dt_us).sum::<f64>() / N_SENSORS as f64;
    let clipped: Vec<bool> = rays
        .iter()
        .map(|&(i, j)| picks[i][j].is_some_and(|p| p.clipped))
        .collect();
    let level =
        stacked_onset(set, bases, rays, &clipped, &x, median_level, dt).unwrap_or(median_level);
    // Beyond half a sample from the median of the class's picks, the stacked curve crossed
    // its level on noise, not on the arrival (whole classes came out a sample early).
    let level = if (level - median_level).abs() > LEVEL_GUARD_SAMPLES * dt {
        median_level
    } else {
        level
    };
    for (&(i, j), &x) in rays.iter().zip(&x) {
        if let Some(p) = picks[i][j].as_mut() {
            let refined = x + level;
            // A ray the correlations disagree with by over a sample keeps its pick.
            if (refined - p.t_us).abs() < set[i].dt_us {
                p.t_us = refined;
            }
        }
    }
}

/// Onset of the class's stacked waveform. Each ray's samples are shifted by its relative
/// arrival `x` and scaled by its first-lobe amplitude; since the rays' sub-sample phases differ,
/// together they draw the common early waveform about `rays.len()` times more densely than
/// one ray does. The onset is where that dense curve crosses `STACK_LEVEL` of its first
/// peak, moved back along the local slope to zero. Returns the onset on the `x` axis
/// (so ray r's arrival is `x[r] + onset`).
fn stacked_onset(
    set: &[Prepared; N_SENSORS],
    bases: &[Baseline; N_SENSORS],
    rays: &[(usize, usize)],
    clipped: &[bool],
    x: &[f64],
    guess: f64,
    dt: f64,
) -> Option<f64> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for ((&(i, j), &xr), &clipped) in rays.iter().zip(x).zip(clipped) {
        // A clipped ray's shape is cut off: it is aligned, but not stacked.
        if clipped {
            continue;
        }
        let tap = &set[i];
        let rest = bases[j].rest;
        let arrival = xr + guess;
        let k0 = tap.t_us.partition_point(|&t| t < arrival - 2.0 * dt);
        let k1 = tap
            .t_us
            .partition_point(|&t| t < arrival + 1.5 * dt)
            .min(tap.raw[j].len());
        if k1 <= k0 {
            continue;
        }
        let dev = |k: usize| tap.raw[j][k] as f64 - rest;
        // Polarity and amplitude of the first lobe.
        let (kmax, amp) = (k0..k1)
            .map(|k| (k, dev(k)))
            .fold((k0, 0.0f64), |acc, (k, v)| {
                if v.abs() > acc.1.abs() { (k, v) } else { acc }
            });
        if amp.abs() < 1e-9 || kmax == k0 {
            continue;
        }
        for k in k0..=kmax {
            points.push((tap.t_us[k] - xr, dev(k) / amp));
        }
    }
    if points.len() < 8 {
        return None;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Smoothed curve by local linear regression over ±dt/8.
    let half = dt / 8.0;
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
    let start = guess - 1.5 * dt;
    let steps = (3.0 * dt / (dt / 100.0)) as usize;
    (0..steps).find_map(|s| {
        let tau = start + s as f64 * dt / 100.0;
        local(tau)
            .filter(|&(v, slope)| v > STACK_LEVEL && slope > 0.0)
            .map(|(v, slope)| tau - v / slope)
    })
}

/// Correlation (GCC-PHAT peak value) below which two loud recordings do not carry the same
/// waveform. Measured: on simulated sets, where rays of one chord class and the two
/// directions of a path carry the same pulse, a class's median is 0.93–0.99 at 40 dB (class
/// median SNRs up to about 110) and 0.77–0.96 at 30 dB; reciprocal pairs' median 0.89 at
/// 40 dB. On the real set, with class median SNRs of 430–480, the classes' medians are
/// 0.0–0.53 and reciprocal pairs 0.09–0.6:
/// a real tree's paths differ in more than their delay (the big later phases dominate the
/// windows), so these correlations do not measure relative arrivals there.
const COHERENT_VALUE: f64 = 0.7;
/// Ray SNR (peak over noise sigma) above which noise cannot explain a low correlation. At 20 dB
/// the simulated classes' median values fall to 0.56–0.64 from noise alone, at SNRs of 8–10.
const COHERENT_SNR: f64 = 100.0;

/// Recordings whose correlation is `value` at SNR `snr` differ in their waveform, not only by
/// noise: aligning them by correlation would move picks by up to a sample (measured on the
/// real set), so the picks stand alone.
fn waveforms_differ(value: f64, snr: f64) -> bool {
    value < COHERENT_VALUE && snr > COHERENT_SNR
}

/// How far (in samples) the stacked onset may lie from the median of the class's picks.
const LEVEL_GUARD_SAMPLES: f64 = 0.5;
/// Crossing level of the stacked curve, as a fraction of the first peak.
const STACK_LEVEL: f64 = 0.15;
/// Weight of a reciprocal GCC-PHAT lag against a pick difference in the tap-instant fit.
const RECIPROCAL_GCC_WEIGHT: f64 = 2.0;

/// Least squares for `n` unknowns from weighted `x_b − x_a = d` equations `(a, b, d, w)`,
/// with mean zero. The normal equations (the weighted graph Laplacian) plus the all-ones
/// matrix, which fixes the free offset, are solved directly; a tiny ridge keeps unknowns in no
/// equation at 0. Systems have at most 16 unknowns.
pub fn solve_differences(n: usize, equations: &[(usize, usize, f64, f64)]) -> Vec<f64> {
    let mut m = vec![0.0f64; n * n];
    let mut rhs = vec![0.0f64; n];
    for &(a, b, d, w) in equations {
        m[a * n + a] += w;
        m[b * n + b] += w;
        m[a * n + b] -= w;
        m[b * n + a] -= w;
        rhs[b] += w * d;
        rhs[a] -= w * d;
    }
    let scale = (0..n).map(|k| m[k * n + k]).fold(0.0, f64::max).max(1.0);
    for r in 0..n {
        for c in 0..n {
            m[r * n + c] += scale / n as f64;
        }
        m[r * n + r] += 1e-9 * scale;
    }
    let mut x = gauss_solve(&mut m, &mut rhs, n);
    let mean = x.iter().sum::<f64>() / n.max(1) as f64;
    for v in &mut x {
        *v -= mean;
    }
    x
}

/// [`solve_differences`] with Cauchy weights: an equation with residual `r` gets its weight
/// divided by `1 + (r / scale)²`, over a few reweighted passes from the plain least squares.
/// One tap whose picks are all wrong (a trigger that fired before the impact, a weak tap that
/// left only noise) then moves its own unknown, not the others'. Residuals well within
/// `scale` keep nearly their weights, so consistent data are solved as by plain least squares.
pub fn solve_robust(n: usize, equations: &[(usize, usize, f64, f64)], scale: f64) -> Vec<f64> {
    let mut x = solve_differences(n, equations);
    let mut weighted = equations.to_vec();
    for _ in 0..ROBUST_PASSES {
        for (w, &(a, b, d, weight)) in weighted.iter_mut().zip(equations) {
            let r = (d - (x[b] - x[a])).abs();
            w.3 = weight / (1.0 + (r / scale).powi(2));
        }
        x = solve_differences(n, &weighted);
    }
    x
}

/// Reweighted passes of [`solve_robust`].
const ROBUST_PASSES: usize = 8;

/// Solves the dense `n×n` system `m·x = rhs` by Gaussian elimination with partial pivoting.
fn gauss_solve(m: &mut [f64], rhs: &mut [f64], n: usize) -> Vec<f64> {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&a, &b| m[a * n + col].abs().total_cmp(&m[b * n + col].abs()))
            .unwrap_or(col);
        if m[pivot * n + col].abs() < 1e-300 {
            continue;
        }
        if pivot != col {
            for c in 0..n {
                m.swap(pivot * n + c, col * n + c);
            }
            rhs.swap(pivot, col);
        }
        for r in (col + 1)..n {
            let f = m[r * n + col] / m[col * n + col];
            if f != 0.0 {
                for c in col..n {
                    m[r * n + c] -= f * m[col * n + c];
                }
                rhs[r] -= f * rhs[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = ((r + 1)..n).map(|c| m[r * n + c] * x[c]).sum();
        let d = m[r * n + r];
        x[r] = if d.abs() < 1e-300 {
            0.0
        } else {
            (rhs[r] - s) / d
        };
    }
    x
}

/// Windows of recording i→j and j→i around their first arrivals, cut from the same sample
/// index so their correlation lag is the difference of their arrivals in the files' own
/// time axes.
fn reciprocal_windows(
    tap_i: &Prepared,
    tap_j: &Prepared,
    i: usize,
    j: usize,
    pick_ij: f64,
    pick_ji: f64,
    dt: f64,
) -> (Vec<f32>, Vec<f32>) {
    let start = (pick_ij.min(pick_ji) - 4.0 * dt).max(0.0);
    let len = 24usize;
    let taper = |mut w: Vec<f32>| -> Vec<f32> {
        for (k, v) in w.iter_mut().enumerate() {
            let h = 0.5 - 0.5 * (std::f64::consts::TAU * (k as f64 + 0.5) / len as f64).cos();
            *v *= h.sqrt() as f32;
        }
        w
    };
    (
        taper(resample(&tap_i.channels[j], &tap_i.t_us, start, dt, len)),
        taper(resample(&tap_j.channels[i], &tap_j.t_us, start, dt, len)),
    )
}

/// Least squares for the eight leads from `lead_j − lead_i = d` equations (weighted, robust
/// at the scale of half a sampling interval `dt`), with the mean of the regular leads (within
/// two samples of their median) fixed to `mean_lead`. A tap in no equation (its file was
/// flagged, or none of its rays was picked) says nothing about the others: it stays out of
/// the median and the mean, and gets the prior `mean_lead` itself.
pub fn solve_leads(
    equations: &[(usize, usize, f64, f64)],
    dt: f64,
    mean_lead: f64,
) -> [f64; N_SENSORS] {
    let x = solve_robust(N_SENSORS, equations, 0.5 * dt);
    let mut tied = [false; N_SENSORS];
    for &(a, b, _, _) in equations {
        tied[a] = true;
        tied[b] = true;
    }
    // Pin the median, not the mean: one tap whose trigger fired long before the hammer's
    // real impact (seen on real recordings) must not shift the others.
    // The common offset is the mean over the taps within two samples of the median, which is
    // as good as the mean for regular triggers and ignores the odd one.
    let mut sorted: Vec<f64> = (0..N_SENSORS).filter(|&k| tied[k]).map(|k| x[k]).collect();
    let Some(median) = super::median(&mut sorted) else {
        return [mean_lead; N_SENSORS];
    };
    let near: Vec<f64> = sorted
        .iter()
        .copied()
        .filter(|v| (v - median).abs() <= 2.0 * dt)
        .collect();
    let pin = if near.is_empty() {
        median
    } else {
        near.iter().sum::<f64>() / near.len() as f64
    };
    std::array::from_fn(|k| {
        if tied[k] {
            x[k] - pin + mean_lead
        } else {
            mean_lead
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_solved_exactly_with_mean_zero() {
        let truth = [3.0, -1.0, 0.5, 7.0, -9.5];
        let mean = truth.iter().sum::<f64>() / 5.0;
        let mut eq = Vec::new();
        for a in 0..5 {
            for b in (a + 1)..5 {
                eq.push((a, b, truth[b] - truth[a], 1.0 + a as f64));
            }
        }
        let x = solve_differences(5, &eq);
        for (x, t) in x.iter().zip(truth) {
            assert!((x - (t - mean)).abs() < 1e-6, "{x} vs {}", t - mean);
        }
    }

    #[test]
    fn unknowns_in_no_equation_stay_at_the_mean() {
        // 0–1 connected, 2 alone.
        let x = solve_differences(3, &[(0, 1, 4.0, 1.0)]);
        assert!((x[1] - x[0] - 4.0).abs() < 1e-6);
        assert!(x.iter().sum::<f64>().abs() < 1e-9);
        assert!(x[2].abs() < 1e-6);
        assert_eq!(solve_differences(2, &[]), vec![0.0, 0.0]);
    }

    /// A receiver's record: rest 2000 counts, ±2 counts of fixed noise, then `shape` from
    /// sample `at` on; sampled every 27 µs.
    fn record(at: usize, shape: &[f32]) -> (Vec<f32>, Vec<f64>) {
        let n = 40;
        let raw = (0..n)
            .map(|k| {
                let noise = [1.0, -2.0, 0.0, 2.0, -1.0][k % 5];
                2000.0
                    + noise
                    + if k >= at {
                        shape.get(k - at).copied().unwrap_or(0.0)
                    } else {
                        0.0
                    }
            })
            .collect();
        (raw, (0..n).map(|k| k as f64 * 27.0).collect())
    }

    /// `precursor` from sample 6 on, then a main phase peaking at 1200 counts.
    fn two_phases(precursor: &[f32]) -> (Vec<f32>, Vec<f64>) {
        let mut shape = precursor.to_vec();
        shape.extend([500.0, 1100.0, 1200.0, 900.0, 400.0]);
        record(6, &shape)
    }

    const QUIET: Baseline = Baseline {
        rest: 2000.0,
        sigma: 2.0,
    };

    #[test]
    fn a_weak_first_arrival_ahead_of_a_big_phase_is_picked_where_the_noise_is_small() {
        // A first arrival of about 100 counts at sample 6, the main phase of 1200 at 13.
        let (raw, t) = two_phases(&[-40.0, -110.0, -90.0, -120.0, -60.0, -70.0, -50.0]);
        // Amplifier noise alone (a noise-to-peak ratio of 0.2 %): the weak arrival.
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!((5.0 * 27.0..=6.0 * 27.0).contains(&p.t_us), "{p:?}");
        assert!(!p.hidden_arrival, "{p:?}");
        // Noise that grows with the signal (5 % of the peak, 60 counts): 100 counts are
        // within the noise of a ray this loud, and the picker waits for the main phase.
        let p = pick(&raw, &t, QUIET, 0.05, 30).unwrap();
        assert!(p.t_us > 11.0 * 27.0, "{p:?}");
        assert!(!p.hidden_arrival, "{p:?}");
    }

    #[test]
    fn an_arrival_below_the_threshold_but_out_of_the_noise_flags_the_pick() {
        // 20–30 counts (10–15 sigmas) from sample 6: under the least fraction of the peak
        // (3 % of 1200 = 36 counts), so the pick is the main phase; the ray is flagged.
        let (raw, t) = two_phases(&[-20.0, -30.0, -25.0, -30.0, -20.0, -25.0, -20.0]);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!(p.t_us > 11.0 * 27.0, "{p:?}");
        assert!(p.hidden_arrival, "{p:?}");
    }

    #[test]
    fn a_clean_arrival_has_nothing_hidden_before_it() {
        let (raw, t) = record(8, &[300.0, 900.0, 1400.0, 1000.0, 200.0]);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!((7.0 * 27.0..=8.0 * 27.0).contains(&p.t_us), "{p:?}");
        assert!(!p.hidden_arrival, "{p:?}");
        // Noise-to-peak from the set's rays as measured: 2 counts of RMS over a peak of 1400.
        let p = pick(&raw, &t, QUIET, 2.0 / 1400.0, 30).unwrap();
        assert!(!p.hidden_arrival, "{p:?}");
    }

    fn tap_with(first_big: [Option<usize>; N_SENSORS]) -> Prepared {
        let n = 40;
        let raw: [Vec<f32>; N_SENSORS] = std::array::from_fn(|c| {
            (0..n)
                .map(|k| match first_big[c] {
                    Some(b) if k >= b => 4080.0,
                    Some(b) if k + 2 >= b => 2600.0,
                    _ => 2100.0,
                })
                .collect()
        });
        Prepared {
            channels: raw.clone(),
            t_us: (0..n).map(|k| k as f64 * 27.0).collect(),
            dt_us: 27.0,
            raw,
        }
    }

    #[test]
    fn the_impact_on_another_channel_than_the_named_one_is_found() {
        let bases = [Baseline {
            rest: 2100.0,
            sigma: 2.0,
        }; N_SENSORS];
        // The real set's pattern: named sensor 5 (index 4) reaches the impact level at sample
        // 5, sensor 4 (index 3) clips from sample 0, its neighbours follow.
        let mislabelled = tap_with([
            Some(15),
            Some(29),
            Some(4),
            Some(0),
            Some(5),
            Some(9),
            Some(9),
            None,
        ]);
        assert_eq!(impact_channel(&mislabelled, 4, &bases), Some(3));
        // A regular tap: the named channel clips at once, a close receiver two samples later.
        let regular = tap_with([None, None, None, Some(2), Some(0), Some(2), Some(7), None]);
        assert_eq!(impact_channel(&regular, 4, &bases), None);
        // The named channel one sample late (a trigger on the first touch) is not enough.
        let late = tap_with([None, None, None, Some(1), Some(2), None, None, None]);
        assert_eq!(impact_channel(&late, 4, &bases), None);
        // A named channel that never reaches the level loses to one that does at once.
        let silent = tap_with([Some(1), None, None, None, None, None, None, None]);
        assert_eq!(impact_channel(&silent, 2, &bases), Some(0));
    }

    #[test]
    fn leads_pin_the_mean_of_the_regular_taps() {
        // lead_j − lead_i = d: one tap fired far off; the mean of the seven others is pinned.
        let mut eq = Vec::new();
        let truth = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -300.0];
        for i in 0..8 {
            for j in (i + 1)..8 {
                eq.push((i, j, truth[j] - truth[i], 1.0));
            }
        }
        for mean_lead in [10.0, 0.0, 55.0] {
            let leads = solve_leads(&eq, 20.0, mean_lead);
            let regular = leads[..7].iter().sum::<f64>() / 7.0;
            assert!((regular - mean_lead).abs() < 1e-6, "{mean_lead}: {leads:?}");
            assert!((leads[1] - leads[0] - 1.0).abs() < 1e-6);
            assert!((leads[7] - leads[0] + 300.0).abs() < 1e-6);
        }
    }

    #[test]
    fn one_tap_of_wrong_picks_moves_its_own_lead_not_the_others() {
        // Tap 1's seven equations carry errors of ±2–3 samples (27 µs each); the other 21
        // are exact. Plain least squares spreads them over every lead; the robust fit keeps
        // the others' differences within a microsecond.
        let truth = [3.0, -300.0, 10.0, 20.0, 5.0, 15.0, 25.0, 1.0];
        let errors = [60.0, -75.0, 55.0, -60.0, 80.0, -55.0, 70.0];
        let mut eq = Vec::new();
        for i in 0..8 {
            for j in (i + 1)..8 {
                let mut d = truth[j] - truth[i];
                if i == 1 || j == 1 {
                    d += errors[if i == 1 { j - 1 } else { i }];
                }
                eq.push((i, j, d, 1.0));
            }
        }
        let worst = |x: &[f64]| {
            (2..8)
                .map(|k| ((x[k] - x[0]) - (truth[k] - truth[0])).abs())
                .fold(0.0, f64::max)
        };
        let plain = solve_differences(8, &eq);
        assert!(worst(&plain) > 5.0, "plain least squares: {plain:?}");
        let robust = solve_robust(8, &eq, 13.5);
        assert!(worst(&robust) < 1.0, "robust: {robust:?}");
    }

    #[test]
    fn a_tap_in_no_equation_neither_moves_the_pin_nor_gets_a_made_up_lead() {
        // Taps 3 and 4 are in no equation (flagged files): the least squares leave them at
        // the mean of the others, which must not count as two more regular leads.
        let truth = [0.0, 20.0, 40.0, 0.0, 0.0, 60.0, 80.0, 100.0];
        let tied = [0, 1, 2, 5, 6, 7];
        let mut eq = Vec::new();
        for (n, &i) in tied.iter().enumerate() {
            for &j in &tied[n + 1..] {
                eq.push((i, j, truth[j] - truth[i], 1.0));
            }
        }
        let leads = solve_leads(&eq, 26.0, 13.0);
        let regular = tied.iter().map(|&k| leads[k]).sum::<f64>() / tied.len() as f64;
        assert!((regular - 13.0).abs() < 1e-6, "{leads:?}");
        assert!((leads[7] - leads[0] - 100.0).abs() < 1e-6, "{leads:?}");
        assert_eq!((leads[3], leads[4]), (13.0, 13.0));
        assert_eq!(solve_leads(&[], 26.0, 13.0), [13.0; N_SENSORS]);
    }
}
