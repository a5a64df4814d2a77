//! `terawang calibrate`: a device's trigger lead, measured on a specimen of known velocity.
//!
//! The tapped channel clips from its first sample, so no recording says how long before that
//! sample the hammer hit (README, "The trigger lead"). On a sound, uniform specimen whose
//! velocity is known, every ray's true ToF is its chord over that velocity. The engine's ToF,
//! computed with an assumed lead, differs from it by the error of that assumption (in sampling
//! intervals) plus the picker's own bias on the device's pulse, which the measured lead takes
//! in too: both shift every ToF of the device alike.

use std::path::PathBuf;

use crate::device::{N_SENSORS, ReadError, ReadErrorKind, TapName};
use crate::engine::{
    CorrelatorError, Engine, EngineConfig, MAX_TRIGGER_LEAD, Method, SetInput, TapInstantSource,
};
use crate::evaluate::quantile;
use crate::geometry::{check_diameter, chord_m};
use crate::group::Grouper;
use crate::process::{collect_inputs, read_set};

/// The complete sets among files and folders, read, with the files that could not be read.
#[derive(Debug, Default)]
pub struct SetsRead {
    /// Each set's result name (`result_<device>_<unix>`) and its eight taps.
    pub sets: Vec<(String, SetInput)>,
    pub rejected: Vec<ReadError>,
    /// Files that are not tap files by their name (e.g. `truth.json`), with the reason.
    pub ignored: Vec<(PathBuf, String)>,
}

/// Groups the files among `inputs` (folders one level deep) as `process` does and reads every
/// complete set; a file that cannot be read is rejected, and the rest of its set may still
/// form a set with another file of the same tap.
pub fn read_sets(inputs: &[PathBuf], window_s: i64) -> anyhow::Result<SetsRead> {
    let mut out = SetsRead::default();
    let mut grouper: Grouper<PathBuf> = Grouper::new(window_s);
    for path in collect_inputs(inputs)? {
        match TapName::from_path(&path) {
            Ok(name) => grouper.add(name, path),
            Err(kind @ ReadErrorKind::BadName(_)) => out.ignored.push((path, kind.to_string())),
            Err(kind) => out.rejected.push(ReadError { path, kind }),
        }
    }
    // A set with an unreadable tap is withdrawn and its other taps wait for another tap of
    // that sensor, as in `process`.
    let mut queue: std::collections::VecDeque<_> = grouper.take_complete().into();
    while let Some(set) = queue.pop_front() {
        match read_set(&set) {
            Ok(taps) => out.sets.push((set.result_name().stem(), taps.input)),
            Err(bad) => {
                out.rejected.extend(bad.rejected);
                grouper.give_back(&set.device, set.unix_s, bad.good);
                queue.extend(grouper.take_complete_again(&set.device, set.unix_s));
            }
        }
    }
    Ok(out)
}

/// One set tapped on a specimen: its name, its taps, and the specimen's geometry and velocity.
#[derive(Clone, Debug)]
pub struct SpecimenSet {
    pub name: String,
    pub taps: SetInput,
    pub diameter_m: f64,
    /// The same along every chord: sound, uniform wood.
    pub velocity_m_s: f64,
}

/// One set's share of a calibration.
#[derive(Clone, Debug, PartialEq)]
pub struct SetLead {
    pub name: String,
    /// Median over the set's usable rays, samples; `None` when no ray was usable.
    pub lead: Option<f64>,
    pub rays: usize,
}

/// What the sets say about the device's trigger lead.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// Median over every usable ray of every set, samples.
    pub lead: f64,
    /// First and third quartiles over the rays, samples.
    pub quartiles: (f64, f64),
    pub rays: usize,
    /// Mean sampling interval over the sets, µs.
    pub dt_us: f64,
    pub sets: Vec<SetLead>,
    /// Taps, over all sets, whose instant came from their tapped channel's own impact (a
    /// device that records before the impact): the trigger lead plays no part in them, and
    /// their rays are left out of it.
    pub onset_taps: usize,
    /// Taps over all sets.
    pub taps: usize,
}

/// Why no lead came out.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("the specimen's velocity must be a positive number of m/s, got {0}")]
    BadVelocity(f64),
    #[error("no usable ray in {0} set(s): nothing to calibrate on")]
    NoRays(usize),
    /// Every usable ray's tap showed its impact on its tapped channel: the device records
    /// before the impact, and the trigger lead plays no part.
    #[error(
        "every tap showed its impact on its tapped channel ({0} taps): the device records before \
         the impact, so its tap instants are measured and it has no trigger lead to calibrate"
    )]
    RecordsBeforeImpact(usize),
    #[error(transparent)]
    Correlator(#[from] CorrelatorError),
}

/// The per-ray leads (samples) of one set under `base`'s assumed lead, its interval, and how
/// many of its taps had their instant from their own impact.
fn ray_leads(
    base: &EngineConfig,
    set: &SpecimenSet,
) -> Result<(Vec<f64>, f64, usize), CorrelatorError> {
    let cfg = EngineConfig {
        diameter_m: set.diameter_m,
        ..base.clone()
    };
    let velocity_m_s = set.velocity_m_s;
    let est = Engine::new(cfg.clone()).estimate(&set.taps)?;
    let mut leads = Vec::new();
    // A tap whose instant came from its own impact does not depend on the lead.
    let measured = |i: usize| est.tap_instant_source[i] == TapInstantSource::Onset;
    for i in (0..N_SENSORS).filter(|&i| !measured(i)) {
        for j in (0..N_SENSORS).filter(|&j| j != i && est.flags[i][j].usable()) {
            let true_tof_us = chord_m(i, j, cfg.diameter_m) / velocity_m_s * 1e6;
            leads.push(cfg.trigger_lead + (true_tof_us - est.tof_us[i][j]) / est.dt_us);
        }
    }
    let onset_taps = est
        .tap_instant_source
        .iter()
        .filter(|&&s| s == TapInstantSource::Onset)
        .count();
    Ok((leads, est.dt_us, onset_taps))
}

/// Median and quartiles of `xs` (sorted in place); `None` when empty.
fn quartiles(xs: &mut [f64]) -> Option<(f64, f64, f64)> {
    (!xs.is_empty()).then(|| (quantile(xs, 0.5), quantile(xs, 0.25), quantile(xs, 0.75)))
}

/// Measures the trigger lead from `sets` tapped on uniform specimens, with `base`'s
/// plausibility bounds (the onset method). A first pass runs at `base`'s lead; when the sets
/// disagree with it, a second pass runs at the measured lead, so that the engine's windows
/// (quiet samples, early picks) sit where the device puts them.
///
/// One geometry puts each chord class at one sub-sample phase of the sampling, and a device
/// whose lead hardly varies keeps it there: the picks of a class then share an error of up to
/// a third of a sample. Specimens of a few diameters average it out.
pub fn calibrate(
    sets: &[SpecimenSet],
    base: &EngineConfig,
) -> Result<Calibration, CalibrationError> {
    if let Some(bad) = sets
        .iter()
        .map(|s| s.velocity_m_s)
        .find(|v| !(v.is_finite() && *v > 0.0))
    {
        return Err(CalibrationError::BadVelocity(bad));
    }
    let mut cfg = EngineConfig {
        method: Method::Onset,
        ..base.clone()
    };
    let mut result = None;
    for _pass in 0..2 {
        let (mut all, mut per_set, mut dt_sum) = (Vec::new(), Vec::new(), 0.0);
        let mut onset_taps = 0;
        for set in sets {
            let (mut leads, dt_us, onset) = ray_leads(&cfg, set)?;
            dt_sum += dt_us;
            onset_taps += onset;
            all.extend_from_slice(&leads);
            per_set.push(SetLead {
                name: set.name.clone(),
                rays: leads.len(),
                lead: quartiles(&mut leads).map(|q| q.0),
            });
        }
        let Some((lead, q1, q3)) = quartiles(&mut all) else {
            return Err(if onset_taps > 0 && onset_taps == N_SENSORS * sets.len() {
                CalibrationError::RecordsBeforeImpact(onset_taps)
            } else {
                CalibrationError::NoRays(sets.len())
            });
        };
        let settled = (lead - cfg.trigger_lead).abs() < 0.05;
        result = Some(Calibration {
            lead,
            quartiles: (q1, q3),
            rays: all.len(),
            dt_us: dt_sum / sets.len() as f64,
            sets: per_set,
            onset_taps,
            taps: N_SENSORS * sets.len(),
        });
        if settled {
            break;
        }
        cfg.trigger_lead = lead.clamp(0.0, MAX_TRIGGER_LEAD);
    }
    Ok(result.expect("at least one pass ran"))
}

/// What `terawang calibrate` was asked.
#[derive(Clone, Debug)]
pub struct CalibrateRequest {
    /// One input (files or a folder) per specimen.
    pub inputs: Vec<PathBuf>,
    /// One velocity for all inputs, or one per input, m/s.
    pub velocities: Vec<f64>,
    /// One diameter for all inputs, or one per input, m.
    pub diameters: Vec<f64>,
    pub window_s: i64,
}

/// `terawang calibrate`: prints each set's lead and the device's, as a `TRIGGER_LEAD=` line.
/// `Ok(false)` when a file was rejected or the lead is outside what the engine accepts.
pub fn calibrate_command(a: &CalibrateRequest) -> anyhow::Result<bool> {
    // One value for every input, or one per input.
    let per_input = |name: &str, values: &[f64]| -> anyhow::Result<Vec<f64>> {
        match values.len() {
            1 => Ok(vec![values[0]; a.inputs.len()]),
            n if n == a.inputs.len() => Ok(values.to_vec()),
            n => anyhow::bail!(
                "--{name}: give one value, or one per input ({} inputs, {n} values)",
                a.inputs.len()
            ),
        }
    };
    let diameters = per_input("diameter", &a.diameters)?;
    let velocities = per_input("velocity", &a.velocities)?;
    for &d in &diameters {
        check_diameter("--diameter/DIAMETER", d)?;
    }
    let mut sets = Vec::new();
    let mut rejected = 0;
    for ((input, &diameter_m), &velocity_m_s) in a.inputs.iter().zip(&diameters).zip(&velocities) {
        let read = read_sets(std::slice::from_ref(input), a.window_s)?;
        for e in &read.rejected {
            eprintln!("rejected: {e}");
        }
        for (path, why) in &read.ignored {
            eprintln!(
                "ignored (not a tap file by its name): {}: {why}",
                path.display()
            );
        }
        rejected += read.rejected.len();
        sets.extend(read.sets.into_iter().map(|(name, taps)| SpecimenSet {
            name: if a.inputs.len() > 1 {
                format!("{}: {name}", input.display())
            } else {
                name
            },
            taps,
            diameter_m,
            velocity_m_s,
        }));
    }
    if sets.is_empty() {
        anyhow::bail!("no complete set of eight taps among the inputs");
    }
    let c = match calibrate(&sets, &EngineConfig::default()) {
        Err(e @ CalibrationError::RecordsBeforeImpact(_)) => {
            println!("{e}");
            return Ok(rejected == 0);
        }
        c => c?,
    };
    for s in &c.sets {
        match s.lead {
            Some(lead) => println!("{}: lead {lead:.2} samples ({} rays)", s.name, s.rays),
            None => println!("{}: no usable ray", s.name),
        }
    }
    println!(
        "TRIGGER_LEAD={:.2}\n(median over {} rays of {} sets; quartiles {:.2}-{:.2} samples; \
         {:.1} µs at {:.1} µs per sample)",
        c.lead,
        c.rays,
        c.sets.len(),
        c.quartiles.0,
        c.quartiles.1,
        c.lead * c.dt_us,
        c.dt_us
    );
    if c.onset_taps > 0 {
        println!(
            "{} of {} taps showed their impact on the tapped channel (a device that records \
             before the impact): their instants are measured, so their rays are left out of \
             the lead",
            c.onset_taps, c.taps
        );
    }
    if EngineConfig::check_trigger_lead(c.lead).is_err() {
        eprintln!(
            "error: a lead of {:.2} samples is outside what the engine accepts (0-{}): check \
             --velocity and --diameter, and that the specimen is sound and uniform",
            c.lead, MAX_TRIGGER_LEAD
        );
        return Ok(false);
    }
    Ok(rejected == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{SimParams, read_set, simulate_many};

    /// A set on each of four uniform specimens (diameters 0.25–0.8 m, 1100–1700 m/s, 40 dB)
    /// whose files start `lead` samples after the tap.
    fn specimens(lead: f64, seed: u64) -> Vec<SpecimenSet> {
        [(0.25, 1300.0), (0.4, 1700.0), (0.6, 1100.0), (0.8, 1500.0)]
            .iter()
            .enumerate()
            .map(|(n, &(diameter_m, velocity_m_s))| {
                let p = SimParams {
                    tap_lead: Some(lead),
                    diameter_m,
                    velocity_m_s,
                    ..SimParams::default()
                };
                let (files, truth) = simulate_many(&p, 1, seed + n as u64, false);
                SpecimenSet {
                    name: truth.sets[0].result_file.clone(),
                    taps: read_set(&files).input,
                    diameter_m,
                    velocity_m_s,
                }
            })
            .collect()
    }

    /// Median signed ToF error (µs) of other sets with the same lead, read with `lead`.
    fn tof_bias(lead_truth: f64, lead: f64) -> f64 {
        let p = SimParams {
            tap_lead: Some(lead_truth),
            ..SimParams::default()
        };
        let cfg = EngineConfig {
            trigger_lead: lead,
            ..EngineConfig::default()
        };
        crate::evaluate::evaluate(&p, 4, 99, true, &cfg).median_tof_bias_us
    }

    #[test]
    fn the_measured_lead_puts_other_sets_on_the_truth() {
        // A lead of 0 (the first sample is the impact) and one of 1.5 samples, against the
        // engine's default of 0.5. The measured lead also takes in the picker's bias on the
        // specimens, so it is compared with the truth within a quarter of a sample, and judged
        // by what it does: other sets (varied trunks, half of them decayed) then keep only the
        // picker's own bias on them (−2.7 µs at 40 dB on the default device, README), where
        // the default lead puts half a sample, 13.5 µs, on top.
        for truth in [0.0, 1.5] {
            let c = calibrate(&specimens(truth, 5), &EngineConfig::default()).unwrap();
            assert!((c.lead - truth).abs() < 0.25, "{truth}: {c:?}");
            assert!(c.rays > 150 && c.sets.len() == 4, "{c:?}");
            assert!(c.quartiles.0 <= c.lead && c.lead <= c.quartiles.1);
            let before = tof_bias(truth, 0.5);
            let after = tof_bias(truth, c.lead);
            println!(
                "lead {truth}: measured {:.3}, bias {before:+.2} µs at 0.5, {after:+.2} µs",
                c.lead
            );
            // The picker's own bias on these four sets: −3.8 µs before the two brackets of a
            // path bounded a pick from below as well (where the record shows no slow rise),
            // −4.2 µs since (0.16 of a sample; `shared` on `evaluate`'s 30 sets unchanged).
            assert!(
                after.abs() < 5.0,
                "{truth}: bias {after} µs at lead {}",
                c.lead
            );
            // Half a sample (13.5 µs) wrong, less the picker's own bias on these specimens,
            // whose rays of a class all sample their rise at one phase (up to −5.6 µs).
            assert!(
                before.abs() > 6.75,
                "{truth}: bias {before} µs at the default"
            );
        }
    }

    #[test]
    fn a_device_that_records_before_the_impact_has_no_lead_to_calibrate() {
        // Specimens whose impacts come 0.2–1.5 samples after the first sample: every tap's
        // instant is measured, and the lead would change none of their ToFs.
        let sets: Vec<SpecimenSet> = specimens(0.5, 5)
            .into_iter()
            .enumerate()
            .map(|(n, mut s)| {
                let p = SimParams {
                    pre_trigger: true,
                    diameter_m: s.diameter_m,
                    velocity_m_s: s.velocity_m_s,
                    ..SimParams::default()
                };
                let (files, _) = simulate_many(&p, 1, 5 + n as u64, false);
                s.taps = read_set(&files).input;
                s
            })
            .collect();
        let e = calibrate(&sets, &EngineConfig::default()).unwrap_err();
        assert!(
            matches!(e, CalibrationError::RecordsBeforeImpact(32)),
            "{e}"
        );
    }

    #[test]
    fn no_usable_ray_or_a_bad_velocity_is_an_error() {
        let mut sets = specimens(0.5, 3);
        sets[2].velocity_m_s = 0.0;
        let e = calibrate(&sets, &EngineConfig::default()).unwrap_err();
        assert!(e.to_string().contains("velocity"), "{e}");
        let e = calibrate(&[], &EngineConfig::default()).unwrap_err();
        assert!(e.to_string().contains("no usable ray in 0 set(s)"), "{e}");
    }
}
