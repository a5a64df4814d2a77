//! Robust least squares for unknowns known only by their differences.
//!
//! Both fits of the onset method are of this kind: the arrivals of one chord class relative to
//! each other (from GCC-PHAT between the rays), and the eight tap instants relative to each
//! other (from reciprocal pairs). Each equation says `x_b − x_a = d` with a weight; the
//! solution is fixed up to a common offset, which is set to give mean zero.

/// `x_b − x_a = d` with weight `w`, as `(a, b, d, w)`.
pub type Equation = (usize, usize, f64, f64);

/// Least squares for `n` unknowns from weighted `x_b − x_a = d` equations `(a, b, d, w)`,
/// with mean zero. The normal equations (the weighted graph Laplacian) plus the all-ones
/// matrix, which fixes the free offset, are solved directly; a tiny ridge keeps unknowns in no
/// equation at 0. Systems have at most 16 unknowns.
pub fn solve_differences(n: usize, equations: &[Equation]) -> Vec<f64> {
    let mut m = vec![0.0f64; n * n];
    let mut rhs = vec![0.0f64; n];
    for &(a, b, d, w) in equations {
        m[a * n + a] += w;
        m[b * n + b] += w;
        m[a * n + b] -= w;
        m[b * n + a] -= w;
        rhs[b] += w * d;
        rhs[a] -= w * d;
    }
    let scale = (0..n).map(|k| m[k * n + k]).fold(0.0, f64::max).max(1.0);
    for r in 0..n {
        for c in 0..n {
            m[r * n + c] += scale / n as f64;
        }
        m[r * n + r] += 1e-9 * scale;
    }
    let mut x = gauss_solve(&mut m, &mut rhs, n);
    let mean = x.iter().sum::<f64>() / n.max(1) as f64;
    for v in &mut x {
        *v -= mean;
    }
    x
}

/// [`solve_differences`] with Cauchy weights: an equation with residual `r` gets its weight
/// divided by `1 + (r / scale)²`, over a few reweighted passes from the plain least squares.
/// One tap whose picks are all wrong (a trigger that fired before the impact, a weak tap that
/// left only noise) then moves its own unknown, not the others'. Residuals well within
/// `scale` keep nearly their weights, so consistent data are solved as by plain least squares.
pub fn solve_robust(n: usize, equations: &[Equation], scale: f64) -> Vec<f64> {
    let mut x = solve_differences(n, equations);
    let mut weighted = equations.to_vec();
    for _ in 0..ROBUST_PASSES {
        for (w, &(a, b, d, weight)) in weighted.iter_mut().zip(equations) {
            let r = (d - (x[b] - x[a])).abs();
            w.3 = weight / (1.0 + (r / scale).powi(2));
        }
        x = solve_differences(n, &weighted);
    }
    x
}

/// Reweighted passes of [`solve_robust`].
const ROBUST_PASSES: usize = 8;

/// Solves the dense `n×n` system `m·x = rhs` by Gaussian elimination with partial pivoting.
fn gauss_solve(m: &mut [f64], rhs: &mut [f64], n: usize) -> Vec<f64> {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&a, &b| m[a * n + col].abs().total_cmp(&m[b * n + col].abs()))
            .unwrap_or(col);
        if m[pivot * n + col].abs() < 1e-300 {
            continue;
        }
        if pivot != col {
            for c in 0..n {
                m.swap(pivot * n + c, col * n + c);
            }
            rhs.swap(pivot, col);
        }
        for r in (col + 1)..n {
            let f = m[r * n + col] / m[col * n + col];
            if f != 0.0 {
                for c in col..n {
                    m[r * n + c] -= f * m[col * n + c];
                }
                rhs[r] -= f * rhs[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = ((r + 1)..n).map(|c| m[r * n + c] * x[c]).sum();
        let d = m[r * n + r];
        x[r] = if d.abs() < 1e-300 {
            0.0
        } else {
            (rhs[r] - s) / d
        };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_solved_exactly_with_mean_zero() {
        let truth = [3.0, -1.0, 0.5, 7.0, -9.5];
        let mean = truth.iter().sum::<f64>() / 5.0;
        let mut eq = Vec::new();
        for a in 0..5 {
            for b in (a + 1)..5 {
                eq.push((a, b, truth[b] - truth[a], 1.0 + a as f64));
            }
        }
        let x = solve_differences(5, &eq);
        for (x, t) in x.iter().zip(truth) {
            assert!((x - (t - mean)).abs() < 1e-6, "{x} vs {}", t - mean);
        }
    }

    #[test]
    fn unknowns_in_no_equation_stay_at_the_mean() {
        // 0–1 connected, 2 alone.
        let x = solve_differences(3, &[(0, 1, 4.0, 1.0)]);
        assert!((x[1] - x[0] - 4.0).abs() < 1e-6);
        assert!(x.iter().sum::<f64>().abs() < 1e-9);
        assert!(x[2].abs() < 1e-6);
        assert_eq!(solve_differences(2, &[]), vec![0.0, 0.0]);
    }

    #[test]
    fn one_tap_of_wrong_picks_moves_its_own_lead_not_the_others() {
        // Tap 1's seven equations carry errors of ±2–3 samples (27 µs each); the other 21
        // are exact. Plain least squares spreads them over every lead; the robust fit keeps
        // the others' differences within a microsecond.
        let truth = [3.0, -300.0, 10.0, 20.0, 5.0, 15.0, 25.0, 1.0];
        let errors = [60.0, -75.0, 55.0, -60.0, 80.0, -55.0, 70.0];
        let mut eq = Vec::new();
        for i in 0..8 {
            for j in (i + 1)..8 {
                let mut d = truth[j] - truth[i];
                if i == 1 || j == 1 {
                    d += errors[if i == 1 { j - 1 } else { i }];
                }
                eq.push((i, j, d, 1.0));
            }
        }
        let worst = |x: &[f64]| {
            (2..8)
                .map(|k| ((x[k] - x[0]) - (truth[k] - truth[0])).abs())
                .fold(0.0, f64::max)
        };
        let plain = solve_differences(8, &eq);
        assert!(worst(&plain) > 5.0, "plain least squares: {plain:?}");
        let robust = solve_robust(8, &eq, 13.5);
        assert!(worst(&robust) < 1.0, "robust: {robust:?}");
    }

    #[test]
    fn gaussian_elimination_pivots_and_leaves_a_singular_unknown_at_zero() {
        // 0·x + 2·y = 4, 3·x + 1·y = 5: the first pivot is in the second row.
        let mut m = vec![0.0, 2.0, 3.0, 1.0];
        let x = gauss_solve(&mut m, &mut [4.0, 5.0], 2);
        assert!(
            (x[0] - 1.0).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12,
            "{x:?}"
        );
        let x = gauss_solve(&mut [1.0, 0.0, 0.0, 0.0], &mut [3.0, 0.0], 2);
        assert_eq!(x, vec![3.0, 0.0]);
    }
}
