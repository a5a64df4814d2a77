//! Result files: the plain 8×8 matrix consumers already read, and the report beside it.
//!
//! `result_<device>_<unix>.json` is a JSON array of eight arrays of eight numbers (m/s,
//! diagonal 0, an unusable ray 0). `result_<device>_<unix>.report.json` holds everything
//! else: ToFs, raw velocities, per-ray flags, sampling interval, method, sources, metrics.
//! Files are written to a temporary name in the same folder, flushed, then renamed, so a
//! reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::device::{N_SENSORS, TapRecording};
use crate::engine::{EngineConfig, Metrics, RayFlag, SetEstimate, metrics};

/// The plain result as bytes, exactly what is saved and uploaded.
pub fn plain_json(est: &SetEstimate) -> Vec<u8> {
    let m = est.plain_matrix();
    let rows: Vec<String> = m
        .iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().map(|v| format_velocity(*v)).collect();
            format!("[{}]", cells.join(","))
        })
        .collect();
    format!("[{}]\n", rows.join(",")).into_bytes()
}

/// A velocity with 0.1 m/s resolution, `0` for zero.
fn format_velocity(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else {
        format!("{:.1}", v)
    }
}

/// One ray's quality in the report.
#[derive(Serialize)]
struct RayReport {
    from: usize,
    to: usize,
    flag: RayFlag,
}

#[derive(Serialize)]
struct Report<'a> {
    result_file: &'a str,
    /// µs; null where there is no estimate.
    tof_us: Vec<Vec<Option<f64>>>,
    /// m/s before flagging; null where there is no estimate.
    velocity_m_s: Vec<Vec<Option<f64>>>,
    /// Flags of the 56 rays (sensors 1-based).
    rays: Vec<RayReport>,
    sampling_interval_us: f64,
    diameter_m: f64,
    tap_lead_us: [f64; N_SENSORS],
    method: String,
    parameters: &'a EngineConfig,
    sources: Vec<&'a str>,
    guids: Vec<Vec<Option<&'a str>>>,
    guid_teensy: Vec<Option<&'a str>>,
    warnings: Vec<String>,
    metrics: Metrics,
    usable_rays: usize,
}

/// The report as bytes.
pub fn report_json(
    result_file: &str,
    est: &SetEstimate,
    cfg: &EngineConfig,
    taps: &[TapRecording; N_SENSORS],
) -> Vec<u8> {
    let opt = |m: &[[f64; N_SENSORS]; N_SENSORS]| -> Vec<Vec<Option<f64>>> {
        m.iter()
            .map(|row| {
                row.iter()
                    .map(|&v| v.is_finite().then_some((v * 1000.0).round() / 1000.0))
                    .collect()
            })
            .collect()
    };
    let mut rays = Vec::new();
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i != j {
                rays.push(RayReport {
                    from: i + 1,
                    to: j + 1,
                    flag: est.flags[i][j],
                });
            }
        }
    }
    let report = Report {
        result_file,
        tof_us: opt(&est.tof_us),
        velocity_m_s: opt(&est.velocity_m_s),
        usable_rays: rays.iter().filter(|r| r.flag.usable()).count(),
        rays,
        sampling_interval_us: est.dt_us,
        diameter_m: cfg.diameter_m,
        tap_lead_us: est.tap_lead_us,
        method: cfg.method.to_string(),
        parameters: cfg,
        sources: taps.iter().map(|t| t.file_name.as_str()).collect(),
        guids: taps
            .iter()
            .map(|t| t.guids.iter().map(|g| g.as_deref()).collect())
            .collect(),
        guid_teensy: taps.iter().map(|t| t.guid_teensy.as_deref()).collect(),
        warnings: taps
            .iter()
            .flat_map(|t| {
                t.warnings
                    .iter()
                    .map(move |w| format!("{}: {w}", t.file_name))
            })
            .collect(),
        metrics: metrics(&est.velocity_m_s),
    };
    let mut bytes = serde_json::to_vec_pretty(&report).expect("the report always serialises");
    bytes.push(b'\n');
    bytes
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in `tmp_dir`, fsync, rename.
/// `tmp_dir` must be on the same file system as `dir`.
pub fn write_atomic(
    tmp_dir: &Path,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<PathBuf> {
    let tmp = tmp_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let dst = dir.join(name);
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

/// Reads a plain result file back (for `render` and tests).
pub fn read_plain(path: &Path) -> anyhow::Result<[[f64; N_SENSORS]; N_SENSORS]> {
    let bytes = std::fs::read(path)?;
    let rows: Vec<Vec<f64>> = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a result matrix: {e}", path.display()))?;
    if rows.len() != N_SENSORS || rows.iter().any(|r| r.len() != N_SENSORS) {
        anyhow::bail!("{}: a result must be 8 arrays of 8 numbers", path.display());
    }
    Ok(std::array::from_fn(|i| std::array::from_fn(|j| rows[i][j])))
}
