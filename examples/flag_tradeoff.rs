//! The 20 dB trade-off of #18 (docs/accuracy.md, "At 20 dB"): the share of usable rays
//! against the 90th percentile of their velocity errors, over the simulator's truth, as the
//! flags tighten: the least ray SNR (`min_snr`), the reciprocity tolerance
//! (`max_reciprocity_diff`), and a path whose two directions' times of flight differ by more
//! than a number of sampling intervals (both directions flagged).
//!
//! Usage: `cargo run --release --example flag_tradeoff -- [--sets N] [--seed S] [--snr-db DB]
//! [--pre-trigger]`

use terawang::engine::{Engine, EngineConfig, N_SENSORS, SetEstimate};
use terawang::simulate::{SimParams, WaveModel, read_set, simulate_many};

/// Usable share and p90 of the velocity errors over `sets` for `cfg`, after flagging pairs
/// whose directions' ToFs differ by more than `max_dtof` sampling intervals.
fn measure(p: &SimParams, sets: usize, seed: u64, cfg: &EngineConfig, max_dtof: f64) -> (f64, f64) {
    let (files, truth) = simulate_many(p, sets, seed, true);
    let (mut errs, mut n) = (Vec::new(), 0usize);
    for (s, t) in truth.sets.iter().enumerate() {
        let set = read_set(&files[s * N_SENSORS..(s + 1) * N_SENSORS]);
        let cfg = EngineConfig {
            diameter_m: t.params.diameter_m,
            ..cfg.clone()
        };
        let est: SetEstimate = Engine::new(cfg).estimate(&set.input).expect("CPU engine");
        for i in 0..N_SENSORS {
            for j in 0..N_SENSORS {
                if i == j {
                    continue;
                }
                n += 1;
                if !est.flags[i][j].usable() {
                    continue;
                }
                let dtof = (est.tof_us[i][j] - est.tof_us[j][i]).abs() / est.dt_us;
                if est.flags[j][i].usable() && dtof > max_dtof {
                    continue;
                }
                errs.push(
                    (est.velocity_m_s[i][j] - t.velocity_m_s[i][j]).abs() / t.velocity_m_s[i][j],
                );
            }
        }
    }
    errs.sort_by(f64::total_cmp);
    let p90 = if errs.is_empty() {
        f64::NAN
    } else {
        errs[((errs.len() - 1) as f64 * 0.9).round() as usize]
    };
    (errs.len() as f64 / n.max(1) as f64, p90)
}

fn main() -> anyhow::Result<()> {
    let mut base = SimParams {
        snr_db: 20.0,
        ..SimParams::default()
    };
    let (mut sets, mut seed) = (30usize, 1u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--sets" => sets = value().parse()?,
            "--seed" => seed = value().parse()?,
            "--snr-db" => base.snr_db = value().parse()?,
            "--pre-trigger" => base.pre_trigger = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let def = EngineConfig::default();
    for model in [
        WaveModel::Shared,
        WaveModel::Field,
        WaveModel::FieldClose,
        WaveModel::Dispersive,
    ] {
        let p = SimParams {
            model,
            ..base.clone()
        };
        let row = |label: &str, points: Vec<(String, EngineConfig, f64)>| {
            let cells: Vec<String> = points
                .iter()
                .map(|(name, cfg, dtof)| {
                    let (usable, p90) = measure(&p, sets, seed, cfg, *dtof);
                    format!("{name}: {:.1} % / {:.1} %", 100.0 * usable, 100.0 * p90)
                })
                .collect();
            println!("{model} {label}: {}", cells.join(", "));
        };
        row(
            "min_snr",
            [6.5, 7.0, 7.5, 8.0, 10.0, 12.0, 15.0]
                .map(|v| {
                    (
                        format!("{v}"),
                        EngineConfig {
                            min_snr: v,
                            ..def.clone()
                        },
                        f64::INFINITY,
                    )
                })
                .into(),
        );
        row(
            "max_reciprocity_diff",
            [0.3, 0.2, 0.15, 0.1, 0.05]
                .map(|v| {
                    (
                        format!("{v}"),
                        EngineConfig {
                            max_reciprocity_diff: v,
                            ..def.clone()
                        },
                        f64::INFINITY,
                    )
                })
                .into(),
        );
        row(
            "reciprocal ToF difference (samples)",
            [2.0, 1.0, 0.75, 0.5, 0.3]
                .map(|v| (format!("{v}"), def.clone(), v))
                .into(),
        );
    }
    Ok(())
}
