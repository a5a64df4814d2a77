//! The onset method: physics-aware times of flight.
//!
//! 1. [`baseline`](mod@baseline): rest level and noise of each channel, pooled over the seven
//!    taps where it receives, from the samples before any plausible arrival (faster than the
//!    fastest velocity). [`impact`]: a file whose hammer impact is on another sensor than its
//!    name says is found, its rays flagged, and it may serve as the tap of the sensor it hit.
//! 2. [`pick`](mod@pick): on each receiver the first arrival is the first sample beyond a
//!    threshold that follows the noise and the set's noise-to-peak ratio, refined below one
//!    sample by a hinge fit: the onset is where the rise leaves the rest level, not where it
//!    crosses a threshold. [`stack`]: rays of one chord class are aligned by GCC-PHAT between
//!    them where their waveforms agree ([`waveforms_differ`]), and their common level is the
//!    onset of their stacked waveform.
//! 3. [`leads`]: the tap instants relative to each other come from reciprocity (i→j and j→i
//!    travel the same path), by a robust least-squares fit ([`lsq`]) over the 28 pairs. Their
//!    common offset comes from the tapped channels' own impacts where the device recorded
//!    before them ([`impact_onset`]), else from the trigger lead
//!    ([`EngineConfig::trigger_lead`]): a tapped channel that clips from its first sample
//!    cannot say how long before it the impact came.
//!
//! [`plan`] does the first phase and lists the correlations the batch must compute; [`solve`]
//! takes them to the estimate. Times are µs after each file's first sample unless named
//! otherwise.

pub mod baseline;
pub mod impact;
pub mod joint;
pub mod leads;
pub mod lsq;
pub mod pick;
pub mod stack;

use self::baseline::{Baseline, baseline, noise_to_peak};
use self::leads::{
    ReciprocalPlan, bound_by_reciprocals, plan_reciprocal, reciprocal_equations, tap_leads,
};
use self::pick::{Pick, pick, pick_from};
use self::stack::{ClassPlan, plan_classes, refine_class};
use super::gcc::PairBatch;
use super::{
    EngineConfig, Prepared, RayFlag, SetEstimate, TapInstantSource, empty_estimate, finish,
    max_lag_samples,
};
use crate::geometry::{N_SENSORS, chord_m};
pub use impact::{Reassignment, impact_channel, impact_onset, reassign};

/// The pick of each ray i→j, `picks[i][j]` (`None` on the diagonal and where nothing was
/// picked).
type Picks = [[Option<Pick>; N_SENSORS]; N_SENSORS];

/// Passes of re-picking the rays picked before their earliest possible arrival.
const REPICK_PASSES: usize = 3;
/// A pick more than this many sampling intervals before the earliest possible arrival is
/// picked again.
const EARLY_PICK: f64 = 0.5;

/// What the first phase leaves for the correlations: picks and which windows were paired.
#[derive(Clone, Debug)]
pub struct OnsetPlan {
    picks: Picks,
    bases: [Baseline; N_SENSORS],
    /// The set's [`noise_to_peak`] ratio.
    noise_to_peak: f64,
    /// Taps whose impact is on another channel than the one the file names.
    mismatched: [bool; N_SENSORS],
    /// Each tap's impact on its tapped channel, µs after the first sample, where the record
    /// shows it ([`impact_onset`]).
    impacts: [Option<f64>; N_SENSORS],
    classes: Vec<ClassPlan>,
    reciprocal: Vec<ReciprocalPlan>,
}

/// The common time grid of a set's correlation windows: its mean sampling interval, µs.
fn grid_dt(set: &[Prepared; N_SENSORS]) -> f64 {
    set.iter().map(|t| t.dt_us).sum::<f64>() / N_SENSORS as f64
}

/// The last sample a pick may be at on a tap sampled every `dt_us`: the window's largest lag
/// ([`max_lag_samples`]), at least 2.
fn pick_max_lag(cfg: &EngineConfig, dt_us: f64) -> usize {
    max_lag_samples(cfg, dt_us).max(2) as usize
}

/// The least time of flight of ray i→j, µs: its chord at the fastest plausible velocity.
fn least_tof_us(cfg: &EngineConfig, i: usize, j: usize) -> f64 {
    chord_m(i, j, cfg.diameter_m) / cfg.max_velocity_m_s * 1e6
}

/// Phase one: baselines and picks, and the windows and pairs the correlator must compute
/// (appended to `batch`, whose `n_fft` must be at least 32).
pub fn plan(cfg: &EngineConfig, set: &[Prepared; N_SENSORS], batch: &mut PairBatch) -> OnsetPlan {
    let bases: [Baseline; N_SENSORS] = std::array::from_fn(|j| baseline(cfg, set, j));
    let mismatched: [bool; N_SENSORS] =
        std::array::from_fn(|i| impact_channel(&set[i], i, &bases).is_some());
    let impacts: [Option<f64>; N_SENSORS] = std::array::from_fn(|i| {
        (!mismatched[i])
            .then(|| impact_onset(&set[i], i, bases[i]))
            .flatten()
    });
    let dt = grid_dt(set);
    let noise_to_peak = noise_to_peak(cfg, set, &bases);
    let mut picks: Picks = [[None; N_SENSORS]; N_SENSORS];
    for (i, tap) in set.iter().enumerate() {
        let max_lag = pick_max_lag(cfg, tap.dt_us);
        for j in 0..N_SENSORS {
            if i != j {
                picks[i][j] = pick(&tap.raw[j], &tap.t_us, bases[j], noise_to_peak, max_lag);
            }
        }
    }
    let classes = plan_classes(set, &picks, &mismatched, dt, batch);
    let reciprocal = plan_reciprocal(set, &picks, &mismatched, dt, batch);
    OnsetPlan {
        picks,
        bases,
        noise_to_peak,
        mismatched,
        impacts,
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
    let gcc_valued = reciprocal_equations(&plan.reciprocal, &picks, dt, batch, corr);
    let gcc_equations: Vec<_> = gcc_valued.iter().map(|&(e, _)| e).collect();
    let mean_lead = cfg.trigger_lead * dt;
    let measured = plan.impacts.map(|t| t.map(|t| -t));
    let leads_from = |picks: &Picks| {
        tap_leads(
            picks,
            &plan.mismatched,
            &gcc_equations,
            dt,
            mean_lead,
            &measured,
        )
    };
    let correlated = picks;
    let solved = leads_from(&picks);
    let mut leads = solved.lead_us;
    let mut from_onset = solved.from_onset;
    // A pick before the earliest possible arrival (the tap instant plus the chord at the
    // fastest velocity) caught something else: on real recordings, the wiggles of a trigger
    // that fired before the hammer's real impact. Pick again from that instant on, and solve
    // the tap instants again.
    for _pass in 0..REPICK_PASSES {
        let mut repicked = false;
        for i in 0..N_SENSORS {
            let tap = &set[i];
            for j in 0..N_SENSORS {
                let Some(p) = picks[i][j].filter(|_| i != j && !plan.mismatched[i]) else {
                    continue;
                };
                let earliest = -leads[i] + least_tof_us(cfg, i, j);
                if p.t_us < earliest - EARLY_PICK * dt {
                    let first = tap.t_us.partition_point(|&t| t < earliest);
                    let max_lag = first + pick_max_lag(cfg, tap.dt_us);
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
        let solved = leads_from(&picks);
        leads = solved.lead_us;
        from_onset = solved.from_onset;
    }
    bound_by_reciprocals(&mut picks, &correlated, &gcc_valued, dt);
    // A weak first arrival of the other polarity than the main phase, on both recordings of a
    // path together.
    joint::joint_onsets(
        set,
        &plan.bases,
        &mut picks,
        &leads,
        &plan.mismatched,
        |i, j| least_tof_us(cfg, i, j),
    );
    est.tap_lead_us = leads;
    est.tap_instant_source = from_onset.map(|onset| {
        if onset {
            TapInstantSource::Onset
        } else {
            TapInstantSource::Prior
        }
    });
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

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A tap from raw counts sampled every 27 µs (its channels not centred: tests that need
    /// them centred pass centred counts).
    pub fn prepared(raw: [Vec<f32>; N_SENSORS]) -> Prepared {
        let n = raw[0].len();
        Prepared {
            channels: raw.clone(),
            t_us: (0..n).map(|k| k as f64 * 27.0).collect(),
            dt_us: 27.0,
            raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_the_samples_follows_a_line_and_is_zero_outside() {
        let x: Vec<f32> = (0..10).map(|k| 3.0 * k as f32).collect();
        let t: Vec<f64> = (0..10).map(|k| 27.0 * k as f64).collect();
        // On the samples' own instants: the samples.
        assert_eq!(resample(&x, &t, 0.0, 27.0, 10), x);
        // Between them, away from the ends, a straight line stays straight (Catmull–Rom is
        // exact on lines; the end intervals repeat the end sample).
        let mid = resample(&x, &t, 40.5, 27.0, 7);
        for (k, v) in mid.iter().enumerate() {
            assert!((v - (4.5 + 3.0 * k as f32)).abs() < 1e-4, "{k}: {v}");
        }
        // Before the first and after the last sample: 0.
        assert_eq!(resample(&x, &t, -27.0, 27.0, 1), vec![0.0]);
        assert_eq!(resample(&x, &t, 250.0, 27.0, 1), vec![0.0]);
    }

    #[test]
    fn only_loud_recordings_that_correlate_poorly_differ_in_waveform() {
        assert!(waveforms_differ(0.5, 400.0));
        assert!(!waveforms_differ(0.9, 400.0));
        // Weak recordings correlate poorly from noise alone.
        assert!(!waveforms_differ(0.5, 10.0));
    }
}
