//! End to end through the `terawang` binary on the project's fixtures and simulator output,
//! judged against the simulator's ground truth.

use std::path::{Path, PathBuf};
use std::process::Command;

use terawang::simulate::Truth;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_terawang"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read_matrix(path: &Path) -> Vec<Vec<f64>> {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Relative velocity errors of the usable (non-zero) entries, and their count.
fn velocity_errors(result: &[Vec<f64>], truth: &[[f64; 8]; 8]) -> (Vec<f64>, usize) {
    let mut errs = Vec::new();
    for i in 0..8 {
        for j in 0..8 {
            if i != j && result[i][j] != 0.0 {
                errs.push((result[i][j] - truth[i][j]).abs() / truth[i][j]);
            }
        }
    }
    errs.sort_by(f64::total_cmp);
    let n = errs.len();
    (errs, n)
}

fn median(xs: &[f64]) -> f64 {
    xs[xs.len() / 2]
}

#[test]
fn process_fixtures_matches_ground_truth() {
    for case in ["clean", "decay"] {
        let dir = fixtures().join(case);
        let out = tempfile::tempdir().unwrap();
        let run = bin()
            .args(["process", dir.to_str().unwrap(), "--out"])
            .arg(out.path())
            .args([
                "--diameter",
                if case == "decay" { "0.4" } else { "0.3" },
                "--threads",
                "2",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        // truth.json is not a tap file: it is listed as ignored, and the run succeeds.
        assert_eq!(run.status.code(), Some(0), "{case}: {stdout}");
        assert!(
            stdout.contains("1 files ignored (not tap files by their name)"),
            "{case}: {stdout}"
        );
        assert!(
            stdout.contains("1 sets found, 1 written"),
            "{case}: {stdout}"
        );
        assert!(
            stdout.contains("truth.json: the name does not match"),
            "{stdout}"
        );

        let truth: Truth =
            serde_json::from_slice(&std::fs::read(dir.join("truth.json")).unwrap()).unwrap();
        let set = &truth.sets[0];
        let result = out.path().join(&set.result_file);
        let m = read_matrix(&result);
        assert_eq!(m.len(), 8);
        for (i, row) in m.iter().enumerate() {
            assert_eq!(row.len(), 8);
            assert_eq!(row[i], 0.0, "diagonal");
            assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
        let (errs, n) = velocity_errors(&m, &set.velocity_m_s);
        let med = median(&errs);
        println!(
            "{case}: median velocity error {:.2} % over {n} usable rays",
            100.0 * med
        );
        // Tolerance: a set's common tap instant is known only from the prior that each trigger
        // falls within the sample before the first one; the mean of eight such phases has a
        // standard deviation of dt/√96 ≈ 2.8 µs, so 2σ ≈ 5.5 µs, about 3 % of a 200 µs ToF.
        // Onset picks add about 3 µs (1.5 %) at 40 dB. One set, so 6 %, not the 3 % that the
        // accuracy tests demand over many sets.
        assert!(med < 0.06, "{case}: median velocity error {med}");
        assert!(n >= 40, "{case}: only {n} of 56 rays usable");
        let report = out
            .path()
            .join(set.result_file.replace(".json", ".report.json"));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
        assert_eq!(report["sources"].as_array().unwrap().len(), 8);
        assert_eq!(report["rays"].as_array().unwrap().len(), 56);
    }
}

#[test]
fn malformed_fixtures_are_rejected_with_their_reason() {
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .arg("process")
        .arg(fixtures().join("malformed"))
        .arg(fixtures().join("clean"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    // Exit code 3: input rejected (2 is clap's usage error).
    assert_eq!(run.status.code(), Some(3), "{stdout}");
    // The good set is still written.
    assert!(stdout.contains("1 sets found, 1 written"), "{stdout}");
    let expect = [
        ("_1755752474_1.json", "invalid or truncated JSON"),
        ("_1755752475_2.json", "the file is empty"),
        ("_1755752476_3.json", "channel value5 is missing"),
        ("_1755752477_4.json", "value3[10] is not a number"),
        (
            "_1755752478_5.json",
            "timestamps do not increase at sample 100",
        ),
        ("_1755752479_6.json", "only 40 samples"),
        ("_1755752480_9.json", "the tap number 9 is outside 1-8"),
        (
            "notes_from_the_field.json",
            "the name does not match the pattern",
        ),
    ];
    for (file, reason) in expect {
        let line = stdout
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not reported:\n{stdout}"));
        assert!(line.contains(reason), "{file}: {line}");
    }
}

/// `simulate --sets SETS --seed SEED` into a new folder, without its truth.json.
fn simulated_sets(sets: u32, seed: u32) -> tempfile::TempDir {
    let sim = tempfile::tempdir().unwrap();
    let run = bin()
        .args([
            "simulate",
            "--sets",
            &sets.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg("--out")
        .arg(sim.path())
        .output()
        .unwrap();
    assert!(run.status.success());
    std::fs::remove_file(sim.path().join("truth.json")).unwrap();
    sim
}

/// `process DIR --threads 2` into a new folder: what it printed, and the folder.
fn process_two_threads(dir: &Path) -> (std::process::Output, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .arg("process")
        .arg(dir)
        .arg("--out")
        .arg(out.path())
        .args(["--threads", "2"])
        .output()
        .unwrap();
    (run, out)
}

#[test]
fn simulate_then_process_many_sets_with_leftovers() {
    let sim = simulated_sets(6, 9);
    // Remove one tap of one set: that set's seven files are leftovers.
    let victim = std::fs::read_dir(sim.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_4.json"))
        .unwrap();
    std::fs::remove_file(&victim).unwrap();
    let (run, out) = process_two_threads(sim.path());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(
        stdout.contains("47 files, 5 sets found, 5 written"),
        "{stdout}"
    );
    assert!(
        stdout.contains("7 files are in no complete set"),
        "{stdout}"
    );
    let written = std::fs::read_dir(out.path()).unwrap().count();
    assert!(written >= 10, "plain result and report per set");
}

#[test]
fn a_set_with_an_unreadable_tap_takes_the_re_tap_as_the_service_does() {
    let sim = simulated_sets(3, 9);
    // Tap 3 of the first set cannot be read; the operator tapped sensor 3 again after tap 8.
    let (device, first_set) = unreadable_tap_and_a_re_tap(sim.path());
    let (run, out) = process_two_threads(sim.path());
    let stdout = String::from_utf8_lossy(&run.stdout);
    // Exit code 3: a file was rejected. The service sets it aside before grouping, so the
    // first set takes the re-tap; `process` must find the same three sets.
    assert_eq!(run.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("25 files, 3 sets found, 3 written"),
        "{stdout}"
    );
    assert!(stdout.contains("the file is empty"), "{stdout}");
    assert!(!stdout.contains("leftover"), "{stdout}");
    assert!(!stdout.contains("in no complete set"), "{stdout}");
    let first = out.path().join(format!("result_{device}_{first_set}.json"));
    assert!(first.exists(), "{stdout}");
}

/// Empties tap 3 of the first set in `dir` (by time) and copies it as a re-tap of sensor 3
/// one second after that set's tap 8, as an operator who saw a bad tap does. Returns the
/// device and the first set's time.
fn unreadable_tap_and_a_re_tap(dir: &Path) -> (String, i64) {
    // The files by time: `DEVICE_UPLOAD_UNIX_TAP.json`.
    let mut files: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let unix: i64 = name.rsplit('_').nth(1).unwrap().parse().unwrap();
            (unix, p)
        })
        .collect();
    files.sort();
    let first_set = &files[..8];
    let tap3 = &first_set
        .iter()
        .find(|(_, p)| p.to_string_lossy().ends_with("_3.json"))
        .unwrap()
        .1;
    let name = tap3.file_name().unwrap().to_string_lossy().into_owned();
    let device = name.split('_').next().unwrap().to_string();
    let re_tap = dir.join(format!(
        "{device}_00000000-0000-4000-8000-000000000003_{}_3.json",
        first_set[7].0 + 1
    ));
    std::fs::copy(tap3, &re_tap).unwrap();
    std::fs::write(tap3, "").unwrap();
    (device, first_set[0].0)
}

#[test]
fn help_explains_and_bad_settings_fail_clearly() {
    let help = bin().args(["process", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--diameter") && text.contains("--threads"),
        "{text}"
    );
    let bad = bin()
        .args(["process", "fixtures", "--out", "x", "--diameter", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DIAMETER"));
    assert!(text.contains("--trigger-lead"), "{text}");
    let bad = bin()
        .args(["process", "fixtures", "--out", "x", "--trigger-lead", "5"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("TRIGGER_LEAD") && err.contains("[0, 4]"),
        "{err}"
    );
    let run_help = bin().args(["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&run_help.stdout).contains("TRIGGER_LEAD"));
}

/// The onset method on `evaluate`'s grid (velocities 1000–2000 m/s, diameters 0.2–1.0 m, half
/// the sets decayed) for one wave model and SNR, 24 sets, fixed seed; the figures are printed.
fn onset_accuracy(
    model: terawang::simulate::WaveModel,
    snr_db: f64,
) -> terawang::evaluate::ErrorStats {
    onset_accuracy_of(model, snr_db, false)
}

/// [`onset_accuracy`], on the files of a device with a pre-trigger buffer where `pre_trigger`.
fn onset_accuracy_of(
    model: terawang::simulate::WaveModel,
    snr_db: f64,
    pre_trigger: bool,
) -> terawang::evaluate::ErrorStats {
    use terawang::engine::{EngineConfig, Method};
    use terawang::simulate::SimParams;
    let cfg = EngineConfig {
        method: Method::Onset,
        ..EngineConfig::default()
    };
    let base = SimParams {
        snr_db,
        model,
        pre_trigger,
        ..SimParams::default()
    };
    let s = terawang::evaluate::evaluate(&base, 24, 7, true, &cfg);
    println!(
        "{model}{} {snr_db} dB: usable {:.1} %, ToF median {:.2} µs, bias {:+.2} µs, \
         v median {:.2} %, p90 {:.2} %, worst {:.1} %",
        if pre_trigger { " pre-trigger" } else { "" },
        100.0 * s.usable_share,
        s.median_tof_err_us,
        s.median_tof_bias_us,
        100.0 * s.median_velocity_err,
        100.0 * s.p90_velocity_err,
        100.0 * s.worst_velocity_err
    );
    s
}

/// A device with a pre-trigger buffer: each impact comes 0.2–1.5 samples after its file's
/// first sample. The tapped channels show their own impacts, which set the tap instants'
/// common offset, so the accuracy is that of sets that clip from the first sample (the
/// issue's goals: median ≤ 3 %, p90 ≤ 8 %); with the prior alone every ToF came out about
/// 1.3 samples long (median velocity error 11 %).
#[test]
fn a_device_that_records_before_the_impact_measures_it() {
    use terawang::simulate::WaveModel::Shared;
    for snr_db in [40.0, 30.0] {
        let s = onset_accuracy_of(Shared, snr_db, true);
        assert!(s.usable_share > 0.95, "{s:?}");
        assert!(s.median_velocity_err <= 0.03, "{s:?}");
        assert!(s.p90_velocity_err <= 0.08, "{s:?}");
        assert!(s.median_tof_bias_us.abs() <= 8.0, "{s:?}");
    }
    // At 20 dB the reciprocal picks scatter by half a sample, and the measured impacts hold
    // the taps against each other: the goal, at least half the rays usable and a p90
    // within 15 % (today 61 % and 12.7 %, 13.3 % before a line through two rising samples
    // stopped on a narrow lobe took its bracket's middle, 13.5 % before a path's other
    // recording could show a one-sample lobe on the larger of its two samples; 54 % and
    // 15.8 % before the impacts counted in the relative tap instants and the least ray SNR
    // went from 8 to 7.5).
    let s20 = onset_accuracy_of(Shared, 20.0, true);
    assert!(s20.usable_share >= 0.5, "{s20:?}");
    assert!(s20.p90_velocity_err <= 0.15, "{s20:?}");
    // The report says where each tap's instant comes from.
    let sim = tempfile::tempdir().unwrap();
    let run = bin()
        .args(["simulate", "--pre-trigger", "--seed", "4", "--out"])
        .arg(sim.path())
        .output()
        .unwrap();
    assert!(run.status.success());
    std::fs::remove_file(sim.path().join("truth.json")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .arg("process")
        .arg(sim.path())
        .arg("--out")
        .arg(out.path())
        .arg("--no-tomogram")
        .output()
        .unwrap();
    assert!(run.status.success());
    let report = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".report.json"))
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert_eq!(
        report["tap_instant_source"],
        serde_json::json!(vec!["onset"; 8]),
        "{report}"
    );
}

/// The simulator's `shared` model. The velocity bounds at 40 and 30 dB are the goals
/// (median ≤ 3 %, p90 ≤ 8 %; today 1.7 / 5.7 % and 1.8 / 5.8 %). The ToF median goal (2 µs)
/// is not met (README: the trigger prior alone leaves 1.9 µs): its bounds are guards about
/// 1 µs above today's 4.1 and 4.2 µs, to catch regressions, not to prove the goal.
#[test]
fn accuracy_on_the_simulator_grid() {
    use terawang::simulate::WaveModel::Shared;
    let s40 = onset_accuracy(Shared, 40.0);
    assert!(s40.usable_share > 0.95);
    assert!(s40.median_velocity_err <= 0.03, "{s40:?}");
    assert!(s40.p90_velocity_err <= 0.08, "{s40:?}");
    assert!(s40.median_tof_err_us <= 5.3, "{s40:?}");
    let s30 = onset_accuracy(Shared, 30.0);
    assert!(s30.usable_share > 0.9);
    assert!(s30.median_velocity_err <= 0.03, "{s30:?}");
    assert!(s30.p90_velocity_err <= 0.08, "{s30:?}");
    assert!(s30.median_tof_err_us <= 5.6, "{s30:?}");
    // No ray kept is off by a third of its velocity (a guard: today 23.1 and 23.9 %; the
    // joint search that read the other recording's larger sample anywhere, at 4 sigmas,
    // moved paths onto noise, 41.8 and 42.0 %).
    assert!(s40.worst_velocity_err < 0.35, "{s40:?}");
    assert!(s30.worst_velocity_err < 0.35, "{s30:?}");
    // At 20 dB the goal: at least half the rays usable and a p90 within 15 % (today
    // 61.2 % and 12.7 %; 60.6 % and 13.5 % before a path's other recording could show a
    // one-sample lobe on the larger of its two samples, 13.8 % before the joint search looked
    // 6 samples back; 60.3 % and 15.3 % before the trigger prior held the taps of weak sets,
    // 50 % and 14.7 % before the least ray SNR went from 8 to 7.5).
    let s20 = onset_accuracy(Shared, 20.0);
    assert!(s20.usable_share >= 0.5, "{s20:?}");
    assert!(s20.p90_velocity_err <= 0.15, "{s20:?}");
    assert!(s20.median_velocity_err <= 0.15, "{s20:?}");
    assert!(s20.worst_velocity_err < 1.0, "{s20:?}");
    // At 10 dB the set's noise is a third of its peaks: what is kept, if anything, stays sane.
    let s10 = onset_accuracy(Shared, 10.0);
    assert!(
        s10.usable_share == 0.0 || s10.median_velocity_err <= 0.15,
        "{s10:?}"
    );
}

/// The simulator's `field` model, built from what the real recordings show (a weak first
/// arrival ahead of a bigger, slower phase, a pulse shape per path, the same both ways, noise
/// from the amplifier alone). The bounds are the goals: median ≤ 3 % and p90 ≤ 8 % at
/// 40 dB (today 2.0 % and 6.5 %, since a line through two rising samples stopped on a narrow
/// lobe takes its bracket's middle; 2.1 % and 6.4 % before, since the other recording of a
/// path may show a one-sample lobe on the larger of its two samples around the instant;
/// 2.1 % and 6.8 % before, since a path whose two picks rise to opposite sides is searched
/// for the lobe one direction missed; 2.2 % and 7.4 % before that; 2.3 % and 8.6 % before a
/// weak first lobe of the other sign was looked for on both recordings of a path at once),
/// ≤ 4 % and ≤ 10 % at 30 dB (today 2.6 % and 8.2 %, 8.1 % before the bracket's middle; 2.7 %
/// and 9.6 % before the larger sample, 9.75 % with the least ray SNR at 8; 2.9 % and 10.9 %,
/// and 3.1 % and 12.5 %, before those two). At 30 dB most rays show their first arrival on
/// one or two samples only, with a shape of their own (docs/accuracy.md), so that cell sits
/// near its goal on `evaluate`'s seeds too. Before the fits on two rising samples went to the
/// middle of the two brackets' overlap: 2.6 %, 9.8 % and 3.5 %, 12.7 %; before the two
/// recordings of a path bounded a pick from below as well: 3.0 %, 11.3 % and 3.7 %, 13.8 %.
/// The engine before the noise-relative threshold, the coherence gate and the robust
/// tap-instant fit gave 21 % and 47 % at 40 dB: it picked the later phase.
#[test]
fn accuracy_on_the_field_model() {
    use terawang::simulate::WaveModel::Field;
    let s40 = onset_accuracy(Field, 40.0);
    assert!(s40.usable_share > 0.9, "{s40:?}");
    assert!(s40.median_velocity_err <= 0.03, "{s40:?}");
    assert!(s40.p90_velocity_err <= 0.08, "{s40:?}");
    let s30 = onset_accuracy(Field, 30.0);
    assert!(s30.usable_share > 0.9, "{s30:?}");
    assert!(s30.median_velocity_err <= 0.04, "{s30:?}");
    assert!(s30.p90_velocity_err <= 0.10, "{s30:?}");
    // No ray kept is off by half its velocity (a guard: today 29.1 and 30.1 % with a clip,
    // 35.5 and 36.5 % with a pre-trigger). The joint search that read the other recording's
    // larger sample anywhere, at 4 sigmas, moved a path of these sets 4 samples early onto
    // noise: 66 % with a clip, 91 % with a pre-trigger, at 30 dB (docs/accuracy.md).
    let pre40 = onset_accuracy_of(Field, 40.0, true);
    let pre30 = onset_accuracy_of(Field, 30.0, true);
    for s in [&s40, &s30, &pre40, &pre30] {
        assert!(s.worst_velocity_err < 0.5, "{s:?}");
    }
}

/// A weak first arrival (5–8 % of the main phase, 20–100 noise sigmas) only 2–4 samples
/// before the loud main phase (`field-close`): it is picked, not the main phase (which was
/// 2–4 samples late). Its lobe shows on one sample, so a ray is known to a sample only, but
/// the two recordings of a path, sampled at different phases, bound each other's arrival
/// (docs/accuracy.md, the floor). The bounds are the goals (median ≤ 3 %, p90 ≤ 8 % at
/// 40 dB, ≤ 4 % and ≤ 10 % at 30 dB; today 1.78 %, 6.9 % and 1.82 %, 7.1 %, 1.80 % and 1.84 %
/// before a path's other recording could show a one-sample lobe on the larger of its two
/// samples; 1.82 %, 7.1 % and 1.90 %, 7.7 % before a path whose picks rise to opposite sides
/// was searched for the lobe one direction missed; 1.84 %, 7.6 % and 1.93 %, 8.1 % before the
/// weak lobe of the other sign was looked for on both recordings of a path; 2.1 %, 8.8 % and
/// 2.1 %, 9.0 % before the fits on two rising samples went to the middle of the two brackets'
/// overlap too, 2.9 %, 11.1 % and 3.0 %, 11.1 % before the lower bound).
#[test]
fn accuracy_on_a_weak_arrival_close_before_the_main_phase() {
    use terawang::simulate::WaveModel::FieldClose;
    for (snr_db, median, p90) in [(40.0, 0.03, 0.08), (30.0, 0.04, 0.10)] {
        let s = onset_accuracy(FieldClose, snr_db);
        assert!(s.usable_share > 0.9, "{s:?}");
        assert!(s.median_velocity_err <= median, "{s:?}");
        assert!(s.p90_velocity_err <= p90, "{s:?}");
        // Not the main phase: that would put every ToF 2–4 samples (55–110 µs) late.
        assert!(s.median_tof_bias_us.abs() <= 8.0, "{s:?}");
    }
}

/// Dispersive wood (`dispersive`): the first arrival's rise lengthens with the travel time.
/// At 40 dB the goals hold (median ≤ 3 %, p90 ≤ 8 %; today 2.8 %, 6.3 %); at 30 dB
/// the p90 goal holds (≤ 10 %; today 7.8 %), the median (3.9 % on these sets, 3.5 % on
/// `evaluate`'s) sits near the goal of 4 %: the picks come out about 10 µs late on the smooth
/// rises (docs/accuracy.md). Its bound is a guard.
#[test]
fn accuracy_on_dispersive_wood() {
    use terawang::simulate::WaveModel::Dispersive;
    let s40 = onset_accuracy(Dispersive, 40.0);
    assert!(s40.usable_share > 0.95, "{s40:?}");
    assert!(s40.median_velocity_err <= 0.03, "{s40:?}");
    assert!(s40.p90_velocity_err <= 0.08, "{s40:?}");
    let s30 = onset_accuracy(Dispersive, 30.0);
    assert!(s30.usable_share > 0.9, "{s30:?}");
    assert!(s30.median_velocity_err <= 0.045, "{s30:?}");
    assert!(s30.p90_velocity_err <= 0.10, "{s30:?}");
    // At 20 dB fewer rays are usable, and those kept stay sane.
    let s20 = onset_accuracy(Dispersive, 20.0);
    assert!(s20.usable_share > 0.5, "{s20:?}");
    assert!(s20.worst_velocity_err < 1.0, "{s20:?}");
}

/// Plain GCC-PHAT is kept as a method; on clean sets it must at least find peaks inside the
/// window and produce finite, non-negative matrices.
#[test]
fn gcc_phat_method_runs_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .arg("process")
        .arg(fixtures().join("clean"))
        .arg("--out")
        .arg(out.path())
        .args(["--method", "gcc-phat", "--no-tomogram"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("1 sets found, 1 written"), "{stdout}");
    let result = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.to_string_lossy().contains("report"))
        .unwrap();
    let m = read_matrix(&result);
    assert!(m.iter().flatten().all(|v| v.is_finite() && *v >= 0.0));
    assert!(
        !out.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "png"))
    );
}

/// A simulated set whose file named as tap k holds the recording of tap `recording(k)`, its
/// truth, the files read, and the engine's estimate.
fn mis_tapped_set(
    recording: impl Fn(usize) -> usize,
) -> (
    terawang::simulate::SetTruth,
    terawang::device::SetRecording,
    terawang::engine::SetEstimate,
) {
    use terawang::device::{SetRecording, parse_tap};
    use terawang::engine::{Engine, EngineConfig};
    use terawang::simulate::{SimParams, simulate_many};
    let (files, truth) = simulate_many(&SimParams::default(), 1, 5, false);
    let taps = std::array::from_fn(|k| {
        parse_tap(&files[k].file_name, files[recording(k)].json.as_bytes()).unwrap()
    });
    let taps = SetRecording::from_taps(taps).unwrap();
    let est = Engine::new(EngineConfig::default())
        .estimate(&taps.input)
        .unwrap();
    (truth.sets[0].clone(), taps, est)
}

/// Checks that sensor 5's rays (row 4) are flagged `tap_mismatch` and 0 in the plain matrix
/// and no other ray is, and that no ray into sensor 5 is flagged for disagreeing with that
/// row (it is no measurement of their path); returns `(row, |ToF error| µs)` of the other
/// usable rays.
fn row_5_flagged_alone(
    truth: &terawang::simulate::SetTruth,
    est: &terawang::engine::SetEstimate,
) -> Vec<(usize, f64)> {
    use terawang::device::N_SENSORS;
    use terawang::engine::RayFlag;
    let mut errs = Vec::new();
    for i in 0..N_SENSORS {
        for j in (0..N_SENSORS).filter(|&j| j != i) {
            if i == 4 {
                assert_eq!(est.flags[i][j], RayFlag::TapMismatch, "ray 5→{}", j + 1);
                assert_eq!(est.plain_matrix()[i][j], 0.0);
                continue;
            }
            assert_ne!(
                est.flags[i][j],
                RayFlag::TapMismatch,
                "ray {}→{}",
                i + 1,
                j + 1
            );
            if j == 4 {
                assert_ne!(
                    est.flags[i][j],
                    RayFlag::ReciprocityMismatch,
                    "ray {}→5",
                    i + 1
                );
            }
            if est.flags[i][j].usable() {
                errs.push((i, (est.tof_us[i][j] - truth.tof_us[i][j]).abs()));
            }
        }
    }
    errs
}

#[test]
fn a_file_whose_impact_is_on_another_sensor_flags_its_row_only() {
    // The operator tapped sensor 4 twice: the file named as the tap on sensor 5 holds the
    // recording of a tap on sensor 4, which has its own file.
    let (truth, _, est) = mis_tapped_set(|k| if k == 4 { 3 } else { k });
    assert_eq!(est.tap_source, std::array::from_fn(|k| k));
    assert_eq!(est.impact_elsewhere[4], Some(3));
    let mut errs: Vec<f64> = row_5_flagged_alone(&truth, &est)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    // The other seven taps keep their accuracy: the bad row stays out of the tap-instant fit.
    // Their usual level on this simulator is a median of 4–6 µs (README).
    errs.sort_by(f64::total_cmp);
    assert!(errs.len() >= 40, "{} usable rays", errs.len());
    assert!(
        median(&errs) < 8.0,
        "median |ToF error| {:.1} µs",
        median(&errs)
    );
}

/// The real set's pattern: the file named as tap 4 holds a tap on sensor 3 (which has its
/// own file), and the file named as tap 5 a tap on sensor 4. Sensor 4's row comes from the
/// file named 5 and keeps its accuracy against sensor 4's true times; sensor 5 has no tap and
/// its row is flagged; the report names both files and what was done.
#[test]
fn a_mis_tapped_file_serves_the_sensor_it_hit_when_that_sensor_has_none() {
    use terawang::engine::EngineConfig;
    use terawang::result::{ResultName, SetOutputs};
    let (truth, taps, est) = mis_tapped_set(|k| match k {
        3 => 2,
        4 => 3,
        k => k,
    });
    assert_eq!(est.impact_elsewhere[3], Some(2));
    assert_eq!(est.impact_elsewhere[4], Some(3));
    assert_eq!(est.tap_source, [0, 1, 2, 4, 4, 5, 6, 7]);
    let errs = row_5_flagged_alone(&truth, &est);
    let row4: Vec<f64> = errs.iter().filter(|e| e.0 == 3).map(|e| e.1).collect();
    let mut all: Vec<f64> = errs.iter().map(|e| e.1).collect();
    // Sensor 4's row is read from the right source: every ray within one sample (27 µs) of
    // sensor 4's true times (this row is a hard one on this seed: 4–23 µs even from a
    // correctly named file). Over the seven taps, the usual level of this simulator holds
    // (a median of 4–6 µs per ray, README).
    assert!(row4.len() >= 5, "{} usable rays from sensor 4", row4.len());
    assert!(row4.iter().all(|&e| e < 27.0), "sensor 4's row: {row4:?}");
    all.sort_by(f64::total_cmp);
    assert!(
        median(&all) < 8.0,
        "median |ToF error| {:.1} µs",
        median(&all)
    );
    let out = SetOutputs::build(
        &ResultName::new(Some("x"), 1),
        &est,
        &EngineConfig::default(),
        &taps.files,
        false,
        None,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.report).unwrap();
    assert_eq!(
        report["row_sources"][3].as_str(),
        Some(taps.files[4].file_name.as_str())
    );
    assert_eq!(
        report["row_sources"][2].as_str(),
        Some(taps.files[2].file_name.as_str())
    );
    let warnings = report["warnings"].to_string();
    for (file, text) in [
        (
            &taps.files[3].file_name,
            "is on sensor 3, not 4: sensor 3 has a tap of its own",
        ),
        (
            &taps.files[4].file_name,
            "is on sensor 4, not 5: its recording is used as the tap on sensor 4",
        ),
    ] {
        assert!(
            warnings.contains(&format!("{file}: the hammer's impact {text}")),
            "{warnings}"
        );
    }
}

/// Median signed ToF error (µs) and median |velocity error| over the usable rays of `sets`
/// varied sets at 40 dB whose files start `sim_lead` samples after the tap, estimated with
/// the engine's trigger lead `trigger_lead`.
fn signed_errors_with_lead(sim_lead: Option<f64>, trigger_lead: f64, sets: usize) -> (f64, f64) {
    use terawang::engine::EngineConfig;
    use terawang::simulate::SimParams;
    let base = SimParams {
        tap_lead: sim_lead,
        ..SimParams::default()
    };
    let cfg = EngineConfig {
        trigger_lead,
        ..EngineConfig::default()
    };
    let s = terawang::evaluate::evaluate(&base, sets, 11, true, &cfg);
    assert!(s.usable_share > 50.0 / 56.0, "{s:?}");
    (s.median_tof_bias_us, s.median_velocity_err)
}

/// A device whose first sample is the impact itself (lead 0, not the default's half a sample
/// on average): the tapped channel clips from its first sample, so nothing in the files tells
/// the two apart. With the default every ToF comes out about half a sample (13.5 µs) long;
/// `trigger_lead = 0` brings the ToFs back to where the default puts them on the device it
/// assumes, and the velocities within the accuracy goal.
#[test]
fn the_trigger_lead_sets_the_common_offset() {
    let (tof_uniform, v_uniform) = signed_errors_with_lead(None, 0.5, 12);
    println!(
        "uniform lead, engine 0.5: ToF {tof_uniform:+.2} µs, v {:.2} %",
        100.0 * v_uniform
    );
    let (tof_default, v_default) = signed_errors_with_lead(Some(0.0), 0.5, 12);
    let (tof_matched, v_matched) = signed_errors_with_lead(Some(0.0), 0.0, 12);
    println!(
        "lead 0, engine 0.5: ToF {tof_default:+.2} µs, v {:.2} %; engine 0: ToF \
         {tof_matched:+.2} µs, v {:.2} %",
        100.0 * v_default,
        100.0 * v_matched
    );
    // The engine's own bias (arrivals picked a little early) is about the same on both
    // devices; half a sample of lead is 13.5 µs on top of it. Today the uniform-lead device
    // reads −4.4 µs and the lead-0 device, matched, −2.2 µs (−3.4 µs before the two recordings
    // of a path bounded each other's picks from below as well): within 3 µs, a ninth of a
    // sample, of each other.
    assert!(
        (8.0..=18.0).contains(&(tof_default - tof_uniform)),
        "{tof_default}"
    );
    assert!((tof_matched - tof_uniform).abs() <= 3.0, "{tof_matched}");
    assert!(v_matched <= 0.03, "{v_matched}");
    assert!(v_default > v_matched, "{v_default} vs {v_matched}");
}

/// `sets` simulated sets on a uniform specimen with a lead of one sample, without the truth
/// file (`calibrate` would reject it as not a tap file).
fn specimen_files(sets: u32, seed: u32, velocity: &str, diameter: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let sim = bin()
        .args([
            "simulate",
            "--lead",
            "1",
            "--velocity",
            velocity,
            "--diameter",
            diameter,
        ])
        .args([
            "--sets",
            &sets.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(sim.status.success());
    std::fs::remove_file(dir.path().join("truth.json")).unwrap();
    dir
}

/// The value of `calibrate`'s `TRIGGER_LEAD=` line.
fn printed_lead(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("TRIGGER_LEAD="))
        .expect("a TRIGGER_LEAD= line")
        .trim()
        .parse()
        .unwrap()
}

/// `calibrate` end to end: a specimen's sets, written by the simulator with a lead of one
/// sample, give a `TRIGGER_LEAD=` line near it (one geometry: within the third of a sample
/// its chord classes' sampling phases allow, README); no set at all is an error.
#[test]
fn calibrate_prints_the_trigger_lead() {
    let dir = specimen_files(2, 3, "1400", "0.5");
    let run = bin()
        .args(["calibrate", "--velocity", "1400", "--diameter", "0.5"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!((printed_lead(&stdout) - 1.0).abs() < 0.35, "{stdout}");
    assert_eq!(stdout.matches(" rays)").count(), 2, "{stdout}");
    // A tap that cannot be read is rejected, and its set takes the re-tap of that sensor.
    let retapped = specimen_files(2, 3, "1400", "0.5");
    let (device, first_set) = unreadable_tap_and_a_re_tap(retapped.path());
    let run = bin()
        .args(["calibrate", "--velocity", "1400", "--diameter", "0.5"])
        .arg(retapped.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(!run.status.success(), "a rejected file: {stdout}");
    assert!(stderr.contains("the file is empty"), "{stderr}");
    assert_eq!(stdout.matches(" rays)").count(), 2, "{stdout}");
    assert!(
        stdout.contains(&format!("result_{device}_{first_set}: lead")),
        "{stdout}"
    );
    // Two specimens, each with its own diameter and velocity; values that do not pair with
    // the inputs are refused.
    let other = specimen_files(1, 4, "1100", "0.8");
    let both = bin()
        .arg("calibrate")
        .args([dir.path(), other.path()])
        .args(["--velocity", "1400,1100", "--diameter", "0.5,0.8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&both.stdout);
    assert!(both.status.success(), "{stdout}");
    assert_eq!(stdout.matches(" rays)").count(), 3, "{stdout}");
    assert!((printed_lead(&stdout) - 1.0).abs() < 0.35, "{stdout}");
    let unpaired = bin()
        .arg("calibrate")
        .args([dir.path(), other.path()])
        .args(["--velocity", "1400,1100,1200"])
        .output()
        .unwrap();
    assert!(!unpaired.status.success());
    assert!(String::from_utf8_lossy(&unpaired.stderr).contains("one per input"));
    let empty = tempfile::tempdir().unwrap();
    let none = bin()
        .args(["calibrate", "--velocity", "1400"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no complete set"));
}

#[test]
fn json_log_lines_and_no_display_noise_from_the_gpu_probe() {
    let out = tempfile::tempdir().unwrap();
    let run = bin()
        .args(["process", "--backend", "auto", "--out"])
        .arg(out.path())
        .arg(fixtures().join("clean"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "the backend choice is logged");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["msg"].is_string() && v["ts"].is_string(),
            "{line}"
        );
    }
}
