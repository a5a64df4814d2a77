//! Picking: the first arrival on one receiver, refined below one sample by a hinge fit.
//!
//! The first arrival is the first sample beyond [`ONSET_SIGMAS`] noise sigmas and beyond a
//! fraction of the ray's peak that follows the set's measured noise-to-peak ratio
//! ([`onset_fraction`]). A least-squares hinge fit `y = a·(t − t_a)₊` over the quiet samples
//! before it and the first rising one(s) puts the onset `t_a` where the rise leaves the rest
//! level, not where it crosses a threshold. Times are µs after the file's first sample.

use super::baseline::Baseline;

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

/// Counts of margin inside the clip levels seen on a channel.
const CLIP_MARGIN: f32 = 12.0;
/// A channel's extremes count as clip levels only this far from its rest level, counts: the
/// amplifier clips at about 1050 and 4080, a thousand counts or more from a rest of ≈ 2100.
const CLIP_FROM_REST: f64 = 800.0;
/// Samples past the last one a pick may be at that the pick's window keeps: the rise the
/// hinge fit uses, and the peak the threshold scales with.
pub(super) const PAST_MAX_LAG: usize = 3;

/// A first arrival on one receiver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    /// µs after the first sample of the file.
    pub t_us: f64,
    /// Largest |deviation| in the window, in noise sigmas: the larger of the channel's pooled
    /// sigma and the set's [`noise_to_peak`](super::baseline::noise_to_peak) ratio times this
    /// peak. So where noise grows with the signal a loud ray is not louder than its own noise
    /// (at 10 dB on the `shared` simulator every ray is then below
    /// [`EngineConfig::min_snr`](crate::engine::EngineConfig::min_snr) and flagged, where the
    /// pooled sigma alone let 5 % through with a median velocity error of 30 %).
    pub snr: f64,
    /// The rise was clipped before two samples could be fitted.
    pub clipped: bool,
    /// The record stands out of the noise before the pick: the first arrival may be an
    /// earlier one too weak to pick, so the pick may be a later phase.
    pub hidden_arrival: bool,
    /// The last sample before the rise and the first one of it (µs): samples that stand
    /// [`RISE_SIGMAS`] out of the noise are arrivals already, so the onset is before the second.
    pub bracket_us: (f64, f64),
    /// The side the rise leaves the rest level to: +1 or −1.
    pub polarity: f64,
    /// The last quiet sample's deviation from the rest level, on the arrival's side, in noise
    /// sigmas: well above 0 where a slow rise may have begun within the noise.
    pub quiet_sigmas: f64,
    /// The ray's chord class carries one waveform (set by the class refinement, `false`
    /// until then).
    pub one_waveform: bool,
    /// The rise shows on one sample (or clips): the pick is its bracket's middle, not a fit.
    pub one_sample: bool,
    /// The pick is a fit that can be trusted within its bracket: it follows a rise of
    /// [`QUADRATIC_FROM`] or more samples, its bend too, within [`SHARP_FIT_SIGMAS`] of the
    /// noise. A line through two rising samples, one of them near the first lobe's top, runs
    /// back early (on the `field` models by 8–11 µs on median), and a fit that misses its
    /// points by the noise or more is no finer than the bracket it lies in.
    pub sharp_fit: bool,
    /// The noise sigma the pick was taken with (counts).
    pub sigma: f64,
}

/// The onset threshold's fraction of a ray's peak: [`ONSET_SIGMAS`] times the set's
/// [`noise_to_peak`](super::baseline::noise_to_peak) ratio, between [`MIN_ONSET_FRACTION`]
/// and [`ONSET_FRACTION`].
pub fn onset_fraction(noise_to_peak: f64) -> f64 {
    (ONSET_SIGMAS * noise_to_peak).clamp(MIN_ONSET_FRACTION, ONSET_FRACTION)
}

/// Picks the first arrival on `raw` (one receiver of one tap) inside samples `..=max_lag`;
/// `noise_to_peak` is the set's [`noise_to_peak`](super::baseline::noise_to_peak) ratio.
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
    let n = raw.len().min(max_lag + PAST_MAX_LAG).min(t_us.len());
    if n < 3 || first + 1 >= n {
        return None;
    }
    let (lo_clip, hi_clip) = raw
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let clipped_at = |x: f32| {
        // A channel is only considered clipped at its extremes if they are far from rest.
        (x >= hi_clip - CLIP_MARGIN && (hi_clip as f64 - base.rest) > CLIP_FROM_REST)
            || (x <= lo_clip + CLIP_MARGIN && (base.rest - lo_clip as f64) > CLIP_FROM_REST)
    };
    let dev = |k: usize| raw[k] as f64 - base.rest;
    let peak = (first..n).map(|k| dev(k).abs()).fold(0.0, f64::max);
    let thr = (ONSET_SIGMAS * base.sigma).max(onset_fraction(noise_to_peak) * peak);
    let k1 = (first..n.min(max_lag + 1)).find(|&k| dev(k).abs() > thr)?;
    let sigma = if noise_to_peak.is_finite() {
        base.sigma.max(noise_to_peak * peak)
    } else {
        base.sigma
    };
    // A first arrival that stands clearly out of the record's own noise is the first arrival,
    // however soon a louder phase follows: the threshold, which follows the set's
    // noise-to-peak ratio, can sit above it on a loud ray where the noise is the amplifier's
    // alone.
    let (k1, sigma) = clear_precursor(&dev, first, k1).unwrap_or((k1, sigma));
    let polarity = dev(k1).signum();
    let y = |k: usize| polarity * dev(k);
    // The threshold can sit well up a slow rise: samples before k1 that already stand clearly
    // out of the noise on the same side belong to the arrival, which began before them.
    let mut k_s = k1;
    while k_s > first && y(k_s - 1) > RISE_SIGMAS * sigma {
        k_s -= 1;
    }
    // Fit window: up to three quiet samples before k_s, the rise up to k1, and k1+1, k1+2
    // while it still rises and is not clipped.
    let k_lo = k_s.saturating_sub(FIT_QUIET);
    let mut k_hi = k1;
    while k_hi + 1 < n
        && k_hi < k1 + FIT_PAST_THRESHOLD
        && y(k_hi + 1) > y(k_hi)
        && !clipped_at(raw[k_hi + 1])
    {
        k_hi += 1;
    }
    let clipped = clipped_at(raw[k1]);
    let fit_end = if clipped { k1 - 1 } else { k_hi };
    let one_sample = clipped || fit_end <= k_s;
    let mut sharp_fit = false;
    // The middle of the bracket (the last quiet sample and the first risen one).
    let middle = 0.5 * (t_us[k_s - 1] + t_us[k_s]);
    let t_a = if one_sample {
        // One rising sample (or a clipped one): the onset lies between the last quiet sample
        // and it, and nothing inside says where; the middle is unbiased. The chord-class
        // refinement below narrows it down with the help of the other rays.
        middle
    } else {
        // A fit that follows the rise's bend (three or more rising points) may find a smooth
        // start that stayed within the noise for a sample before the first risen one.
        let quadratic = fit_end + 1 >= k_s + QUADRATIC_FROM;
        let lo = if quadratic && k_s >= first + 2 {
            t_us[k_s - 2]
        } else {
            t_us[k_s - 1]
        };
        let points: Vec<(f64, f64)> = (k_lo..=fit_end).map(|k| (t_us[k], y(k))).collect();
        let t_a = hinge_fit(&points, lo, t_us[k_s]);
        sharp_fit = quadratic && hinge_residual_rms(&points, t_a, true) <= SHARP_FIT_SIGMAS * sigma;
        // A line through two rising samples that runs back to the early end of its interval
        // was stopped there, not fitted: the rise bent over within them. Where the lobe
        // crosses back over the rest level right after them it is narrow, so its start is
        // abrupt, not a slow one hidden in the noise before the last quiet sample: the line
        // knows no more than the bracket, and the bracket's middle is unbiased.
        let stopped = !quadratic && t_a <= lo + EARLY_END * (t_us[k_s] - lo);
        let narrow = fit_end + 1 < n && y(fit_end + 1) < 0.0;
        if stopped && narrow { middle } else { t_a }
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
        bracket_us: (t_us[k_s - 1], t_us[k_s]),
        polarity,
        quiet_sigmas: y(k_s - 1) / sigma,
        one_waveform: false,
        one_sample,
        sharp_fit,
        sigma,
    })
}

/// The first of two samples before `k1` (searched from `first`) that stand [`CLEAR_SIGMAS`]
/// out of the noise of the samples before them, on the same side, with that noise
/// (at least [`MIN_SIGMA`](super::baseline::MIN_SIGMA) counts); `None` where there is none
/// or fewer than [`OWN_QUIET`] samples to measure the noise on.
fn clear_precursor(dev: &impl Fn(usize) -> f64, first: usize, k1: usize) -> Option<(usize, f64)> {
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    for k in 0..k1 {
        if k >= OWN_QUIET.max(first) {
            let n = k as f64;
            let mean = sum / n;
            let sigma = (sum_sq / n - mean * mean)
                .max(0.0)
                .sqrt()
                .max(super::baseline::MIN_SIGMA);
            let (a, b) = (dev(k) - mean, dev(k + 1) - mean);
            if a.abs() > CLEAR_SIGMAS * sigma
                && b.abs() > CLEAR_SIGMAS * sigma
                && a.signum() == b.signum()
            {
                return Some((k, sigma));
            }
        }
        sum += dev(k);
        sum_sq += dev(k) * dev(k);
    }
    None
}

/// Two samples this many sigmas of the record's own noise out are an arrival
/// ([`clear_precursor`]): the amplifier's noise alone (3–6 counts) never does that, and a
/// weak first arrival of a real tree stands 20–40 sigmas out.
const CLEAR_SIGMAS: f64 = 10.0;
/// The least quiet samples the record's own noise is measured on.
const OWN_QUIET: usize = 4;
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
/// Quiet samples before the rise that the hinge fit takes.
const FIT_QUIET: usize = 3;
/// Rising samples past the threshold crossing that the hinge fit takes, while they rise.
const FIT_PAST_THRESHOLD: usize = 2;
/// Rising points from which the hinge fit adds its quadratic term.
const QUADRATIC_FROM: usize = 3;
/// The most a fit on [`QUADRATIC_FROM`] or more rising samples may miss its points by (root
/// mean square, in noise sigmas) to be trusted within its bracket ([`Pick::sharp_fit`]). The
/// noise-free trunk of the crate's example fits at 0.04–0.07; fits on noisy records scatter
/// from 0.2 up, and on `evaluate`'s sets a bar of 0.1–0.5 made no difference there.
const SHARP_FIT_SIGMAS: f64 = 0.5;
/// The share of its interval from the early end within which a line through two rising
/// samples counts as stopped there ([`pick_from`]): four of the fit's [`HINGE_STEPS`].
/// Measured with `evaluate` (30 sets, seeds 1–3 and 5, both triggers, 40 and 30 dB): a
/// share of 0.3 or the whole interval moved the `field` p90s by up to 0.26 point either way
/// from 0.02 (seed 5 with a pre-trigger, 10.97 → 10.71 % at 30 dB, 8.25 → 8.49 % at 40).
const EARLY_END: f64 = 0.02;
/// Candidate onsets the hinge fit tries across its interval (one sample: 200 steps of 0.14 µs
/// at 27 µs).
const HINGE_STEPS: usize = 200;

/// Least-squares fit of `y = a·h + b·h²`, `h = (t − t_a)₊`, over `points`, `t_a` searched in
/// `[lo, hi]`. The quadratic term follows the bend of the first half-cycle, which a straight
/// line would extrapolate too early; with fewer than three rising points it is left out.
pub(super) fn hinge_fit(points: &[(f64, f64)], lo: f64, hi: f64) -> f64 {
    let n_rising = points.iter().filter(|&&(t, _)| t >= hi).count();
    hinge_fit_with(points, lo, hi, n_rising >= QUADRATIC_FROM, HINGE_STEPS)
}

/// The root mean square of what the least-squares hinge `y = a·h + b·h²` (`b = 0` without
/// `quadratic`), `h = (t − t_a)₊`, leaves of `points`.
fn hinge_residual_rms(points: &[(f64, f64)], t_a: f64, quadratic: bool) -> f64 {
    (hinge_residual(points, t_a, quadratic).max(0.0) / points.len().max(1) as f64).sqrt()
}

/// The sum of squares that the least-squares hinge `y = a·h + b·h²` (`b = 0` without
/// `quadratic`), `h = (t − t_a)₊`, leaves of `points`, every sum formed as first written.
fn hinge_residual(points: &[(f64, f64)], t_a: f64, quadratic: bool) -> f64 {
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
}

/// [`hinge_fit`] with the quadratic term on or off and `steps` candidate onsets across
/// `[lo, hi]`.
///
/// The same sums as [`hinge_fit_general`] in the same order, so the same bits, with the work
/// that cannot change them left out: `Σy²` is the same for every candidate and summed once;
/// a point at or before `lo` has `h = 0` at every candidate, and zero terms leave a sum as it
/// is (the sums start at +0 and are never −0, as no cancellation to zero rounds to −0), so such
/// points are dropped; without the quadratic term its sums are not formed (they stay +0 and
/// are not read). Where that argument does not hold (a value that is not finite, which turns a
/// zero term into NaN, or `hi < lo`), the general loop runs.
pub(super) fn hinge_fit_with(
    points: &[(f64, f64)],
    lo: f64,
    hi: f64,
    quadratic: bool,
    steps: usize,
) -> f64 {
    const ON_STACK: usize = 32;
    if !(lo <= hi && points.iter().all(|&(t, y)| t.is_finite() && y.is_finite())) {
        return hinge_fit_general(points, lo, hi, quadratic, steps);
    }
    let mut yy = 0.0;
    for &(_, y) in points {
        yy += y * y;
    }
    let mut stack = [(0.0, 0.0); ON_STACK];
    let mut heap = Vec::new();
    let n_active = points.iter().filter(|&&(t, _)| t > lo).count();
    let active: &[(f64, f64)] = if n_active <= ON_STACK {
        for (slot, &p) in stack
            .iter_mut()
            .zip(points.iter().filter(|&&(t, _)| t > lo))
        {
            *slot = p;
        }
        &stack[..n_active]
    } else {
        heap.extend(points.iter().filter(|&&(t, _)| t > lo));
        &heap
    };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { candidates_avx2(active, yy, lo, hi, quadratic, steps) };
    }
    candidates(active, yy, lo, hi, quadratic, steps)
}

/// [`candidates`] compiled for AVX2: the four candidates of a group go in the four lanes of
/// a vector, each lane with the operations of one candidate in the same order (no fused
/// multiply-add), so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn candidates_avx2(
    active: &[(f64, f64)],
    yy: f64,
    lo: f64,
    hi: f64,
    quadratic: bool,
    steps: usize,
) -> f64 {
    candidates(active, yy, lo, hi, quadratic, steps)
}

/// The best of the candidate onsets of [`hinge_fit_with`] over the points that can be after
/// one (`active`), `yy` their `Σy²`; candidates go four at a time, so that their sums, which
/// do not depend on each other, overlap (and vectorise), and are compared in order after.
#[inline(always)]
fn candidates(
    active: &[(f64, f64)],
    yy: f64,
    lo: f64,
    hi: f64,
    quadratic: bool,
    steps: usize,
) -> f64 {
    const G: usize = 4;
    let mut best = (hi, f64::MAX);
    let mut s0 = 0;
    while s0 <= steps {
        let t_a: [f64; G] =
            std::array::from_fn(|q| lo + (hi - lo) * (s0 + q) as f64 / steps as f64);
        let r: [f64; G] = if quadratic {
            let (mut s11, mut s12, mut s22) = ([0.0; G], [0.0; G], [0.0; G]);
            let (mut y1, mut y2) = ([0.0; G], [0.0; G]);
            for &(t, y) in active {
                for q in 0..G {
                    let h = (t - t_a[q]).max(0.0);
                    let h2 = h * h;
                    s11[q] += h * h;
                    s12[q] += h * h2;
                    s22[q] += h2 * h2;
                    y1[q] += y * h;
                    y2[q] += y * h2;
                }
            }
            std::array::from_fn(|q| {
                let det = s11[q] * s22[q] - s12[q] * s12[q];
                if det > 1e-12 * s11[q] * s22[q] {
                    let a = (y1[q] * s22[q] - y2[q] * s12[q]) / det;
                    let b = (s11[q] * y2[q] - s12[q] * y1[q]) / det;
                    yy - a * y1[q] - b * y2[q]
                } else if s11[q] > 0.0 {
                    yy - y1[q] * y1[q] / s11[q]
                } else {
                    yy
                }
            })
        } else {
            let (mut s11, mut y1) = ([0.0; G], [0.0; G]);
            for &(t, y) in active {
                for q in 0..G {
                    let h = (t - t_a[q]).max(0.0);
                    s11[q] += h * h;
                    y1[q] += y * h;
                }
            }
            std::array::from_fn(|q| {
                if s11[q] > 0.0 {
                    yy - y1[q] * y1[q] / s11[q]
                } else {
                    yy
                }
            })
        };
        // The candidates past `steps` in the last group are computed and not read.
        for q in 0..G.min(steps + 1 - s0) {
            if r[q] < best.1 {
                best = (t_a[q], r[q]);
            }
        }
        s0 += G;
    }
    best.0
}

/// [`hinge_fit_with`] as first written, for any input: every point, every sum, at every
/// candidate.
fn hinge_fit_general(
    points: &[(f64, f64)],
    lo: f64,
    hi: f64,
    quadratic: bool,
    steps: usize,
) -> f64 {
    let mut best = (hi, f64::MAX);
    for s in 0..=steps {
        let t_a = lo + (hi - lo) * s as f64 / steps as f64;
        let r = hinge_residual(points, t_a, quadratic);
        if r < best.1 {
            best = (t_a, r);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver's record: rest 2000 counts, ±2 counts of fixed noise, then `shape` from
    /// sample `at` on; sampled every 27 µs.
    fn record(at: usize, shape: &[f32]) -> (Vec<f32>, Vec<f64>) {
        noisy_record(at, shape, 1.0)
    }

    /// [`record`] with its noise scaled by `scale`.
    fn noisy_record(at: usize, shape: &[f32], scale: f32) -> (Vec<f32>, Vec<f64>) {
        let n = 40;
        let raw = (0..n)
            .map(|k| {
                let noise = scale * [1.0, -2.0, 0.0, 2.0, -1.0][k % 5];
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

    /// `precursor` from sample 6 on, then a main phase peaking at 1200 counts; the noise
    /// scaled by `noise`.
    fn two_phases_in(precursor: &[f32], noise: f32) -> (Vec<f32>, Vec<f64>) {
        let mut shape = precursor.to_vec();
        shape.extend([500.0, 1100.0, 1200.0, 900.0, 400.0]);
        noisy_record(6, &shape, noise)
    }

    fn two_phases(precursor: &[f32]) -> (Vec<f32>, Vec<f64>) {
        two_phases_in(precursor, 1.0)
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
        // Noise that grows with the signal (5 % of the peak, 60 counts, and the record as
        // noisy before the arrival): 100 counts are within the noise of a ray this loud, and
        // the picker waits for the main phase.
        let (raw, t) = two_phases_in(&[-40.0, -110.0, -90.0, -120.0, -60.0, -70.0, -50.0], 30.0);
        let p = pick(&raw, &t, QUIET, 0.05, 30).unwrap();
        assert!(p.t_us > 11.0 * 27.0, "{p:?}");
        assert!(!p.hidden_arrival, "{p:?}");
    }

    #[test]
    fn a_first_arrival_clearly_out_of_the_records_noise_is_picked_however_loud_the_ray() {
        // The case: a first arrival of 65–93 counts two samples before a main phase
        // of 1200, where the set's noise-to-peak ratio (10 %) puts the threshold above it,
        // but the record's own noise is 2 counts: it stands 30–45 sigmas out.
        let (raw, t) = record(6, &[65.0, 93.0, 48.0, 257.0, 825.0, 1204.0, 1264.0, 700.0]);
        let p = pick(&raw, &t, QUIET, 0.1, 30).unwrap();
        assert!((5.0 * 27.0..=6.0 * 27.0).contains(&p.t_us), "{p:?}");
        assert!(!p.hidden_arrival, "{p:?}");
    }

    #[test]
    fn an_arrival_below_the_threshold_but_out_of_the_noise_flags_the_pick() {
        // 12–16 counts (6–8 sigmas) from sample 6: under the least fraction of the peak
        // (3 % of 1200 = 36 counts) and too weak to be sure of, so the pick is the main
        // phase; the ray is flagged.
        let (raw, t) = two_phases(&[-12.0, -16.0, -14.0, -16.0, -12.0, -14.0, -12.0]);
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

    #[test]
    fn only_a_fit_that_follows_a_rise_of_several_samples_within_the_noise_is_sharp() {
        // A noise-free rise that bends over (a half-sine from 10 µs before sample 8), on three
        // rising samples: the fit follows it, and is trusted within its bracket.
        let rise: Vec<f32> = (0..6)
            .map(|k| (600.0 * ((10.0 + 27.0 * k as f64) / 50.0).sin()) as f32)
            .collect();
        let (raw, t) = noisy_record(8, &rise, 0.0);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!(p.sharp_fit && !p.one_sample, "{p:?}");
        assert!((p.t_us - (8.0 * 27.0 - 10.0)).abs() < 2.0, "{p:?}");
        // The same rise under noise as large as its first samples' misfit: not sharp.
        let (raw, t) = noisy_record(8, &rise, 40.0);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!(!p.sharp_fit, "{p:?}");
        // Two rising samples, the second at the lobe's top: a line through them runs back
        // early, so it is no sharper than its bracket.
        let (raw, t) = noisy_record(8, &[150.0, 450.0, 100.0, -200.0], 0.0);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!(!p.sharp_fit && !p.one_sample, "{p:?}");
        // One rising sample: the bracket's middle.
        let (raw, t) = noisy_record(8, &[450.0, 100.0, -200.0], 0.0);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!(!p.sharp_fit && p.one_sample, "{p:?}");
    }

    #[test]
    fn a_line_stopped_at_its_early_end_on_a_narrow_lobe_gives_the_brackets_middle() {
        // As on `field` (seed 5, pre-trigger, 40 dB, set 16, tap 3 to sensor 4 counted from
        // 0): a lobe of -75 and -125 counts from sample 8 that is back over the rest level a
        // sample later. The line through the two runs back past the last quiet sample, so
        // the fit stops at sample 7; the onset is nearer the bracket's middle.
        let (raw, t) = noisy_record(8, &[-75.0, -125.0, 64.0, 1139.0, 383.0], 1.0);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert_eq!(p.bracket_us, (7.0 * 27.0, 8.0 * 27.0), "{p:?}");
        assert!((p.t_us - 7.5 * 27.0).abs() < 0.01, "{p:?}");
        assert!(!p.one_sample && !p.sharp_fit, "{p:?}");
        // The same two samples on a lobe that stays on its side (a wide one, as long paths
        // through dispersive wood give): its start may be slow and hidden in the noise before
        // the last quiet sample, and the line keeps the early end.
        let (raw, t) = noisy_record(8, &[-75.0, -125.0, -90.0, -40.0, 300.0], 1.0);
        let p = pick(&raw, &t, QUIET, 0.002, 30).unwrap();
        assert!(p.t_us < 7.0 * 27.0 + 1.0, "{p:?}");
    }

    #[test]
    fn the_hinge_fit_gives_the_bits_of_the_general_loop() {
        let mut rng = crate::rng::Rng::new(23);
        let mut checked = 0;
        for case in 0..20_000 {
            let n = 1 + (rng.next_u64() % 48) as usize;
            let dt = 27.0;
            let t0 = rng.uniform(-100.0, 400.0);
            let sorted = case % 3 != 0;
            let mut points: Vec<(f64, f64)> = (0..n)
                .map(|k| {
                    let t = if sorted {
                        t0 + k as f64 * dt
                    } else {
                        t0 + rng.uniform(0.0, n as f64 * dt)
                    };
                    let y = match rng.next_u64() % 10 {
                        0 => 0.0,
                        1 => -0.0,
                        2 => -rng.unit(),
                        _ => rng.uniform(-0.1, 1.5) * (k as f64),
                    };
                    (t, y)
                })
                .collect();
            // Points exactly at the candidates' ends and odd values now and then.
            if case % 7 == 0 {
                points[0].0 = t0 + dt;
            }
            match case % 50 {
                1 => points[n / 2].1 = f64::NAN,
                2 => points[n / 2].1 = f64::INFINITY,
                3 => points[n / 2].0 = f64::NAN,
                _ => {}
            }
            // Now and then a candidate range starting exactly at a point.
            let lo = if case % 11 == 0 {
                points[n / 3].0
            } else {
                t0 + dt * rng.uniform(0.0, 3.0)
            };
            let hi = match case % 40 {
                5 => lo - 10.0,
                6 => lo,
                _ => lo + dt * rng.uniform(0.1, 2.0),
            };
            let steps = [1, 10, 200, 300][case % 4];
            for quadratic in [false, true] {
                let fast = hinge_fit_with(&points, lo, hi, quadratic, steps);
                let general = hinge_fit_general(&points, lo, hi, quadratic, steps);
                assert_eq!(
                    fast.to_bits(),
                    general.to_bits(),
                    "case {case}: {points:?} {lo} {hi}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 40_000);
    }

    #[test]
    fn the_hinge_fit_finds_where_a_clean_rise_leaves_the_rest_level() {
        // Two quiet points, then a rise from 100 µs: straight, and bending as a first
        // half-cycle does. The onset is searched between the last quiet point and the first
        // rising one, in steps of 27/200 µs.
        for bend in [0.0, 0.05] {
            let points: Vec<(f64, f64)> = (2..8)
                .map(|k| {
                    let t = 27.0 * k as f64;
                    let h = (t - 100.0f64).max(0.0);
                    (t, 5.0 * h + bend * h * h)
                })
                .collect();
            let t_a = hinge_fit(&points, 81.0, 108.0);
            assert!((t_a - 100.0).abs() < 0.2, "bend {bend}: {t_a}");
        }
        // With fewer than three rising points the fit is a straight hinge.
        let t_a = hinge_fit(
            &[(54.0, 0.0), (81.0, 0.0), (108.0, 40.0), (135.0, 175.0)],
            81.0,
            108.0,
        );
        assert!((t_a - 100.0).abs() < 0.2, "{t_a}");
    }
}
