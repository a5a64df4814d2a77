//! Batched GCC-PHAT on the CPU: plan once, run many.
//!
//! A [`Batch`] holds `n_taps` taps of eight zero-padded channels, each `n_fft` long, already
//! centred (rest level removed), plus the index of each tap's reference channel. [`CpuGcc`]
//! fills a caller-owned buffer with the circular PHAT-weighted cross-correlation of every
//! channel against its tap's reference: `out[(tap·8 + ch)·n_fft + lag]`, lag in samples
//! (negative lags wrap to the end). FFT plans and scratch are built once per `n_fft`.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use super::phat;
use crate::device::N_SENSORS;

/// Input of one batched correlation.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub n_fft: usize,
    /// `n_taps · 8 · n_fft` samples, channel-major per tap.
    pub signals: Vec<f32>,
    /// Reference channel (0-based) of each tap.
    pub reference: Vec<u32>,
}

impl Batch {
    pub fn new(n_fft: usize) -> Self {
        Batch {
            n_fft,
            ..Default::default()
        }
    }

    pub fn n_taps(&self) -> usize {
        self.reference.len()
    }

    pub fn clear(&mut self) {
        self.signals.clear();
        self.reference.clear();
    }

    /// Appends a tap: eight channels (each at most `n_fft` samples, zero-padded here).
    pub fn push_tap(&mut self, channels: &[Vec<f32>; N_SENSORS], reference: usize) {
        for ch in channels {
            let n = ch.len().min(self.n_fft);
            self.signals.extend_from_slice(&ch[..n]);
            self.signals
                .resize(self.signals.len() + self.n_fft - n, 0.0);
        }
        self.reference.push(reference as u32);
    }

    /// Length of the output buffer this batch needs.
    pub fn out_len(&self) -> usize {
        self.n_taps() * N_SENSORS * self.n_fft
    }
}

/// Which PHAT kernel the CPU path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Simd,
}

/// The CPU correlator for one FFT length.
pub struct CpuGcc {
    n_fft: usize,
    kernel: Kernel,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
    scratch: Vec<Complex32>,
    spectra: Vec<Complex32>,
    cross: Vec<Complex32>,
    pair_out: Vec<f32>,
}

impl CpuGcc {
    pub fn new(n_fft: usize, kernel: Kernel) -> Self {
        let mut planner = FftPlanner::new();
        let forward = planner.plan_fft_forward(n_fft);
        let inverse = planner.plan_fft_inverse(n_fft);
        let scratch_len = forward
            .get_inplace_scratch_len()
            .max(inverse.get_inplace_scratch_len());
        CpuGcc {
            n_fft,
            kernel,
            forward,
            inverse,
            scratch: vec![Complex32::default(); scratch_len],
            spectra: vec![Complex32::default(); N_SENSORS * n_fft],
            cross: vec![Complex32::default(); n_fft],
            pair_out: Vec::with_capacity(n_fft),
        }
    }

    pub fn n_fft(&self) -> usize {
        self.n_fft
    }

    /// GCC-PHAT of one `signal` against one `reference` (each at most `n_fft` samples,
    /// zero-padded); returns the circular correlation, valid until the next call.
    pub fn correlate_pair(&mut self, reference: &[f32], signal: &[f32]) -> &[f32] {
        let n = self.n_fft;
        for (slot, x) in [reference, signal].into_iter().enumerate() {
            let spec = &mut self.spectra[slot * n..(slot + 1) * n];
            for (k, c) in spec.iter_mut().enumerate() {
                *c = Complex32::new(x.get(k).copied().unwrap_or(0.0), 0.0);
            }
            self.forward.process_with_scratch(spec, &mut self.scratch);
        }
        let (reference, signal) = self.spectra[..2 * n].split_at(n);
        match self.kernel {
            Kernel::Scalar => phat::phat_scalar(reference, signal, &mut self.cross),
            Kernel::Simd => phat::phat_simd(reference, signal, &mut self.cross),
        }
        self.inverse
            .process_with_scratch(&mut self.cross, &mut self.scratch);
        let scale = 1.0 / n as f32;
        self.pair_out.clear();
        self.pair_out
            .extend(self.cross.iter().map(|c| c.re * scale));
        &self.pair_out
    }

    /// Correlates every channel of every tap against its reference; `out.len() == batch.out_len()`.
    pub fn correlate(&mut self, batch: &Batch, out: &mut [f32]) {
        let n = self.n_fft;
        assert_eq!(batch.n_fft, n, "batch built for another FFT length");
        assert_eq!(
            out.len(),
            batch.out_len(),
            "output buffer has the wrong length"
        );
        let scale = 1.0 / n as f32;
        for (tap, &reference) in batch.reference.iter().enumerate() {
            let signals = &batch.signals[tap * N_SENSORS * n..(tap + 1) * N_SENSORS * n];
            for (spec, sig) in self
                .spectra
                .chunks_exact_mut(n)
                .zip(signals.chunks_exact(n))
            {
                for (c, &x) in spec.iter_mut().zip(sig) {
                    *c = Complex32::new(x, 0.0);
                }
                self.forward.process_with_scratch(spec, &mut self.scratch);
            }
            let r = reference as usize;
            for ch in 0..N_SENSORS {
                let (reference, signal) = (
                    &self.spectra[r * n..(r + 1) * n],
                    &self.spectra[ch * n..(ch + 1) * n],
                );
                match self.kernel {
                    Kernel::Scalar => phat::phat_scalar(reference, signal, &mut self.cross),
                    Kernel::Simd => phat::phat_simd(reference, signal, &mut self.cross),
                }
                self.inverse
                    .process_with_scratch(&mut self.cross, &mut self.scratch);
                let dst = &mut out[(tap * N_SENSORS + ch) * n..(tap * N_SENSORS + ch + 1) * n];
                for (o, c) in dst.iter_mut().zip(&self.cross) {
                    *o = c.re * scale;
                }
            }
        }
    }
}

/// Band-limited value of a circular correlation `r` at fractional lag `tau` (samples), by
/// windowed-sinc interpolation over ±`half` neighbours.
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
/// below one sample on the band-limited interpolant (1/64-sample grid, then a parabola).
pub fn find_peak(r: &[f32], lo: isize, hi: isize) -> Option<Peak> {
    let n = r.len() as isize;
    if hi < lo || n == 0 {
        return None;
    }
    let at = |lag: isize| r[lag.rem_euclid(n) as usize] as f64;
    let best = (lo..=hi).max_by(|&a, &b| at(a).total_cmp(&at(b)))?;
    let side = (lo..=hi)
        .filter(|l| (l - best).abs() > 2)
        .map(at)
        .fold(f64::MIN, f64::max);
    let on_edge = best == lo || best == hi;
    let steps = 64;
    let mut fine_best = (best as f64, at(best));
    for s in -steps..=steps {
        let tau = best as f64 + s as f64 / steps as f64;
        let v = interpolate(r, tau, 16);
        if v > fine_best.1 {
            fine_best = (tau, v);
        }
    }
    let h = 1.0 / steps as f64;
    let (y0, y1, y2) = (
        interpolate(r, fine_best.0 - h, 16),
        fine_best.1,
        interpolate(r, fine_best.0 + h, 16),
    );
    let denom = y0 - 2.0 * y1 + y2;
    let shift = if denom < 0.0 {
        (0.5 * (y0 - y2) / denom).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let lag = fine_best.0 + shift * h;
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

    fn random_batch(rng: &mut Rng, n_taps: usize, n_fft: usize, delays: &mut Vec<usize>) -> Batch {
        let mut batch = Batch::new(n_fft);
        let len = n_fft / 2;
        for tap in 0..n_taps {
            let source: Vec<f32> = (0..len + 40).map(|_| rng.normal() as f32).collect();
            let reference = tap % N_SENSORS;
            let channels: [Vec<f32>; N_SENSORS] = std::array::from_fn(|ch| {
                let d = if ch == reference {
                    0
                } else {
                    (rng.unit() * 30.0) as usize
                };
                delays.push(d);
                (0..len)
                    .map(|t| {
                        let s = if t >= d { source[t - d] } else { 0.0 };
                        s + 0.05 * rng.normal() as f32
                    })
                    .collect()
            });
            batch.push_tap(&channels, reference);
        }
        batch
    }

    #[test]
    fn fft_path_matches_naive_dft_for_a_batch() {
        let mut rng = Rng::new(11);
        let mut delays = Vec::new();
        let batch = random_batch(&mut rng, 3, 64, &mut delays);
        for kernel in [Kernel::Scalar, Kernel::Simd] {
            let mut gcc = CpuGcc::new(64, kernel);
            let mut out = vec![0.0; batch.out_len()];
            gcc.correlate(&batch, &mut out);
            for tap in 0..batch.n_taps() {
                let r = batch.reference[tap] as usize;
                let sig = |ch: usize| &batch.signals[(tap * 8 + ch) * 64..(tap * 8 + ch + 1) * 64];
                for ch in 0..N_SENSORS {
                    let naive = naive_gcc_phat(sig(r), sig(ch));
                    let fast = &out[(tap * 8 + ch) * 64..(tap * 8 + ch + 1) * 64];
                    for (a, b) in naive.iter().zip(fast) {
                        assert!(
                            (a - b).abs() < 2e-4,
                            "{kernel:?} tap {tap} ch {ch}: {a} vs {b}"
                        );
                    }
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
        gcc.correlate(&batch, &mut out);
        for tap in 0..batch.n_taps() {
            let r = batch.reference[tap] as usize;
            let sig = |ch: usize| {
                &batch.signals[(tap * 8 + ch) * n_fft..(tap * 8 + ch) * n_fft + n_fft / 2]
            };
            for ch in 0..N_SENSORS {
                let corr = &out[(tap * 8 + ch) * n_fft..(tap * 8 + ch + 1) * n_fft];
                let peak = find_peak(corr, 0, 40).unwrap();
                let naive = naive_xcorr_peak(sig(r), sig(ch), 40);
                assert_eq!(naive, delays[tap * 8 + ch]);
                assert!(
                    (peak.lag - naive as f64).abs() < 0.2,
                    "tap {tap} ch {ch}: fft peak {} vs naive {naive}",
                    peak.lag
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
            let mut batch = Batch::new(n_fft);
            let channels: [Vec<f32>; N_SENSORS] = std::array::from_fn(|ch| {
                let d = if ch == 0 { 0.0 } else { true_delay };
                (0..n_fft / 2)
                    .map(|t| pulse(t as f64 - 40.0 - d) as f32)
                    .collect()
            });
            batch.push_tap(&channels, 0);
            let mut out = vec![0.0; batch.out_len()];
            gcc.correlate(&batch, &mut out);
            let peak = find_peak(&out[n_fft..2 * n_fft], 0, 30).unwrap();
            assert!(
                (peak.lag - true_delay).abs() < 0.05,
                "delay {true_delay}: found {}",
                peak.lag
            );
        }
    }
}
