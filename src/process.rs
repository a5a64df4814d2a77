//! `terawang process`: find the complete sets among files and folders, compute and write them.
//!
//! Streaming: names are grouped first (no file is read), then worker threads read, compute
//! and write one set at a time, so memory stays flat however many sets there are. A file that
//! fails to read is rejected and the rest of its set goes back to the grouper, where a
//! duplicate of the bad tap may still complete it.
//!
//! On the CPU each worker has its own engine and computes its sets one by one. On the GPU
//! there is one engine (one GPU context) for the whole run, on the main thread: workers read
//! sets and write results, and every set read by the time the GPU is free goes into one
//! batched dispatch (at most [`MAX_GPU_BATCH`] sets; sets with different diameters, from
//! survey files, go in separate dispatches).

use std::borrow::Borrow;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded};

use crate::backend::{BackendChoice, make_correlator, make_correlators, settled};
use crate::device::{
    N_SENSORS, ReadError, ReadErrorKind, SetRecording, TapName, TapRecording, read_tap_file,
};
use crate::engine::{Engine, EngineConfig, SetEstimate, n_fft_for};
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
                .filter_map(|e| {
                    let p = e.path();
                    let keep = p.extension().is_some_and(|x| x == "json")
                        && !e.file_name().to_string_lossy().starts_with('.')
                        // The entry's type comes with the listing; only a link (or a file
                        // system that does not say) costs a stat, to follow it.
                        && match e.file_type() {
                            Ok(t) if !t.is_symlink() => t.is_file(),
                            _ => p.is_file(),
                        };
                    keep.then_some(p)
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

/// The most sets one GPU dispatch takes: about what one 64 MiB storage binding holds with
/// `--method gcc-phat` (larger batches run in chunks anyway), and a bound on the sets in
/// memory at once.
pub const MAX_GPU_BATCH: usize = 256;

/// What a worker of `process` is given.
enum Work {
    /// Read, compute and write a set on the worker's own engine (the CPU).
    Whole(TapSet<PathBuf>, Option<Survey>),
    /// Only read a set: the main thread estimates it in a batch on the GPU.
    Read(TapSet<PathBuf>, Option<Survey>),
    /// Build and write the outputs of a set estimated in a batch (or say why it failed).
    Write(Box<ReadSet>, Box<Result<SetEstimate, String>>),
}

/// A set read and waiting for its estimate.
pub(crate) struct ReadSet {
    pub set: TapSet<PathBuf>,
    pub taps: SetRecording,
    pub survey: Option<Survey>,
}

impl ReadSet {
    /// Builds the outputs of the set from its estimate, with its survey's diameter when it
    /// has one, as [`compute_outputs`] does.
    pub(crate) fn outputs(
        &self,
        cfg: &EngineConfig,
        est: &SetEstimate,
        tomogram: bool,
        diameter_warning: Option<&str>,
    ) -> SetOutputs {
        let mut cfg = cfg.clone();
        if let Some(survey) = &self.survey {
            cfg.diameter_m = survey.diameter_m;
        }
        SetOutputs::build_with(
            &self.set.result_name(),
            est,
            &cfg,
            &self.taps.files,
            tomogram,
            self.survey.as_ref(),
            diameter_warning,
        )
    }
}

/// What a worker of `process` did with one set.
enum Processed {
    /// Read for the GPU: not finished yet.
    Read(Box<ReadSet>),
    Written {
        paths: Vec<PathBuf>,
        surveyed: bool,
    },
    /// The set `(device, unix_s)` had files that could not be read.
    BadMembers {
        set: (Option<String>, i64),
        rejected: Vec<ReadError>,
        good: Vec<(TapName, PathBuf)>,
    },
    Failed(String),
}

impl Processed {
    fn bad_members(set: &TapSet<PathBuf>, bad: BadMembers) -> Processed {
        Processed::BadMembers {
            set: (set.device.clone(), set.unix_s),
            rejected: bad.rejected,
            good: bad.good,
        }
    }
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
    let backend_error = |e| anyhow::anyhow!("--backend {}: {e}", opts.backend);
    let n_fft = n_fft_for(&opts.engine);
    // The first correlator settles `auto`: a GPU is one engine for the run, the CPU one per
    // worker.
    let first = make_correlator(opts.backend, n_fft, false).map_err(backend_error)?;
    let (mut gpu, mut correlators) = match settled(first.as_ref()) {
        BackendChoice::Gpu => (
            Some(Engine::with_correlator(opts.engine.clone(), first)),
            vec![],
        ),
        _ => {
            let mut rest =
                make_correlators(BackendChoice::Cpu, n_fft, threads - 1).map_err(backend_error)?;
            rest.push(first);
            (None, rest)
        }
    };
    let max_in_flight = match gpu {
        Some(_) => MAX_GPU_BATCH + threads * 2,
        None => threads * 2,
    };
    // Never full: at most one item per set in flight.
    let (job_tx, job_rx) = bounded::<Work>(max_in_flight);
    let (done_tx, done_rx) = unbounded::<Processed>();
    let started = Instant::now();
    let show_progress = opts.progress && std::io::stderr().is_terminal();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for w in 0..threads {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let cfg = opts.engine.clone();
            let out_dir = opts.out_dir.clone();
            let tomogram = opts.tomogram;
            let correlator = correlators.pop();
            std::thread::Builder::new()
                .name(format!("engine-{w}"))
                .spawn_scoped(scope, move || {
                    let mut engine = correlator.map(|c| Engine::with_correlator(cfg.clone(), c));
                    for work in job_rx {
                        let outcome = match work {
                            Work::Whole(set, survey) => {
                                let Some(engine) = engine.as_mut() else {
                                    unreachable!("whole sets go to workers with an engine");
                                };
                                let survey = survey.as_ref();
                                process_set(engine, &set, &out_dir, tomogram, survey)
                            }
                            Work::Read(set, survey) => match read_set(&set) {
                                Ok(taps) => {
                                    Processed::Read(Box::new(ReadSet { set, taps, survey }))
                                }
                                Err(bad) => Processed::bad_members(&set, bad),
                            },
                            Work::Write(read, est) => {
                                write_estimated(&cfg, *read, *est, &out_dir, tomogram)
                            }
                        };
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
            while in_flight < max_in_flight {
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
                job_tx.send(match gpu {
                    Some(_) => Work::Read(set, survey),
                    None => Work::Whole(set, survey),
                })?;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            // On the GPU, everything that is ready now: the sets read go into one batch.
            let mut ready: Vec<ReadSet> = Vec::new();
            let mut next = Some(done_rx.recv()?);
            while let Some(outcome) = next.take() {
                if gpu.is_some() {
                    next = done_rx.try_recv().ok();
                }
                if let Processed::Read(read) = outcome {
                    ready.push(*read);
                    continue;
                }
                in_flight -= 1;
                finished += 1;
                match outcome {
                    Processed::Read(_) => unreachable!("taken above"),
                    Processed::Written { paths, surveyed } => {
                        summary.written.extend(paths.into_iter().take(1));
                        summary.surveyed += usize::from(surveyed);
                    }
                    Processed::Failed(why) => summary.failed.push(why),
                    Processed::BadMembers {
                        set: (device, unix_s),
                        rejected,
                        good,
                    } => {
                        summary.rejected.extend(rejected);
                        let (withdrawn, more) =
                            regroup(&mut grouper, &mut queue, (&device, unix_s), good);
                        summary.sets_found -= withdrawn.len();
                        summary.sets_found += more.len();
                        known.retain(|(d, t)| !(*d == device && withdrawn.contains(t)));
                        known.extend(more.iter().map(|s| (s.device.clone(), s.unix_s)));
                        queue.extend(more);
                    }
                }
            }
            if let Some(engine) = gpu.as_mut() {
                for (read, est) in estimate_ready(engine, ready) {
                    job_tx.send(Work::Write(Box::new(read), Box::new(est)))?;
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

/// What `process` does when the set `(device, unix_s)` comes back with files it could not
/// read: what the service does, which sets such a file aside before it groups, so that the
/// rest of the set waits for another tap of that sensor (a re-tap, or the earlier tap a
/// re-tap replaced). The set is withdrawn, and so are the device's sets not started yet
/// (`queue`); their files (`good`: the set's readable ones) go back to the grouper, and the
/// device is grouped again as if none of its sets from this one on had formed, while the sets
/// started after it stand ([`Grouper::take_complete_again`]). Returns the times of the sets
/// withdrawn (this one first) and the sets formed.
fn regroup(
    grouper: &mut Grouper<PathBuf>,
    queue: &mut std::collections::VecDeque<TapSet<PathBuf>>,
    (device, unix_s): (&Option<String>, i64),
    good: Vec<(TapName, PathBuf)>,
) -> (Vec<i64>, Vec<TapSet<PathBuf>>) {
    let mut withdrawn = vec![unix_s];
    grouper.give_back(device, unix_s, good);
    let (mine, others): (Vec<_>, Vec<_>) = queue.drain(..).partition(|s| s.device == *device);
    queue.extend(others);
    for set in mine {
        withdrawn.push(set.unix_s);
        let files = set.members.into_iter().map(|m| (m.name, m.key));
        grouper.give_back(device, set.unix_s, files);
    }
    let more = grouper.take_complete_again(device, unix_s);
    (withdrawn, more)
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

/// Estimates sets read for the GPU in as few dispatches as their diameters allow (a survey
/// gives its set its own), at most [`MAX_GPU_BATCH`] sets each; each set with its estimate or
/// why it has none, in order. `T` is the set with whatever its caller carries beside it.
pub(crate) fn estimate_ready<T: Borrow<ReadSet>>(
    engine: &mut Engine,
    ready: Vec<T>,
) -> Vec<(T, Result<SetEstimate, String>)> {
    let default_diameter = engine.config().diameter_m;
    let diameter = |r: &T| {
        r.borrow()
            .survey
            .as_ref()
            .map_or(default_diameter, |s| s.diameter_m)
    };
    let mut estimates: Vec<Option<Result<SetEstimate, String>>> = vec![None; ready.len()];
    let mut diameters: Vec<f64> = ready.iter().map(diameter).collect();
    diameters.sort_by(f64::total_cmp);
    diameters.dedup_by(|a, b| a.to_bits() == b.to_bits());
    for d in diameters {
        let group: Vec<usize> = (0..ready.len())
            .filter(|&i| diameter(&ready[i]).to_bits() == d.to_bits())
            .collect();
        engine.set_diameter_m(d);
        for chunk in group.chunks(MAX_GPU_BATCH) {
            let inputs: Vec<&crate::engine::SetInput> = chunk
                .iter()
                .map(|&i| &ready[i].borrow().taps.input)
                .collect();
            match engine.estimate_batch(&inputs) {
                Ok(ests) => {
                    for (&i, est) in chunk.iter().zip(ests) {
                        estimates[i] = Some(Ok(est));
                    }
                }
                Err(e) => {
                    let why = format!("the {} backend failed: {e}", engine.backend_name());
                    for &i in chunk {
                        estimates[i] = Some(Err(why.clone()));
                    }
                }
            }
        }
    }
    engine.set_diameter_m(default_diameter);
    ready
        .into_iter()
        .zip(estimates)
        .map(|(read, est)| (read, est.expect("every diameter's group estimated")))
        .collect()
}

/// Builds and writes the outputs of a set estimated in a batch, as [`process_set`] does.
fn write_estimated(
    cfg: &EngineConfig,
    read: ReadSet,
    est: Result<SetEstimate, String>,
    out_dir: &Path,
    tomogram: bool,
) -> Processed {
    let est = match est {
        Ok(est) => est,
        Err(why) => return Processed::Failed(format!("{}: {why}", read.set.result_name())),
    };
    let outputs = read.outputs(cfg, &est, tomogram, None);
    write_outputs(&outputs, out_dir, read.survey.is_some())
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
        Err(bad) => return Processed::bad_members(set, bad),
    };
    let outputs = match compute_outputs(engine, set, &taps, tomogram, survey, None) {
        Ok(outputs) => outputs,
        Err(e) => return Processed::Failed(format!("{e:#}")),
    };
    write_outputs(&outputs, out_dir, survey.is_some())
}

fn write_outputs(outputs: &SetOutputs, out_dir: &Path, surveyed: bool) -> Processed {
    match outputs.write(out_dir, out_dir, Durability::Fast) {
        Ok(paths) => Processed::Written { paths, surveyed },
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

    /// A folder gives its `.json` files in name order, links to files followed; not
    /// folders, hidden files, other extensions, nor links to folders or to nothing.
    #[test]
    fn a_folder_gives_its_json_files_and_links_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for n in ["b.json", "a.json", ".hidden.json", "c.txt"] {
            std::fs::write(p(n), "[]").unwrap();
        }
        std::fs::create_dir(p("d.json")).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(p("a.json"), p("e.json")).unwrap();
            std::os::unix::fs::symlink(p("d.json"), p("f.json")).unwrap();
            std::os::unix::fs::symlink(p("missing"), p("g.json")).unwrap();
        }
        let mut want = vec![p("a.json"), p("b.json")];
        if cfg!(unix) {
            want.push(p("e.json"));
        }
        assert_eq!(collect_inputs(&[dir.path().to_path_buf()]).unwrap(), want);
    }

    /// Sets estimated in one GPU batch (one of them with a survey's diameter, so in two
    /// dispatches) equal the same sets estimated one by one on the same GPU.
    #[cfg(feature = "gpu")]
    #[test]
    fn gpu_batches_equal_the_sets_one_by_one() {
        use crate::engine::Method;
        use crate::gpu::{GpuError, GpuGcc};
        let dir = tempfile::tempdir().unwrap();
        write_simulated(dir.path(), &SimParams::default(), 4, 23, true).unwrap();
        let mut grouper: Grouper<PathBuf> = Grouper::new(900);
        for path in collect_inputs(&[dir.path().to_path_buf()]).unwrap() {
            if let Ok(name) = TapName::from_path(&path) {
                grouper.add(name, path);
            }
        }
        let sets = grouper.take_complete();
        assert_eq!(sets.len(), 4);
        let survey = Survey {
            file_name: "survey.json".into(),
            diameter_m: 0.45,
            species: None,
            circumference_cm: None,
            height_m: None,
            fields: Default::default(),
        };
        for method in Method::ALL {
            let cfg = EngineConfig {
                method,
                ..EngineConfig::default()
            };
            let gpu = match GpuGcc::new(n_fft_for(&cfg), true) {
                Ok(gpu) => gpu,
                Err(GpuError::NoAdapter(why)) => {
                    eprintln!("SKIPPED: no GPU adapter ({why})");
                    return;
                }
                Err(e) => panic!("GPU correlator failed to build: {e}"),
            };
            let mut engine = Engine::with_correlator(cfg.clone(), Box::new(gpu));
            let ready: Vec<ReadSet> = sets
                .iter()
                .enumerate()
                .map(|(k, set)| ReadSet {
                    set: set.clone(),
                    taps: read_set(set).unwrap(),
                    survey: (k == 1).then(|| survey.clone()),
                })
                .collect();
            let one_by_one: Vec<String> = ready
                .iter()
                .map(|r| {
                    engine.set_diameter_m(r.survey.as_ref().map_or(0.3, |s| s.diameter_m));
                    format!("{:?}", engine.estimate(&r.taps.input).unwrap())
                })
                .collect();
            engine.set_diameter_m(cfg.diameter_m);
            let batched = estimate_ready(&mut engine, ready);
            assert_eq!(engine.config(), &cfg, "the default diameter is restored");
            for (k, ((read, est), want)) in batched.into_iter().zip(one_by_one).enumerate() {
                assert_eq!(read.set, sets[k], "{method}: order kept");
                assert_eq!(format!("{:?}", est.unwrap()), want, "{method}: set {k}");
            }
        }
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
