//! The engine: from the eight taps of a set to times of flight and the 8×8 velocity matrix.
//!
//! Input is a [`SetInput`]: eight [`Recording`]s of samples and sample times, validated when
//! they are built ([`input`]); the engine knows no file format, file name or command line.
//! [`Engine::estimate`] gives a [`SetEstimate`]; the only error is a correlator's that can fail
//! (the GPU's, [`CorrelatorError`]).
//!
//! Units: times in µs, distances in m, velocities in m/s. Row = tapped sensor, column =
//! receiving sensor, 0-based inside the code. A ray that cannot be trusted keeps its estimate
//! (for the report) but is flagged, and is 0 in [`SetEstimate::plain_matrix`].
//!
//! Two methods share the batched GCC-PHAT core ([`gcc`]):
//! - [`Method::GccPhat`]: each receiver against the tapped channel, lag searched only inside
//!   the physically possible window, peak refined below one sample.
//! - [`Method::Onset`] (default): the first arrival on each receiver is picked with a sub-sample
//!   hinge fit; the tapped channel only fixes the tap instant. The relative tap instants of the
//!   eight taps come from GCC-PHAT between the reciprocal recordings i→j and j→i (same path,
//!   same waveform), and the ToF of each ray is the pick minus its tap instant.

pub mod gcc;
pub mod input;
pub mod onset;
pub mod phat;

use serde::{Deserialize, Serialize};

pub use crate::geometry::N_SENSORS;
use crate::geometry::{chord_m, longest_chord_m};
pub use gcc::{Correlator, CorrelatorError, CorrelatorKind, CpuGcc, Kernel, PairBatch};
pub use input::{InputError, MIN_SAMPLES, Recording, SetInput};

/// How ToFs are estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Sub-sample onset picks plus reciprocal GCC-PHAT for the tap instants.
    Onset,
    /// Plain windowed GCC-PHAT of each receiver against the tapped channel.
    GccPhat,
}

impl Method {
    /// Every method, the default first.
    pub const ALL: [Method; 2] = [Method::Onset, Method::GccPhat];

    /// The method's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Onset => "onset",
            Method::GccPhat => "gcc-phat",
        }
    }

    /// What the method does, in one line (the command line's help).
    pub fn summary(self) -> &'static str {
        match self {
            Method::Onset => "Sub-sample onset picks plus reciprocal GCC-PHAT for the tap instants",
            Method::GccPhat => {
                "Plain windowed GCC-PHAT of each receiver against the tapped channel"
            }
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no [`Method`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown method {0:?}: expected onset or gcc-phat")]
pub struct UnknownMethod(pub String);

impl std::str::FromStr for Method {
    type Err = UnknownMethod;

    /// Parses a method by its [`Method::name`].
    fn from_str(s: &str) -> Result<Method, UnknownMethod> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMethod(s.to_string()))
    }
}

/// Engine settings (validated by the caller).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub diameter_m: f64,
    /// Slowest plausible velocity: sets the lag window and the plausibility check.
    pub min_velocity_m_s: f64,
    /// Fastest plausible velocity.
    pub max_velocity_m_s: f64,
    pub method: Method,
    /// Samples from the start of each record that the correlation looks at.
    pub segment: usize,
    /// Rays whose v(i→j) and v(j→i) differ by more than this fraction are flagged.
    pub max_reciprocity_diff: f64,
    /// A receiver whose first-arrival amplitude is below this many noise sigmas is low-SNR.
    pub min_snr: f64,
    /// Mean time from the hammer's impact to the first sample of a file, in sampling
    /// intervals (`onset` method). The tapped channel clips from its first sample, so the
    /// recording cannot say how long before it the impact came: reciprocity gives the eight
    /// tap instants relative to each other, and this sets them all. 0.5 is a device that
    /// triggers on the impact and samples from its next clock tick (the lead uniform within
    /// one sample); a device with a known trigger latency, or whose first sample is the
    /// impact itself (0), sets its own.
    #[serde(default = "default_trigger_lead")]
    pub trigger_lead: f64,
}

/// The trigger falls uniformly within the sample before the first one.
pub const DEFAULT_TRIGGER_LEAD: f64 = 0.5;

/// The largest [`EngineConfig::trigger_lead`] accepted, in samples: the first arrivals come
/// 2–17 samples after the tap, so a longer latency would leave most of them before the file.
pub const MAX_TRIGGER_LEAD: f64 = 4.0;

fn default_trigger_lead() -> f64 {
    DEFAULT_TRIGGER_LEAD
}

/// An engine setting out of its range.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("the trigger lead must be a number of samples in [0, {max}], got {lead}")]
    TriggerLead { lead: f64, max: f64 },
}

impl EngineConfig {
    /// Checks the trigger lead: a number of samples in [0, [`MAX_TRIGGER_LEAD`]].
    pub fn check_trigger_lead(lead: f64) -> Result<f64, ConfigError> {
        if lead.is_finite() && (0.0..=MAX_TRIGGER_LEAD).contains(&lead) {
            Ok(lead)
        } else {
            Err(ConfigError::TriggerLead {
                lead,
                max: MAX_TRIGGER_LEAD,
            })
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            diameter_m: 0.3,
            min_velocity_m_s: 300.0,
            max_velocity_m_s: 3000.0,
            method: Method::Onset,
            segment: 256,
            max_reciprocity_diff: 0.3,
            min_snr: 7.5,
            trigger_lead: DEFAULT_TRIGGER_LEAD,
        }
    }
}

/// Why a ray is not trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RayFlag {
    Ok,
    NoPeak,
    ImplausibleVelocity,
    ReciprocityMismatch,
    ClippedReceiver,
    LowSnr,
    /// The file names this sensor as tapped, but another channel carries the hammer's impact:
    /// the row cannot be trusted (see [`onset::impact_channel`]).
    TapMismatch,
}

impl RayFlag {
    pub fn usable(self) -> bool {
        self == RayFlag::Ok
    }
}

/// Where a tap's instant (the hammer's impact) comes from: the report's
/// `tap_instant_source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TapInstantSource {
    /// The tapped channel's own onset: the device recorded before the impact
    /// ([`onset::impact_onset`]); reciprocity places the taps against each other.
    Onset,
    /// The trigger-lead prior ([`EngineConfig::trigger_lead`]): the tapped channel clips from
    /// its first sample; reciprocity places the taps against each other.
    Prior,
    /// `gcc-phat`: each receiver is correlated against the tapped channel itself.
    Correlation,
}

/// Result for one set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SetEstimate {
    /// Estimated ToF, µs (0 on the diagonal, NaN where there is no estimate at all).
    pub tof_us: [[f64; N_SENSORS]; N_SENSORS],
    /// chord / ToF, m/s (same conventions).
    pub velocity_m_s: [[f64; N_SENSORS]; N_SENSORS],
    pub flags: [[RayFlag; N_SENSORS]; N_SENSORS],
    /// Mean sampling interval over the eight files, µs.
    pub dt_us: f64,
    /// Estimated tap instant of each tap, µs before its first sample.
    pub tap_lead_us: [f64; N_SENSORS],
    /// Where each tap's instant comes from.
    pub tap_instant_source: [TapInstantSource; N_SENSORS],
    /// The file (by its named tap, 0-based) whose recording is used as each sensor's tap:
    /// `k` itself unless that file hit another sensor and another file hit sensor k
    /// ([`onset::reassign`]).
    pub tap_source: [usize; N_SENSORS],
    /// Per file (by its named tap, 0-based): the sensor the hammer's impact is on when it is
    /// not the named one ([`onset::impact_channel`]).
    pub impact_elsewhere: [Option<usize>; N_SENSORS],
}

impl SetEstimate {
    /// The compatibility matrix: m/s, diagonal 0, an unusable ray 0.
    pub fn plain_matrix(&self) -> [[f64; N_SENSORS]; N_SENSORS] {
        std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let v = self.velocity_m_s[i][j];
                if i != j && self.flags[i][j].usable() && v.is_finite() {
                    v
                } else {
                    0.0
                }
            })
        })
    }
}

/// Summary metrics of a velocity matrix, the two the quality of real sets is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Metrics {
    /// Share of the 56 rays with a velocity inside 300–3000 m/s.
    pub plausible_share: f64,
    /// Median over the pairs with both directions of |v_ij − v_ji| / mean(v_ij, v_ji).
    pub median_reciprocity_diff: f64,
}

pub fn metrics(velocity: &[[f64; N_SENSORS]; N_SENSORS]) -> Metrics {
    let plausible = |v: f64| v.is_finite() && (300.0..=3000.0).contains(&v);
    let mut n_ok = 0;
    let mut diffs = Vec::new();
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i == j {
                continue;
            }
            if plausible(velocity[i][j]) {
                n_ok += 1;
            }
            let (a, b) = (velocity[i][j], velocity[j][i]);
            if i < j && a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0 {
                diffs.push((a - b).abs() / (0.5 * (a + b)));
            }
        }
    }
    Metrics {
        plausible_share: n_ok as f64 / (N_SENSORS * (N_SENSORS - 1)) as f64,
        median_reciprocity_diff: median(&mut diffs).unwrap_or(f64::NAN),
    }
}

pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    })
}

/// The engine: a correlator (CPU or GPU) and its buffers, reused for every batch of sets.
pub struct Engine {
    cfg: EngineConfig,
    correlator: Box<dyn Correlator>,
    batch: PairBatch,
    corr: Vec<f32>,
}

/// FFT length each method needs: short windows around first arrivals for the onset method,
/// the whole segment (zero-padded to twice its length, no wrap-around) for plain GCC-PHAT.
pub fn n_fft_for(cfg: &EngineConfig) -> usize {
    match cfg.method {
        Method::Onset => 64,
        Method::GccPhat => (2 * cfg.segment).next_power_of_two(),
    }
}

impl Engine {
    /// The CPU engine with the SIMD PHAT kernel.
    pub fn new(cfg: EngineConfig) -> Self {
        Self::with_kernel(cfg, Kernel::Simd)
    }

    pub fn with_kernel(cfg: EngineConfig, kernel: Kernel) -> Self {
        let correlator = Box::new(CpuGcc::new(n_fft_for(&cfg), kernel));
        Self::with_correlator(cfg, correlator)
    }

    /// An engine on any correlator built for [`n_fft_for`]`(&cfg)`.
    pub fn with_correlator(cfg: EngineConfig, correlator: Box<dyn Correlator>) -> Self {
        assert_eq!(
            correlator.n_fft(),
            n_fft_for(&cfg),
            "correlator built for another FFT length"
        );
        Engine {
            batch: PairBatch::new(correlator.n_fft()),
            correlator,
            corr: Vec::new(),
            cfg,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Sets the trunk diameter of the sets estimated next (a set's survey file gives its
    /// own); the FFT length does not depend on it, so the correlator stays.
    pub fn set_diameter_m(&mut self, diameter_m: f64) {
        self.cfg.diameter_m = diameter_m;
    }

    /// Name of the correlator (`cpu`, `cpu-scalar`, `gpu`).
    pub fn backend_name(&self) -> &'static str {
        self.correlator.name()
    }

    /// Estimates one set.
    pub fn estimate(&mut self, set: &SetInput) -> Result<SetEstimate, CorrelatorError> {
        let mut estimates = self.estimate_batch(std::slice::from_ref(set))?;
        Ok(estimates.remove(0))
    }

    /// Estimates many sets with one batched correlation, one estimate per set in order (the
    /// sets as values or references: `&[SetInput]` or `&[&SetInput]`).
    pub fn estimate_batch<S: std::borrow::Borrow<SetInput>>(
        &mut self,
        sets: &[S],
    ) -> Result<Vec<SetEstimate>, CorrelatorError> {
        let prepared: Vec<[Prepared; N_SENSORS]> = sets
            .iter()
            .map(|set| {
                let taps = set.borrow().recordings();
                std::array::from_fn(|k| prepare(&taps[k], self.cfg.segment))
            })
            .collect();
        // The onset method reads each file's impact channel and uses a mis-tapped file as the
        // tap of the sensor it really hit, where that sensor has no other.
        let reassigned: Vec<Option<onset::Reassignment>> = prepared
            .iter()
            .map(|set| (self.cfg.method == Method::Onset).then(|| onset::reassign(&self.cfg, set)))
            .collect();
        let prepared: Vec<[Prepared; N_SENSORS]> = prepared
            .into_iter()
            .zip(&reassigned)
            .map(|(set, r)| match r {
                // Only a set with a re-assigned file is rebuilt (copying a set costs more
                // than reading the impact channels).
                Some(r) if r.tap_source.iter().enumerate().any(|(k, &s)| s != k) => {
                    std::array::from_fn(|k| set[r.tap_source[k]].clone())
                }
                _ => set,
            })
            .collect();
        self.batch.clear();
        let plans: Vec<Plan> = prepared
            .iter()
            .map(|set| match self.cfg.method {
                Method::Onset => Plan::Onset(onset::plan(&self.cfg, set, &mut self.batch)),
                Method::GccPhat => Plan::GccPhat(plan_gcc(set, &mut self.batch)),
            })
            .collect();
        self.corr.clear();
        self.corr.resize(self.batch.out_len(), 0.0);
        self.correlator.correlate(&self.batch, &mut self.corr)?;
        Ok(prepared
            .iter()
            .zip(&plans)
            .zip(&reassigned)
            .map(|((set, plan), r)| {
                let mut est = match plan {
                    Plan::Onset(p) => onset::solve(&self.cfg, set, p, &self.batch, &self.corr),
                    Plan::GccPhat(pairs) => {
                        solve_gcc(&self.cfg, set, pairs, &self.batch, &self.corr)
                    }
                };
                if let Some(r) = r {
                    est.tap_source = r.tap_source;
                    est.impact_elsewhere = r.impact_elsewhere;
                }
                est
            })
            .collect())
    }
}

/// Per set, what the correlations are for. One per set in a batch, so size does not matter.
#[allow(clippy::large_enum_variant)]
enum Plan {
    Onset(onset::OnsetPlan),
    /// Pair index of ray i→j (u32::MAX on the diagonal).
    GccPhat([[u32; N_SENSORS]; N_SENSORS]),
}

/// One tap, centred and cut to the segment the engine looks at. Which sensor it is the tap
/// on is its place in the set.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Rest level removed, first `segment` samples.
    pub channels: [Vec<f32>; N_SENSORS],
    /// Sample times relative to the first sample, µs (same length as the channels).
    pub t_us: Vec<f64>,
    pub dt_us: f64,
    /// Raw counts of the same segment (for clipping checks).
    pub raw: [Vec<f32>; N_SENSORS],
}

pub fn prepare(tap: &Recording, segment: usize) -> Prepared {
    let n = tap.n_samples().min(segment);
    let timestamps_ns = tap.timestamps_ns();
    let t0 = timestamps_ns[0];
    let t_us = timestamps_ns[..n]
        .iter()
        .map(|&t| (t - t0) as f64 / 1000.0)
        .collect();
    let raw: [Vec<f32>; N_SENSORS] = std::array::from_fn(|k| tap.channels()[k][..n].to_vec());
    let (mut scratch, mut counts) = (Vec::new(), Vec::new());
    let channels = std::array::from_fn(|k| {
        let rest = rest_level(&tap.channels()[k], &mut scratch, &mut counts);
        raw[k].iter().map(|&x| x - rest).collect()
    });
    Prepared {
        channels,
        t_us,
        dt_us: tap.mean_dt_us(),
        raw,
    }
}

/// A channel's rest level: the median of the whole channel, the value at index `len / 2` in
/// `f32::total_cmp` order (the upper of the two middle values of an even count). ADC counts,
/// whole numbers in 0..4096, are searched for ([`median_of_counts`], in `counts`); anything
/// else is selected in `scratch`, a copy (selection reorders, and the recording is not ours
/// to reorder).
fn rest_level(xs: &[f32], scratch: &mut Vec<f32>, counts: &mut Vec<u16>) -> f32 {
    if let Some(rest) = median_of_counts(xs, counts) {
        return rest;
    }
    scratch.clear();
    scratch.extend_from_slice(xs);
    let mid = scratch.len() / 2;
    *scratch.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// The value at index `len / 2` of `xs` sorted, where every value is a whole number in
/// 0..4096 (+0.0, never −0.0), else `None`, as is an empty `xs`. The values go to `counts`
/// as 16-bit integers, then a binary search over the 4096 possible values counts at each
/// step the values at most its middle: twelve passes of 16 lanes, about three times as fast
/// as selecting (0.3 against 1.05 µs for 500 samples on the machine of docs/performance.md).
fn median_of_counts(xs: &[f32], counts: &mut Vec<u16>) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { median_of_counts_avx2(xs, counts) };
    }
    median_of_counts_in(xs, counts)
}

/// [`median_of_counts_in`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn median_of_counts_avx2(xs: &[f32], counts: &mut Vec<u16>) -> Option<f32> {
    median_of_counts_in(xs, counts)
}

/// See [`median_of_counts`].
#[inline(always)]
fn median_of_counts_in(xs: &[f32], counts: &mut Vec<u16>) -> Option<f32> {
    // Positive floats order as their bits: −0.0, negatives and NaNs have bits above 4095's.
    const MAX_BITS: u32 = 0x457F_F000;
    debug_assert_eq!(MAX_BITS, 4095.0f32.to_bits());
    counts.clear();
    counts.resize(xs.len(), 0);
    let mut whole = true;
    for (c, &x) in counts.iter_mut().zip(xs) {
        // A whole number below 2²³ is the low bits of itself plus 2²³ (a conversion
        // that does not vectorise otherwise); for any other value `v` is wrong and is seen.
        let v = ((x + 8_388_608.0).to_bits() & 0xFFF) as u16;
        whole &= (x.to_bits() <= MAX_BITS) & (f32::from(v) == x);
        *c = v;
    }
    if xs.is_empty() || !whole {
        return None;
    }
    Some(f32::from(median_of_12_bits(counts)))
}

/// The value at index `len / 2` of `v` (not empty, every value below 4096) sorted: the least
/// value with more than `len / 2` values at most it.
#[inline(always)]
fn median_of_12_bits(v: &[u16]) -> u16 {
    let mid = v.len() / 2;
    let (mut lo, mut hi) = (0u16, 4095u16);
    while lo < hi {
        let m = (lo + hi) / 2;
        // Sums of at most 2¹⁵ ones fit in 16 bits.
        let at_most: usize = v
            .chunks(1 << 15)
            .map(|c| usize::from(c.iter().map(|&x| u16::from(x <= m)).sum::<u16>()))
            .sum();
        if at_most > mid {
            hi = m;
        } else {
            lo = m + 1;
        }
    }
    lo
}

/// Largest lag (samples) the window allows for a tap: the longest chord at the slowest
/// plausible velocity, plus one sample for the tap's lead before the first sample.
pub fn max_lag_samples(cfg: &EngineConfig, dt_us: f64) -> isize {
    (longest_chord_m(cfg.diameter_m) / cfg.min_velocity_m_s * 1e6 / dt_us).ceil() as isize + 1
}

/// Plain GCC-PHAT: every receiver against the tapped channel over the whole segment.
fn plan_gcc(set: &[Prepared; N_SENSORS], batch: &mut PairBatch) -> [[u32; N_SENSORS]; N_SENSORS] {
    let mut pairs = [[u32::MAX; N_SENSORS]; N_SENSORS];
    for (i, tap) in set.iter().enumerate() {
        let windows: Vec<u32> = tap.channels.iter().map(|c| batch.push_window(c)).collect();
        for j in 0..N_SENSORS {
            if i != j {
                pairs[i][j] = batch.push_pair(windows[i], windows[j]);
            }
        }
    }
    pairs
}

fn solve_gcc(
    cfg: &EngineConfig,
    set: &[Prepared; N_SENSORS],
    pairs: &[[u32; N_SENSORS]; N_SENSORS],
    batch: &PairBatch,
    corr: &[f32],
) -> SetEstimate {
    let mut est = empty_estimate(set);
    est.tap_instant_source = [TapInstantSource::Correlation; N_SENSORS];
    for (i, tap) in set.iter().enumerate() {
        let hi = max_lag_samples(cfg, tap.dt_us);
        for j in 0..N_SENSORS {
            if i == j {
                continue;
            }
            match gcc::find_peak(batch.correlation(corr, pairs[i][j]), 0, hi) {
                Some(p) if !p.on_edge => {
                    est.tof_us[i][j] = p.lag * tap.dt_us;
                    est.flags[i][j] = RayFlag::Ok;
                }
                _ => est.flags[i][j] = RayFlag::NoPeak,
            }
        }
    }
    finish(cfg, &mut est);
    est
}

pub(crate) fn empty_estimate(set: &[Prepared; N_SENSORS]) -> SetEstimate {
    SetEstimate {
        tof_us: std::array::from_fn(|i| {
            std::array::from_fn(|j| if i == j { 0.0 } else { f64::NAN })
        }),
        velocity_m_s: [[0.0; N_SENSORS]; N_SENSORS],
        flags: [[RayFlag::Ok; N_SENSORS]; N_SENSORS],
        dt_us: set.iter().map(|t| t.dt_us).sum::<f64>() / N_SENSORS as f64,
        tap_lead_us: [0.0; N_SENSORS],
        tap_instant_source: [TapInstantSource::Prior; N_SENSORS],
        tap_source: std::array::from_fn(|k| k),
        impact_elsewhere: [None; N_SENSORS],
    }
}

/// Velocities from ToFs, then plausibility and reciprocity flags on rays still marked Ok.
/// A ray is held against its reverse only where the reverse is itself usable so far: a
/// reverse that was not picked, is implausible, weak or comes from a file that hit another
/// sensor is no measurement of the path, and cannot refute the ray (on the real set the rays
/// into sensor 5, which was never tapped, were flagged against that sensor's row).
pub(crate) fn finish(cfg: &EngineConfig, est: &mut SetEstimate) {
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i == j {
                est.velocity_m_s[i][j] = 0.0;
                continue;
            }
            let tof = est.tof_us[i][j];
            est.velocity_m_s[i][j] = if tof.is_finite() && tof > 0.0 {
                chord_m(i, j, cfg.diameter_m) / tof * 1e6
            } else {
                f64::NAN
            };
        }
    }
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i == j || !est.flags[i][j].usable() {
                continue;
            }
            let v = est.velocity_m_s[i][j];
            if !(v.is_finite() && v >= cfg.min_velocity_m_s && v <= cfg.max_velocity_m_s) {
                est.flags[i][j] = RayFlag::ImplausibleVelocity;
            }
        }
    }
    let measured = est.flags;
    for i in 0..N_SENSORS {
        for j in 0..N_SENSORS {
            if i == j || !measured[i][j].usable() || !measured[j][i].usable() {
                continue;
            }
            let (a, b) = (est.velocity_m_s[i][j], est.velocity_m_s[j][i]);
            if b.is_finite()
                && b > 0.0
                && (a - b).abs() / (0.5 * (a + b)) > cfg.max_reciprocity_diff
            {
                est.flags[i][j] = RayFlag::ReciprocityMismatch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn selected(xs: &[f32]) -> f32 {
        let mut v = xs.to_vec();
        let mid = v.len() / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    }

    #[test]
    fn the_counted_rest_level_is_the_selected_one() {
        let mut rng = Rng::new(17);
        for case in 0..3000 {
            let len = 1 + (rng.next_u64() % 700) as usize;
            // Narrow and wide spreads, clipped channels, and values at both ends of 12 bits.
            let (centre, spread) = match case % 4 {
                0 => (2048.0, 5.0),
                1 => (rng.uniform(0.0, 4095.0), rng.uniform(0.0, 2000.0)),
                2 => (4095.0, 30.0),
                _ => (0.0, 30.0),
            };
            let xs: Vec<f32> = (0..len)
                .map(|_| {
                    // `+ 0.0` turns a rounded −0.0 into a count.
                    ((centre + spread * rng.normal()).round().clamp(0.0, 4095.0) + 0.0) as f32
                })
                .collect();
            let (mut scratch, mut counts) = (Vec::new(), Vec::new());
            assert_eq!(
                median_of_counts(&xs, &mut counts).map(f32::to_bits),
                Some(selected(&xs).to_bits()),
                "case {case}"
            );
            assert_eq!(
                rest_level(&xs, &mut scratch, &mut counts).to_bits(),
                selected(&xs).to_bits()
            );
        }
    }

    #[test]
    fn values_that_are_not_counts_are_selected() {
        let cases: [&[f32]; 6] = [
            &[1.0, 2.5, 3.0],
            &[1.0, -0.0, 3.0, 0.0],
            &[-1.0, 2.0, 3.0],
            &[4096.0, 1.0, 2.0],
            &[f32::NAN, 1.0, 2.0],
            &[],
        ];
        let (mut scratch, mut counts) = (Vec::new(), Vec::new());
        for xs in cases {
            assert_eq!(median_of_counts(xs, &mut counts), None, "{xs:?}");
        }
        for xs in &cases[..5] {
            assert_eq!(
                rest_level(xs, &mut scratch, &mut counts).to_bits(),
                selected(xs).to_bits(),
                "{xs:?}"
            );
        }
        // −0.0 sorts before +0.0: a selected rest level keeps its sign.
        assert_eq!(
            rest_level(&[-0.0, -0.0, 0.0], &mut scratch, &mut counts).to_bits(),
            (-0.0f32).to_bits()
        );
    }
}
