//! Baselines: each channel's rest level and noise, and the set's noise-to-peak ratio.
//!
//! A channel receives in seven of the eight taps. Its rest level and noise sigma are pooled
//! over those seven, from the samples before any plausible arrival (the wave cannot come
//! sooner than the chord at the fastest plausible velocity after the tap): the median and the
//! median absolute deviation, robust to the odd early wiggle. Counts are raw ADC counts.

use super::pick::PAST_MAX_LAG;
use super::{least_tof_us, pick_max_lag};
use crate::engine::{EngineConfig, Prepared, median};
use crate::geometry::N_SENSORS;

/// Noise floor in ADC counts (12-bit quantisation and the amplifier's hum).
pub const MIN_SIGMA: f64 = 2.0;

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
    let earliest_us = least_tof_us(cfg, i, j) - before_first_us;
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
    let rest = median(&mut quiet).unwrap_or(NOMINAL_REST);
    let mut dev: Vec<f64> = quiet.iter().map(|x| (x - rest).abs()).collect();
    let mad = median(&mut dev).unwrap_or(0.0);
    Baseline {
        rest,
        sigma: (MAD_TO_SIGMA * mad).max(MIN_SIGMA),
    }
}

/// The set's noise-to-peak ratio: the median over the rays of the RMS deviation of their
/// quiet samples (those before the earliest possible arrival, as in [`baseline`]) over their
/// peak in the window a pick may use; infinite when no ray has both.
///
/// A ray's noise is taken as the larger of its channel's pooled sigma and this ratio times
/// its peak, and the onset threshold's fraction of the peak follows it
/// ([`onset_fraction`](super::pick::onset_fraction)).
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
        let max_lag = pick_max_lag(cfg, tap.dt_us);
        for (j, base) in bases.iter().enumerate() {
            if i == j {
                continue;
            }
            let raw = &tap.raw[j];
            let n = raw.len().min(max_lag + PAST_MAX_LAG).min(tap.t_us.len());
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
    median(&mut ratios).unwrap_or(f64::INFINITY)
}

/// The rest level assumed for a channel with no quiet sample at all, counts (the middle of the
/// device's resting range, 2050–2150).
const NOMINAL_REST: f64 = 2100.0;
/// The median absolute deviation of Gaussian noise times this is its standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onset::testing::prepared;

    /// A set where every receiver rests at `2000 + c` counts (c = the channel) with ±`noise`
    /// counts of alternating noise, and rises by 400 counts at sample 20; the tapped channel
    /// clips at once.
    fn set(noise: f32) -> [Prepared; N_SENSORS] {
        std::array::from_fn(|i| {
            prepared(std::array::from_fn(|c| {
                let rest = 2000.0 + c as f32;
                (0..64)
                    .map(|k| {
                        if c == i {
                            4080.0
                        } else if k >= 20 {
                            rest + 400.0
                        } else if k % 2 == 0 {
                            rest + noise
                        } else {
                            rest - noise
                        }
                    })
                    .collect()
            }))
        })
    }

    #[test]
    fn the_rest_and_noise_come_from_the_quiet_samples_of_the_seven_receiving_taps() {
        let cfg = EngineConfig::default();
        let set = set(5.0);
        for j in 0..N_SENSORS {
            let b = baseline(&cfg, &set, j);
            // Half the quiet samples at rest + 5, half at rest − 5: the median falls between.
            assert!((b.rest - (2000.0 + j as f64)).abs() <= 5.0, "{j}: {b:?}");
            assert!(
                b.sigma >= MIN_SIGMA && b.sigma <= MAD_TO_SIGMA * 10.0,
                "{j}: {b:?}"
            );
        }
        // No noise at all: the floor.
        assert_eq!(baseline(&cfg, &self::set(0.0), 3).sigma, MIN_SIGMA);
    }

    #[test]
    fn quiet_samples_end_before_the_earliest_possible_arrival() {
        let cfg = EngineConfig::default();
        let set = set(0.0);
        // The shortest chord at the fastest velocity, less the lead: a few samples at most,
        // and never fewer than two.
        let n = quiet_len(&cfg, &set[0], 0, 1);
        assert!((2..20).contains(&n), "{n}");
        assert!(quiet_len(&cfg, &set[0], 0, 4) >= n);
    }

    #[test]
    fn noise_to_peak_is_the_rms_of_the_quiet_samples_over_the_peak() {
        let cfg = EngineConfig::default();
        let set = set(4.0);
        let bases: [Baseline; N_SENSORS] = std::array::from_fn(|j| Baseline {
            rest: 2000.0 + j as f64,
            sigma: 4.0,
        });
        // RMS 4 counts over a peak of 400.
        let ratio = noise_to_peak(&cfg, &set, &bases);
        assert!((ratio - 0.01).abs() < 1e-9, "{ratio}");
        let silent: [Prepared; N_SENSORS] =
            std::array::from_fn(|_| prepared(std::array::from_fn(|_| vec![2000.0; 64])));
        let flat = [Baseline {
            rest: 2000.0,
            sigma: 2.0,
        }; N_SENSORS];
        assert_eq!(noise_to_peak(&cfg, &silent, &flat), f64::INFINITY);
    }
}
