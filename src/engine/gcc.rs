//! Batched GCC-PHAT on the CPU: plan once, run many.
//!
//! A [`PairBatch`] holds real windows (each zero-padded to `n_fft`, rest level removed) and
//! pairs of them. A [`Correlator`] fills a caller-owned buffer with the circular PHAT-weighted
//! cross-correlation of each pair: `out[pair·n_fft + lag]`, where a peak at lag ℓ (samples,
//! negative lags wrap to the end) means the signal window is the reference window delayed by
//! ℓ. Each window is transformed once however many pairs use it. [`CpuGcc`] is the CPU
//! correlator; real-to-complex FFT plans and scratch are built once per `n_fft` and reused.

use std::sync::Arc;

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;

use super::phat;

/// Windows and the pairs to correlate.
#[derive(Clone, Debug, Default)]
pub struct PairBatch {
    pub n_fft: usize,
    /// `n_windows · n_fft` samples.
    pub windows: Vec<f32>,
    /// `(reference window, signal window)`.
    pub pairs: Vec<[u32; 2]>,
}

impl PairBatch {
    pub fn new(n_fft: usize) -> Self {
        PairBatch {
            n_fft,
            ..Default::default()
        }
    }

    pub fn n_windows(&self) -> usize {
        self.windows.len() / self.n_fft.max(1)
    }

    pub fn n_pairs(&self) -> usize {
        self.pairs.len()
    }

    pub fn clear(&mut self) {
        self.windows.clear();
        self.pairs.clear();
    }

    /// Appends a window (at most `n_fft` samples are kept, the rest is zero) and returns its index.
    pub fn push_window(&mut self, samples: &[f32]) -> u32 {
        let index = self.n_windows() as u32;
        let n = samples.len().min(self.n_fft);
        self.windows.extend_from_slice(&samples[..n]);
        self.windows
            .resize(self.windows.len() + self.n_fft - n, 0.0);
        index
    }

    /// Appends the pair (reference, signal) and returns its index.
    pub fn push_pair(&mut self, reference: u32, signal: u32) -> u32 {
        self.pairs.push([reference, signal]);
        self.pairs.len() as u32 - 1
    }

    /// Length of the output buffer this batch needs.
    pub fn out_len(&self) -> usize {
        self.n_pairs() * self.n_fft
    }

    /// The correlation of pair `pair` inside an output buffer.
    pub fn correlation<'a>(&self, out: &'a [f32], pair: u32) -> &'a [f32] {
        let p = pair as usize;
        &out[p * self.n_fft..(p + 1) * self.n_fft]
    }
}

/// Error of a correlator that can fail (the GPU); the CPU never does.
#[derive(Debug, thiserror::Error)]
pub enum CorrelatorError {
    #[error("batch built for n_fft {batch}, GPU correlator for {correlator}")]
    FftLength { batch: usize, correlator: usize },
    #[error("output buffer holds {found} values, the batch needs {needed}")]
    OutputLength { found: usize, needed: usize },
    #[error("pair {pair} refers to a window past the {n_windows} in the batch")]
    PairOutOfRange { pair: usize, n_windows: usize },
    /// The device failed: `what` went wrong, `detail` is the driver's own message.
    #[error("GPU {what}: {detail}")]
    Gpu { what: &'static str, detail: String },
}

/// Where a correlator computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorrelatorKind {
    Cpu,
    Gpu,
}

/// Something that correlates a [`PairBatch`]: the CPU here, the GPU elsewhere.
pub trait Correlator: Send {
    /// The FFT length it was built for.
    fn n_fft(&self) -> usize;
    /// Fills `out` (`batch.out_len()` long) with the correlation of every pair.
    fn correlate(&mut self, batch: &PairBatch, out: &mut [f32]) -> Result<(), CorrelatorError>;
    /// Short name for logs and reports.
    fn name(&self) -> &'static str;
    /// Where it computes.
    fn kind(&self) -> CorrelatorKind;
}

/// Which PHAT kernel the CPU path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Simd,
}

/// The CPU correlator for one FFT length. The windows are real, so their spectra are
/// Hermitian: real-to-complex transforms (realfft) compute only the `n_fft/2 + 1` bins that
/// carry information, half the work of complex transforms.
pub struct CpuGcc {
    n_fft: usize,
    kernel: Kernel,
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
    scratch: Vec<Complex32>,
    /// `n_windows · (n_fft/2 + 1)` bins.
    spectra: Vec<Complex32>,
    cross: Vec<Complex32>,
    /// A window's samples (the forward transform works in place on its input).
    real: Vec<f32>,
}

impl CpuGcc {
    pub fn new(n_fft: usize, kernel: Kernel) -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(n_fft);
        let inverse = planner.plan_fft_inverse(n_fft);
        let scratch_len = forward.get_scratch_len().max(inverse.get_scratch_len());
        CpuGcc {
            n_fft,
            kernel,
            scratch: vec![Complex32::default(); scratch_len],
            spectra: Vec::new(),
            cross: inverse.make_input_vec(),
            real: forward.make_input_vec(),
            forward,
            inverse,
        }
    }

    /// Correlates every pair of the batch; `out.len() == batch.out_len()`.
    pub fn correlate_batch(&mut self, batch: &PairBatch, out: &mut [f32]) {
        let n = self.n_fft;
        let bins = n / 2 + 1;
        assert_eq!(batch.n_fft, n, "batch built for another FFT length");
        assert_eq!(
            out.len(),
            batch.out_len(),
            "output buffer has the wrong length"
        );
        self.spectra
            .resize(batch.n_windows() * bins, Complex32::default());
        for (spec, window) in self
            .spectra
            .chunks_exact_mut(bins)
            .zip(batch.windows.chunks_exact(n))
        {
            self.real.copy_from_slice(window);
            self.forward
                .process_with_scratch(&mut self.real, spec, &mut self.scratch)
                .expect("buffers sized by the plan");
        }
        let scale = 1.0 / n as f32;
        for (&[r, s], dst) in batch.pairs.iter().zip(out.chunks_exact_mut(n)) {
            let (r, s) = (r as usize, s as usize);
            let reference = &self.spectra[r * bins..(r + 1) * bins];
            let signal = &self.spectra[s * bins..(s + 1) * bins];
            match self.kernel {
                Kernel::Scalar => phat::phat_scalar(reference, signal, &mut self.cross),
                Kernel::Simd => phat::phat_simd(reference, signal, &mut self.cross),
            }
            // The DC and Nyquist bins of a real signal's spectrum are real; rounding must not
            // leave an imaginary part there (the inverse ignores it).
            self.cross[0].im = 0.0;
            self.cross[bins - 1].im = 0.0;
            self.inverse
                .process_with_scratch(&mut self.cross, dst, &mut self.scratch)
                .expect("buffers sized by the plan");
            for o in dst.iter_mut() {
                *o *= scale;
            }
        }
    }
}

impl Correlator for CpuGcc {
    fn n_fft(&self) -> usize {
        self.n_fft
    }

    fn correlate(&mut self, batch: &PairBatch, out: &mut [f32]) -> Result<(), CorrelatorError> {
        self.correlate_batch(batch, out);
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self.kernel {
            Kernel::Scalar => "cpu-scalar",
            Kernel::Simd => "cpu",
        }
    }

    fn kind(&self) -> CorrelatorKind {
        CorrelatorKind::Cpu
    }
}

/// Band-limited value of a circular correlation `r` at fractional lag `tau` (samples), by
/// windowed-sinc interpolation over ±`half` neighbours (the reference for the table below).
pub fn interpolate(r: &[f32], tau: f64, half: usize) -> f64 {
    let n = r.len() as isize;
    let base = tau.floor() as isize;
    let mut acc = 0.0;
    for k in (base - half as isize + 1)..=(base + half as isize) {
        let x = tau - k as f64;
        let w = 0.5 + 0.5 * (std::f64::consts::PI * x / half as f64).cos();
        acc += r[k.rem_euclid(n) as usize] as f64 * sinc(x) * w;
    }
    acc
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// Interpolation kernel half-width (taps on each side).
const HALF: usize = 16;
/// Fractional positions per sample in the precomputed kernel table.
const PHASES: usize = 64;

/// Windowed-sinc weights for lags `phase/PHASES` past an integer, `2·HALF` taps each,
/// computed once: the peak search then needs no trigonometry.
fn kernel_table() -> &'static [[f32; 2 * HALF]] {
    static TABLE: std::sync::OnceLock<Vec<[f32; 2 * HALF]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PHASES)
            .map(|phase| {
                let frac = phase as f64 / PHASES as f64;
                std::array::from_fn(|t| {
                    // Tap t is the sample at floor(tau) − HALF + 1 + t.
                    let x = frac + HALF as f64 - 1.0 - t as f64;
                    let w = 0.5 + 0.5 * (std::f64::consts::PI * x / HALF as f64).cos();
                    (sinc(x) * w) as f32
                })
            })
            .collect()
    })
}

/// [`interpolate`] at `base + phase/PHASES` from the table.
fn interpolate_at(r: &[f32], base: isize, phase: usize) -> f64 {
    let n = r.len() as isize;
    let weights = &kernel_table()[phase];
    let first = base - HALF as isize + 1;
    if first >= 0 && first + 2 * HALF as isize <= n {
        let first = first as usize;
        dot(&r[first..first + 2 * HALF], weights)
    } else {
        let taps: [f32; 2 * HALF] =
            std::array::from_fn(|t| r[(first + t as isize).rem_euclid(n) as usize]);
        dot(&taps, weights)
    }
}

/// The kernel's dot product, summed in tap order (the table tests hold it to that).
#[inline(always)]
fn dot(x: &[f32], weights: &[f32; 2 * HALF]) -> f64 {
    let mut acc = 0.0f32;
    for (x, w) in x.iter().zip(weights) {
        acc += x * w;
    }
    acc as f64
}

/// The samples of a circular correlation around one lag, copied out once so that every
/// interpolation of the peak search reads a contiguous slice (lags near 0 wrap around the end
/// of `r`, which would cost a division per tap).
struct Neighbourhood {
    /// `r` at lags `start .. start + SPAN`.
    samples: [f32; Self::SPAN],
    start: isize,
}

impl Neighbourhood {
    /// Interpolations within ±`REACH` samples of the centre lag stay inside.
    const REACH: isize = 3;
    const SPAN: usize = 2 * HALF + 2 * Self::REACH as usize;

    #[inline(always)]
    fn new(r: &[f32], centre: isize) -> Self {
        let n = r.len() as isize;
        let start = centre - HALF as isize + 1 - Self::REACH;
        // One division for the first index; the others step on and wrap at the end.
        let mut k = start.rem_euclid(n) as usize;
        let samples = std::array::from_fn(|_| {
            let v = r[k];
            k += 1;
            if k == r.len() {
                k = 0;
            }
            v
        });
        Neighbourhood { samples, start }
    }

    /// [`interpolate_at`]`(r, base, phase)`, the same value, for `base` within `REACH` of the
    /// centre.
    fn at(&self, r: &[f32], base: isize, phase: usize) -> f64 {
        let first = base - HALF as isize + 1 - self.start;
        if first >= 0 && first as usize + 2 * HALF <= Self::SPAN {
            let first = first as usize;
            dot(
                &self.samples[first..first + 2 * HALF],
                &kernel_table()[phase],
            )
        } else {
            interpolate_at(r, base, phase)
        }
    }

    /// [`Neighbourhood::at`] at each of the positions `best + u/PHASES` of `us`, the same
    /// values. Positions of one base sample whose phases step evenly by `stride` (1, or 8 for
    /// the coarse search) go up to eight at a time: the base's taps are shared, and each tap
    /// is multiplied by the eight phases' weights, which lie side by side in the transposed
    /// table [`kernel_columns`], in one vector; each lane sums in tap order as [`dot`] does,
    /// so the same bits.
    #[inline(always)]
    fn values<const K: usize>(
        &self,
        r: &[f32],
        best: isize,
        us: [isize; K],
        stride: usize,
    ) -> [f64; K] {
        let place = |u: isize| {
            let pos = best * PHASES as isize + u;
            (
                pos.div_euclid(PHASES as isize),
                pos.rem_euclid(PHASES as isize) as usize,
            )
        };
        let columns = &kernel_columns()[stride.trailing_zeros() as usize];
        let mut out = [0.0; K];
        let mut k = 0;
        while k < K {
            let (base, phase) = place(us[k]);
            // The run: following positions of the same base, `stride` phases apart.
            let mut len = 1;
            while len < COLUMN_LANES && k + len < K && {
                let (b, p) = place(us[k + len]);
                b == base && p == phase + len * stride
            } {
                len += 1;
            }
            let first = base - HALF as isize + 1 - self.start;
            if phase % stride != 0 || first < 0 || first as usize + 2 * HALF > Self::SPAN {
                for (o, &u) in out[k..k + len].iter_mut().zip(&us[k..k + len]) {
                    let (base, phase) = place(u);
                    *o = self.at(r, base, phase);
                }
            } else {
                let x = &self.samples[first as usize..first as usize + 2 * HALF];
                let col0 = phase / stride;
                let mut acc = [0.0f32; COLUMN_LANES];
                for (&x, weights) in x.iter().zip(columns.iter()) {
                    let w = &weights[col0..col0 + COLUMN_LANES];
                    for q in 0..COLUMN_LANES {
                        acc[q] += x * w[q];
                    }
                }
                for (o, a) in out[k..k + len].iter_mut().zip(acc) {
                    *o = a as f64;
                }
            }
            k += len;
        }
        out
    }
}

/// Lanes of [`Neighbourhood::values`]: the phases one run takes.
const COLUMN_LANES: usize = 8;

/// [`kernel_table`] transposed, `[tap][phase / stride]`, for the strides 1 and 8 (index
/// log₂ stride, so 0 and 3; the others are empty), each row padded with zeros so that any
/// run of [`COLUMN_LANES`] phases starting at a phase can be loaded.
fn kernel_columns() -> &'static [Vec<[f32; PHASES + COLUMN_LANES]>; 4] {
    static COLUMNS: std::sync::OnceLock<[Vec<[f32; PHASES + COLUMN_LANES]>; 4]> =
        std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| {
        let table = kernel_table();
        std::array::from_fn(|log_stride| {
            if log_stride != 0 && log_stride != 3 {
                return Vec::new();
            }
            let stride = 1 << log_stride;
            (0..2 * HALF)
                .map(|t| {
                    let mut row = [0.0; PHASES + COLUMN_LANES];
                    for (c, w) in row.iter_mut().take(PHASES / stride).enumerate() {
                        *w = table[c * stride][t];
                    }
                    row
                })
                .collect()
        })
    })
}

/// A correlation peak inside a lag window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// Fractional lag, samples.
    pub lag: f64,
    /// Interpolated correlation value at the peak.
    pub value: f64,
    /// Peak value over the largest value outside ±2 samples of it in the window (≥ 1).
    pub sharpness: f64,
    /// The integer maximum sat on the window's edge: no true peak inside.
    pub on_edge: bool,
}

/// Finds the largest value of `r` for lags in `lo..=hi` (may be negative) and refines it
/// below one sample on the band-limited interpolant: coarse (1/8 sample) then fine (1/64)
/// grid searches within ±1 sample, then a parabola through the fine grid's best three.
pub fn find_peak(r: &[f32], lo: isize, hi: isize) -> Option<Peak> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { find_peak_avx2(r, lo, hi) };
    }
    find_peak_in(r, lo, hi)
}

/// [`find_peak_in`] compiled for AVX2: the eight phases of a tap in one vector instead of
/// two. The same operations per lane in the same order (no fused multiply-add), so the same
/// bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn find_peak_avx2(r: &[f32], lo: isize, hi: isize) -> Option<Peak> {
    find_peak_in(r, lo, hi)
}

/// See [`find_peak`].
#[inline(always)]
fn find_peak_in(r: &[f32], lo: isize, hi: isize) -> Option<Peak> {
    let n = r.len() as isize;
    if hi < lo || n == 0 {
        return None;
    }
    // Lags wrap around the end of `r`; for a power-of-two length (every FFT here) a mask
    // does what `rem_euclid` does, without a division per lag.
    let mask = if n.count_ones() == 1 { n - 1 } else { -1 };
    let at = |lag: isize| {
        let k = if mask >= 0 {
            lag & mask
        } else {
            lag.rem_euclid(n)
        };
        r[k as usize] as f64
    };
    let best = (lo..=hi).max_by(|&a, &b| at(a).total_cmp(&at(b)))?;
    let side = (lo..=hi)
        .filter(|l| (l - best).abs() > 2)
        .map(at)
        .fold(f64::MIN, f64::max);
    let on_edge = best == lo || best == hi;
    // Positions in units of 1/PHASES sample, relative to `best`.
    let near = Neighbourhood::new(r, best);
    let coarse = (PHASES / 8) as isize;
    // The values of each stage are computed together (their dot products interleave, each
    // summed in tap order as [`dot`] sums it, so the same bits) and compared in order after.
    let us: [isize; 17] = std::array::from_fn(|k| (k as isize - 8) * coarse);
    let coarse_values = near.values(r, best, us, coarse as usize);
    let mut top = (0isize, coarse_values[8]);
    for (&u, &v) in us.iter().zip(&coarse_values) {
        if v > top.1 {
            top = (u, v);
        }
    }
    let centre = top.0;
    let us: [isize; 15] = std::array::from_fn(|k| centre - coarse + 1 + k as isize);
    for (&u, &v) in us.iter().zip(&near.values(r, best, us, 1)) {
        if v > top.1 {
            top = (u, v);
        }
    }
    let [y0, y2] = near.values(r, best, [top.0 - 1, top.0 + 1], 1);
    let y1 = top.1;
    let denom = y0 - 2.0 * y1 + y2;
    let shift = if denom < 0.0 {
        (0.5 * (y0 - y2) / denom).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let lag = best as f64 + (top.0 as f64 + shift) / PHASES as f64;
    let sharpness = if side > 0.0 { y1 / side } else { f64::INFINITY };
    Some(Peak {
        lag,
        value: y1,
        sharpness,
        on_edge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Direct time-domain circular cross-correlation with PHAT done by a naive DFT.
    fn naive_gcc_phat(reference: &[f32], signal: &[f32]) -> Vec<f32> {
        let n = reference.len();
        let dft = |x: &[f32]| -> Vec<(f64, f64)> {
            (0..n)
                .map(|k| {
                    x.iter().enumerate().fold((0.0, 0.0), |(re, im), (t, &v)| {
                        let a = -std::f64::consts::TAU * (k * t) as f64 / n as f64;
                        (re + v as f64 * a.cos(), im + v as f64 * a.sin())
                    })
                })
                .collect()
        };
        let (xr, xs) = (dft(reference), dft(signal));
        let g: Vec<(f64, f64)> = xr
            .iter()
            .zip(&xs)
            .map(|(&(ar, ai), &(br, bi))| {
                let (re, im) = (br * ar + bi * ai, bi * ar - br * ai);
                let m = (re * re + im * im).sqrt() + phat::PHAT_EPS as f64;
                (re / m, im / m)
            })
            .collect();
        (0..n)
            .map(|t| {
                g.iter().enumerate().fold(0.0, |acc, (k, &(re, im))| {
                    let a = std::f64::consts::TAU * (k * t) as f64 / n as f64;
                    acc + re * a.cos() - im * a.sin()
                }) as f32
                    / n as f32
            })
            .collect()
    }

    /// Plain time-domain cross-correlation (no weighting): its peak lag must agree too.
    fn naive_xcorr_peak(reference: &[f32], signal: &[f32], max_lag: usize) -> usize {
        (0..=max_lag)
            .max_by(|&a, &b| {
                let c = |lag: usize| -> f64 {
                    (0..reference.len() - lag)
                        .map(|t| reference[t] as f64 * signal[t + lag] as f64)
                        .sum()
                };
                c(a).total_cmp(&c(b))
            })
            .unwrap()
    }

    /// A batch of `n_taps` random taps: each has a reference window and seven delayed copies.
    fn random_batch(
        rng: &mut Rng,
        n_taps: usize,
        n_fft: usize,
        delays: &mut Vec<usize>,
    ) -> PairBatch {
        let mut batch = PairBatch::new(n_fft);
        let len = n_fft / 2;
        for _ in 0..n_taps {
            let source: Vec<f32> = (0..len + 40).map(|_| rng.normal() as f32).collect();
            let reference: Vec<f32> = (0..len)
                .map(|t| source[t] + 0.05 * rng.normal() as f32)
                .collect();
            let r = batch.push_window(&reference);
            for _ in 0..7 {
                let d = (rng.unit() * 30.0) as usize;
                delays.push(d);
                let sig: Vec<f32> = (0..len)
                    .map(|t| if t >= d { source[t - d] } else { 0.0 } + 0.05 * rng.normal() as f32)
                    .collect();
                let s = batch.push_window(&sig);
                batch.push_pair(r, s);
            }
        }
        batch
    }

    fn window(batch: &PairBatch, w: u32) -> &[f32] {
        let n = batch.n_fft;
        &batch.windows[w as usize * n..(w as usize + 1) * n]
    }

    #[test]
    fn fft_path_matches_naive_dft_for_a_batch() {
        let mut rng = Rng::new(11);
        let mut delays = Vec::new();
        let batch = random_batch(&mut rng, 3, 64, &mut delays);
        for kernel in [Kernel::Scalar, Kernel::Simd] {
            let mut gcc = CpuGcc::new(64, kernel);
            let mut out = vec![0.0; batch.out_len()];
            gcc.correlate(&batch, &mut out).unwrap();
            for (p, &[r, s]) in batch.pairs.iter().enumerate() {
                let naive = naive_gcc_phat(window(&batch, r), window(&batch, s));
                let fast = batch.correlation(&out, p as u32);
                for (a, b) in naive.iter().zip(fast) {
                    assert!((a - b).abs() < 2e-4, "{kernel:?} pair {p}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn peaks_match_naive_time_domain_correlation() {
        let mut rng = Rng::new(12);
        let mut delays = Vec::new();
        let n_fft = 256;
        let batch = random_batch(&mut rng, 16, n_fft, &mut delays);
        let mut gcc = CpuGcc::new(n_fft, Kernel::Simd);
        let mut out = vec![0.0; batch.out_len()];
        gcc.correlate(&batch, &mut out).unwrap();
        for (p, &[r, s]) in batch.pairs.iter().enumerate() {
            let corr = batch.correlation(&out, p as u32);
            let peak = find_peak(corr, 0, 40).unwrap();
            let naive = naive_xcorr_peak(
                &window(&batch, r)[..n_fft / 2],
                &window(&batch, s)[..n_fft / 2],
                40,
            );
            assert_eq!(naive, delays[p]);
            assert!(
                (peak.lag - naive as f64).abs() < 0.2,
                "pair {p}: fft peak {} vs naive {naive}",
                peak.lag
            );
        }
    }

    #[test]
    fn the_neighbourhood_copies_the_wrapped_samples() {
        for n in [20usize, 40, 64, 100] {
            let r: Vec<f32> = (0..n).map(|k| k as f32).collect();
            for centre in -150..150isize {
                let near = Neighbourhood::new(&r, centre);
                for (k, &v) in near.samples.iter().enumerate() {
                    let at = (near.start + k as isize).rem_euclid(n as isize) as usize;
                    assert_eq!(v, r[at], "n {n}, centre {centre}, k {k}");
                }
            }
        }
    }

    #[test]
    fn peak_values_in_runs_are_the_bits_of_one_at_a_time() {
        let mut rng = Rng::new(31);
        for case in 0..2000 {
            let n = [64, 100, 512][case % 3];
            let r: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let best = (rng.next_u64() % n as u64) as isize - (case % 2) as isize * 5;
            let near = Neighbourhood::new(&r, best);
            let one = |u: isize| {
                let pos = best * PHASES as isize + u;
                near.at(
                    &r,
                    pos.div_euclid(PHASES as isize),
                    pos.rem_euclid(PHASES as isize) as usize,
                )
            };
            let coarse: [isize; 17] = std::array::from_fn(|k| (k as isize - 8) * 8);
            let centre = (rng.next_u64() % 17) as isize * 8 - 64;
            let fine: [isize; 15] = std::array::from_fn(|k| centre - 7 + k as isize);
            // Positions out of the neighbourhood (the general path) and odd strides.
            let far: [isize; 5] = std::array::from_fn(|k| (k as isize - 2) * 300);
            let odd: [isize; 9] = std::array::from_fn(|k| k as isize * 3 - 11);
            for (us, stride) in [
                (&coarse[..], 8),
                (&fine[..], 1),
                (&far[..], 1),
                (&odd[..], 1),
                (&odd[..], 8),
                (&fine[..], 8),
            ] {
                let got: Vec<f64> = match us.len() {
                    17 => near.values(&r, best, coarse, stride).to_vec(),
                    15 => near.values(&r, best, fine, stride).to_vec(),
                    5 => near.values(&r, best, far, stride).to_vec(),
                    _ => near.values(&r, best, odd, stride).to_vec(),
                };
                for (&u, g) in us.iter().zip(got) {
                    assert_eq!(g.to_bits(), one(u).to_bits(), "case {case}, u {u}");
                }
            }
        }
    }

    #[test]
    fn table_interpolation_matches_direct_windowed_sinc() {
        let mut rng = Rng::new(5);
        let r: Vec<f32> = (0..64).map(|_| rng.normal() as f32).collect();
        for base in [-3isize, 0, 5, 40, 63, 70] {
            for phase in [0usize, 1, 17, 32, 63] {
                let tau = base as f64 + phase as f64 / PHASES as f64;
                let direct = interpolate(&r, tau, HALF);
                let table = interpolate_at(&r, base, phase);
                assert!(
                    (direct - table).abs() < 1e-4,
                    "tau {tau}: {direct} vs {table}"
                );
            }
        }
    }

    #[test]
    fn subsample_refinement_recovers_fractional_delays() {
        // A band-limited pulse delayed by a fractional number of samples.
        let n_fft = 256;
        let mut gcc = CpuGcc::new(n_fft, Kernel::Simd);
        for &true_delay in &[3.0, 3.25, 5.5, 7.8, 11.125] {
            let pulse = |t: f64| (-(t / 3.0).powi(2)).exp() * (0.9 * t).cos();
            let mut batch = PairBatch::new(n_fft);
            let shifted = |d: f64| -> Vec<f32> {
                (0..n_fft / 2)
                    .map(|t| pulse(t as f64 - 40.0 - d) as f32)
                    .collect()
            };
            let r = batch.push_window(&shifted(0.0));
            let s = batch.push_window(&shifted(true_delay));
            let pair = batch.push_pair(r, s);
            let mut out = vec![0.0; batch.out_len()];
            gcc.correlate(&batch, &mut out).unwrap();
            let peak = find_peak(batch.correlation(&out, pair), 0, 30).unwrap();
            assert!(
                (peak.lag - true_delay).abs() < 0.05,
                "delay {true_delay}: found {}",
                peak.lag
            );
        }
    }
}
