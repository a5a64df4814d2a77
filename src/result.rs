//! Result files: the plain 8×8 matrix consumers already read, and the report beside it.
//!
//! `result_<device>_<unix>.json` is a JSON array of eight arrays of eight numbers (m/s,
//! diagonal 0, an unusable ray 0). `result_<device>_<unix>.report.json` holds everything
//! else: ToFs, raw velocities, per-ray flags, sampling interval, method, sources, metrics and
//! the tomogram grid. `result_<device>_<unix>.png` is the tomogram's picture.
//! Files are written to a temporary name in the same folder, flushed, then renamed, so a
//! reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::device::{N_SENSORS, TapFile};
use crate::engine::{EngineConfig, Metrics, RayFlag, SetEstimate, TapInstantSource, metrics};
use crate::survey::Survey;
use crate::tomogram::{Tomogram, TomogramConfig, reconstruct, render_png, title};

mod pretty;

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
    /// `"survey"` when the set's survey file gave the diameter, else `"default"`.
    diameter_source: &'static str,
    /// The survey file's fields, when the set has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    survey_file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    survey: Option<&'a Survey>,
    tap_lead_us: [f64; N_SENSORS],
    /// Per tap: `onset` (the tapped channel's own impact), `prior` (the trigger lead) or
    /// `correlation` (`gcc-phat`).
    tap_instant_source: [TapInstantSource; N_SENSORS],
    method: String,
    parameters: &'a EngineConfig,
    sources: Vec<&'a str>,
    /// The file whose recording gives each sensor's row (its own file unless re-assigned).
    row_sources: Vec<&'a str>,
    guids: Vec<Vec<Option<&'a str>>>,
    guid_teensy: Vec<Option<&'a str>>,
    warnings: Vec<String>,
    metrics: Metrics,
    usable_rays: usize,
    // Last, `tomogram`: the reconstructed cross-section, null when too few rays were usable.
    // [`report_json`] writes it by hand after the fields above.
}

/// The tomogram in the report: `velocity_m_s[row][col]` in m/s, row 0 at the top (+y), column
/// 0 at the left (−x), `extent_m` the side of the square grid; null outside the trunk.
#[derive(Serialize)]
struct TomogramReport {
    velocity_m_s: Vec<Vec<Option<f64>>>,
    n: usize,
    extent_m: f64,
    method: &'static str,
    /// The tomogram's own confidence: the usable sensor pairs it was made from, the usable
    /// rays passing near each cell (`[row][col]`, null outside), and the share of the cells
    /// that rest on fewer than `low_coverage_rays` (hatched in the picture).
    rays_used: usize,
    ray_coverage: Vec<Vec<Option<u8>>>,
    low_coverage_rays: u8,
    low_coverage_share: f64,
}

impl TomogramReport {
    /// Appends the object as `serde_json::to_vec_pretty` writes it at nesting `level`.
    fn write_pretty(&self, out: &mut Vec<u8>, level: usize) {
        let mut o = pretty::Object::new(out, level);
        pretty::grid(
            o.key("velocity_m_s"),
            &self.velocity_m_s,
            level + 1,
            |out, v| match v {
                Some(v) => pretty::tenths(out, *v),
                None => out.extend_from_slice(b"null"),
            },
        );
        pretty::scalar(o.key("n"), &self.n);
        pretty::float(o.key("extent_m"), self.extent_m);
        pretty::scalar(o.key("method"), self.method);
        pretty::scalar(o.key("rays_used"), &self.rays_used);
        pretty::grid(
            o.key("ray_coverage"),
            &self.ray_coverage,
            level + 1,
            |out, v| match v {
                Some(v) => out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
                None => out.extend_from_slice(b"null"),
            },
        );
        pretty::scalar(o.key("low_coverage_rays"), &self.low_coverage_rays);
        pretty::float(o.key("low_coverage_share"), self.low_coverage_share);
        o.end();
    }
}

impl From<&Tomogram> for TomogramReport {
    fn from(t: &Tomogram) -> Self {
        TomogramReport {
            velocity_m_s: t
                .velocity_m_s
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|v| v.map(|v| (v * 10.0).round() / 10.0))
                        .collect()
                })
                .collect(),
            n: t.n,
            extent_m: t.extent_m,
            method: t.method,
            rays_used: t.n_rays,
            ray_coverage: t
                .velocity_m_s
                .iter()
                .enumerate()
                .map(|(row, cells)| {
                    cells
                        .iter()
                        .enumerate()
                        .map(|(col, v)| v.map(|_| t.ray_coverage[row * t.n + col]))
                        .collect()
                })
                .collect(),
            low_coverage_rays: crate::tomogram::LOW_COVERAGE_RAYS,
            low_coverage_share: (t.low_coverage_share() * 1000.0).round() / 1000.0,
        }
    }
}

/// What the engine found about the taps themselves: a file whose hammer impact is on another
/// sensor than its name says, and where its recording was used.
fn tap_warnings(est: &SetEstimate, files: &[TapFile; N_SENSORS]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, hit) in est.impact_elsewhere.iter().enumerate() {
        let Some(hit) = *hit else { continue };
        let used = if est.tap_source[hit] == i {
            format!("its recording is used as the tap on sensor {}", hit + 1)
        } else {
            format!("sensor {} has a tap of its own, so it is not used", hit + 1)
        };
        let row = if est.tap_source[i] == i {
            format!("; the rays from sensor {} are flagged tap_mismatch", i + 1)
        } else {
            String::new()
        };
        out.push(format!(
            "{}: the hammer's impact is on sensor {}, not {}: {used}{row}",
            files[i].file_name,
            hit + 1,
            i + 1
        ));
    }
    out
}

/// The report as bytes; `tomogram` is the set's reconstruction, if one could be made.
pub fn report_json(
    result_file: &str,
    est: &SetEstimate,
    cfg: &EngineConfig,
    files: &[TapFile; N_SENSORS],
    tomogram: Option<&Tomogram>,
    survey: Option<&Survey>,
    diameter_warning: Option<&str>,
) -> Vec<u8> {
    let report = report_fields(result_file, est, cfg, files, survey, diameter_warning);
    // About 125 KB with the tomogram's grids.
    let mut bytes = Vec::with_capacity(if tomogram.is_some() { 160_000 } else { 16_000 });
    serde_json::to_writer_pretty(&mut bytes, &report).expect("the report always serialises");
    // The tomogram is the last field: reopen the object after the field before it.
    debug_assert!(bytes.ends_with(b"\n}"));
    bytes.truncate(bytes.len() - 2);
    bytes.extend_from_slice(b",\n  \"tomogram\": ");
    match tomogram {
        Some(t) => TomogramReport::from(t).write_pretty(&mut bytes, 1),
        None => bytes.extend_from_slice(b"null"),
    }
    bytes.extend_from_slice(b"\n}\n");
    bytes
}

/// The report's fields before the tomogram.
fn report_fields<'a>(
    result_file: &'a str,
    est: &SetEstimate,
    cfg: &'a EngineConfig,
    files: &'a [TapFile; N_SENSORS],
    survey: Option<&'a Survey>,
    diameter_warning: Option<&str>,
) -> Report<'a> {
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
    Report {
        result_file,
        tof_us: opt(&est.tof_us),
        velocity_m_s: opt(&est.velocity_m_s),
        usable_rays: rays.iter().filter(|r| r.flag.usable()).count(),
        rays,
        sampling_interval_us: est.dt_us,
        diameter_m: cfg.diameter_m,
        diameter_source: if survey.is_some() {
            "survey"
        } else {
            "default"
        },
        survey_file: survey.map(|s| s.file_name.as_str()),
        survey,
        tap_lead_us: est.tap_lead_us,
        tap_instant_source: est.tap_instant_source,
        method: cfg.method.to_string(),
        parameters: cfg,
        sources: files.iter().map(|t| t.file_name.as_str()).collect(),
        row_sources: est
            .tap_source
            .iter()
            .map(|&k| files[k].file_name.as_str())
            .collect(),
        guids: files
            .iter()
            .map(|t| t.guids.iter().map(|g| g.as_deref()).collect())
            .collect(),
        guid_teensy: files.iter().map(|t| t.guid_teensy.as_deref()).collect(),
        warnings: files
            .iter()
            .flat_map(|t| {
                t.warnings
                    .iter()
                    .map(move |w| format!("{}: {w}", t.file_name))
            })
            .chain(tap_warnings(est, files))
            .chain(diameter_warning.map(str::to_string))
            .collect(),
        metrics: metrics(&est.velocity_m_s),
    }
}

/// The name of a set's results, `result_<device>_<unix>` (`result_<unix>` for legacy
/// device-less taps), `<unix>` being the smallest unix seconds of the set's files: the one
/// place these names are made ([`ResultName::json`] and its siblings) and read back
/// ([`ResultName::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultName {
    pub device: Option<String>,
    pub unix_s: i64,
}

impl ResultName {
    pub fn new(device: Option<&str>, unix_s: i64) -> ResultName {
        ResultName {
            device: device.map(str::to_string),
            unix_s,
        }
    }

    /// `result_<device>_<unix>`, without extension.
    pub fn stem(&self) -> String {
        match &self.device {
            Some(device) => format!("result_{device}_{}", self.unix_s),
            None => format!("result_{}", self.unix_s),
        }
    }

    /// `….json`: the plain result, the name consumers are told.
    pub fn json(&self) -> String {
        format!("{}.json", self.stem())
    }

    /// `….report.json`.
    pub fn report(&self) -> String {
        format!("{}.report.json", self.stem())
    }

    /// `….png`: the tomogram's picture.
    pub fn png(&self) -> String {
        format!("{}.png", self.stem())
    }

    /// Reads any of the names back (or the bare stem); `None` for other names.
    pub fn parse(name: &str) -> Option<ResultName> {
        let stem = [".report.json", ".json", ".png"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .unwrap_or(name);
        let rest = stem.strip_prefix("result_")?;
        let (device, unix) = match rest.rsplit_once('_') {
            Some((device, unix)) if !device.is_empty() => (Some(device), unix),
            Some(_) => return None,
            None => (None, rest),
        };
        if unix.is_empty() || !unix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(ResultName::new(device, unix.parse().ok()?))
    }
}

impl std::fmt::Display for ResultName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.json())
    }
}

/// Everything written for one set: the plain result, the report and the picture.
#[derive(Clone, Debug)]
pub struct SetOutputs {
    pub name: ResultName,
    pub plain: Vec<u8>,
    pub report: Vec<u8>,
    /// `None` when too few rays are usable to reconstruct a cross-section.
    pub png: Option<Vec<u8>>,
}

impl SetOutputs {
    /// Builds the files of a set from its estimate; `with_tomogram` reconstructs and draws the
    /// cross-section too.
    pub fn build(
        result: &ResultName,
        est: &SetEstimate,
        cfg: &EngineConfig,
        files: &[TapFile; N_SENSORS],
        with_tomogram: bool,
        survey: Option<&Survey>,
    ) -> SetOutputs {
        SetOutputs::build_with(result, est, cfg, files, with_tomogram, survey, None)
    }

    /// [`SetOutputs::build`], with a warning about the diameter for the report's `warnings`
    /// (a survey file that was rejected, so the default diameter was used).
    pub fn build_with(
        result: &ResultName,
        est: &SetEstimate,
        cfg: &EngineConfig,
        files: &[TapFile; N_SENSORS],
        with_tomogram: bool,
        survey: Option<&Survey>,
        diameter_warning: Option<&str>,
    ) -> SetOutputs {
        let name = result.json();
        // A mis-tapped file changes what the set means: say so where the operator looks.
        for w in tap_warnings(est, files) {
            log::warn!("{name}: {w}");
        }
        let tomogram = with_tomogram
            .then(|| {
                reconstruct(
                    &est.plain_matrix(),
                    cfg.diameter_m,
                    &TomogramConfig::default(),
                )
            })
            .and_then(|t| t.map_err(|e| log::warn!("{name}: no tomogram: {e}")).ok());
        SetOutputs {
            name: result.clone(),
            plain: plain_json(est),
            report: report_json(
                &name,
                est,
                cfg,
                files,
                tomogram.as_ref(),
                survey,
                diameter_warning,
            ),
            png: tomogram
                .as_ref()
                .map(|t| render_png(t, &title(result.device.as_deref(), result.unix_s))),
        }
    }

    /// `result_<device>_<unix>.json`, the name consumers are told.
    pub fn result_name(&self) -> String {
        self.name.json()
    }

    /// Writes the report and the picture, then the plain result last, each atomically through
    /// `tmp_dir` (same file system as `dir`): once the plain result is there, all is there.
    /// Returns the paths, plain result first.
    pub fn write(
        &self,
        tmp_dir: &Path,
        dir: &Path,
        sync: Durability,
    ) -> std::io::Result<Vec<PathBuf>> {
        let mut paths = Vec::with_capacity(3);
        let report = write_atomic(tmp_dir, dir, &self.name.report(), &self.report, sync)?;
        if let Some(png) = &self.png {
            paths.push(write_atomic(tmp_dir, dir, &self.name.png(), png, sync)?);
        }
        paths.push(report);
        paths.insert(
            0,
            write_atomic(tmp_dir, dir, &self.result_name(), &self.plain, sync)?,
        );
        Ok(paths)
    }
}

/// Whether a write waits until the bytes are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync before the rename: the service, whose journal relies on it.
    Durable,
    /// Rename without waiting: `process`, whose results can be computed again.
    Fast,
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in `tmp_dir`, fsync when
/// durable, rename. `tmp_dir` must be on the same file system as `dir`.
pub fn write_atomic(
    tmp_dir: &Path,
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sync: Durability,
) -> std::io::Result<PathBuf> {
    let tmp = tmp_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync == Durability::Durable {
            f.sync_all()?;
        }
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

/// The PNG of a result file's tomogram: reconstructs from the plain matrix at `path` on a trunk
/// of `diameter_m`, titled with the device and time read from the file name.
pub fn render_plain(path: &Path, diameter_m: f64) -> anyhow::Result<Vec<u8>> {
    let matrix = read_plain(path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tomogram = reconstruct(&matrix, diameter_m, &TomogramConfig::default())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let heading = match ResultName::parse(&stem) {
        Some(name) => title(name.device.as_deref(), name.unix_s),
        None => stem,
    };
    Ok(render_png(&tomogram, &heading))
}

/// The diameter recorded in the report beside a result file (`<stem>.report.json`), if any.
pub fn report_diameter(result_path: &Path) -> Option<f64> {
    let report = result_path.with_extension("report.json");
    let bytes = std::fs::read(report).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("diameter_m")?.as_f64().filter(|d| *d > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::chord_m;
    use crate::simulate::{Decay, SimParams, true_tof_us};

    #[test]
    fn result_names_are_made_and_read_back_in_one_place() {
        let name = ResultName::new(Some("20-79-18-81-6E-65"), 1_755_752_474);
        assert_eq!(name.json(), "result_20-79-18-81-6E-65_1755752474.json");
        assert_eq!(
            name.report(),
            "result_20-79-18-81-6E-65_1755752474.report.json"
        );
        assert_eq!(name.png(), "result_20-79-18-81-6E-65_1755752474.png");
        for form in [name.stem(), name.json(), name.report(), name.png()] {
            assert_eq!(ResultName::parse(&form), Some(name.clone()), "{form}");
        }
        let legacy = ResultName::new(None, 1_755_752_474);
        assert_eq!(legacy.json(), "result_1755752474.json");
        assert_eq!(ResultName::parse("result_1755752474"), Some(legacy));
        for other in [
            "something",
            "result_",
            "result_dev_",
            "result__12",
            "result_dev_1x",
        ] {
            assert_eq!(ResultName::parse(other), None, "{other}");
        }
    }

    /// The report as serde_json writes it whole: the fields, then the tomogram (as the report
    /// was written before its grids were written by hand).
    fn serde_report(
        est: &SetEstimate,
        cfg: &EngineConfig,
        files: &[TapFile; N_SENSORS],
        tomogram: Option<&Tomogram>,
        survey: Option<&Survey>,
    ) -> String {
        #[derive(Serialize)]
        struct Whole<'a> {
            #[serde(flatten)]
            fields: Report<'a>,
            tomogram: Option<TomogramReport>,
        }
        let whole = Whole {
            fields: report_fields("r.json", est, cfg, files, survey, Some("a warning")),
            tomogram: tomogram.map(TomogramReport::from),
        };
        String::from_utf8(serde_json::to_vec_pretty(&whole).unwrap()).unwrap() + "\n"
    }

    #[test]
    fn the_report_is_what_serde_json_writes() {
        use crate::engine::Engine;
        use crate::simulate::{SimParams, read_set, simulate_many};
        let cfg = EngineConfig::default();
        let mut engine = Engine::new(cfg.clone());
        let (files, _) = simulate_many(&SimParams::default(), 3, 5, true);
        let mut with_tomogram = 0;
        for set in files.chunks(N_SENSORS) {
            let taps = read_set(set);
            let est = engine.estimate(&taps.input).unwrap();
            let tomogram = reconstruct(
                &est.plain_matrix(),
                cfg.diameter_m,
                &TomogramConfig::default(),
            )
            .ok();
            with_tomogram += usize::from(tomogram.is_some());
            // Also a tomogram with odd cells: missing, NaN, negative zero, huge and tiny.
            let odd = tomogram.clone().map(|mut t| {
                let odd_values = [None, Some(f64::NAN), Some(-0.0), Some(1e300), Some(1e-9)];
                for (k, v) in odd_values.into_iter().enumerate() {
                    t.velocity_m_s[t.n / 2][k] = v;
                }
                t.extent_m = 0.1 + 0.2;
                t
            });
            for t in [tomogram.as_ref(), odd.as_ref(), None] {
                let ours = report_json(
                    "r.json",
                    &est,
                    &cfg,
                    &taps.files,
                    t,
                    None,
                    Some("a warning"),
                );
                let theirs = serde_report(&est, &cfg, &taps.files, t, None);
                assert!(
                    String::from_utf8(ours).unwrap() == theirs,
                    "the report differs"
                );
            }
        }
        assert_eq!(with_tomogram, 3);
    }

    #[test]
    fn render_redraws_a_plain_result_file() {
        let p = SimParams {
            decay: Some(Decay {
                x: -0.3,
                y: 0.2,
                radius: 0.45,
                velocity_factor: 0.45,
            }),
            diameter_m: 0.5,
            ..SimParams::default()
        };
        let rows: Vec<Vec<f64>> = (0..N_SENSORS)
            .map(|i| {
                (0..N_SENSORS)
                    .map(|j| {
                        if i == j {
                            0.0
                        } else {
                            chord_m(i, j, p.diameter_m) / true_tof_us(i, j, &p) * 1e6
                        }
                    })
                    .collect()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result_20-79-18-81-6E-65_1755752474.json");
        std::fs::write(&path, serde_json::to_vec(&rows).unwrap()).unwrap();
        assert_eq!(report_diameter(&path), None);
        std::fs::write(
            path.with_extension("report.json"),
            br#"{"diameter_m": 0.5}"#,
        )
        .unwrap();
        assert_eq!(report_diameter(&path), Some(0.5));
        let bytes = render_plain(&path, 0.5).unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let info = reader.info();
        assert!(info.width >= 512 && info.height >= 512);
        std::fs::write(&path, b"[[1,2],[3]]").unwrap();
        assert!(render_plain(&path, 0.5).is_err());
    }
}
