use terawang::device::parse_tap;
use terawang::simulate::{SimParams, simulate_many};
fn main() {
    let base = SimParams {
        snr_db: 60.0,
        ..SimParams::default()
    };
    let (files, truth) = simulate_many(&base, 1, 1, true);
    let t = &truth.sets[0];
    let tap = parse_tap(&files[0].file_name, files[0].json.as_bytes()).unwrap();
    let ts0 = tap.timestamps_ns[0];
    for j in [2usize, 4] {
        let alpha = t.tof_us[0][j] - t.tap_lead_us[0];
        println!("1->{} true alpha {:.1}", j + 1, alpha);
        for k in 0..20 {
            let tk = (tap.timestamps_ns[k] - ts0) as f64 / 1000.0;
            println!("  k {k} t {:.1} x {}", tk, tap.channels[j][k]);
        }
    }
}
