//! The onset method: physics-aware times of flight.
//!
//! 1. Rest level and noise of each channel are pooled over the seven taps where it receives,
//!    from the samples before any plausible arrival (faster than the fastest velocity).
//! 2. On each receiver the first arrival is the first sample beyond `ONSET_SIGMAS` noise
//!    sigmas, refined below one sample by a least-squares hinge fit `y = a·(t − t_a)₊` over the
//!    quiet samples before it and the first rising one(s): the onset `t_a` is where the rise
//!    leaves the rest level, not where it crosses a threshold.
//! 3. The tapped channel clips from its first samples, so it only says that the tap happened
//!    at most about one sample before the first sample. The tap instants relative to each
//!    other come from reciprocity: the recordings i→j and j→i travel the same path, so their
//!    onsets and their waveforms (GCC-PHAT between the two) differ only by the difference of
//!    the two tap instants. A least-squares fit over the 28 pairs gives the eight instants up
//!    to a common offset; the offset is the prior that the trigger falls uniformly within the
//!    sample before the first one (`lead = dt/2` on average).

use super::gcc::{self, CpuGcc};
use super::{
    EngineConfig, Prepared, RayFlag, SetEstimate, empty_estimate, finish, max_lag_samples,
};
use crate::device::N_SENSORS;
use crate::geometry::chord_m;

/// Threshold of the first-arrival detector, in noise standard deviations.
pub const ONSET_SIGMAS: f64 = 6.0;
/// Noise floor in ADC counts (12-bit quantisation and the amplifier's hum).
pub const MIN_SIGMA: f64 = 2.0;
/// Counts of margin inside the clip levels seen on a channel.
const CLIP_MARGIN: f32 = 12.0;

/// A first arrival on one receiver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    /// µs after the first sample of the file.
    pub t_us: f64,
    /// Largest |deviation| in the window, in noise sigmas.
    pub snr: f64,
    /// The rise was clipped before two samples could be fitted.
    pub clipped: bool,
}

/// Rest level and noise sigma of one channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    pub rest: f64,
    pub sigma: f64,
}

/// Pools quiet samples of channel `j` over the taps where it receives.
pub fn baseline(cfg: &EngineConfig, set: &[Prepared; N_SENSORS], j: usize) -> Baseline {
    let mut quiet = Vec::new();
    for (i, tap) in set.iter().enumerate() {
        if i == j {
            continue;
        }
        // The wave cannot arrive before chord / v_max after the tap, and the tap is at most
        // one sample before the first sample.
        let earliest_us = chord_m(i, j, cfg.diameter_m) / cfg.max_velocity_m_s * 1e6 - tap.dt_us;
        let raw = &tap.raw[j];
        for (k, &t) in tap.t_us.iter().enumerate() {
            if k >= 2 && t >= earliest_us {
                break;
            }
            quiet.push(raw[k] as f64);
        }
    }
    let rest = super::median(&mut quiet).unwrap_or(2100.0);
    let mut dev: Vec<f64> = quiet.iter().map(|x| (x - rest).abs()).collect();
    let mad = super::median(&mut dev).unwrap_or(0.0);
    Baseline {
        rest,
        sigma: (1.4826 * mad).max(MIN_SIGMA),
    }
}

/// Picks the first arrival on `raw` (one receiver of one tap) inside samples `..=max_lag`.
pub fn pick(raw: &[f32], t_us: &[f64], base: Baseline, max_lag: usize) -> Option<Pick> {
    let n = raw.len().min(max_lag + 3).min(t_us.len());
    if n < 3 {
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
    let thr = ONSET_SIGMAS * base.sigma;
    let dev = |k: usize| raw[k] as f64 - base.rest;
    let k1 = (1..n.min(max_lag + 1)).find(|&k| dev(k).abs() > thr)?;
    let polarity = dev(k1).signum();
    let y = |k: usize| polarity * dev(k);
    let peak = (0..n).map(|k| dev(k).abs()).fold(0.0, f64::max);
    // Fit window: up to three quiet samples before k1, k1 itself, and k1+1 while it still rises
    // and is not clipped.
    let k_lo = k1.saturating_sub(3);
    let mut k_hi = k1;
    if k1 + 1 < n && y(k1 + 1) > y(k1) && !clipped_at(raw[k1 + 1]) {
        k_hi = k1 + 1;
    }
    let clipped = clipped_at(raw[k1]);
    let fit_end = if clipped { k1 - 1 } else { k_hi };
    let t_a = if clipped || fit_end < k1 {
        // Only the last quiet sample and a clipped one: the onset is between them.
        0.5 * (t_us[k1 - 1] + t_us[k1])
    } else {
        hinge_fit(
            &(k_lo..=fit_end)
                .map(|k| (t_us[k], y(k)))
                .collect::<Vec<_>>(),
            t_us[k_lo],
            t_us[k1],
        )
    };
    Some(Pick {
        t_us: t_a,
        snr: peak / base.sigma,
        clipped,
    })
}

/// Least-squares fit of `y = a·(t − t_a)₊` over `points`, `t_a` searched in `[lo, hi]`.
fn hinge_fit(points: &[(f64, f64)], lo: f64, hi: f64) -> f64 {
    let residual = |t_a: f64| {
        let (mut yh, mut hh, mut yy) = (0.0, 0.0, 0.0);
        for &(t, y) in points {
            let h = (t - t_a).max(0.0);
            yh += y * h;
            hh += h * h;
            yy += y * y;
        }
        if hh > 0.0 { yy - yh * yh / hh } else { yy }
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

/// Onset estimate for one set; `gcc` (64-point) correlates the reciprocal pairs.
pub fn estimate(cfg: &EngineConfig, set: &[Prepared; N_SENSORS], gcc: &mut CpuGcc) -> SetEstimate {
    let mut est = empty_estimate(set);
    let bases: [Baseline; N_SENSORS] = std::array::from_fn(|j| baseline(cfg, set, j));
    let mut picks = [[None::<Pick>; N_SENSORS]; N_SENSORS];
    for (i, tap) in set.iter().enumerate() {
        let max_lag = max_lag_samples(cfg, tap.dt_us).max(2) as usize;
        for j in 0..N_SENSORS {
            if i != j {
                picks[i][j] = pick(&tap.raw[j], &tap.t_us, bases[j], max_lag);
            }
        }
    }
    // Relative tap instants: lead_j − lead_i = α_ij − α_ji (picks) and the GCC-PHAT lag
    // between the reciprocal recordings.
    let mut equations: Vec<(usize, usize, f64, f64)> = Vec::new();
    for i in 0..N_SENSORS {
        for j in (i + 1)..N_SENSORS {
            let (Some(a), Some(b)) = (picks[i][j], picks[j][i]) else {
                continue;
            };
            equations.push((i, j, a.t_us - b.t_us, 1.0));
            if let Some(lag_us) = reciprocal_lag_us(gcc, &set[i], &set[j], i, j, a.t_us, b.t_us) {
                equations.push((i, j, lag_us, 2.0));
            }
        }
    }
    let mean_dt = est.dt_us;
    let leads = solve_leads(&equations, 0.5 * mean_dt);
    est.tap_lead_us = leads;
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i == j {
                continue;
            }
            match picks[i][j] {
                None => est.flags[i][j] = RayFlag::NoPeak,
                Some(p) => {
                    est.tof_us[i][j] = p.t_us + leads[i];
                    est.flags[i][j] = if p.snr < cfg.min_snr {
                        RayFlag::LowSnr
                    } else {
                        RayFlag::Ok
                    };
                    let _ = p.clipped;
                }
            }
        }
    }
    finish(cfg, &mut est);
    est
}

/// GCC-PHAT lag (µs, in the files' own time axes) of recording i→j against j→i, searched
/// within two samples of what the picks say. `None` when no clear peak.
fn reciprocal_lag_us(
    gcc: &mut CpuGcc,
    tap_i: &Prepared,
    tap_j: &Prepared,
    i: usize,
    j: usize,
    pick_ij: f64,
    pick_ji: f64,
) -> Option<f64> {
    let dt = 0.5 * (tap_i.dt_us + tap_j.dt_us);
    // Look at the first arrival and a few periods after it, tapered.
    let start = ((pick_ij.min(pick_ji) / dt).floor() as isize - 4).max(0) as usize;
    let len = 24usize;
    let cut = |x: &[f32]| -> Vec<f32> {
        (0..len)
            .map(|k| {
                let w = 0.5 - 0.5 * (std::f64::consts::TAU * (k as f64 + 0.5) / len as f64).cos();
                x.get(start + k).copied().unwrap_or(0.0) * w.sqrt() as f32
            })
            .collect()
    };
    let a = cut(&tap_i.channels[j]);
    let b = cut(&tap_j.channels[i]);
    let r = gcc.correlate_pair(&b, &a);
    let expect = (pick_ij - pick_ji) / dt;
    let lo = (expect - 2.0).floor() as isize;
    let hi = (expect + 2.0).ceil() as isize;
    let p = gcc::find_peak(r, lo, hi)?;
    if p.on_edge || p.sharpness < 1.2 {
        return None;
    }
    Some(p.lag * dt)
}

/// Least squares for the eight leads from `lead_j − lead_i = d` equations (weighted), with
/// the mean of the leads fixed to `mean_lead`. Unconnected taps keep the mean.
pub fn solve_leads(equations: &[(usize, usize, f64, f64)], mean_lead: f64) -> [f64; N_SENSORS] {
    // Gauss–Seidel on the weighted graph Laplacian; tiny system, converges fast.
    let mut x = [0.0f64; N_SENSORS];
    for _ in 0..500 {
        for k in 0..N_SENSORS {
            let (mut num, mut den) = (0.0, 0.0);
            for &(i, j, d, w) in equations {
                if i == k {
                    num += w * (x[j] - d);
                    den += w;
                } else if j == k {
                    num += w * (x[i] + d);
                    den += w;
                }
            }
            if den > 0.0 {
                x[k] = num / den;
            }
        }
        let mean = x.iter().sum::<f64>() / N_SENSORS as f64;
        for v in &mut x {
            *v -= mean;
        }
    }
    x.map(|v| v + mean_lead)
}
