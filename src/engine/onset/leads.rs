//! Tap instants from reciprocity.
//!
//! The tapped channel clips from its first samples, so it only says that the tap happened at
//! most about one sample before the first sample. The recordings i→j and j→i travel the same
//! path, so their onsets and their waveforms (GCC-PHAT between the two) differ only by the
//! difference of the two tap instants. A robust least-squares fit over the 28 pairs
//! ([`solve_leads`]) gives the eight instants up to a common offset; the offset is the prior
//! that the trigger falls uniformly within the sample before the first one (`lead = dt/2` on
//! average), or the device's own mean lead
//! ([`EngineConfig::trigger_lead`](crate::engine::EngineConfig::trigger_lead)). Leads are µs
//! before each file's first sample.

use super::lsq::{Equation, solve_robust};
use super::{Picks, resample, waveforms_differ};
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
/// correlation has a sharp peak near the picks' difference and the waveforms agree.
pub(super) fn reciprocal_equations(
    reciprocal: &[ReciprocalPlan],
    picks: &Picks,
    dt: f64,
    batch: &PairBatch,
    corr: &[f32],
) -> Vec<Equation> {
    let mut gcc_equations: Vec<Equation> = Vec::new();
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
            gcc_equations.push((r.i, r.j, p.lag * dt, RECIPROCAL_GCC_WEIGHT));
        }
    }
    gcc_equations
}

/// The eight leads (µs before each file's first sample) from `gcc_equations` and the
/// differences of the reciprocal picks (`lead_j − lead_i = α_ij − α_ji`), mis-tapped files
/// left out, with the regular leads' mean at `mean_lead`.
pub(super) fn tap_leads(
    picks: &Picks,
    mismatched: &[bool; N_SENSORS],
    gcc_equations: &[Equation],
    dt: f64,
    mean_lead: f64,
) -> [f64; N_SENSORS] {
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
    solve_leads(&equations, dt, mean_lead)
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
pub fn solve_leads(equations: &[Equation], dt: f64, mean_lead: f64) -> [f64; N_SENSORS] {
    let x = solve_robust(N_SENSORS, equations, ROBUST_SCALE * dt);
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
    let Some(median) = median(&mut sorted) else {
        return [mean_lead; N_SENSORS];
    };
    let near: Vec<f64> = sorted
        .iter()
        .copied()
        .filter(|v| (v - median).abs() <= REGULAR_SPREAD * dt)
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
