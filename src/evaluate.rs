//! Accuracy against ground truth: run the engine on simulated sets and compare.
//!
//! Everything happens in memory: the simulator's files are parsed by the real reader, so the
//! figures include parsing. Errors are per ray: |ToF error| in µs and |velocity error| as a
//! fraction of the true velocity, over rays the engine marked usable; the share of usable
//! rays is reported beside them.

use serde::Serialize;

use crate::device::N_SENSORS;
use crate::engine::{Engine, EngineConfig, Method, SetEstimate, metrics};
use crate::simulate::{SetTruth, SimParams, WaveModel, read_set, simulate_many};

/// Error statistics over many rays.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorStats {
    pub n_sets: usize,
    pub n_rays: usize,
    /// Share of rays flagged usable.
    pub usable_share: f64,
    pub median_tof_err_us: f64,
    /// Median of the signed ToF errors, µs: a ToF estimated too long is positive.
    pub median_tof_bias_us: f64,
    pub worst_tof_err_us: f64,
    pub median_velocity_err: f64,
    pub p90_velocity_err: f64,
    pub worst_velocity_err: f64,
    pub median_reciprocity_diff: f64,
}

/// Compares one estimate with its truth; returns (signed ToF error µs, |v error| fraction)
/// of the usable rays and the number of rays.
pub fn ray_errors(est: &SetEstimate, truth: &SetTruth) -> (Vec<f64>, Vec<f64>, usize) {
    let (mut tof, mut vel) = (Vec::new(), Vec::new());
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i == j || !est.flags[i][j].usable() {
                continue;
            }
            tof.push(est.tof_us[i][j] - truth.tof_us[i][j]);
            vel.push(
                (est.velocity_m_s[i][j] - truth.velocity_m_s[i][j]).abs()
                    / truth.velocity_m_s[i][j],
            );
        }
    }
    (tof, vel, N_SENSORS * (N_SENSORS - 1))
}

/// The `q` quantile (0–1, nearest rank) of `xs`, sorted in place; NaN when empty.
pub(crate) fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

/// Simulates `n_sets` sets (parameters varied when `vary`), runs the engine, returns stats.
pub fn evaluate(
    base: &SimParams,
    n_sets: usize,
    seed: u64,
    vary: bool,
    cfg: &EngineConfig,
) -> ErrorStats {
    let (files, truth) = simulate_many(base, n_sets, seed, vary);
    let (mut tof, mut vel, mut recip) = (Vec::new(), Vec::new(), Vec::new());
    let mut n_rays = 0;
    for (s, set_truth) in truth.sets.iter().enumerate() {
        let set = read_set(&files[s * N_SENSORS..(s + 1) * N_SENSORS]);
        let mut set_cfg = cfg.clone();
        set_cfg.diameter_m = set_truth.params.diameter_m;
        let est = Engine::new(set_cfg)
            .estimate(&set.input)
            .expect("the CPU engine never fails");
        let (t, v, n) = ray_errors(&est, set_truth);
        tof.extend(t);
        vel.extend(v);
        n_rays += n;
        let m = metrics(&est.plain_matrix());
        if m.median_reciprocity_diff.is_finite() {
            recip.push(m.median_reciprocity_diff);
        }
    }
    let median_tof_bias_us = quantile(&mut tof, 0.5);
    let mut tof: Vec<f64> = tof.iter().map(|e| e.abs()).collect();
    ErrorStats {
        n_sets,
        n_rays,
        usable_share: tof.len() as f64 / n_rays.max(1) as f64,
        median_tof_err_us: quantile(&mut tof, 0.5),
        median_tof_bias_us,
        worst_tof_err_us: quantile(&mut tof, 1.0),
        median_velocity_err: quantile(&mut vel, 0.5),
        p90_velocity_err: quantile(&mut vel, 0.9),
        worst_velocity_err: quantile(&mut vel, 1.0),
        median_reciprocity_diff: quantile(&mut recip, 0.5),
    }
}

/// When a device's record starts, relative to the hammer's impact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The impact comes before the first sample (within the sample before it, or
    /// [`EvaluationGrid::sim_lead`]): the tapped channel clips from its first sample.
    Clip,
    /// A pre-trigger buffer: the impact comes 0.2–1.5 samples after the first sample
    /// ([`SimParams::pre_trigger`]).
    Pre,
}

impl Trigger {
    pub const ALL: [Trigger; 2] = [Trigger::Clip, Trigger::Pre];

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Clip => "clip",
            Trigger::Pre => "pre",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Trigger::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("trigger must be clip or pre, got {s:?}"))
    }
}

/// What `terawang evaluate` runs: every model × trigger × SNR × method, `sets` sets per cell.
#[derive(Clone, Debug)]
pub struct EvaluationGrid {
    pub models: Vec<WaveModel>,
    pub triggers: Vec<Trigger>,
    pub snrs_db: Vec<f64>,
    pub methods: Vec<Method>,
    pub sets: usize,
    pub seed: u64,
    /// The simulator's fixed tap lead, samples; `None` draws it per file.
    pub sim_lead: Option<f64>,
    /// The engine's trigger lead, samples.
    pub trigger_lead: f64,
}

/// Evaluates the grid and prints the error table, one row per cell as it is done.
pub fn print_table(grid: &EvaluationGrid, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<11} {:<7} {:<9} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "model",
        "trigger",
        "method",
        "snr_dB",
        "sets",
        "usable",
        "tof_med",
        "tof_bias",
        "tof_max",
        "v_med",
        "v_p90",
        "v_max",
        "recip"
    )?;
    let cells = grid.models.iter().flat_map(|&model| {
        grid.triggers.iter().flat_map(move |&trigger| {
            grid.snrs_db.iter().flat_map(move |&snr| {
                grid.methods
                    .iter()
                    .map(move |&method| (model, trigger, snr, method))
            })
        })
    });
    for (model, trigger, snr, method) in cells {
        let cfg = EngineConfig {
            method,
            trigger_lead: grid.trigger_lead,
            ..EngineConfig::default()
        };
        let base = SimParams {
            snr_db: snr,
            model,
            tap_lead: grid.sim_lead,
            pre_trigger: trigger == Trigger::Pre,
            ..SimParams::default()
        };
        let s = evaluate(&base, grid.sets, grid.seed, true, &cfg);
        writeln!(
            out,
            "{:<11} {:<7} {:<9} {:>6.0} {:>7} {:>6.1}% {:>7.2}µs {:>+7.2}µs {:>7.1}µs {:>7.2}% {:>7.2}% {:>7.1}% {:>7.1}%",
            model.to_string(),
            trigger.to_string(),
            method.to_string(),
            snr,
            s.n_sets,
            100.0 * s.usable_share,
            s.median_tof_err_us,
            s.median_tof_bias_us,
            s.worst_tof_err_us,
            100.0 * s.median_velocity_err,
            100.0 * s.p90_velocity_err,
            100.0 * s.worst_velocity_err,
            100.0 * s.median_reciprocity_diff
        )?;
    }
    Ok(())
}
