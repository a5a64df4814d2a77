//! Tap instants from reciprocity.
//!
//! The tapped channel clips from its first samples, so it only says that the tap happened at
//! most about one sample before the first sample. The recordings i→j and j→i travel the same
//! path, so their onsets and their waveforms (GCC-PHAT between the two) differ only by the
//! difference of the two tap instants. A robust least-squares fit over the 28 pairs
//! ([`solve_leads`]) gives the eight instants up to a common offset. Where the tapped
//! channels show their own impacts (a device that records before the impact), the offset
//! comes from them; elsewhere it is the prior that the trigger falls uniformly within the
//! sample before the first one (`lead = dt/2` on average), or the device's own mean lead
//! ([`EngineConfig::trigger_lead`](crate::engine::EngineConfig::trigger_lead)); where the
//! rays are weak (20 dB), that prior places each tap against the others too, as a measured
//! impact does. Leads are µs before each file's first sample.

use super::lsq::{Equation, solve_robust};
use super::pick::Pick;
use super::{COHERENT_VALUE, Picks, resample, waveforms_differ};
use crate::engine::gcc::{self, PairBatch};
use crate::engine::{Prepared, median};
use crate::geometry::N_SENSORS;

/// The pair i→j against j→i, both windows cut from the same sample.
#[derive(Clone, Debug)]
pub(super) struct ReciprocalPlan {
    i: usize,
    j: usize,
    pair: u32,
}

/// Weight of a reciprocal GCC-PHAT lag against a pick difference in the tap-instant fit.
const RECIPROCAL_GCC_WEIGHT: f64 = 2.0;
/// Samples of each reciprocal window.
const RECIPROCAL_WINDOW: usize = 24;
/// Sampling intervals a reciprocal window starts before the earlier of the two picks.
const RECIPROCAL_PRE: f64 = 4.0;
/// How far (in samples) the reciprocal GCC-PHAT lag is searched beyond the difference of the
/// two picks.
const RECIPROCAL_LAG_SLACK: f64 = 2.0;
/// The least sharpness of a reciprocal correlation peak that counts as a measurement.
const MIN_SHARPNESS: f64 = 1.2;
/// The tap-instant fit's robust scale, in sampling intervals.
const ROBUST_SCALE: f64 = 0.5;
/// Leads within this many sampling intervals of their median are the regular ones.
const REGULAR_SPREAD: f64 = 2.0;

/// Cuts the reciprocal windows of every pair whose two directions were picked, neither from a
/// mis-tapped file, and appends them to `batch` (the windows are on the common grid `dt`).
pub(super) fn plan_reciprocal(
    set: &[Prepared; N_SENSORS],
    picks: &Picks,
    mismatched: &[bool; N_SENSORS],
    dt: f64,
    batch: &mut PairBatch,
) -> Vec<ReciprocalPlan> {
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
    reciprocal
}

/// `lead_j − lead_i` from the GCC-PHAT lag between the reciprocal recordings, where the
/// correlation has a sharp peak near the picks' difference and the waveforms agree, each
/// with its correlation's peak value.
pub(super) fn reciprocal_equations(
    reciprocal: &[ReciprocalPlan],
    picks: &Picks,
    dt: f64,
    batch: &PairBatch,
    corr: &[f32],
) -> Vec<(Equation, f64)> {
    let mut gcc_equations: Vec<(Equation, f64)> = Vec::new();
    for r in reciprocal {
        let (Some(a), Some(b)) = (picks[r.i][r.j], picks[r.j][r.i]) else {
            continue;
        };
        let expect = (a.t_us - b.t_us) / dt;
        let (lo, hi) = (
            (expect - RECIPROCAL_LAG_SLACK).floor() as isize,
            (expect + RECIPROCAL_LAG_SLACK).ceil() as isize,
        );
        if let Some(p) = gcc::find_peak(batch.correlation(corr, r.pair), lo, hi)
            .filter(|p| !p.on_edge && p.sharpness >= MIN_SHARPNESS)
            .filter(|p| !waveforms_differ(p.value, a.snr.min(b.snr)))
        {
            gcc_equations.push(((r.i, r.j, p.lag * dt, RECIPROCAL_GCC_WEIGHT), p.value));
        }
    }
    gcc_equations
}

/// No arrival comes after a sample that already shows it, in either recording of a path:
/// where the reciprocal correlation measured `α_ij − α_ji` (`gcc_equations`), a pick later
/// than the other direction's first risen sample carried over by that difference is moved
/// back to it. The two recordings are sampled at different phases (their taps' leads differ),
/// so the other one's first risen sample can fall inside this one's last interval.
///
/// The other bracket's lower end (its last quiet sample, carried over) bounds the arrival from
/// below too, but a slow rise can stay within the noise past a "quiet" sample: it is used only
/// where the record shows no such rise, i.e. both rays' chord classes do not carry one
/// waveform (on a path with a pulse of its own the class cannot sharpen the pick, the
/// brackets are all there is) and both last quiet samples stand at most [`QUIET_SIGMAS`] out
/// on the arrival's side, less [`LOWER_SLACK`] of a sample. A pick then goes to the middle of
/// the two brackets' overlap, unless it is a sharp fit ([`Pick::sharp_fit`]: on a clean rise
/// of several samples the fit is finer than any bracket), which is only brought inside the
/// overlap. A pick on one rising sample is its bracket's middle, and a line through two rising
/// samples, the second near the first lobe's top, runs back early: neither knows more than its
/// bracket. Pairs whose picks changed since `correlated` (picked again after the correlations
/// were cut) are left alone.
pub(super) fn bound_by_reciprocals(
    picks: &mut Picks,
    correlated: &Picks,
    gcc_equations: &[(Equation, f64)],
    dt: f64,
) {
    for &((i, j, d, _), value) in gcc_equations {
        // Only where the two recordings carry one waveform whatever their SNR: on a real tree
        // the big later phases dominate the windows and the lag need not be the first
        // arrivals' (the real set's reciprocal pairs correlate at 0.09–0.6).
        if value < COHERENT_VALUE {
            continue;
        }
        let (Some(a), Some(b)) = (picks[i][j], picks[j][i]) else {
            continue;
        };
        if correlated[i][j] != Some(a) || correlated[j][i] != Some(b) {
            continue;
        }
        let latest = a.bracket_us.1.min(b.bracket_us.1 + d);
        // A bound more than a sample before a pick is no sampling phase: one of the two
        // picks (or the correlation) is off, and moving the other would hide it.
        if a.t_us - latest >= dt || b.t_us - (latest - d) >= dt {
            continue;
        }
        // Two rises that show on one sample each are abrupt: a last quiet sample a little out
        // of the noise is more likely noise than the start of a slow rise there.
        let limit = if a.one_sample && b.one_sample {
            QUIET_SIGMAS_ABRUPT
        } else {
            QUIET_SIGMAS
        };
        let quiet = |p: &Pick| !p.one_waveform && p.quiet_sigmas <= limit;
        if quiet(&a) && quiet(&b) {
            let slack = LOWER_SLACK * dt;
            let earliest_a = a.bracket_us.0.max(b.bracket_us.0 + d - slack);
            let earliest_b = b.bracket_us.0.max(a.bracket_us.0 - d - slack);
            let middle_a = 0.5 * (earliest_a + latest);
            let middle_b = 0.5 * (earliest_b + latest - d);
            if earliest_a < latest
                && earliest_b < latest - d
                && (a.t_us - middle_a).abs() < dt
                && (b.t_us - middle_b).abs() < dt
            {
                // A sharp fit stays where it is if both brackets allow it; any other pick (its
                // bracket's middle, or a fit no finer than its bracket) goes to the middle of
                // the overlap.
                let place = |p: &mut Pick, lo: f64, hi: f64, middle: f64| {
                    p.t_us = if p.sharp_fit {
                        p.t_us.clamp(lo, hi)
                    } else {
                        middle
                    };
                };
                if let Some(p) = picks[i][j].as_mut() {
                    place(p, earliest_a, latest, middle_a);
                }
                if let Some(p) = picks[j][i].as_mut() {
                    place(p, earliest_b, latest - d, middle_b);
                }
                continue;
            }
        }
        if let Some(p) = picks[i][j].as_mut() {
            p.t_us = p.t_us.min(latest);
        }
        if let Some(p) = picks[j][i].as_mut() {
            p.t_us = p.t_us.min(latest - d);
        }
    }
}

/// The most a last quiet sample may stand out on the arrival's side, in noise sigmas, for the
/// other direction's bracket to bound a pick from below ([`bound_by_reciprocals`]). Measured
/// with `evaluate` (30 sets, seeds 1–3, 40 and 30 dB): at 2 sigmas `dispersive` p90 rose by up
/// to 0.47 point, at 1 by at most 0.17.
const QUIET_SIGMAS: f64 = 1.0;
/// [`QUIET_SIGMAS`] where both rays' rises show on one sample each.
const QUIET_SIGMAS_ABRUPT: f64 = 2.0;
/// Samples the other direction's last quiet sample is moved earlier by before it bounds a pick
/// from below ([`bound_by_reciprocals`]): a rise that began within the noise just before it.
const LOWER_SLACK: f64 = 0.3;

/// The median ray SNR (of the picks of files that are not mis-tapped) below which the tap
/// instants of a device without measured impacts are held by the trigger prior too
/// ([`solve_leads`]). Measured with `evaluate` (30 sets, seeds 1–5, 24 sets of seed 7, both
/// triggers, 40, 30 and 20 dB, without the [`EARLY_TRIGGER`] exception): at 12 and 15 only the
/// `shared` and `dispersive` clip cells at 20 dB moved, at 20 one `shared` 30 dB cell too (by
/// 0.01 point); with the prior on every set, `field`'s clip p90 at 40 and 30 dB rose by up to
/// 0.24 point (seed 1, 30 dB, 8.87 → 9.11 %): there the reciprocal picks scatter from the weak
/// first arrivals, not from the noise. The real set's rays stand 430–480 sigmas out.
const PRIOR_SNR: f64 = 15.0;

/// The eight leads (µs before each file's first sample) from `gcc_equations` and the
/// differences of the reciprocal picks (`lead_j − lead_i = α_ij − α_ji`), mis-tapped files
/// left out, with the regular leads' mean at `mean_lead`. Where the picks' median SNR is below
/// [`PRIOR_SNR`], a device without measured impacts holds its taps by the trigger prior too.
pub(super) fn tap_leads(
    picks: &Picks,
    mismatched: &[bool; N_SENSORS],
    gcc_equations: &[Equation],
    dt: f64,
    mean_lead: f64,
    measured: &[Option<f64>; N_SENSORS],
) -> Leads {
    let mut equations = gcc_equations.to_vec();
    for i in 0..N_SENSORS {
        for j in (i + 1)..N_SENSORS {
            if mismatched[i] || mismatched[j] {
                continue;
            }
            if let (Some(a), Some(b)) = (picks[i][j], picks[j][i]) {
                equations.push((i, j, a.t_us - b.t_us, 1.0));
            }
        }
    }
    let mut snrs: Vec<f64> = (0..N_SENSORS)
        .filter(|&i| !mismatched[i])
        .flat_map(|i| picks[i].iter().flatten().map(|p| p.snr))
        .collect();
    let noisy = median(&mut snrs).is_some_and(|m| m < PRIOR_SNR);
    solve_leads(&equations, dt, mean_lead, measured, noisy)
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
    let start = (pick_ij.min(pick_ji) - RECIPROCAL_PRE * dt).max(0.0);
    let len = RECIPROCAL_WINDOW;
    // The taper's weights, computed once (the same expression, so the same values).
    static TAPER: std::sync::OnceLock<[f32; RECIPROCAL_WINDOW]> = std::sync::OnceLock::new();
    let weights = TAPER.get_or_init(|| {
        std::array::from_fn(|k| {
            let h = 0.5 - 0.5 * (std::f64::consts::TAU * (k as f64 + 0.5) / len as f64).cos();
            h.sqrt() as f32
        })
    });
    let taper = |mut w: Vec<f32>| -> Vec<f32> {
        for (v, h) in w.iter_mut().zip(weights) {
            *v *= h;
        }
        w
    };
    (
        taper(resample(&tap_i.channels[j], &tap_i.t_us, start, dt, len)),
        taper(resample(&tap_j.channels[i], &tap_j.t_us, start, dt, len)),
    )
}

/// The eight leads and where each one's level comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Leads {
    /// µs before each file's first sample (negative: the impact came after it).
    pub lead_us: [f64; N_SENSORS],
    /// Per tap: its level rests on its own impact onset (`true`) or on the trigger-lead prior.
    pub from_onset: [bool; N_SENSORS],
}

/// Least squares for the eight leads from `lead_j − lead_i = d` equations (weighted, robust
/// at the scale of half a sampling interval `dt`), up to a common offset. `measured` holds
/// the leads of the taps whose tapped channel shows its own impact
/// ([`impact_onset`](super::impact::impact_onset)), as `−onset`.
///
/// Where most taps in an equation have a measured impact (a device that records before the
/// impact), each measured impact also says where its own tap lies against the others, within
/// a sample: the relative leads are then fitted on both, each weighed by its precision
/// ([`anchor_to_impacts`]). At 40 dB reciprocity places the taps to a few microseconds and the
/// impacts barely count; at 20 dB its picks scatter by half a sample and the impacts hold them.
///
/// The offset: where most taps in an equation have a measured impact,
/// it is the mean over them of the measured lead less the relative one,
/// taken over those within two samples of its median, so one odd measurement does not shift
/// the others. Elsewhere (a device whose tapped channel clips from its first sample) it is
/// the prior: the mean of the regular leads (within two samples of their median) is
/// `mean_lead`; one tap whose trigger fired long before the hammer's real impact (seen on
/// real recordings) must not shift the others. A few measured taps among many clipped ones
/// are no device with a pre-trigger buffer but impacts a hair before the first sample, and
/// follow the prior. A tap in no equation (its file was flagged, or none of its rays was
/// picked) says nothing about the others: it stays out of the offset and gets its measured
/// lead, or the prior `mean_lead`.
///
/// With the prior, where the picks are `noisy` (weak rays, whose reciprocal differences
/// scatter from the noise), the prior places each tap against the others too: the trigger
/// falls within the sample before the first one, so each lead is `mean_lead` within a sample,
/// as a measured impact is, and enters the fit as one ([`anchor_to_impacts`]). A trigger that
/// fired long before its impact is left out of the prior ([`prior_leads`]) and to the
/// reciprocal equations.
pub fn solve_leads(
    equations: &[Equation],
    dt: f64,
    mean_lead: f64,
    measured: &[Option<f64>; N_SENSORS],
    noisy: bool,
) -> Leads {
    let mut x = solve_robust(N_SENSORS, equations, ROBUST_SCALE * dt);
    let mut tied = [false; N_SENSORS];
    for &(a, b, _, _) in equations {
        tied[a] = true;
        tied[b] = true;
    }
    let n_tied = tied.iter().filter(|&&t| t).count();
    let n_measured = (0..N_SENSORS)
        .filter(|&k| tied[k] && measured[k].is_some())
        .count();
    let by_onset = 2 * n_measured > n_tied;
    if by_onset {
        x = anchor_to_impacts(equations, &x, &tied, measured, dt);
    } else if noisy {
        x = anchor_to_impacts(
            equations,
            &x,
            &tied,
            &prior_leads(&x, &tied, mean_lead, dt),
            dt,
        );
    }
    // Each tap that sets the offset: the level it asks for less its relative lead.
    let offsets: Vec<(usize, f64)> = (0..N_SENSORS)
        .filter(|&k| tied[k])
        .filter_map(|k| match (by_onset, measured[k]) {
            (true, Some(m)) => Some((k, m - x[k])),
            (true, None) => None,
            (false, _) => Some((k, mean_lead - x[k])),
        })
        .collect();
    let untied = |k: usize| measured[k].unwrap_or(mean_lead);
    let mut sorted: Vec<f64> = offsets.iter().map(|o| o.1).collect();
    let Some(median) = median(&mut sorted) else {
        return Leads {
            lead_us: std::array::from_fn(untied),
            from_onset: std::array::from_fn(|k| measured[k].is_some()),
        };
    };
    let near: Vec<f64> = sorted
        .iter()
        .copied()
        .filter(|v| (v - median).abs() <= REGULAR_SPREAD * dt)
        .collect();
    let offset = if near.is_empty() {
        median
    } else {
        near.iter().sum::<f64>() / near.len() as f64
    };
    Leads {
        lead_us: std::array::from_fn(|k| if tied[k] { x[k] + offset } else { untied(k) }),
        from_onset: std::array::from_fn(|k| {
            if tied[k] {
                by_onset
            } else {
                measured[k].is_some()
            }
        }),
    }
}

/// Samples a tap's lead may lie below the median of the others' (fitted on reciprocity alone)
/// for the trigger prior to hold it ([`prior_leads`]): a trigger that fired before the
/// hammer's impact (seen on real recordings: about 10 samples on the real set's tap 2) starts
/// its file early, by more than a clipping device's largest trigger latency
/// ([`MAX_TRIGGER_LEAD`](crate::engine::MAX_TRIGGER_LEAD)). Measured with `evaluate` (seeds
/// 1–5 and 7, `shared` clip 20 dB): at 2 samples `shared` seed 2 kept a p90 of 13.4 % (11.7 %
/// at 3 and 4).
const EARLY_TRIGGER: f64 = 4.0;

/// The trigger prior as measured leads: `mean_lead` for each tied tap, but for one whose lead
/// `x` (relative, from reciprocity alone) lies more than [`EARLY_TRIGGER`] samples below the
/// median of the tied taps'. Such a trigger fired before its impact, and the prior would drag
/// it to the others where the reciprocal picks scatter by a sample (the plain least squares
/// the robust fit starts from weigh a strong prior against seven picks).
fn prior_leads(
    x: &[f64],
    tied: &[bool; N_SENSORS],
    mean_lead: f64,
    dt: f64,
) -> [Option<f64>; N_SENSORS] {
    let mut relative: Vec<f64> = (0..N_SENSORS).filter(|&k| tied[k]).map(|k| x[k]).collect();
    let Some(middle) = median(&mut relative) else {
        return [None; N_SENSORS];
    };
    std::array::from_fn(|k| (x[k] >= middle - EARLY_TRIGGER * dt).then_some(mean_lead))
}

/// The spread of a measured impact about the true one, as a variance in µs²: the impact's
/// phase against the sampling clock is uniform over the interval it is placed in the middle of
/// (`dt² / 12`).
fn impact_variance(dt: f64) -> f64 {
    dt * dt / 12.0
}

/// The median of a χ² variable with one degree of freedom: a robust variance is the median
/// squared residual over it.
const CHI2_1_MEDIAN: f64 = 0.455;

/// The relative leads (mean zero) fitted on the reciprocal `equations` and on the measured
/// impacts of the `tied` taps together, each equation weighed by its precision.
///
/// `x` is the fit on the equations alone. Its residuals give the variance of an equation of
/// unit weight (robustly: the median weighted squared residual over that of a χ²₁ variable);
/// a measured impact, known within its sample, has [`impact_variance`]. So each impact enters
/// as `lead_k − reference = measured_k` (a ninth unknown for the reference) with the weight
/// `unit variance / impact variance`, in the robust fit of the equations. Consistent equations
/// (no residual) give the impacts no weight, and the fit on the equations alone stands.
fn anchor_to_impacts(
    equations: &[Equation],
    x: &[f64],
    tied: &[bool; N_SENSORS],
    measured: &[Option<f64>; N_SENSORS],
    dt: f64,
) -> Vec<f64> {
    let mut squared: Vec<f64> = equations
        .iter()
        .map(|&(a, b, d, w)| w * (d - (x[b] - x[a])).powi(2))
        .collect();
    let unit_variance = median(&mut squared).unwrap_or(0.0) / CHI2_1_MEDIAN;
    let weight = unit_variance / impact_variance(dt);
    if weight <= 0.0 || !weight.is_finite() {
        return x.to_vec();
    }
    let reference = N_SENSORS;
    let mut anchored = equations.to_vec();
    for k in 0..N_SENSORS {
        if let (true, Some(m)) = (tied[k], measured[k]) {
            anchored.push((reference, k, m, weight));
        }
    }
    let y = solve_robust(N_SENSORS + 1, &anchored, ROBUST_SCALE * dt);
    let mean = (0..N_SENSORS).map(|k| y[k] - y[reference]).sum::<f64>() / N_SENSORS as f64;
    (0..N_SENSORS).map(|k| y[k] - y[reference] - mean).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [Option<f64>; N_SENSORS] = [None; N_SENSORS];

    /// Every pair's exact `lead_j − lead_i`.
    fn exact(truth: &[f64; N_SENSORS]) -> Vec<Equation> {
        let mut eq = Vec::new();
        for i in 0..N_SENSORS {
            for j in (i + 1)..N_SENSORS {
                eq.push((i, j, truth[j] - truth[i], 1.0));
            }
        }
        eq
    }

    /// Asserts that the fit with `what` placed the taps at least a fifth closer to the truth
    /// (root mean square over `n` leads) than reciprocity alone; `with` and `without` are the
    /// two fits' summed squared errors, µs².
    fn assert_closer(what: &str, with: f64, without: f64, n: f64) {
        let rms = |s: f64| (s / n).sqrt();
        assert!(
            rms(with) < 0.8 * rms(without),
            "rms {:.2} µs with {what}, {:.2} µs without",
            rms(with),
            rms(without)
        );
    }

    #[test]
    fn measured_impacts_hold_the_taps_where_reciprocity_scatters() {
        // At 20 dB the reciprocal picks scatter by about a sample; each measured impact is
        // known within its sample (uniform error). Over many draws the fit on both places the
        // taps against each other better than reciprocity alone, and the impacts' weight
        // follows the scatter: consistent equations leave the fit on them alone.
        let dt = 27.0;
        let mut rng = crate::rng::Rng::new(11);
        let (mut alone, mut both) = (0.0, 0.0);
        for _ in 0..200 {
            let truth: [f64; N_SENSORS] = std::array::from_fn(|_| rng.uniform(-1.5 * dt, 0.0));
            let measured: [Option<f64>; N_SENSORS] =
                std::array::from_fn(|k| Some(truth[k] + rng.uniform(-0.5 * dt, 0.5 * dt)));
            let mut equations = exact(&truth);
            for e in &mut equations {
                e.2 += dt * rng.normal();
            }
            let x = solve_robust(N_SENSORS, &equations, ROBUST_SCALE * dt);
            let y = anchor_to_impacts(&equations, &x, &[true; N_SENSORS], &measured, dt);
            let mean = truth.iter().sum::<f64>() / N_SENSORS as f64;
            for k in 0..N_SENSORS {
                alone += (x[k] - (truth[k] - mean)).powi(2);
                both += (y[k] - (truth[k] - mean)).powi(2);
            }
            let consistent = exact(&truth);
            let x = solve_robust(N_SENSORS, &consistent, ROBUST_SCALE * dt);
            let y = anchor_to_impacts(&consistent, &x, &[true; N_SENSORS], &measured, dt);
            assert!(
                y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-9),
                "{y:?} {x:?}"
            );
        }
        assert_closer("the impacts", both, alone, 200.0 * N_SENSORS as f64);
    }

    #[test]
    fn the_trigger_prior_holds_the_taps_where_noisy_picks_scatter() {
        // A device that clips from its first sample: each trigger falls within the sample
        // before the first one (lead uniform in [0, dt]), and at 20 dB the reciprocal picks
        // scatter by up to a sample. Over many draws the prior places the taps against each
        // other better than reciprocity alone; a trigger that fired long before its impact
        // (tap 8) is left where reciprocity puts it.
        let dt = 27.0;
        let mut rng = crate::rng::Rng::new(5);
        let (mut alone, mut held, mut n) = (0.0, 0.0, 0.0);
        for draw in 0..200 {
            let mut truth: [f64; N_SENSORS] = std::array::from_fn(|_| rng.uniform(0.0, dt));
            let early = draw % 2 == 0;
            if early {
                truth[7] = -300.0;
            }
            let mut equations = exact(&truth);
            for e in &mut equations {
                e.2 += dt * rng.normal();
            }
            let plain = solve_leads(&equations, dt, 0.5 * dt, &NONE, false).lead_us;
            let prior = solve_leads(&equations, dt, 0.5 * dt, &NONE, true).lead_us;
            let regular = if early { 7 } else { N_SENSORS };
            let mean = |x: &[f64]| x[..regular].iter().sum::<f64>() / regular as f64;
            let (mp, mq, mt) = (mean(&plain), mean(&prior), mean(&truth));
            for k in 0..regular {
                alone += (plain[k] - mp - (truth[k] - mt)).powi(2);
                held += (prior[k] - mq - (truth[k] - mt)).powi(2);
                n += 1.0;
            }
            if early {
                // Dragged to the others, it would be 300 µs off.
                let off = prior[7] - mq - (truth[7] - mt);
                assert!(off.abs() < 2.0 * dt, "{draw}: {prior:?} {plain:?}");
            }
        }
        assert_closer("the prior", held, alone, n);
    }

    #[test]
    fn measured_impacts_set_the_offset_where_most_taps_show_one() {
        // A device with a pre-trigger buffer: impacts 5–40 µs after the first sample, each
        // measured within ±13 µs (the middle of the sample it fell in); the errors average.
        let truth = [-5.0, -40.0, -20.0, -12.0, -33.0, -8.0, -27.0, -15.0];
        let errors = [6.0, -9.0, 12.0, -4.0, 3.0, -10.0, 8.0, -5.0];
        let measured: [Option<f64>; N_SENSORS] =
            std::array::from_fn(|k| (k != 3).then_some(truth[k] + errors[k]));
        let leads = solve_leads(&exact(&truth), 27.0, 13.5, &measured, false);
        let mean_error: f64 = (0..N_SENSORS)
            .filter(|&k| k != 3)
            .map(|k| errors[k])
            .sum::<f64>()
            / 7.0;
        for k in 0..N_SENSORS {
            assert!(
                (leads.lead_us[k] - truth[k] - mean_error).abs() < 1e-6,
                "{k}: {leads:?}"
            );
        }
        // Tap 4 (index 3) showed none, but its offset is the set's.
        assert!(leads.from_onset.iter().all(|&f| f), "{leads:?}");
        // Two measured taps among eight clipped ones follow the prior.
        let few: [Option<f64>; N_SENSORS] =
            std::array::from_fn(|k| (k < 2).then_some(truth[k] + errors[k]));
        let leads = solve_leads(&exact(&truth), 27.0, 13.5, &few, false);
        assert!(leads.from_onset.iter().all(|&f| !f), "{leads:?}");
        let regular = leads.lead_us.iter().sum::<f64>() / 8.0;
        assert!((regular - 13.5).abs() < 1e-6, "{leads:?}");
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
            let leads = solve_leads(&eq, 20.0, mean_lead, &NONE, false).lead_us;
            let regular = leads[..7].iter().sum::<f64>() / 7.0;
            assert!((regular - mean_lead).abs() < 1e-6, "{mean_lead}: {leads:?}");
            assert!((leads[1] - leads[0] - 1.0).abs() < 1e-6);
            assert!((leads[7] - leads[0] + 300.0).abs() < 1e-6);
        }
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
        let leads = solve_leads(&eq, 26.0, 13.0, &NONE, false).lead_us;
        let regular = tied.iter().map(|&k| leads[k]).sum::<f64>() / tied.len() as f64;
        assert!((regular - 13.0).abs() < 1e-6, "{leads:?}");
        assert!((leads[7] - leads[0] - 100.0).abs() < 1e-6, "{leads:?}");
        assert_eq!((leads[3], leads[4]), (13.0, 13.0));
        assert_eq!(
            solve_leads(&[], 26.0, 13.0, &NONE, false).lead_us,
            [13.0; N_SENSORS]
        );
    }

    #[test]
    fn a_pick_after_the_other_directions_first_risen_sample_is_moved_back_to_it() {
        use crate::engine::onset::pick::Pick;
        const DT: f64 = 27.0;
        let pick = |t_us: f64, quiet: f64| Pick {
            t_us,
            snr: 50.0,
            clipped: false,
            hidden_arrival: false,
            bracket_us: (quiet, quiet + DT),
            polarity: 1.0,
            quiet_sigmas: 0.0,
            one_waveform: true,
            one_sample: true,
            sharp_fit: false,
            sigma: 2.0,
        };
        // 0→1 rises between 108 and 135 µs (picked at the middle, 121.5); 1→0, whose file
        // starts 10 µs later (α_01 − α_10 = 10 µs), between 81 and 108 µs: its first risen
        // sample, at 118 µs in 0→1's time, shows the arrival came before it.
        let mut picks: Picks = [[None; N_SENSORS]; N_SENSORS];
        picks[0][1] = Some(pick(121.5, 108.0));
        picks[1][0] = Some(pick(94.5, 81.0));
        let correlated = picks;
        let coherent = [((0, 1, 10.0, RECIPROCAL_GCC_WEIGHT), 0.9)];
        let mut bounded = picks;
        bound_by_reciprocals(&mut bounded, &correlated, &coherent, DT);
        assert_eq!(bounded[0][1].unwrap().t_us, 118.0);
        assert_eq!(bounded[1][0].unwrap().t_us, 94.5);
        // Recordings that do not carry one waveform say nothing about each other's arrival.
        let incoherent = [((0, 1, 10.0, RECIPROCAL_GCC_WEIGHT), 0.5)];
        let mut kept = picks;
        bound_by_reciprocals(&mut kept, &correlated, &incoherent, DT);
        assert_eq!(kept, picks);
        // Where neither ray's class carries one waveform and both last quiet samples are quiet,
        // 0→1's last quiet sample (108 µs, 98 µs in 1→0's time, less 0.3 of a sample) bounds
        // 1→0 from below as well: both go to the middle of the brackets' overlap.
        let single = |p: Option<Pick>, quiet_sigmas: f64| {
            p.map(|p| Pick {
                one_waveform: false,
                quiet_sigmas,
                ..p
            })
        };
        let mut own = picks;
        own[0][1] = single(picks[0][1], 0.5);
        own[1][0] = single(picks[1][0], -1.0);
        let mut bounded = own;
        bound_by_reciprocals(&mut bounded, &own, &coherent, DT);
        assert_eq!(bounded[0][1].unwrap().t_us, 113.0);
        assert!(
            (bounded[1][0].unwrap().t_us - 0.5 * (108.0 - 10.0 - 0.3 * DT + 108.0)).abs() < 1e-9
        );
        // Sharp fits (a clean rise on several samples) are kept where both brackets allow
        // them, and brought inside otherwise: 0→1's overlap is 108–118 µs, 1→0's 89.9–108 µs.
        let fitted = |p: Option<Pick>, t_us: f64, sharp_fit: bool| {
            p.map(|p| Pick {
                one_sample: false,
                sharp_fit,
                t_us,
                ..p
            })
        };
        let mut fit = own;
        fit[0][1] = fitted(own[0][1], 112.0, true);
        fit[1][0] = fitted(own[1][0], 85.0, true);
        let mut bounded = fit;
        bound_by_reciprocals(&mut bounded, &fit, &coherent, DT);
        assert_eq!(bounded[0][1].unwrap().t_us, 112.0);
        assert!((bounded[1][0].unwrap().t_us - (108.0 - 10.0 - 0.3 * DT)).abs() < 1e-9);
        // Fits that are not sharp (a line through two rising samples) know no more than their
        // brackets: both go to the middle of the overlap, as the brackets' middles do.
        fit[0][1] = fitted(own[0][1], 112.0, false);
        fit[1][0] = fitted(own[1][0], 85.0, false);
        let mut bounded = fit;
        bound_by_reciprocals(&mut bounded, &fit, &coherent, DT);
        assert_eq!(bounded[0][1].unwrap().t_us, 113.0);
        assert!(
            (bounded[1][0].unwrap().t_us - 0.5 * (108.0 - 10.0 - 0.3 * DT + 108.0)).abs() < 1e-9
        );
        // A last quiet sample that stands out on the arrival's side may hold a slow rise's
        // start: the upper bound alone.
        own[1][0] = single(picks[1][0], 3.0);
        let mut bounded = own;
        bound_by_reciprocals(&mut bounded, &own, &coherent, DT);
        assert_eq!(bounded[0][1].unwrap().t_us, 118.0);
        assert_eq!(bounded[1][0].unwrap().t_us, 94.5);
        // Within two sigmas it may not where both rises show on one sample (abrupt rises), and
        // may where a rise shows on several.
        own[1][0] = single(picks[1][0], 1.5);
        let mut bounded = own;
        bound_by_reciprocals(&mut bounded, &own, &coherent, DT);
        assert_eq!(bounded[0][1].unwrap().t_us, 113.0);
        fit[0][1] = fitted(own[0][1], 112.0, false);
        fit[1][0] = fitted(own[1][0], 85.0, false);
        let mut bounded = fit;
        bound_by_reciprocals(&mut bounded, &fit, &coherent, DT);
        assert_eq!(bounded[0][1].unwrap().t_us, 112.0);
        assert_eq!(bounded[1][0].unwrap().t_us, 85.0);
        // A bound more than a sample before the pick: one of them is off; neither moves.
        let far = [((0, 1, -30.0, RECIPROCAL_GCC_WEIGHT), 0.9)];
        let mut kept = picks;
        bound_by_reciprocals(&mut kept, &correlated, &far, DT);
        assert_eq!(kept, picks);
    }

    #[test]
    fn reciprocal_windows_start_before_the_earlier_pick_on_one_grid() {
        use crate::engine::onset::testing::prepared;
        // Recording 0→1 rises at sample 10, recording 1→0 at sample 12: both windows start
        // four samples before the earlier pick, so the rise sits two samples later in the
        // second window.
        let rising = |at: usize| -> Vec<f32> {
            (0..64).map(|k| if k >= at { 500.0 } else { 0.0 }).collect()
        };
        let a = prepared(std::array::from_fn(|c| {
            if c == 1 { rising(10) } else { rising(99) }
        }));
        let b = prepared(std::array::from_fn(|c| {
            if c == 0 { rising(12) } else { rising(99) }
        }));
        let (wa, wb) = reciprocal_windows(&a, &b, 0, 1, 270.0, 324.0, 27.0);
        assert_eq!((wa.len(), wb.len()), (RECIPROCAL_WINDOW, RECIPROCAL_WINDOW));
        let first = |w: &[f32]| w.iter().position(|&v| v > 1.0).unwrap();
        assert_eq!(first(&wb), first(&wa) + 2);
    }
}
