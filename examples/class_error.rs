//! Where the engine's errors that are common to a chord class come from, against the
//! simulator's truth: for each set, the tomogram's core over its ring and, per chord class
//! (sensors 1–4 apart), the mean ToF error of its usable rays as a share of the class's true
//! ToF, split into the arrivals (the picks against the true arrivals in each file's time),
//! the relative tap instants and the set's common offset (the mean of the eight leads'
//! errors). The figures of docs/accuracy.md, "The tomogram on simulated trunks".
//!
//! Usage: `cargo run --release --example class_error -- [--sets N] [--seed S] [--snr-db DB]
//! [--model M] [--decay X,Y,R,F] [--vary] [--pre-trigger] [--quiet]`

use terawang::engine::{Engine, EngineConfig, N_SENSORS};
use terawang::simulate::{SimParams, read_set, simulate_many};
use terawang::tomogram::{TomogramConfig, reconstruct};

fn main() -> anyhow::Result<()> {
    let mut p = SimParams::default();
    let (mut sets, mut seed, mut vary, mut quiet) = (20usize, 1u64, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--sets" => sets = value().parse()?,
            "--seed" => seed = value().parse()?,
            "--snr-db" => p.snr_db = value().parse()?,
            "--model" => p.model = value().parse().map_err(anyhow::Error::msg)?,
            "--decay" => p.decay = Some(value().parse().map_err(anyhow::Error::msg)?),
            "--vary" => vary = true,
            "--pre-trigger" => p.pre_trigger = true,
            "--quiet" => quiet = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let (files, truth) = simulate_many(&p, sets, seed, vary);
    let tcfg = TomogramConfig::default();
    let mut ratios = Vec::new();
    // Per class: the class's mean relative error less the set's (all usable rays), per set.
    let mut spread: [Vec<[f64; 4]>; 4] = Default::default();
    if !quiet {
        println!(
            "set  core/ring  common%  | per class m=1..4: total% (arrival% tap%)  [relative to ToF]"
        );
    }
    for (s, t) in truth.sets.iter().enumerate() {
        let set = read_set(&files[s * N_SENSORS..(s + 1) * N_SENSORS]);
        let cfg = EngineConfig {
            diameter_m: t.params.diameter_m,
            ..EngineConfig::default()
        };
        let est = Engine::new(cfg).estimate(&set.input)?;
        let plain = est.plain_matrix();
        let ratio = reconstruct(&plain, t.params.diameter_m, &tcfg)
            .map(|tomo| tomo.core_over_ring())
            .unwrap_or(f64::NAN);
        ratios.push(ratio);
        let lead_err: Vec<f64> = (0..N_SENSORS)
            .map(|i| est.tap_lead_us[i] - t.tap_lead_us[i])
            .collect();
        let common = lead_err.iter().sum::<f64>() / N_SENSORS as f64;
        // [total, arrival, tap, common] sums of relative errors per class, and counts.
        let mut sums = [[0.0f64; 4]; 4];
        let mut counts = [0usize; 4];
        let mut mean_tof = [0.0f64; 4];
        for i in 0..N_SENSORS {
            for (j, &v) in plain[i].iter().enumerate() {
                if i == j || v == 0.0 {
                    continue;
                }
                let d = i.abs_diff(j);
                let m = d.min(N_SENSORS - d) - 1;
                let tof = t.tof_us[i][j];
                let total = est.tof_us[i][j] - tof;
                let tap = lead_err[i] - common;
                let arrival = total - lead_err[i];
                for (k, e) in [total, arrival, tap, common].into_iter().enumerate() {
                    sums[m][k] += e / tof;
                }
                counts[m] += 1;
                mean_tof[m] += tof;
            }
        }
        let means: Vec<[f64; 4]> = (0..4)
            .map(|m| {
                let n = counts[m].max(1) as f64;
                std::array::from_fn(|k| 100.0 * sums[m][k] / n)
            })
            .collect();
        let n_all: usize = counts.iter().sum();
        let all: [f64; 4] =
            std::array::from_fn(|k| 100.0 * (0..4).map(|m| sums[m][k]).sum::<f64>() / n_all as f64);
        for m in 0..4 {
            spread[m].push(std::array::from_fn(|k| means[m][k] - all[k]));
        }
        if !quiet {
            let cls: Vec<String> = (0..4)
                .map(|m| {
                    format!(
                        "{:+5.1} ({:+5.1} {:+4.1}) n{:2} T{:4.0}",
                        means[m][0],
                        means[m][1],
                        means[m][2],
                        counts[m],
                        mean_tof[m] / counts[m].max(1) as f64
                    )
                })
                .collect();
            println!(
                "{s:3}  {ratio:5.2}  common {:+5.2}µs | {}",
                common,
                cls.join(" | ")
            );
        }
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| {
            (a.min(r), b.max(r))
        });
    let below = ratios.iter().filter(|&&r| r < 0.9).count();
    let above = ratios.iter().filter(|&&r| r > 0.6).count();
    println!(
        "snr {} seed {seed}: core/ring {lo:.3}–{hi:.3}, {below} below 0.9, {above} above 0.6",
        p.snr_db
    );
    for (m, rows) in spread.iter().enumerate() {
        let rms = |k: usize| {
            (rows.iter().map(|r| r[k] * r[k]).sum::<f64>() / rows.len().max(1) as f64).sqrt()
        };
        let mean = |k: usize| rows.iter().map(|r| r[k]).sum::<f64>() / rows.len().max(1) as f64;
        println!(
            "  class m={}: less the set's mean, mean/rms %: total {:+.2}/{:.2}  arrival {:+.2}/{:.2}  tap {:+.2}/{:.2}  common {:+.2}/{:.2}",
            m + 1,
            mean(0),
            rms(0),
            mean(1),
            rms(1),
            mean(2),
            rms(2),
            mean(3),
            rms(3)
        );
    }
    Ok(())
}
