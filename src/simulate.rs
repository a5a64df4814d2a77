//! The simulator: realistic device files with known ground truth.
//!
//! It is the project's ground truth for tests, fixtures and benches. Each set is eight tap files
//! in the device's name pattern and JSON layout, plus its true ToF and velocity matrices.
//!
//! The physics, kept simple but honest about what makes the job hard:
//! - straight rays; the travel time integrates slowness along the chord, so a slow decayed disc
//!   inside the trunk lengthens the rays that cross it;
//! - the tap instant falls a random fraction of a sample before the first sample (the device
//!   triggers on the tapped channel), and the tapped channel is clipped from its first samples;
//! - each receiver sees a causal wavelet that starts at the first arrival with a linear rise,
//!   gets weaker, longer and lower in frequency with distance, plus two weaker late echoes;
//! - per-sample timestamps in ns with a per-file interval of 26.9–27.8 µs and ±0.5 µs jitter;
//!   the signal is evaluated at the jittered instants, so timestamps are the truth;
//! - Gaussian noise at the given SNR (peak amplitude of the receiver's wavelet over the noise's
//!   standard deviation, in dB), 12-bit rounding, clipping near 1050 and 4080 counts.
//!
//! [`WaveModel`] names the other wave models (a weak first arrival ahead of a main phase,
//! dispersive wood), and [`SimParams::pre_trigger`] a device whose record starts before the
//! impact.

use std::f64::consts::{PI, TAU};

use serde::{Deserialize, Serialize};

use crate::device::{N_SENSORS, SetRecording, parse_tap, write_tap_json};
use crate::geometry::{chord_m, sensor_xy};
use crate::rng::Rng;

/// A slow decayed disc inside the trunk, in units of the trunk radius.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decay {
    /// Centre, as a fraction of the radius (−1..1).
    pub x: f64,
    pub y: f64,
    /// Radius, as a fraction of the trunk radius.
    pub radius: f64,
    /// Velocity inside the disc as a fraction of the sound-wood velocity.
    pub velocity_factor: f64,
}

impl std::str::FromStr for Decay {
    type Err = String;
    /// `X,Y,RADIUS,FACTOR`, e.g. `0.1,-0.2,0.45,0.4`, or `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("decay must be X,Y,RADIUS,FACTOR numbers, got {s:?}"))?;
        let [x, y, radius, velocity_factor] = parts[..] else {
            return Err(format!(
                "decay needs four numbers X,Y,RADIUS,FACTOR, got {s:?}"
            ));
        };
        let d = Decay {
            x,
            y,
            radius,
            velocity_factor,
        };
        if !(x.hypot(y) + radius <= 1.0 && radius > 0.0) {
            return Err("the decay disc must lie inside the trunk (|centre| + radius ≤ 1)".into());
        }
        if !(velocity_factor > 0.0 && velocity_factor <= 1.0) {
            return Err("the decay velocity factor must be in (0, 1]".into());
        }
        Ok(d)
    }
}

/// How the receivers' recordings are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveModel {
    /// One pulse shape per set, the largest lobe first; each ray's noise is its own peak over
    /// the SNR (vibration that grows with the signal).
    #[default]
    Shared,
    /// What the real recordings show: a weak first arrival (10–30 % of the main phase) ahead
    /// of a bigger, slower phase (1.8–2.4 times the time of flight), a pulse shape of each
    /// ray's own, and the amplifier's noise alone (the same sigma on every ray: the SNR is
    /// that of a 90° chord's first arrival). A path's waveform is the same both ways.
    Field,
    /// `field` with the weak first arrival close before the main phase: a short pulse of 5–8 %
    /// of its peak, 2–4 samples ahead (the SNR is that of a 90° chord's first arrival, as in
    /// `field`).
    FieldClose,
    /// Dispersive wood: the high frequencies fade with travel time, so the first arrival's
    /// rise is smooth and grows longer with distance (the `shared` pulse through a causal
    /// attenuation kernel whose time constant is the travel time over the set's Q); the
    /// amplifier's noise alone, the SNR that of a 90° chord's peak.
    Dispersive,
}

impl WaveModel {
    /// Every model, in the order `evaluate` runs them.
    pub const ALL: [WaveModel; 4] = [
        WaveModel::Shared,
        WaveModel::Field,
        WaveModel::FieldClose,
        WaveModel::Dispersive,
    ];

    /// The model's name on the command line and in `truth.json`.
    pub fn name(self) -> &'static str {
        match self {
            WaveModel::Shared => "shared",
            WaveModel::Field => "field",
            WaveModel::FieldClose => "field-close",
            WaveModel::Dispersive => "dispersive",
        }
    }

    /// A weak first arrival ahead of a main phase, each path its own pulse shape.
    fn is_field(self) -> bool {
        matches!(self, WaveModel::Field | WaveModel::FieldClose)
    }
}

impl std::fmt::Display for WaveModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WaveModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WaveModel::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("wave model must be shared, field, field-close or dispersive, got {s:?}")
            })
    }
}

/// What one simulated set looks like.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimParams {
    pub diameter_m: f64,
    /// Sound-wood velocity across the grain, m/s.
    pub velocity_m_s: f64,
    pub snr_db: f64,
    pub decay: Option<Decay>,
    pub n_samples: usize,
    #[serde(default)]
    pub model: WaveModel,
    /// Time from the tap to the first sample of each file, in sampling intervals (negative:
    /// the impact comes after the first sample); `None` draws it uniformly within the sample
    /// before the first (a trigger on the impact that samples from its next clock tick), or
    /// with [`SimParams::pre_trigger`] within 0.2–1.5 samples after it.
    #[serde(default)]
    pub tap_lead: Option<f64>,
    /// A device with a pre-trigger buffer: each impact comes 0.2–1.5 samples after its
    /// file's first sample, so the tapped channel rests for a sample or two, then rises.
    #[serde(default)]
    pub pre_trigger: bool,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            diameter_m: 0.3,
            velocity_m_s: 1500.0,
            snr_db: 40.0,
            decay: None,
            n_samples: 500,
            model: WaveModel::Shared,
            tap_lead: None,
            pre_trigger: false,
        }
    }
}

/// One simulated tap file.
#[derive(Clone, Debug)]
pub struct SimFile {
    pub file_name: String,
    pub json: String,
}

/// Reads the eight files of one simulated set (tap 1 first) with the device reader, as the
/// service would read them from disk.
///
/// # Panics
/// When `files` are not eight simulated files in tap order: the simulator writes only those.
pub fn read_set(files: &[SimFile]) -> SetRecording {
    assert_eq!(files.len(), N_SENSORS, "a set is eight files");
    let taps = std::array::from_fn(|k| {
        parse_tap(&files[k].file_name, files[k].json.as_bytes()).expect("simulated files parse")
    });
    SetRecording::from_taps(taps).expect("simulated sets are in tap order")
}

/// Ground truth of one set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetTruth {
    pub device: String,
    pub unix_s: i64,
    /// The result file the set should produce.
    pub result_file: String,
    pub params: SimParams,
    /// True times of flight, µs; row = tapped sensor, diagonal 0.
    pub tof_us: [[f64; N_SENSORS]; N_SENSORS],
    /// Chord / true ToF, m/s; diagonal 0.
    pub velocity_m_s: [[f64; N_SENSORS]; N_SENSORS],
    /// How long before its first sample each tap happened, µs.
    pub tap_lead_us: [f64; N_SENSORS],
    /// File names, tap 1..=8.
    pub files: Vec<String>,
}

/// The truth file written beside simulated sets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Truth {
    pub sets: Vec<SetTruth>,
}

/// True travel time along the straight ray from sensor `i` to `j`, µs.
pub fn true_tof_us(i: usize, j: usize, p: &SimParams) -> f64 {
    let length = chord_m(i, j, p.diameter_m);
    let inside = p.decay.map_or(0.0, |d| {
        let r = 0.5 * p.diameter_m;
        let a = sensor_xy(i, p.diameter_m);
        let b = sensor_xy(j, p.diameter_m);
        chord_inside_disc(a, b, (d.x * r, d.y * r), d.radius * r)
    });
    let slow = p.decay.map_or(1.0, |d| d.velocity_factor);
    ((length - inside) / p.velocity_m_s + inside / (p.velocity_m_s * slow)) * 1e6
}

/// Length of the segment a–b inside the disc (centre c, radius r).
fn chord_inside_disc(a: (f64, f64), b: (f64, f64), c: (f64, f64), r: f64) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (fx, fy) = (a.0 - c.0, a.1 - c.1);
    let qa = dx * dx + dy * dy;
    let qb = 2.0 * (fx * dx + fy * dy);
    let qc = fx * fx + fy * fy - r * r;
    let disc = qb * qb - 4.0 * qa * qc;
    if qa == 0.0 || disc <= 0.0 {
        return 0.0;
    }
    let s = disc.sqrt();
    let t1 = ((-qb - s) / (2.0 * qa)).clamp(0.0, 1.0);
    let t2 = ((-qb + s) / (2.0 * qa)).clamp(0.0, 1.0);
    (t2 - t1) * qa.sqrt()
}

/// The receiver wavelet at time `t` µs after its first arrival, for a ray of `length_m`.
/// Starts at exactly 0 with a linear rise; longer and lower with distance.
fn wavelet(t_us: f64, length_m: f64, shape: &WaveShape) -> f64 {
    if t_us <= 0.0 {
        return 0.0;
    }
    let stretch = 1.0 + length_m / shape.stretch_m;
    let tau = shape.tau_us * stretch;
    let f_mhz = shape.freq_khz / 1000.0 / stretch;
    (t_us / tau) * (1.0 - t_us / tau).exp() * (TAU * f_mhz * t_us + shape.phase).cos()
}

/// One path of the field models: its own pulse shape, a weak first arrival and the main
/// phase. Drawn once per sensor pair, so i→j and j→i carry the same waveform (the same path).
#[derive(Clone, Copy, Debug)]
struct FieldPath {
    shape: WaveShape,
    /// The first arrival's pulse: the path's own in `field`; in `field-close` a short one of
    /// its own (it must show before the main phase comes, 2–4 samples later).
    first_shape: WaveShape,
    /// Amplitude (signed) of the first arrival relative to the main phase.
    first_gain: f64,
    /// The main phase's delay after the first arrival, µs.
    main_delay_us: f64,
}

impl FieldPath {
    /// Draws the path i→j of a set whose pulse is `shape` (`tof_us` its travel time).
    fn draw(model: WaveModel, shape: &WaveShape, tof_us: f64, rng: &mut Rng) -> FieldPath {
        let shape = WaveShape {
            tau_us: shape.tau_us * rng.uniform(0.7, 1.4),
            freq_khz: shape.freq_khz * rng.uniform(0.8, 1.25),
            stretch_m: shape.stretch_m,
            phase: rng.uniform(-0.8, 0.8),
        };
        let (first_shape, first_gain, main_delay_us) = match model {
            WaveModel::FieldClose => (
                // One lobe of 2–4 samples.
                WaveShape {
                    tau_us: rng.uniform(15.0, 30.0),
                    freq_khz: rng.uniform(2.0, 3.5),
                    stretch_m: f64::INFINITY,
                    phase: 0.0,
                },
                rng.uniform(0.05, 0.08),
                // 2–4 samples of the device's 26.9–27.8 µs.
                27.35 * rng.uniform(2.0, 4.0),
            ),
            _ => (shape, rng.uniform(0.1, 0.3), tof_us * rng.uniform(0.8, 1.4)),
        };
        FieldPath {
            shape,
            first_shape,
            first_gain: first_gain * rng.sign(),
            main_delay_us,
        }
    }

    /// The path's waveform `t_us` after its first arrival, for a ray of `length_m`.
    fn wave(&self, t_us: f64, length_m: f64) -> f64 {
        self.first_gain * wavelet(t_us, length_m, &self.first_shape)
            + wavelet(t_us - self.main_delay_us, length_m, &self.shape)
    }
}

/// The field models' noise sigma, counts: the same on every ray, set by the SNR of a 90°
/// chord's first arrival (a fifth of its main phase's amplitude in `field`, 6.5 % in
/// `field-close`).
fn field_sigma(p: &SimParams) -> f64 {
    let first = match p.model {
        WaveModel::FieldClose => 0.065,
        _ => 0.2,
    };
    first * ray_amplitude(chord_m(0, 2, p.diameter_m)) / 10f64.powf(p.snr_db / 20.0)
}

/// The `dispersive` model's noise sigma, counts: the same on every ray, set by the SNR of a
/// 90° chord's peak through sound wood (after the attenuation kernel, which lowers it).
fn dispersive_sigma(p: &SimParams, shape: &WaveShape, q: f64) -> f64 {
    let length = chord_m(0, 2, p.diameter_m);
    let theta_us = length / p.velocity_m_s * 1e6 / q;
    let peak = (1..2000)
        .map(|k| dispersed_wavelet(0.5 * k as f64, length, shape, theta_us).abs())
        .fold(0.0, f64::max);
    ray_amplitude(length) * peak / 10f64.powf(p.snr_db / 20.0)
}

/// [`wavelet`] through the causal attenuation kernel `e^(−s/θ)/θ` (unit area: the low
/// frequencies pass, the high ones fade), `theta_us` = θ. Its start is quadratic where the
/// wavelet's is linear, and its rise lengthens with θ. Closed form: with
/// `w(t) = Re[(t/τ)·e^(1+iφ)·e^(a·t)]`, `a = −1/τ + iω`, `b = a + 1/θ`, the convolution is
/// `Re[e^(1+iφ)/(τθ) · e^(a·t) · (t/b − (1 − e^(−b·t))/b²)]`.
fn dispersed_wavelet(t_us: f64, length_m: f64, shape: &WaveShape, theta_us: f64) -> f64 {
    use rustfft::num_complex::Complex64;
    if t_us <= 0.0 {
        return 0.0;
    }
    if theta_us <= 1e-6 {
        return wavelet(t_us, length_m, shape);
    }
    let stretch = 1.0 + length_m / shape.stretch_m;
    let tau = shape.tau_us * stretch;
    let omega = TAU * shape.freq_khz / 1000.0 / stretch;
    let a = Complex64::new(-1.0 / tau, omega);
    let b = a + 1.0 / theta_us;
    let front = Complex64::new(1.0, shape.phase).exp() / (tau * theta_us);
    let body = t_us / b - (1.0 - (-b * t_us).exp()) / (b * b);
    (front * (a * t_us).exp() * body).re
}

/// A receiver's typical peak amplitude, counts, for a ray of `length_m` (before the per-ray
/// spread of ±30 %): spreading and attenuation.
fn ray_amplitude(length_m: f64) -> f64 {
    1900.0 * (0.115 / length_m.max(0.01)).powf(0.7) * (-length_m / 1.5).exp()
}

/// Per-set variation of the pulse the hammer makes.
#[derive(Clone, Copy, Debug)]
struct WaveShape {
    tau_us: f64,
    freq_khz: f64,
    stretch_m: f64,
    phase: f64,
}

/// Where a device with a pre-trigger buffer puts the impact: this many sampling intervals
/// after its file's first sample (uniform between the two).
const PRE_TRIGGER: (f64, f64) = (0.2, 1.5);
/// The tapped channel's response at a sample after the impact is at least its response this
/// many µs after it: a device triggers on the impact once it has risen past a trigger level,
/// so a file whose first sample is the impact (a lead of 0) shows it there already.
const TRIGGER_RISE_US: f64 = 2.0;
/// The `dispersive` model's quality factor Q, drawn per set between the two.
const DISPERSIVE_Q: (f64, f64) = (3.0, 8.0);

/// Simulates one set: eight files and their truth.
pub fn simulate_set(
    p: &SimParams,
    device: &str,
    unix_s: i64,
    rng: &mut Rng,
) -> (Vec<SimFile>, SetTruth) {
    let mut tof_us = [[0.0; N_SENSORS]; N_SENSORS];
    let mut velocity = [[0.0; N_SENSORS]; N_SENSORS];
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i != j {
                tof_us[i][j] = true_tof_us(i, j, p);
                velocity[i][j] = chord_m(i, j, p.diameter_m) / tof_us[i][j] * 1e6;
            }
        }
    }
    let shape = WaveShape {
        tau_us: rng.uniform(25.0, 45.0),
        freq_khz: rng.uniform(6.0, 9.0),
        stretch_m: rng.uniform(0.25, 0.45),
        phase: rng.uniform(-0.3, 0.3),
    };
    let rest: [f64; N_SENSORS] = std::array::from_fn(|_| rng.uniform(2050.0, 2150.0));
    // The other models' draws come after the shared model's, which stay as they were.
    let mut paths = [[None; N_SENSORS]; N_SENSORS];
    if p.model.is_field() {
        for i in 0..N_SENSORS {
            for j in (i + 1)..N_SENSORS {
                let path = FieldPath::draw(p.model, &shape, tof_us[i][j], rng);
                paths[i][j] = Some(path);
                paths[j][i] = Some(path);
            }
        }
    }
    // Dispersive wood's quality factor: the attenuation kernel's time constant is the travel
    // time over it.
    let q = if p.model == WaveModel::Dispersive {
        rng.uniform(DISPERSIVE_Q.0, DISPERSIVE_Q.1)
    } else {
        f64::INFINITY
    };
    let dispersive_noise = if p.model == WaveModel::Dispersive {
        dispersive_sigma(p, &shape, q)
    } else {
        0.0
    };
    let mut files = Vec::with_capacity(N_SENSORS);
    let mut tap_lead_us = [0.0; N_SENSORS];
    let mut t_file = unix_s;
    for tap in 0..N_SENSORS {
        let dt_us = rng.uniform(26.9, 27.8);
        let mut t_ns = rng.uniform(1e8, 9e8).round();
        let timestamps_ns: Vec<i64> = (0..p.n_samples)
            .map(|k| {
                if k > 0 {
                    t_ns += (dt_us + rng.uniform(-0.5, 0.5)) * 1000.0;
                }
                t_ns.round() as i64
            })
            .collect();
        let drawn = rng.uniform(0.0, 1.0);
        let drawn = if p.pre_trigger {
            -(PRE_TRIGGER.0 + (PRE_TRIGGER.1 - PRE_TRIGGER.0) * drawn)
        } else {
            drawn
        };
        let lead_us = p.tap_lead.unwrap_or(drawn) * dt_us;
        tap_lead_us[tap] = lead_us;
        let t_tap_us = timestamps_ns[0] as f64 / 1000.0 - lead_us;
        let channels: [Vec<i32>; N_SENSORS] = std::array::from_fn(|ch| {
            let clip_lo = rng.uniform(1050.0, 1110.0);
            let clip_hi = rng.uniform(4040.0, 4085.0);
            if ch == tap {
                return tapped_channel(&timestamps_ns, t_tap_us, rest[ch], clip_lo, clip_hi, rng);
            }
            let length = chord_m(tap, ch, p.diameter_m);
            let amplitude = ray_amplitude(length) * rng.uniform(0.7, 1.3);
            let sigma = match p.model {
                WaveModel::Shared => amplitude / 10f64.powf(p.snr_db / 20.0),
                WaveModel::Field | WaveModel::FieldClose => field_sigma(p),
                WaveModel::Dispersive => dispersive_noise,
            };
            let arrival = t_tap_us + tof_us[tap][ch];
            let echoes = [
                (
                    rng.uniform(150.0, 400.0),
                    rng.uniform(0.2, 0.45) * rng.sign(),
                ),
                (rng.uniform(400.0, 1500.0), rng.uniform(0.1, 0.3)),
            ];
            let theta_us = tof_us[tap][ch] / q;
            timestamps_ns
                .iter()
                .map(|&ts| {
                    let t = ts as f64 / 1000.0 - arrival;
                    let mut s = match &paths[tap][ch] {
                        Some(path) => path.wave(t, length),
                        None if p.model == WaveModel::Dispersive => {
                            dispersed_wavelet(t, length, &shape, theta_us)
                        }
                        None => wavelet(t, length, &shape),
                    };
                    for (delay, gain) in echoes {
                        s += gain * wavelet(t - delay, length * 1.5, &shape);
                    }
                    let x = rest[ch] + amplitude * s + sigma * rng.normal();
                    x.clamp(clip_lo, clip_hi).round() as i32
                })
                .collect()
        });
        let guids: [String; N_SENSORS] = std::array::from_fn(|_| rng.uuid());
        let upload = rng.uuid();
        let file_name = format!("{device}_{upload}_{t_file}_{}.json", tap + 1);
        let json = write_tap_json(&channels, &timestamps_ns, &guids, &rng.uuid());
        files.push(SimFile { file_name, json });
        t_file += rng.uniform(5.0, 40.0) as i64;
    }
    let truth = SetTruth {
        device: device.to_string(),
        unix_s,
        result_file: format!("result_{device}_{unix_s}.json"),
        params: p.clone(),
        tof_us,
        velocity_m_s: velocity,
        tap_lead_us,
        files: files.iter().map(|f| f.file_name.clone()).collect(),
    };
    (files, truth)
}

/// The tapped channel: the hammer's ringing, big enough to clip from the first samples.
fn tapped_channel(
    timestamps_ns: &[i64],
    t_tap_us: f64,
    rest: f64,
    clip_lo: f64,
    clip_hi: f64,
    rng: &mut Rng,
) -> Vec<i32> {
    let f_mhz = rng.uniform(8.0, 14.0) / 1000.0;
    let decay_us = rng.uniform(2000.0, 5000.0);
    let amplitude = rng.uniform(4000.0, 9000.0);
    timestamps_ns
        .iter()
        .map(|&ts| {
            let t = ts as f64 / 1000.0 - t_tap_us;
            // Before the impact (a device with a pre-trigger buffer) the channel rests. A
            // device triggers once the impact has risen past its trigger level, so no sample
            // after the impact shows less than its first microseconds.
            let t = if t >= 0.0 { t.max(TRIGGER_RISE_US) } else { t };
            let s = if t > 0.0 {
                amplitude
                    * (1.0 - (-t / 3.0).exp())
                    * (-t / decay_us).exp()
                    * (TAU * f_mhz * t + PI / 2.0).cos()
            } else {
                0.0
            };
            (rest + s + 15.0 * rng.normal())
                .clamp(clip_lo, clip_hi)
                .round() as i32
        })
        .collect()
}

/// Simulates `n_sets` sets for a few devices, with parameters drawn around `base`.
/// When `vary` is set, velocity, diameter and decay are drawn per set from realistic ranges.
pub fn simulate_many(
    base: &SimParams,
    n_sets: usize,
    seed: u64,
    vary: bool,
) -> (Vec<SimFile>, Truth) {
    let mut rng = Rng::new(seed);
    let mut all = Vec::new();
    let mut truth = Truth::default();
    for s in 0..n_sets {
        let mut p = base.clone();
        if vary {
            p.velocity_m_s = rng.uniform(1000.0, 2000.0);
            p.diameter_m = rng.uniform(0.2, 1.0);
            if rng.uniform(0.0, 1.0) < 0.5 {
                let radius = rng.uniform(0.25, 0.5);
                let (r, a) = (rng.uniform(0.0, 0.9 - radius), rng.uniform(0.0, TAU));
                p.decay = Some(Decay {
                    x: r * a.cos(),
                    y: r * a.sin(),
                    radius,
                    velocity_factor: rng.uniform(0.3, 0.7),
                });
            } else {
                p.decay = None;
            }
        }
        let device = format!("20-79-18-81-6E-{:02X}", 0x60 + (s % 4));
        let unix_s = 1_755_752_474 + 3600 * s as i64;
        let (files, set_truth) = simulate_set(&p, &device, unix_s, &mut rng);
        all.extend(files);
        truth.sets.push(set_truth);
    }
    (all, truth)
}

/// Simulates `n_sets` sets (see [`simulate_many`]) and writes their tap files and
/// `truth.json` into `out` (created if missing). Returns the number of tap files.
pub fn write_simulated(
    out: &std::path::Path,
    base: &SimParams,
    n_sets: usize,
    seed: u64,
    vary: bool,
) -> anyhow::Result<usize> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (files, truth) = simulate_many(base, n_sets, seed, vary);
    for f in &files {
        std::fs::write(out.join(&f.file_name), &f.json)
            .with_context(|| format!("cannot write {}", f.file_name))?;
    }
    let truth_path = out.join("truth.json");
    std::fs::write(&truth_path, serde_json::to_vec_pretty(&truth)?)
        .with_context(|| format!("cannot write {}", truth_path.display()))?;
    Ok(files.len())
}
