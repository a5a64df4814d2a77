//! The tomogram: a velocity picture of the trunk's cross-section from the 8×8 velocity matrix.
//!
//! Method: straight-ray SIRT (simultaneous iterative reconstruction technique; Gilbert 1972,
//! J. Theor. Biol. 36:105–117), in the SART weighting of Andersen & Kak 1984 (Ultrasonic
//! Imaging 6:81–94), an algebraic method common in few-sensor stress-wave tomography. The
//! unknowns are the slownesses (s/m) of an N×N grid of cells; each usable ray is a straight chord
//! whose travel time is the sum of cell length × slowness. Every iteration computes all ray
//! residuals at once, gives each cell the length-weighted mean of the residual slowness of the
//! rays crossing it, smooths that correction over a few cells (few rays leave the system badly
//! under-determined; the smoothing keeps the picture from turning into ray streaks), adds it,
//! and clamps each cell to a velocity range: the plausible minimum up to a little above the
//! fastest ray, since a straight ray's apparent velocity is an average along its path and decay
//! only slows the wave. The two directions of a ray travel the same path, so their times of flight
//! are averaged; a zero or non-finite velocity is an unusable ray and is ignored.
//!
//! Grid convention: `velocity_m_s[row][col]`, row 0 at the top (+y), column 0 at the left (−x);
//! the grid spans the trunk diameter in both directions (`extent_m`), and a cell whose centre
//! lies outside the trunk circle is `None` (null in JSON). Sensor k (0-based) sits at angle
//! k·45° counter-clockwise from +x (see [`crate::geometry`]).
//!
//! Pure code: [`draw`] turns a tomogram into PNG bytes in memory, the caller writes them.

pub mod draw;
mod font;

use serde::Serialize;

use crate::geometry::N_SENSORS;
use crate::geometry::{chord_m, sensor_xy};

pub use draw::{render_png, title};

/// Grid size used unless asked otherwise.
pub const DEFAULT_N: usize = 64;

/// The method's name as written in reports.
pub const METHOD: &str = "sirt-straight-ray";

/// Reconstruction settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TomogramConfig {
    /// Cells per side (at least 64).
    pub n: usize,
    pub iterations: usize,
    /// Relaxation factor of each update (0, 1].
    pub relaxation: f64,
    /// Half-width of the box smoothing of each correction, as a fraction of the diameter.
    pub smoothing: f64,
    /// Box smoothing passes per iteration (two approach a Gaussian).
    pub smoothing_passes: usize,
    /// Slowest velocity a cell may take, m/s.
    pub min_velocity_m_s: f64,
    /// A cell may be at most this factor faster than the fastest ray.
    pub max_over_fastest: f64,
}

impl Default for TomogramConfig {
    fn default() -> Self {
        TomogramConfig {
            n: DEFAULT_N,
            iterations: 60,
            relaxation: 1.0,
            smoothing: 0.08,
            smoothing_passes: 2,
            min_velocity_m_s: 50.0,
            max_over_fastest: 1.0,
        }
    }
}

/// Why no tomogram could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TomogramError {
    #[error("the trunk diameter must be a positive number of metres, got {0}")]
    BadDiameter(f64),
    #[error("the grid must have at least 64 cells per side, got {0}")]
    GridTooSmall(usize),
    #[error("only {found} usable rays, a tomogram needs at least {needed}")]
    TooFewRays { found: usize, needed: usize },
}

/// Fewest usable sensor pairs a picture is drawn from.
pub const MIN_RAYS: usize = 6;

/// A reconstructed cross-section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tomogram {
    /// Cells per side.
    pub n: usize,
    /// Side of the square grid, m (the trunk diameter).
    pub extent_m: f64,
    pub method: &'static str,
    /// m/s, `[row][col]`, row 0 at the top (+y), column 0 at the left (−x); `None` outside the trunk.
    pub velocity_m_s: Vec<Vec<Option<f64>>>,
    /// Usable sensor pairs (both directions count once).
    #[serde(skip)]
    pub n_rays: usize,
}

impl Tomogram {
    /// Centre of cell (row, col) in metres, trunk centre at the origin.
    pub fn cell_xy(&self, row: usize, col: usize) -> (f64, f64) {
        cell_xy(self.n, self.extent_m, row, col)
    }

    /// Velocities of the cells inside the trunk.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.velocity_m_s.iter().flatten().filter_map(|v| *v)
    }
}

fn cell_xy(n: usize, extent_m: f64, row: usize, col: usize) -> (f64, f64) {
    let h = extent_m / n as f64;
    (
        -0.5 * extent_m + (col as f64 + 0.5) * h,
        0.5 * extent_m - (row as f64 + 0.5) * h,
    )
}

/// One sensor pair: observed time, and the cells it crosses with their lengths.
struct Ray<'a> {
    time_s: f64,
    length_m: f64,
    cells: &'a [(usize, f64)],
}

/// The traced chords of every sensor pair for one grid and diameter, `cells[i·8 + j]` for i < j.
/// Tracing depends only on (n, diameter), which a run keeps fixed, so each thread keeps the last
/// one ([`with_traces`]) instead of tracing 28 chords per set.
struct Traces {
    n: usize,
    diameter_bits: u64,
    cells: Vec<Vec<(usize, f64)>>,
}

impl Traces {
    fn new(n: usize, diameter_m: f64) -> Self {
        let cells = (0..N_SENSORS * N_SENSORS)
            .map(|p| {
                let (i, j) = (p / N_SENSORS, p % N_SENSORS);
                if i < j {
                    trace(
                        sensor_xy(i, diameter_m),
                        sensor_xy(j, diameter_m),
                        n,
                        diameter_m,
                    )
                } else {
                    Vec::new()
                }
            })
            .collect();
        Traces {
            n,
            diameter_bits: diameter_m.to_bits(),
            cells,
        }
    }
}

/// Runs `f` with the traces for (n, diameter), from this thread's cache when it matches.
fn with_traces<R>(n: usize, diameter_m: f64, f: impl FnOnce(&Traces) -> R) -> R {
    thread_local! {
        static CACHE: std::cell::RefCell<Option<Traces>> = const { std::cell::RefCell::new(None) };
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let fresh = cache
            .as_ref()
            .is_some_and(|t| t.n == n && t.diameter_bits == diameter_m.to_bits());
        if !fresh {
            *cache = Some(Traces::new(n, diameter_m));
        }
        f(cache.as_ref().expect("filled above"))
    })
}

/// The usable pairs of a velocity matrix: (i, j, mean ToF in s), i < j.
fn usable_pairs(
    velocity: &[[f64; N_SENSORS]; N_SENSORS],
    diameter_m: f64,
) -> Vec<(usize, usize, f64)> {
    let usable = |v: f64| v.is_finite() && v > 0.0;
    let mut pairs = Vec::new();
    for (i, row) in velocity.iter().enumerate() {
        for (j, &forward) in row.iter().enumerate().skip(i + 1) {
            let length = chord_m(i, j, diameter_m);
            let times: Vec<f64> = [forward, velocity[j][i]]
                .into_iter()
                .filter(|&v| usable(v))
                .map(|v| length / v)
                .collect();
            if !times.is_empty() {
                pairs.push((i, j, times.iter().sum::<f64>() / times.len() as f64));
            }
        }
    }
    pairs
}

/// Cells crossed by the segment a–b and the length inside each, by fine sampling.
fn trace(a: (f64, f64), b: (f64, f64), n: usize, extent_m: f64) -> Vec<(usize, f64)> {
    let length = (b.0 - a.0).hypot(b.1 - a.1);
    let h = extent_m / n as f64;
    let steps = ((length / h) * 16.0).ceil().max(1.0) as usize;
    let dl = length / steps as f64;
    let mut acc: Vec<(usize, f64)> = Vec::new();
    for s in 0..steps {
        let t = (s as f64 + 0.5) / steps as f64;
        let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
        let col = (((x + 0.5 * extent_m) / h).floor() as isize).clamp(0, n as isize - 1) as usize;
        let row = (((0.5 * extent_m - y) / h).floor() as isize).clamp(0, n as isize - 1) as usize;
        let cell = row * n + col;
        match acc.last_mut() {
            Some((c, l)) if *c == cell => *l += dl,
            _ => acc.push((cell, dl)),
        }
    }
    acc.sort_by_key(|&(c, _)| c);
    acc.dedup_by(|later, first| {
        if later.0 == first.0 {
            first.1 += later.1;
            true
        } else {
            false
        }
    });
    acc
}

/// Reconstructs the cross-section from an 8×8 velocity matrix (row = tapped sensor, m/s,
/// 0 = unusable) on a trunk of `diameter_m`.
pub fn reconstruct(
    velocity: &[[f64; N_SENSORS]; N_SENSORS],
    diameter_m: f64,
    cfg: &TomogramConfig,
) -> Result<Tomogram, TomogramError> {
    if !(diameter_m.is_finite() && diameter_m > 0.0) {
        return Err(TomogramError::BadDiameter(diameter_m));
    }
    let n = cfg.n;
    if n < DEFAULT_N {
        return Err(TomogramError::GridTooSmall(n));
    }
    let pairs = usable_pairs(velocity, diameter_m);
    if pairs.len() < MIN_RAYS {
        return Err(TomogramError::TooFewRays {
            found: pairs.len(),
            needed: MIN_RAYS,
        });
    }
    Ok(with_traces(n, diameter_m, |traces| {
        sirt(&pairs, traces, diameter_m, cfg)
    }))
}

/// The SIRT iterations over the usable `pairs` (at least [`MIN_RAYS`]).
fn sirt(
    pairs: &[(usize, usize, f64)],
    traces: &Traces,
    diameter_m: f64,
    cfg: &TomogramConfig,
) -> Tomogram {
    let n = cfg.n;
    let rays: Vec<Ray> = pairs
        .iter()
        .map(|&(i, j, time_s)| Ray {
            time_s,
            length_m: chord_m(i, j, diameter_m),
            cells: &traces.cells[i * N_SENSORS + j],
        })
        .collect();

    let fastest = rays
        .iter()
        .map(|r| r.length_m / r.time_s)
        .fold(0.0, f64::max);
    let s_min = 1.0 / (fastest * cfg.max_over_fastest);
    let s_max = 1.0 / cfg.min_velocity_m_s.min(fastest);
    // Start from the mean slowness of all rays.
    let s0 =
        rays.iter().map(|r| r.time_s).sum::<f64>() / rays.iter().map(|r| r.length_m).sum::<f64>();
    let mut slowness = vec![s0; n * n];
    let mut weight = vec![0.0; n * n];
    for ray in &rays {
        for &(c, l) in ray.cells {
            weight[c] += l;
        }
    }
    let inside: Vec<bool> = (0..n * n)
        .map(|c| {
            let (x, y) = cell_xy(n, diameter_m, c / n, c % n);
            x.hypot(y) <= 0.5 * diameter_m
        })
        .collect();
    let radius_cells = ((cfg.smoothing * n as f64).round() as usize).max(1);
    let mut correction = vec![0.0; n * n];
    let mut bufs = SmoothBuffers::new(n);
    let mut weight_sum = vec![0.0; n * n];
    box_sum_2d(
        n,
        radius_cells,
        &weight,
        &mut weight_sum,
        &mut bufs.row_sums,
        &mut bufs.acc,
    );
    for _ in 0..cfg.iterations {
        correction.iter_mut().for_each(|c| *c = 0.0);
        for ray in &rays {
            let predicted: f64 = ray.cells.iter().map(|&(c, l)| l * slowness[c]).sum();
            let residual_slowness = (ray.time_s - predicted) / ray.length_m;
            for &(c, l) in ray.cells {
                correction[c] += l * residual_slowness;
            }
        }
        // Divide everywhere and select after, so the loop has no branch and vectorises.
        for (c, w) in correction.iter_mut().zip(&weight) {
            let q = *c / w;
            *c = if *w > 0.0 { q } else { *c };
        }
        for _ in 0..cfg.smoothing_passes {
            smooth(
                &mut correction,
                &weight,
                &weight_sum,
                n,
                radius_cells,
                &mut bufs,
            );
        }
        for (s, c) in slowness.iter_mut().zip(&correction) {
            *s = (*s + cfg.relaxation * c).clamp(s_min, s_max);
        }
    }
    let velocity_m_s = (0..n)
        .map(|row| {
            (0..n)
                .map(|col| inside[row * n + col].then(|| 1.0 / slowness[row * n + col]))
                .collect()
        })
        .collect();
    Tomogram {
        n,
        extent_m: diameter_m,
        method: METHOD,
        velocity_m_s,
        n_rays: rays.len(),
    }
}

/// Running box sums of width `2·radius + 1` down the columns of the `n`×`n` row-major field
/// `src`: `dst[i][c]` is the sum of `src[k][c]` for `k` in `i − radius ..= i + radius` (clipped
/// to the field). All columns advance together, one running sum each in `acc`, so the sums
/// vectorise, while each column's sum is formed in the order a one-column loop would. The cost
/// does not grow with the radius.
fn box_columns(n: usize, radius: usize, src: &[f64], dst: &mut [f64], acc: &mut [f64]) {
    let acc = &mut acc[..n];
    acc.fill(0.0);
    let row = |k: usize| &src[k * n..(k + 1) * n];
    for k in 0..radius.min(n - 1) {
        acc.iter_mut().zip(row(k)).for_each(|(s, x)| *s += x);
    }
    for (i, out) in dst[..n * n].chunks_exact_mut(n).enumerate() {
        if i + radius < n {
            acc.iter_mut()
                .zip(row(i + radius))
                .for_each(|(s, x)| *s += x);
        }
        if i > radius {
            acc.iter_mut()
                .zip(row(i - radius - 1))
                .for_each(|(s, x)| *s -= x);
        }
        out.copy_from_slice(acc);
    }
}

/// Running box sums of width `2·radius + 1` along the rows of the `n`×`n` row-major field
/// `src`: `dst[r][i]` is the sum of `src[r][k]` for `k` in `i − radius ..= i + radius`
/// (clipped). Rows go `L` at a time, so `L` independent running sums overlap in the pipeline;
/// each row's sum is formed in the order a one-row loop would.
fn box_rows(n: usize, radius: usize, src: &[f64], dst: &mut [f64]) {
    const L: usize = 8;
    let full = n / L * L;
    for row0 in (0..full).step_by(L) {
        box_rows_block::<L>(n, radius, row0, src, dst);
    }
    for row0 in full..n {
        box_rows_block::<1>(n, radius, row0, src, dst);
    }
}

/// [`box_rows`] for rows `row0 .. row0 + L`.
#[inline(always)]
fn box_rows_block<const L: usize>(
    n: usize,
    radius: usize,
    row0: usize,
    src: &[f64],
    dst: &mut [f64],
) {
    let src: [&[f64]; L] = std::array::from_fn(|l| &src[(row0 + l) * n..(row0 + l + 1) * n]);
    let dst = &mut dst[row0 * n..(row0 + L) * n];
    let mut acc = [0.0f64; L];
    for k in 0..radius.min(n - 1) {
        for l in 0..L {
            acc[l] += src[l][k];
        }
    }
    for i in 0..n {
        if i + radius < n {
            for l in 0..L {
                acc[l] += src[l][i + radius];
            }
        }
        if i > radius {
            for l in 0..L {
                acc[l] -= src[l][i - radius - 1];
            }
        }
        for l in 0..L {
            dst[l * n + i] = acc[l];
        }
    }
}

/// Buffers of [`box_sum_2d`] and [`smooth`], `n·n` long (`acc`: `n`).
struct SmoothBuffers {
    product: Vec<f64>,
    row_sums: Vec<f64>,
    acc: Vec<f64>,
}

impl SmoothBuffers {
    fn new(n: usize) -> Self {
        SmoothBuffers {
            product: vec![0.0; n * n],
            row_sums: vec![0.0; n * n],
            acc: vec![0.0; n],
        }
    }
}

/// Separable box sums of the `n`×`n` field `src`: along the rows into `row_sums`, then along
/// the columns into `out`.
fn box_sum_2d(
    n: usize,
    radius: usize,
    src: &[f64],
    out: &mut [f64],
    row_sums: &mut [f64],
    acc: &mut [f64],
) {
    box_rows(n, radius, src, row_sums);
    box_columns(n, radius, row_sums, out, acc);
}

/// Box smoothing of the correction, each cell weighted by the ray length through it, so cells
/// no ray crosses take their neighbours' correction instead of diluting it. `weight_sum` is the
/// box sum of `weight` ([`box_sum_2d`] of it), the same for every pass, so it is computed once.
fn smooth(
    field: &mut [f64],
    weight: &[f64],
    weight_sum: &[f64],
    n: usize,
    radius: usize,
    bufs: &mut SmoothBuffers,
) {
    let SmoothBuffers {
        product,
        row_sums,
        acc,
    } = bufs;
    for ((p, f), w) in product.iter_mut().zip(&*field).zip(weight) {
        *p = f * w;
    }
    box_sum_2d(n, radius, product, field, row_sums, acc);
    for (f, w) in field.iter_mut().zip(weight_sum) {
        let q = *f / w;
        *f = if *w > 1e-12 { q } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{Decay, SimParams, true_tof_us};

    /// The velocity matrix the simulator's ground truth gives: chord / true ToF.
    fn truth_matrix(p: &SimParams) -> [[f64; N_SENSORS]; N_SENSORS] {
        std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                if i == j {
                    0.0
                } else {
                    chord_m(i, j, p.diameter_m) / true_tof_us(i, j, p) * 1e6
                }
            })
        })
    }

    /// Mean velocity inside the decay disc and in the sound wood clear of it.
    pub(crate) fn inside_outside(t: &Tomogram, d: &Decay) -> (f64, f64) {
        let r = 0.5 * t.extent_m;
        let (cx, cy) = (d.x * r, d.y * r);
        let (mut a, mut na, mut b, mut nb) = (0.0, 0, 0.0, 0);
        for row in 0..t.n {
            for col in 0..t.n {
                let Some(v) = t.velocity_m_s[row][col] else {
                    continue;
                };
                let (x, y) = t.cell_xy(row, col);
                let dist = (x - cx).hypot(y - cy);
                if dist <= d.radius * r {
                    a += v;
                    na += 1;
                } else if dist >= (d.radius + 0.2) * r {
                    b += v;
                    nb += 1;
                }
            }
        }
        (a / na as f64, b / nb as f64)
    }

    fn decays() -> Vec<Decay> {
        vec![
            Decay {
                x: 0.3,
                y: -0.2,
                radius: 0.45,
                velocity_factor: 0.45,
            },
            Decay {
                x: -0.35,
                y: 0.25,
                radius: 0.4,
                velocity_factor: 0.5,
            },
            Decay {
                x: 0.0,
                y: 0.4,
                radius: 0.5,
                velocity_factor: 0.4,
            },
            Decay {
                x: -0.2,
                y: -0.3,
                radius: 0.45,
                velocity_factor: 0.45,
            },
        ]
    }

    #[test]
    fn grid_locates_decay_from_true_velocities() {
        for (k, d) in decays().into_iter().enumerate() {
            let p = SimParams {
                diameter_m: 0.2 + 0.15 * k as f64,
                velocity_m_s: 1200.0 + 200.0 * k as f64,
                decay: Some(d),
                ..SimParams::default()
            };
            let t =
                reconstruct(&truth_matrix(&p), p.diameter_m, &TomogramConfig::default()).unwrap();
            let (inside, outside) = inside_outside(&t, &d);
            let ratio = inside / outside;
            eprintln!("{d:?}: inside {inside:.0} outside {outside:.0} m/s, ratio {ratio:.3}");
            assert!(ratio < 0.85, "{d:?}: ratio {ratio:.3}");
        }
    }

    #[test]
    fn sound_trunk_is_uniform_and_null_outside() {
        let p = SimParams::default();
        let t = reconstruct(&truth_matrix(&p), p.diameter_m, &TomogramConfig::default()).unwrap();
        assert_eq!(
            (t.n, t.velocity_m_s.len(), t.velocity_m_s[0].len()),
            (64, 64, 64)
        );
        assert_eq!(t.n_rays, 28);
        assert!(t.velocity_m_s[0][0].is_none() && t.velocity_m_s[63][63].is_none());
        assert!(t.velocity_m_s[32][32].is_some());
        for v in t.values() {
            assert!((v - 1500.0).abs() < 1.0, "{v}");
        }
    }

    #[test]
    fn unusable_rays_are_ignored_and_directions_averaged() {
        let p = SimParams::default();
        let mut m = truth_matrix(&p);
        m[0][4] = 0.0;
        m[2][5] = f64::NAN;
        let t = reconstruct(&m, p.diameter_m, &TomogramConfig::default()).unwrap();
        assert_eq!(t.n_rays, 28);
        m[4][0] = 0.0;
        let t = reconstruct(&m, p.diameter_m, &TomogramConfig::default()).unwrap();
        assert_eq!(t.n_rays, 27);
        let few = [[0.0; N_SENSORS]; N_SENSORS];
        assert!(matches!(
            reconstruct(&few, 0.3, &TomogramConfig::default()),
            Err(TomogramError::TooFewRays { found: 0, .. })
        ));
        assert!(reconstruct(&m, 0.0, &TomogramConfig::default()).is_err());
    }

    #[test]
    fn engine_on_simulated_files_locates_decay() {
        use crate::engine::{Engine, EngineConfig};
        use crate::rng::Rng;
        use crate::simulate::{read_set, simulate_set};
        let mut rng = Rng::new(7);
        for (k, d) in decays().into_iter().enumerate() {
            let p = SimParams {
                diameter_m: 0.3 + 0.1 * k as f64,
                decay: Some(d),
                ..SimParams::default()
            };
            let (files, _) = simulate_set(&p, "20-79-18-81-6E-65", 1_755_752_474, &mut rng);
            let set = read_set(&files);
            let mut engine = Engine::new(EngineConfig {
                diameter_m: p.diameter_m,
                ..EngineConfig::default()
            });
            let est = engine
                .estimate(&set.input)
                .expect("the CPU engine never fails");
            let t = reconstruct(
                &est.plain_matrix(),
                p.diameter_m,
                &TomogramConfig::default(),
            )
            .unwrap();
            let (inside, outside) = inside_outside(&t, &d);
            let ratio = inside / outside;
            eprintln!("engine, {} rays, {d:?}: ratio {ratio:.3}", t.n_rays);
            assert!(ratio < 0.85, "{d:?}: ratio {ratio:.3}");
        }
    }
}
