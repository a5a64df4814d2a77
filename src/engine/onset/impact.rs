//! Impact reassignment: which sensor the hammer really hit in each tap file.
//!
//! The tapped channel clips from its first samples; a receiver answers two or more samples
//! later. A file whose named channel is beaten to the impact level by another channel holds a
//! tap on that other sensor (an operator who tapped the wrong one). Such a file's rays are
//! flagged, and where the sensor it really hit has no good file of its own, the file serves as
//! that sensor's tap ([`reassign`]). A device that starts recording before the impact shows
//! the impact itself on the tapped channel ([`impact_onset`]).

use super::baseline::{Baseline, baseline};
use super::pick::hinge_fit;
use crate::engine::{EngineConfig, Prepared};
use crate::geometry::N_SENSORS;

/// Deviation from rest, in ADC counts, that only the hammer's impact reaches within the first
/// samples: about 100 counts short of the amplifier's clip levels (≈ 1050 and 4080 around a
/// rest level of ≈ 2100).
pub const IMPACT_COUNTS: f64 = 900.0;

/// Another channel than `named` (the sensor the file names as tapped, 0-based) that carries
/// the hammer's impact in one tap file, when
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

/// Deviation from rest, in ADC counts, within which a tapped channel's first sample still
/// rests (a tenth of [`IMPACT_COUNTS`]; the amplifier's noise is 3–6 counts, the impact
/// reaches the clip level within a sample, and a device that triggers on the impact samples
/// it first past its trigger level).
pub const AT_REST_COUNTS: f64 = 90.0;
/// The tapped channel must reach half of [`IMPACT_COUNTS`] within this many samples of
/// leaving its rest: the hammer's impact, not a wiggle.
const IMPACT_RISE_SAMPLES: usize = 3;
/// Quiet samples before the impact that the hinge fit takes.
const IMPACT_FIT_QUIET: usize = 3;

/// The hammer's impact on channel `tapped` of `tap` (the channel hit), µs after the file's
/// first sample, where the record shows it: a device with a pre-trigger buffer starts
/// recording before the impact, so the tapped channel rests for a sample or more, then
/// rises to the impact's size. `None` where the first sample is already off its rest (the
/// channel clips from its first sample: the impact came before the record, and only the
/// trigger-lead prior can place it).
///
/// Below one sample: the impact lies between the last resting sample and the first risen
/// one. Where two or more samples rise below the clip level, a hinge fit through them and
/// the resting samples before puts it where the rise leaves the rest; where the first risen
/// sample is already at the impact's size, nothing inside the interval says where, and its
/// middle is the unbiased guess (the impact's phase against the sampling clock is uniform).
pub fn impact_onset(tap: &Prepared, tapped: usize, base: Baseline) -> Option<f64> {
    let raw = &tap.raw[tapped];
    let n = raw.len().min(tap.t_us.len());
    let dev = |k: usize| raw[k] as f64 - base.rest;
    // The amplifier's own noise (a few counts), not the channel's pooled sigma: where
    // vibration grows with the signal, the receivers' noise says nothing of a resting channel.
    let rest_limit = AT_REST_COUNTS;
    if n < 3 || dev(0).abs() > rest_limit {
        return None;
    }
    let k1 = (1..n).find(|&k| dev(k).abs() > rest_limit)?;
    let big = (k1..n.min(k1 + IMPACT_RISE_SAMPLES)).any(|k| dev(k).abs() > 0.5 * IMPACT_COUNTS);
    if !big {
        return None;
    }
    let polarity = dev(k1).signum();
    let y = |k: usize| polarity * dev(k);
    // Rising samples below the impact's size (above it the amplifier clips: no shape).
    let mut k_hi = k1;
    while k_hi + 1 < n && y(k_hi + 1) > y(k_hi) && y(k_hi + 1) < IMPACT_COUNTS {
        k_hi += 1;
    }
    if y(k1) >= IMPACT_COUNTS || k_hi == k1 {
        return Some(0.5 * (tap.t_us[k1 - 1] + tap.t_us[k1]));
    }
    let points: Vec<(f64, f64)> = (k1.saturating_sub(IMPACT_FIT_QUIET)..=k_hi)
        .map(|k| (tap.t_us[k], y(k)))
        .collect();
    Some(hinge_fit(&points, tap.t_us[k1 - 1], tap.t_us[k1]))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onset::testing::prepared;

    /// A tap whose channel c reaches the impact level at sample `first_big[c]` (two samples
    /// of 2600 counts before it), resting at 2100 otherwise.
    fn tap_with(first_big: [Option<usize>; N_SENSORS]) -> Prepared {
        prepared(std::array::from_fn(|c| {
            (0..40)
                .map(|k| match first_big[c] {
                    Some(b) if k >= b => 4080.0,
                    Some(b) if k + 2 >= b => 2600.0,
                    _ => 2100.0,
                })
                .collect()
        }))
    }

    #[test]
    fn a_tapped_channel_that_rests_first_shows_its_impact() {
        let base = Baseline {
            rest: 2100.0,
            sigma: 3.0,
        };
        let tap = |samples: &[f32]| {
            prepared(std::array::from_fn(|c| {
                let mut x = vec![2100.0; 40];
                if c == 2 {
                    x[..samples.len()].copy_from_slice(samples);
                }
                x
            }))
        };
        // Rest, rest, then clipped: the impact lies in the interval before sample 2, its
        // middle is the guess.
        let t = impact_onset(&tap(&[2103.0, 2098.0, 4080.0, 1050.0]), 2, base).unwrap();
        assert!((t - 40.5).abs() < 1e-9, "{t}");
        // Two rising samples below the clip level: the hinge fit puts it where the line
        // through them leaves the rest, 0.4 of a sample before sample 2.
        let t = impact_onset(&tap(&[2100.0, 2100.0, 2300.0, 2800.0, 4080.0]), 2, base).unwrap();
        assert!((t - 43.2).abs() < 0.5, "{t}");
        // Clipped from the first sample: only the prior can place it.
        assert_eq!(impact_onset(&tap(&[4080.0, 1050.0, 4080.0]), 2, base), None);
        // Off its rest at the first sample by more than the amplifier's noise: the impact
        // came before the record.
        assert_eq!(impact_onset(&tap(&[2400.0, 3900.0, 4080.0]), 2, base), None);
        // A wiggle that never reaches the impact's size is no impact.
        assert_eq!(
            impact_onset(&tap(&[2100.0, 2300.0, 2200.0, 2100.0]), 2, base),
            None
        );
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

    /// A set where file `i` holds a tap on sensor `hit[i]`: that channel clips from sample 0,
    /// the others rise to 2600 counts at sample 6.
    fn set_hitting(hit: [usize; N_SENSORS]) -> [Prepared; N_SENSORS] {
        std::array::from_fn(|i| {
            prepared(std::array::from_fn(|c| {
                (0..64)
                    .map(|k| {
                        if c == hit[i] {
                            4080.0
                        } else if k >= 6 {
                            2600.0
                        } else {
                            2100.0
                        }
                    })
                    .collect()
            }))
        })
    }

    #[test]
    fn a_mis_tapped_file_serves_the_sensor_it_hit_only_when_that_sensor_has_no_file() {
        let cfg = EngineConfig::default();
        let right = reassign(&cfg, &set_hitting(std::array::from_fn(|k| k)));
        assert_eq!(right.tap_source, std::array::from_fn(|k| k));
        assert_eq!(right.impact_elsewhere, [None; N_SENSORS]);
        // The real set's pattern: file 4 hit sensor 3 (which has its own file), file 5 hit
        // sensor 4: sensor 4 takes file 5, sensor 3 keeps its own, sensor 5 has none.
        let r = reassign(&cfg, &set_hitting([0, 1, 2, 2, 3, 5, 6, 7]));
        assert_eq!(r.impact_elsewhere[3], Some(2));
        assert_eq!(r.impact_elsewhere[4], Some(3));
        assert_eq!(r.tap_source, [0, 1, 2, 4, 4, 5, 6, 7]);
        // Files 1 and 2 hit each other's sensor, and file 4 hit sensor 1 too: sensor 2 takes
        // file 1, sensor 1 (claimed twice) keeps its own, sensor 4 has none but its own.
        let r = reassign(&cfg, &set_hitting([0, 2, 1, 3, 1, 5, 6, 7]));
        assert_eq!(r.tap_source, [0, 1, 1, 3, 4, 5, 6, 7]);
    }
}
