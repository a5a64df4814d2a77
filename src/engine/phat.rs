//! The PHAT weighting kernel: cross-spectrum of a signal against a reference, divided by its
//! magnitude. SIMD (`wide::f32x8`) with a scalar twin that the tests hold it against.
//!
//! `out[k] = sig[k]·conj(ref[k]) / (|sig[k]·conj(ref[k])| + eps)`; all slices have one length.

use rustfft::num_complex::Complex32;
use wide::f32x8;

/// Guards against division by zero in empty bins; small against 12-bit spectra.
pub const PHAT_EPS: f32 = 1e-12;

/// Scalar reference implementation.
pub fn phat_scalar(reference: &[Complex32], signal: &[Complex32], out: &mut [Complex32]) {
    assert!(reference.len() == signal.len() && signal.len() == out.len());
    for ((r, s), o) in reference.iter().zip(signal).zip(out.iter_mut()) {
        let g = s * r.conj();
        *o = g / (g.norm() + PHAT_EPS);
    }
}

/// Vectorised implementation, eight bins per step, scalar tail.
pub fn phat_simd(reference: &[Complex32], signal: &[Complex32], out: &mut [Complex32]) {
    assert!(reference.len() == signal.len() && signal.len() == out.len());
    let n8 = reference.len() / 8 * 8;
    let eps = f32x8::splat(PHAT_EPS);
    for ((r, s), o) in reference[..n8]
        .chunks_exact(8)
        .zip(signal[..n8].chunks_exact(8))
        .zip(out[..n8].chunks_exact_mut(8))
    {
        let r_re = f32x8::from(std::array::from_fn::<f32, 8, _>(|i| r[i].re));
        let r_im = f32x8::from(std::array::from_fn::<f32, 8, _>(|i| r[i].im));
        let s_re = f32x8::from(std::array::from_fn::<f32, 8, _>(|i| s[i].re));
        let s_im = f32x8::from(std::array::from_fn::<f32, 8, _>(|i| s[i].im));
        // s · conj(r)
        let g_re = s_re * r_re + s_im * r_im;
        let g_im = s_im * r_re - s_re * r_im;
        let inv = f32x8::ONE / ((g_re * g_re + g_im * g_im).sqrt() + eps);
        let (o_re, o_im) = ((g_re * inv).to_array(), (g_im * inv).to_array());
        for i in 0..8 {
            o[i] = Complex32::new(o_re[i], o_im[i]);
        }
    }
    phat_scalar(&reference[n8..], &signal[n8..], &mut out[n8..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn simd_matches_scalar_on_random_spectra() {
        let mut rng = Rng::new(7);
        for n in [1usize, 7, 8, 9, 64, 257, 1024] {
            let mut gen_vec = || -> Vec<Complex32> {
                (0..n)
                    .map(|_| {
                        let scale = 10f64.powf(rng.uniform(-3.0, 4.0));
                        Complex32::new((rng.normal() * scale) as f32, (rng.normal() * scale) as f32)
                    })
                    .collect()
            };
            let (a, b) = (gen_vec(), gen_vec());
            let mut o1 = vec![Complex32::default(); n];
            let mut o2 = vec![Complex32::default(); n];
            phat_scalar(&a, &b, &mut o1);
            phat_simd(&a, &b, &mut o2);
            for (x, y) in o1.iter().zip(&o2) {
                assert!((x - y).norm() < 1e-5, "n={n}: {x} vs {y}");
                assert!((x.norm() - 1.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn zero_bins_stay_finite() {
        let z = vec![Complex32::default(); 16];
        let mut o = vec![Complex32::new(9.0, 9.0); 16];
        phat_simd(&z, &z, &mut o);
        assert!(o.iter().all(|c| c.re == 0.0 && c.im == 0.0));
    }
}
