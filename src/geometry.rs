//! Sensor geometry: eight sensors evenly spaced on a circle of diameter D.
//!
//! Sensor k (1-based) sits at angle (k−1)·45°, counter-clockwise from +x. The chord between
//! sensors i and j is D·sin(π·m/8) with m = min(|i−j|, 8−|i−j|). Indices here are 0-based.

/// Number of sensors (and channels) around the trunk.
pub const N_SENSORS: usize = 8;

/// Straight-line distance between sensors `i` and `j` (0-based) on a trunk of `diameter_m`.
pub fn chord_m(i: usize, j: usize, diameter_m: f64) -> f64 {
    let d = i.abs_diff(j);
    let m = d.min(N_SENSORS - d);
    diameter_m * (std::f64::consts::PI * m as f64 / N_SENSORS as f64).sin()
}

/// Position of sensor `k` (0-based) in metres, centre at the origin.
pub fn sensor_xy(k: usize, diameter_m: f64) -> (f64, f64) {
    let a = k as f64 * std::f64::consts::TAU / N_SENSORS as f64;
    (0.5 * diameter_m * a.cos(), 0.5 * diameter_m * a.sin())
}

/// The longest chord, the diameter itself.
pub fn longest_chord_m(diameter_m: f64) -> f64 {
    chord_m(0, N_SENSORS / 2, diameter_m)
}

/// A trunk diameter: metres in (0, 10]; the error names the option.
pub fn check_diameter(option: &str, diameter: f64) -> anyhow::Result<f64> {
    if diameter.is_finite() && diameter > 0.0 && diameter <= 10.0 {
        Ok(diameter)
    } else {
        anyhow::bail!("{option} must be a number of metres in (0, 10], got {diameter}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chords_match_the_design_table() {
        let d = 2.0;
        let expect = [0.0, 0.383, 0.707, 0.924, 1.0, 0.924, 0.707, 0.383];
        for (j, e) in expect.iter().enumerate() {
            assert!((chord_m(0, j, d) / d - e).abs() < 1e-3, "chord 1-{}", j + 1);
            assert!((chord_m(j, 0, d) - chord_m(0, j, d)).abs() < 1e-12);
        }
        let (x1, y1) = sensor_xy(1, d);
        let (x0, y0) = sensor_xy(0, d);
        assert!(((x1 - x0).hypot(y1 - y0) - chord_m(0, 1, d)).abs() < 1e-12);
        assert_eq!(longest_chord_m(d), d);
    }
}
