//! `terawang process`: find the complete sets among files and folders, compute and write them.
//!
//! Streaming: names are grouped first (no file is read), then worker threads read, compute
//! and write one set at a time, so memory stays flat however many sets there are. A file that
//! fails to read is rejected and the rest of its set goes back to the grouper, where a
//! duplicate of the bad tap may still complete it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded};

use crate::backend::{BackendChoice, make_correlators};
use crate::device::{
    N_SENSORS, ReadError, ReadErrorKind, SetRecording, TapName, TapRecording, read_tap_file,
};
use crate::engine::{Engine, EngineConfig, n_fft_for};
use crate::group::{Grouper, TapSet};
use crate::result::{Durability, SetOutputs};
use crate::survey::{Survey, SurveyName, read_survey, survey_for_set};

/// Options of one run.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    pub inputs: Vec<PathBuf>,
    pub out_dir: PathBuf,
    pub engine: EngineConfig,
    /// Correlator backend; `auto` is settled once, before the workers start.
    pub backend: BackendChoice,
    /// Reconstruct and draw the cross-section of each set.
    pub tomogram: bool,
    pub threads: usize,
    pub window_s: i64,
    pub progress: bool,
    /// The diameter was given explicitly (`--diameter`): it overrides survey files, which
    /// are then ignored.
    pub diameter_fixed: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files_seen: usize,
    pub sets_found: usize,
    pub written: Vec<PathBuf>,
    pub rejected: Vec<ReadError>,
    /// Files that are not tap files by their name (e.g. `truth.json`), with the reason.
    pub ignored: Vec<(PathBuf, String)>,
    /// Files that formed no complete set.
    pub leftovers: Vec<PathBuf>,
    /// Leftovers not newer than a set already formed from their device, with the reason:
    /// they never join a later set.
    pub stale: Vec<(PathBuf, String)>,
    /// Sets that could not be written (I/O errors on the output side).
    pub failed: Vec<String>,
    /// Survey files that could not be used, with the reason.
    pub rejected_surveys: Vec<(PathBuf, String)>,
    /// Survey files not used (`--diameter` given, or no set for them), with the reason.
    pub ignored_surveys: Vec<(PathBuf, String)>,
    /// Sets computed with a survey's diameter.
    pub surveyed: usize,
}

impl Summary {
    pub fn print(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{} files, {} sets found, {} written",
            self.files_seen,
            self.sets_found,
            self.written.len()
        )?;
        if self.surveyed > 0 {
            writeln!(
                out,
                "{} sets computed with a survey's diameter",
                self.surveyed
            )?;
        }
        if !self.rejected.is_empty() {
            writeln!(out, "{} files rejected:", self.rejected.len())?;
            for e in &self.rejected {
                writeln!(out, "  {e}")?;
            }
        }
        list_with_reasons(out, "survey files rejected", &self.rejected_surveys)?;
        list_with_reasons(out, "survey files not used", &self.ignored_surveys)?;
        list_with_reasons(
            out,
            "files ignored (not tap files by their name)",
            &self.ignored,
        )?;
        list_with_reasons(out, "files are leftovers of a formed set", &self.stale)?;
        if !self.leftovers.is_empty() {
            writeln!(
                out,
                "{} files are in no complete set:",
                self.leftovers.len()
            )?;
            for p in &self.leftovers {
                writeln!(out, "  {}", p.display())?;
            }
        }
        for f in &self.failed {
            writeln!(out, "failed: {f}")?;
        }
        Ok(())
    }
}

/// Prints `<n> <what>:` and one `  <path>: <why>` line per file, if there are any.
fn list_with_reasons(
    out: &mut impl std::io::Write,
    what: &str,
    files: &[(PathBuf, String)],
) -> std::io::Result<()> {
    if !files.is_empty() {
        writeln!(out, "{} {what}:", files.len())?;
        for (p, why) in files {
            writeln!(out, "  {}: {why}", p.display())?;
        }
    }
    Ok(())
}

/// Lists the `.json` files among `inputs` (folders are read one level deep, sorted).
pub fn collect_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta =
            std::fs::metadata(input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
        if meta.is_dir() {
            let mut here: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            here.sort();
            files.extend(here);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// What a worker of `process` did with one set.
enum Processed {
    Written {
        paths: Vec<PathBuf>,
        surveyed: bool,
    },
    BadMembers {
        rejected: Vec<ReadError>,
        good: Vec<(TapName, PathBuf)>,
    },
    Failed(String),
}

/// Runs the whole command.
pub fn run(opts: &ProcessOptions) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", opts.out_dir.display()))?;
    let files = collect_inputs(&opts.inputs)?;
    let mut summary = Summary {
        files_seen: files.len(),
        ..Default::default()
    };
    let mut grouper: Grouper<PathBuf> = Grouper::new(opts.window_s);
    let mut surveys: Vec<(SurveyName, (PathBuf, Survey))> = Vec::new();
    for path in files {
        if let Some(name) = SurveyName::from_path(&path) {
            if opts.diameter_fixed {
                let why = "--diameter overrides survey files".to_string();
                summary.ignored_surveys.push((path, why));
                continue;
            }
            match read_survey(&path) {
                Ok(survey) => surveys.push((name, (path, survey))),
                Err(e) => summary.rejected_surveys.push((path, e.problem.to_string())),
            }
            continue;
        }
        match TapName::from_path(&path) {
            Ok(tap_name) => grouper.add(tap_name, path),
            Err(kind @ ReadErrorKind::BadName(_)) => summary.ignored.push((path, kind.to_string())),
            Err(kind) => summary.rejected.push(ReadError { path, kind }),
        }
    }

    let threads = opts.threads.max(1);
    let correlators = make_correlators(opts.backend, n_fft_for(&opts.engine), threads)
        .map_err(|e| anyhow::anyhow!("--backend {}: {e}", opts.backend))?;
    let (job_tx, job_rx) = bounded::<(TapSet<PathBuf>, Option<Survey>)>(threads * 2);
    let (done_tx, done_rx) = unbounded::<Processed>();
    let started = Instant::now();
    let show_progress = opts.progress && std::io::stderr().is_terminal();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for (w, correlator) in correlators.into_iter().enumerate() {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let cfg = opts.engine.clone();
            let out_dir = opts.out_dir.clone();
            let tomogram = opts.tomogram;
            std::thread::Builder::new()
                .name(format!("engine-{w}"))
                .spawn_scoped(scope, move || {
                    let mut engine = Engine::with_correlator(cfg, correlator);
                    for (set, survey) in job_rx {
                        let survey = survey.as_ref();
                        let outcome = process_set(&mut engine, &set, &out_dir, tomogram, survey);
                        if done_tx.send(outcome).is_err() {
                            break;
                        }
                    }
                })?;
        }
        drop(job_rx);
        drop(done_tx);
        let mut queue: std::collections::VecDeque<TapSet<PathBuf>> = grouper.take_complete().into();
        summary.sets_found = queue.len();
        // Every set formed so far, to attach each survey to its nearest one.
        let mut known: Vec<(Option<String>, i64)> =
            queue.iter().map(|s| (s.device.clone(), s.unix_s)).collect();
        let mut attached: Vec<bool> = vec![false; surveys.len()];
        let mut in_flight = 0usize;
        let mut finished = 0usize;
        loop {
            while in_flight < threads * 2 {
                let Some(set) = queue.pop_front() else { break };
                let survey = if surveys.is_empty() {
                    None
                } else {
                    let sets: Vec<(Option<&str>, i64)> =
                        known.iter().map(|(d, t)| (d.as_deref(), *t)).collect();
                    let me = known
                        .iter()
                        .position(|(d, t)| *d == set.device && *t == set.unix_s);
                    me.and_then(|me| survey_for_set(&sets, me, &surveys, opts.window_s))
                        .map(|(name, (_, survey))| {
                            if let Some(i) = surveys.iter().position(|(n, _)| n == name) {
                                attached[i] = true;
                            }
                            survey.clone()
                        })
                };
                job_tx.send((set, survey))?;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            let outcome = done_rx.recv()?;
            in_flight -= 1;
            finished += 1;
            match outcome {
                Processed::Written { paths, surveyed } => {
                    summary.written.extend(paths.into_iter().take(1));
                    summary.surveyed += usize::from(surveyed);
                }
                Processed::Failed(why) => summary.failed.push(why),
                Processed::BadMembers { rejected, good } => {
                    summary.rejected.extend(rejected);
                    summary.sets_found -= 1;
                    for (name, path) in good {
                        grouper.add(name, path);
                    }
                    let more = grouper.take_complete();
                    summary.sets_found += more.len();
                    known.extend(more.iter().map(|s| (s.device.clone(), s.unix_s)));
                    queue.extend(more);
                }
            }
            if show_progress && started.elapsed().as_secs_f64() > 1.0 {
                draw_progress(finished, summary.sets_found);
            }
        }
        drop(job_tx);
        for ((_, (path, _)), attached) in surveys.iter().zip(&attached) {
            if !*attached {
                let why = "no set of its device whose window holds its time".to_string();
                summary.ignored_surveys.push((path.clone(), why));
            }
        }
        Ok(())
    })?;
    if show_progress && started.elapsed().as_secs_f64() > 1.0 {
        eprintln!();
    }
    for stale in grouper.take_stale() {
        summary.stale.push((stale.file.key.clone(), stale.reason()));
    }
    // Files in no set were never read: read them now so corrupt ones are reported too.
    for pending in grouper.pending() {
        match read_tap_file(&pending.key) {
            Ok(_) => summary.leftovers.push(pending.key.clone()),
            Err(e) => summary.rejected.push(e),
        }
    }
    summary.leftovers.sort();
    summary.stale.sort();
    summary.ignored_surveys.sort();
    summary.written.sort();
    Ok(summary)
}

fn draw_progress(done: usize, total: usize) {
    let width = 40;
    let filled = if total == 0 {
        width
    } else {
        done * width / total.max(1)
    };
    eprint!(
        "\r[{}{}] {done}/{total} sets",
        "=".repeat(filled.min(width)),
        " ".repeat(width - filled.min(width))
    );
}

/// Members of a set that could not be read, and the others (they go back to the grouper).
#[derive(Debug)]
pub struct BadMembers {
    pub rejected: Vec<ReadError>,
    pub good: Vec<(TapName, PathBuf)>,
}

/// Reads the eight files of a set, tap 1 first.
pub fn read_set(set: &TapSet<PathBuf>) -> Result<SetRecording, BadMembers> {
    let mut rejected = Vec::new();
    let mut good = Vec::new();
    let mut taps = Vec::with_capacity(N_SENSORS);
    for member in &set.members {
        match read_tap_file(&member.key) {
            Ok(tap) => {
                good.push((member.name.clone(), member.key.clone()));
                taps.push(tap);
            }
            Err(e) => rejected.push(e),
        }
    }
    if !rejected.is_empty() {
        return Err(BadMembers { rejected, good });
    }
    let Ok(taps) = <[TapRecording; N_SENSORS]>::try_from(taps) else {
        unreachable!("eight members, none rejected");
    };
    let Ok(set) = SetRecording::from_taps(taps) else {
        unreachable!("the grouper orders a set's members by tap");
    };
    Ok(set)
}

/// Computes a set and builds its files; the error names the result and the backend. A
/// survey gives the set its own diameter (the engine's is restored afterwards).
pub fn compute_outputs(
    engine: &mut Engine,
    set: &TapSet<PathBuf>,
    taps: &SetRecording,
    tomogram: bool,
    survey: Option<&Survey>,
    diameter_warning: Option<&str>,
) -> anyhow::Result<SetOutputs> {
    let name = set.result_name();
    let default_diameter = engine.config().diameter_m;
    if let Some(survey) = survey {
        engine.set_diameter_m(survey.diameter_m);
    }
    let est = engine.estimate(&taps.input);
    let cfg = engine.config().clone();
    engine.set_diameter_m(default_diameter);
    let est = est.map_err(|e| {
        anyhow::anyhow!("{name}: the {} backend failed: {e}", engine.backend_name())
    })?;
    Ok(SetOutputs::build_with(
        &name,
        &est,
        &cfg,
        &taps.files,
        tomogram,
        survey,
        diameter_warning,
    ))
}

/// Reads, computes and writes one set.
fn process_set(
    engine: &mut Engine,
    set: &TapSet<PathBuf>,
    out_dir: &Path,
    tomogram: bool,
    survey: Option<&Survey>,
) -> Processed {
    let taps = match read_set(set) {
        Ok(taps) => taps,
        Err(BadMembers { rejected, good }) => return Processed::BadMembers { rejected, good },
    };
    let outputs = match compute_outputs(engine, set, &taps, tomogram, survey, None) {
        Ok(outputs) => outputs,
        Err(e) => return Processed::Failed(format!("{e:#}")),
    };
    let write = || outputs.write(out_dir, out_dir, Durability::Fast);
    match write() {
        Ok(paths) => Processed::Written {
            paths,
            surveyed: survey.is_some(),
        },
        Err(e) => Processed::Failed(format!("{}: cannot write: {e}", outputs.result_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{SimParams, write_simulated};

    /// Median velocity of a report's usable-or-not rays, m/s.
    fn median_velocity(report: &serde_json::Value) -> f64 {
        let mut v: Vec<f64> = report["velocity_m_s"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().filter_map(|x| x.as_f64()))
            .filter(|v| *v > 0.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn survey_gives_its_set_the_trees_own_diameter() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let base = SimParams {
            diameter_m: 0.5,
            velocity_m_s: 1500.0,
            ..SimParams::default()
        };
        write_simulated(&input, &base, 1, 3, false).unwrap();
        let run_once = |out: &str, survey: Option<&str>| {
            if let Some(content) = survey {
                // Its seconds inside the set's window (the simulator's first tap + 2 min).
                let path = input.join("20-79-18-81-6E-60_1755752600_survey.json");
                std::fs::write(path, content).unwrap();
            }
            let opts = ProcessOptions {
                inputs: vec![input.clone()],
                out_dir: dir.path().join(out),
                engine: EngineConfig::default(),
                backend: BackendChoice::Cpu,
                tomogram: false,
                threads: 1,
                window_s: 900,
                progress: false,
                diameter_fixed: false,
            };
            let summary = run(&opts).unwrap();
            assert_eq!(summary.written.len(), 1);
            let report = summary.written[0].with_extension("report.json");
            let report: serde_json::Value =
                serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
            (summary, report)
        };
        let (_, plain) = run_once("default", None);
        assert_eq!(plain["diameter_source"], "default");
        assert!(plain.get("survey").is_none());
        let v = median_velocity(&plain);
        assert!((v / 1500.0 - 0.6).abs() < 0.05, "at 0.3 m: {v} m/s");

        let survey = format!(
            r#"{{"circumference_cm": {}, "species": "Mahoni", "height_m": 1.3}}"#,
            50.0 * std::f64::consts::PI
        );
        let (summary, surveyed) = run_once("survey", Some(&survey));
        assert_eq!(summary.surveyed, 1);
        assert_eq!(surveyed["diameter_source"], "survey");
        assert!((surveyed["diameter_m"].as_f64().unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(surveyed["survey"]["species"], "Mahoni");
        assert_eq!(
            surveyed["survey_file"],
            "20-79-18-81-6E-60_1755752600_survey.json"
        );
        let v = median_velocity(&surveyed);
        assert!((v / 1500.0 - 1.0).abs() < 0.05, "with the survey: {v} m/s");
    }
}
