use terawang::device::{N_SENSORS, TapRecording, parse_tap};
use terawang::engine::{Engine, EngineConfig};
use terawang::simulate::{SimParams, simulate_many};
fn main() {
    let snr: f64 = std::env::args().nth(1).map_or(40.0, |s| s.parse().unwrap());
    let base = SimParams {
        snr_db: snr,
        ..SimParams::default()
    };
    let (files, truth) = simulate_many(&base, 10, 1, true);
    let (mut lead_err, mut pick_err) = (Vec::new(), Vec::new());
    for (s, t) in truth.sets.iter().enumerate() {
        let taps: [TapRecording; N_SENSORS] = std::array::from_fn(|k| {
            let f = &files[s * N_SENSORS + k];
            parse_tap(&f.file_name, f.json.as_bytes()).unwrap()
        });
        let cfg = EngineConfig {
            diameter_m: t.params.diameter_m,
            ..EngineConfig::default()
        };
        let est = Engine::new(cfg).estimate_set(&taps);
        for i in 0..8 {
            lead_err.push(est.tap_lead_us[i] - t.tap_lead_us[i]);
            for j in 0..8 {
                if i != j && est.tof_us[i][j].is_finite() {
                    // pick error = (tof_est - lead_est) - (tof_true - lead_true)
                    let e = (est.tof_us[i][j] - est.tap_lead_us[i])
                        - (t.tof_us[i][j] - t.tap_lead_us[i]);
                    pick_err.push(e);
                    if s < 2 && i == 0 {
                        println!(
                            "set {s} 1->{} m={} d={:.2} true_alpha {:.1} err {:.1} tof {:.1} snr",
                            j + 1,
                            (i as i64 - j as i64)
                                .abs()
                                .min(8 - (i as i64 - j as i64).abs()),
                            t.params.diameter_m,
                            t.tof_us[i][j] - t.tap_lead_us[i],
                            e,
                            t.tof_us[i][j]
                        );
                    }
                }
            }
        }
    }
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p) as usize]
    };
    println!(
        "lead err p10 {:.1} p50 {:.1} p90 {:.1}",
        q(&mut lead_err, 0.1),
        q(&mut lead_err, 0.5),
        q(&mut lead_err, 0.9)
    );
    println!(
        "pick err p10 {:.1} p50 {:.1} p90 {:.1}",
        q(&mut pick_err, 0.1),
        q(&mut pick_err, 0.5),
        q(&mut pick_err, 0.9)
    );
}
