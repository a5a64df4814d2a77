//! The floor under the picks (#18 §3): what an oracle that knows, for every ray, the sample
//! interval its true arrival falls in would reach on `evaluate`'s sets, against the engine.
//!
//! A ray whose first arrival rises on one sample shows nothing inside its last interval: the
//! arrival lies somewhere between the last quiet sample and the first risen one, and the
//! middle of that interval is the best a picker can do from those samples. The oracle takes
//! the truth's interval (in each file's own time axis: the true arrival is the true time of
//! flight less the true lead) and reports, over the rays the engine marks usable:
//!
//! - `bracket`: the middle of the ray's own interval, with the true tap instant;
//! - `both`: the middle of the overlap of the two directions' intervals (the recordings i→j
//!   and j→i of a path are sampled at different phases), with the true tap instants;
//! - `both+leads`: the same arrivals with the engine's tap instants (what those add);
//! - `seen 5σ`, `seen 3σ`: what the samples can show. The same sets drawn again without
//!   noise (the simulator's draws do not depend on the SNR, so the twin has the same pulses,
//!   leads and sample times) give each ray's noise-free samples; the oracle takes the first
//!   sample where the noise-free wave stands 5 (3) noise sigmas out of rest (the noise: the
//!   difference of the two records, over the whole record) as the first risen one, the sample before it as the
//!   last quiet one, and the middle of the two directions' overlap, with the engine's tap
//!   instants. An arrival whose first samples stay within the noise cannot be seen there by
//!   any picker; one that fits the rise back past them assumes a shape;
//! - `exact+leads`: the true arrivals with the engine's tap instants;
//! - `engine`: the engine itself, as `terawang evaluate` prints it.
//!
//! Each cell prints the median and the 90th percentile of the velocity errors.
//!
//! Usage: `cargo run --release --example pick_floor -- [--sets N] [--seed S]
//! [--snr-db 40,30] [--trigger clip,pre] [--model M,…]`

use terawang::engine::{Engine, EngineConfig, N_SENSORS};
use terawang::simulate::{SimParams, WaveModel, read_set, simulate_many};

/// The sample interval `[t_k, t_{k+1})` of `t_us` (µs after the first sample) that holds
/// `arrival_us`, clamped to the record.
fn bracket(t_us: &[f64], arrival_us: f64) -> (f64, f64) {
    let k = t_us
        .partition_point(|&t| t <= arrival_us)
        .clamp(1, t_us.len() - 1);
    (t_us[k - 1], t_us[k])
}

/// An SNR at which the simulator's noise is far below a count: the noise-free twin of a set.
const NOISE_FREE_DB: f64 = 300.0;

/// The standard deviation of `noisy − clean` (at least half a count: the records are rounded
/// to counts).
fn noise_sigma(noisy: &[f32], clean: &[f32]) -> f64 {
    let d: Vec<f64> = noisy
        .iter()
        .zip(clean)
        .map(|(&a, &b)| (a - b) as f64)
        .collect();
    let n = d.len().max(1) as f64;
    let mean = d.iter().sum::<f64>() / n;
    (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n)
        .sqrt()
        .max(0.5)
}

/// Median and 90th percentile (nearest rank), in %.
fn median_p90(errs: &mut [f64]) -> (f64, f64) {
    if errs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    errs.sort_by(f64::total_cmp);
    let at = |q: f64| 100.0 * errs[((errs.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

fn parse_list<T: std::str::FromStr>(s: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .map(|v| v.parse().map_err(|e| anyhow::anyhow!("{v}: {e}")))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let (mut sets, mut seed) = (30usize, 1u64);
    let mut snrs = vec![40.0, 30.0];
    let mut pre = vec![false, true];
    let mut models = WaveModel::ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_default();
        match a.as_str() {
            "--sets" => sets = value.parse()?,
            "--seed" => seed = value.parse()?,
            "--snr-db" => snrs = parse_list(&value)?,
            "--trigger" => {
                pre = value
                    .split(',')
                    .map(|t| match t {
                        "clip" => Ok(false),
                        "pre" => Ok(true),
                        other => Err(anyhow::anyhow!("trigger must be clip or pre, got {other}")),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--model" => {
                models = value
                    .split(',')
                    .map(|m| m.parse().map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<_>>()?
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    println!(
        "{:<11} {:<7} {:>6}  {:>13} {:>13} {:>13} {:>13} {:>13} {:>13} {:>13}",
        "model",
        "trigger",
        "snr_dB",
        "bracket",
        "both",
        "both+leads",
        "seen 5σ",
        "seen 3σ",
        "exact+leads",
        "engine"
    );
    for &model in &models {
        for &pre_trigger in &pre {
            for &snr_db in &snrs {
                let base = SimParams {
                    snr_db,
                    model,
                    pre_trigger,
                    ..SimParams::default()
                };
                let (files, truth) = simulate_many(&base, sets, seed, true);
                let quiet = SimParams {
                    snr_db: NOISE_FREE_DB,
                    ..base.clone()
                };
                let (clean_files, _) = simulate_many(&quiet, sets, seed, true);
                let mut errs: [Vec<f64>; 7] = Default::default();
                for (s, t) in truth.sets.iter().enumerate() {
                    let set = read_set(&files[s * N_SENSORS..(s + 1) * N_SENSORS]);
                    let clean = read_set(&clean_files[s * N_SENSORS..(s + 1) * N_SENSORS]);
                    let est = Engine::new(EngineConfig {
                        diameter_m: t.params.diameter_m,
                        ..EngineConfig::default()
                    })
                    .estimate(&set.input)?;
                    // Each file's sample times, µs after its first sample.
                    let t_us: Vec<Vec<f64>> = set
                        .input
                        .recordings()
                        .iter()
                        .map(|r| {
                            let ts = r.timestamps_ns();
                            ts.iter().map(|&x| (x - ts[0]) as f64 / 1000.0).collect()
                        })
                        .collect();
                    // The interval of ray i→j in the time-of-flight frame (file time plus the
                    // true lead).
                    let interval = |i: usize, j: usize| {
                        let lead = t.tap_lead_us[i];
                        let (lo, hi) = bracket(&t_us[i], t.tof_us[i][j] - lead);
                        (lo + lead, hi + lead)
                    };
                    // Where ray i→j's noise-free wave first stands `sigmas` noise sigmas out:
                    // its interval in the time-of-flight frame.
                    let seen = |i: usize, j: usize, sigmas: f64| {
                        let noisy = &set.input.recordings()[i].channels()[j];
                        let wave = &clean.input.recordings()[i].channels()[j];
                        let sigma = noise_sigma(noisy, wave);
                        let rest = wave[0] as f64;
                        let k = (1..wave.len())
                            .find(|&k| (wave[k] as f64 - rest).abs() > sigmas * sigma)
                            .unwrap_or(wave.len() - 1);
                        let lead = t.tap_lead_us[i];
                        (t_us[i][k - 1] + lead, t_us[i][k] + lead)
                    };
                    for i in 0..N_SENSORS {
                        for j in 0..N_SENSORS {
                            if i == j || !est.flags[i][j].usable() {
                                continue;
                            }
                            let tof = t.tof_us[i][j];
                            let lead_err = est.tap_lead_us[i] - t.tap_lead_us[i];
                            let (lo, hi) = interval(i, j);
                            let (lo_r, hi_r) = interval(j, i);
                            let both = 0.5 * (lo.max(lo_r) + hi.min(hi_r));
                            let seen_both = |sigmas: f64| {
                                let (lo, hi) = seen(i, j, sigmas);
                                let (lo_r, hi_r) = seen(j, i, sigmas);
                                // Intervals that do not overlap (a wave seen a sample later
                                // one way): the middle between them.
                                0.5 * (lo.max(lo_r) + hi.min(hi_r))
                            };
                            let estimates = [
                                0.5 * (lo + hi),
                                both,
                                both + lead_err,
                                seen_both(5.0) + lead_err,
                                seen_both(3.0) + lead_err,
                                tof + lead_err,
                                est.tof_us[i][j],
                            ];
                            for (e, tof_est) in errs.iter_mut().zip(estimates) {
                                e.push((tof / tof_est - 1.0).abs());
                            }
                        }
                    }
                }
                let cells: Vec<String> = errs
                    .iter_mut()
                    .map(|e| {
                        let (m, p) = median_p90(e);
                        format!("{m:5.2} {p:6.2}%")
                    })
                    .collect();
                println!(
                    "{:<11} {:<7} {:>6}  {}",
                    model.to_string(),
                    if pre_trigger { "pre" } else { "clip" },
                    snr_db,
                    cells.join(" ")
                );
            }
        }
    }
    Ok(())
}
