//! Drawing a tomogram: a picture of 256 colours (an indexed PNG: a palette of the few fixed
//! colours and [`SCALE_LEVELS`] levels of the colour scale) encoded to PNG bytes in memory, in
//! pure Rust.
//!
//! Layout (720×640 px): a title line (device and time, UTC) and a line with the diameter, method
//! and number of rays; the trunk's cross-section coloured by velocity, its outline, the eight
//! sensors numbered 1–8 at their places (sensor 1 at the right, counting counter-clockwise, +y
//! up, as in [`crate::geometry`]); and a colour scale in m/s at the right. Cells that rest on
//! few rays ([`super::LOW_COVERAGE_RAYS`]) are hatched in grey, and a third line says so.
//!
//! Colour scale: relative to the sound wood of this trunk, so a sound trunk is green whatever its
//! species. The reference is a high percentile of the cells ([`REFERENCE_PERCENTILE`]), not the
//! fastest cell, so one fast outlier ray cannot turn the rest of a sound trunk orange. The
//! reference and faster are green, then yellow, orange and red down to magenta at
//! [`SLOWEST_SHOWN`] of the reference; slower cells are magenta too.

use std::ops::Range;

use super::Tomogram;
use super::font::{GLYPH_H, GLYPH_W, glyph};

pub const WIDTH: usize = 720;
pub const HEIGHT: usize = 640;

/// The bottom of the colour scale as a fraction of the reference velocity.
pub const SLOWEST_SHOWN: f64 = 0.4;

/// The share of cells slower than the reference velocity (the top of the scale).
pub const REFERENCE_PERCENTILE: f64 = 0.8;

/// Colour stops from slow (0) to fast (1).
const STOPS: [(f64, [u8; 3]); 5] = [
    (0.0, [180, 0, 190]),
    (0.3, [220, 20, 30]),
    (0.55, [250, 140, 20]),
    (0.75, [250, 225, 40]),
    (1.0, [20, 150, 60]),
];

const CENTRE: (f64, f64) = (300.0, 352.0);
const RADIUS_PX: f64 = 228.0;
/// A palette index.
type Ink = u8;
/// The fixed colours, palette indices 0..4; the scale's levels follow.
const FIXED: [[u8; 3]; 4] = [[255, 255, 255], [0, 0, 0], [90, 90, 90], [200, 200, 200]];
const WHITE: Ink = 0;
const BLACK: Ink = 1;
const GREY: Ink = 2;
/// Pixels of the cross-section without a velocity.
const NO_DATA: Ink = 3;
/// Levels of the colour scale in the palette (the rest of 256 entries).
pub const SCALE_LEVELS: usize = 256 - FIXED.len();

/// The colour of a fraction of the scale, 0 = slowest shown, 1 = fastest.
pub fn colour(f: f64) -> [u8; 3] {
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    };
    for w in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if f <= b {
            let t = (f - a) / (b - a);
            return std::array::from_fn(|k| {
                (ca[k] as f64 + t * (cb[k] as f64 - ca[k] as f64) + 0.5) as u8
            });
        }
    }
    STOPS[STOPS.len() - 1].1
}

/// The palette: [`FIXED`], then [`colour`] at [`SCALE_LEVELS`] evenly spaced levels of the
/// scale. A level is 1/502 of the scale from any fraction, so a channel differs from the exact
/// [`colour`] by at most 3 of 255 (the steepest stretch of the scale changes a channel by 230
/// over 0.25 of it).
fn palette() -> &'static [u8] {
    static PALETTE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PALETTE.get_or_init(|| {
        FIXED
            .iter()
            .copied()
            .chain((0..SCALE_LEVELS).map(|k| colour(k as f64 / (SCALE_LEVELS - 1) as f64)))
            .flatten()
            .collect()
    })
}

/// The palette level nearest to `f` (clamped to [0, 1]; not finite: 0).
#[inline(always)]
fn scale_ink(f: f64) -> Ink {
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let level = f * (SCALE_LEVELS - 1) as f64 + 0.5;
    // SAFETY: `level` is finite and in [0.5, SCALE_LEVELS − 0.5], so it truncates to a level
    // that fits (the checked `as` costs a third of the picture's time in this loop).
    let level: u8 = unsafe { level.to_int_unchecked() };
    FIXED.len() as Ink + level
}

/// A title line: `DEVICE YYYY-MM-DD HH:MM UTC` (the device left out when unknown).
pub fn title(device: Option<&str>, unix_s: i64) -> String {
    match device {
        Some(d) => format!("{d} {}", format_utc(unix_s)),
        None => format_utc(unix_s),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC` (proleptic Gregorian calendar).
pub fn format_utc(unix_s: i64) -> String {
    let days = unix_s.div_euclid(86_400);
    let secs = unix_s.rem_euclid(86_400);
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// A canvas of palette indices, one byte per pixel.
struct Canvas {
    px: Vec<Ink>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: vec![WHITE; WIDTH * HEIGHT],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Ink) {
        if (0..WIDTH as i64).contains(&x) && (0..HEIGHT as i64).contains(&y) {
            self.px[y as usize * WIDTH + x as usize] = c;
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Ink) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// Pixels whose centre lies between radii `r0` and `r1` of (cx, cy). Per row only the
    /// columns near the two radii are tested (a pixel of margin around where the circles cross
    /// the row), not the whole square: the outline is a thin ring of radius 230.
    fn ring(&mut self, (cx, cy): (f64, f64), r0: f64, r1: f64, c: Ink) {
        let (y0, y1) = ((cy - r1).floor() as i64, (cy + r1).ceil() as i64);
        for y in y0..=y1 {
            let dy = y as f64 + 0.5 - cy;
            let outer = r1 * r1 - dy * dy;
            if outer < 0.0 {
                continue;
            }
            let reach = outer.sqrt() + 1.0;
            let gap = (r0 * r0 - dy * dy).max(0.0).sqrt() - 1.0;
            let (a0, a1) = ((cx - reach).floor() as i64, (cx - gap).ceil() as i64);
            let (b0, b1) = ((cx + gap).floor() as i64, (cx + reach).ceil() as i64);
            let runs = if gap > 0.0 && a1 < b0 {
                [(a0, a1), (b0, b1)]
            } else {
                [(a0, b1), (1, 0)]
            };
            for (from, to) in runs {
                for x in from..=to {
                    let dx = x as f64 + 0.5 - cx;
                    let d2 = dx * dx + dy * dy;
                    if d2 >= r0 * r0 && d2 <= r1 * r1 {
                        self.set(x, y, c);
                    }
                }
            }
        }
    }

    /// Text with its top-left corner at (x, y), each font pixel `scale`×`scale`.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Ink) {
        for (k, ch) in s.chars().enumerate() {
            let Some(rows) = glyph(ch) else { continue };
            let gx = x + k as i64 * (GLYPH_W as i64 + 1) * scale;
            for (r, row) in rows.iter().enumerate() {
                for (col, p) in row.bytes().enumerate() {
                    if p == b'#' {
                        self.rect(
                            gx + col as i64 * scale,
                            y + r as i64 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        super::indexed_png::encode(WIDTH, HEIGHT, palette(), &self.px)
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * (GLYPH_W as i64 + 1) * scale - scale
}

/// The pixel columns of the cross-section (those on the canvas), as arrays the row loop reads
/// in step: each column's unit x, the grid column `c0` (whole) at or left of it plus `fc`
/// where it falls between the cell centres, and the stretches of columns that blend the same
/// two grid columns.
struct Columns {
    /// Pixel x of the first column.
    px0: usize,
    x: Vec<f64>,
    c0: Vec<f64>,
    fc: Vec<f64>,
    /// `1 − fc`, the weight of grid column `c0`.
    w0: Vec<f64>,
    /// Consecutive columns of equal `c0`, in order and covering all columns: `Some(c0)` where
    /// `c0` and `c0 + 1` are grid columns (the blended row can serve), `None` where not.
    stretches: Vec<(Option<usize>, Range<usize>)>,
    /// Per column, the grid column whose blended value and the next one's [`scale_inks`]
    /// takes: `c0` where it and `c0 + 1` are grid columns, else 0 (such pixels are coloured
    /// by the general path after).
    gather: Vec<usize>,
}

impl Columns {
    /// The columns from the cross-section's left edge to its right, for `grid`.
    fn new(grid: &Grid) -> Self {
        let (cx, _) = CENTRE;
        let px0 = ((cx - RADIUS_PX) as i64).max(0);
        let px1 = ((cx + RADIUS_PX) as i64).min(WIDTH as i64 - 1);
        let x: Vec<f64> = (px0..=px1)
            .map(|px| (px as f64 + 0.5 - cx) / RADIUS_PX)
            .collect();
        let gc: Vec<f64> = x.iter().map(|&x| grid.col_of(x)).collect();
        let c0: Vec<f64> = gc.iter().map(|g| g.floor()).collect();
        let fc: Vec<f64> = gc.iter().zip(&c0).map(|(g, c)| g - c).collect();
        let w0 = fc.iter().map(|f| 1.0 - f).collect();
        let inner = |c: f64| (c >= 0.0 && c + 1.0 < grid.n).then_some(c as usize);
        let mut stretches: Vec<(Option<usize>, Range<usize>)> = Vec::new();
        for (k, &c) in c0.iter().enumerate() {
            match stretches.last_mut() {
                Some((_, run)) if c0[run.start] == c => run.end = k + 1,
                _ => stretches.push((inner(c), k..k + 1)),
            }
        }
        let mut gather = vec![0; x.len()];
        for (inner, run) in &stretches {
            gather[run.clone()].fill(inner.unwrap_or(0));
        }
        Columns {
            px0: px0 as usize,
            x,
            c0,
            fc,
            w0,
            stretches,
            gather,
        }
    }
}

/// Colours the cross-section: each pixel inside the outline takes the tomogram's velocity,
/// bilinear between the cell centres around it ([`Grid::bilinear`]), as a level of the scale
/// where `(v − lo)·per_velocity` is the fraction of it; [`NO_DATA`] where no cell is near.
///
/// Separably, per pixel row: the two grid rows around it are blended once per grid column
/// (NaN where a cell is missing), spread over the pixel columns between the cell centres, and
/// every pixel blends two columns in one pass that vectorises ([`scale_inks`]). Pixels whose
/// grid columns are not both there take the general path after.
fn cross_section(cv: &mut Canvas, grid: &Grid, lo: f64, per_velocity: f64) {
    let (_, cy) = CENTRE;
    let columns = Columns::new(grid);
    let n_cols = columns.x.len();
    let mut blended = vec![f64::NAN; grid.n_side];
    let inks = scale_inks_fn();
    let mut gathered = Gathered::new(&columns);
    for py in (cy - RADIUS_PX) as i64..=(cy + RADIUS_PX) as i64 {
        if !(0..HEIGHT as i64).contains(&py) {
            continue;
        }
        let y = (cy - (py as f64 + 0.5)) / RADIUS_PX;
        let gr = grid.row_of(y);
        let r0 = gr.floor();
        let fr = gr - r0;
        grid.blend_rows(r0, fr, &mut blended);
        // The pixels inside the outline, x² + y² ≤ 1, are one run of columns (x rises).
        let yy = y * y;
        let x = &columns.x;
        let start = x.partition_point(|&x| x < 0.0 && x * x + yy > 1.0);
        let end = x.partition_point(|&x| x < 0.0 || x * x + yy <= 1.0);
        let span = start..end.max(start);
        let line = &mut cv.px[py as usize * WIDTH + columns.px0..][..n_cols];
        inks(
            &columns,
            &blended,
            span.clone(),
            (lo, per_velocity),
            line,
            &mut gathered,
        );
        // Where the blended row cannot serve, the general path.
        for (inner, run) in &columns.stretches {
            let (from, to) = (run.start.max(span.start), run.end.min(span.end));
            if from >= to || inner.is_some_and(|k| blends(&blended, k)) {
                continue;
            }
            // One `c0` per stretch.
            let corners = grid.corners(r0, columns.c0[from]);
            for k in from..to {
                line[k] = match bilinear(corners, fr, columns.fc[k]) {
                    Some(v) => scale_ink((v - lo) * per_velocity),
                    None => NO_DATA,
                };
            }
        }
    }
}

/// Whether grid columns `k` and `k + 1` of a blended row are both there.
#[inline(always)]
fn blends(blended: &[f64], k: usize) -> bool {
    !(blended[k].is_nan() || blended[k + 1].is_nan())
}

/// The signature of [`scale_inks`].
type ScaleInks = fn(&Columns, &[f64], Range<usize>, (f64, f64), &mut [Ink], &mut Gathered);

/// [`scale_inks`] compiled for AVX2 where the CPU has it, else as the baseline builds it.
fn scale_inks_fn() -> ScaleInks {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return |columns, blended, span, scale, line, gathered| {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { scale_inks_avx2(columns, blended, span, scale, line, gathered) }
        };
    }
    scale_inks
}

/// [`scale_inks`] compiled for AVX2 (four lanes where the baseline has two): the same
/// operations in the same order (no fused multiply-add), so the same levels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scale_inks_avx2(
    columns: &Columns,
    blended: &[f64],
    span: Range<usize>,
    scale: (f64, f64),
    line: &mut [Ink],
    gathered: &mut Gathered,
) {
    scale_inks(columns, blended, span, scale, line, gathered)
}

/// Per column of a pixel row, the two blended values [`scale_inks`] weighs (room for every
/// column, reused from row to row).
struct Gathered {
    left: Vec<f64>,
    right: Vec<f64>,
}

impl Gathered {
    fn new(columns: &Columns) -> Self {
        let n = columns.x.len();
        Gathered {
            left: vec![0.0; n],
            right: vec![0.0; n],
        }
    }
}

/// The pixels of one row of the cross-section in `span` (column indices): `line[x]` takes the
/// level on the scale of `w0[x]·blended[k] + fc[x]·blended[k + 1]`, `k` the column's
/// [`Columns::gather`], where the scale's fraction of a velocity `v` is
/// `(v − lo)·per_velocity` (`scale` = (lo, per_velocity)). That is the pixel's colour where
/// its two grid columns are both in the blended row; the others the caller colours again.
///
/// The blended values are gathered first, so that the levels are one loop over the whole
/// span, which vectorises, rather than one per stretch of a few columns.
#[inline(always)]
fn scale_inks(
    columns: &Columns,
    blended: &[f64],
    span: Range<usize>,
    (lo, per_velocity): (f64, f64),
    line: &mut [Ink],
    gathered: &mut Gathered,
) {
    if blended.len() < 2 {
        return;
    }
    let last = blended.len() - 2;
    let (left, right) = (
        &mut gathered.left[span.clone()],
        &mut gathered.right[span.clone()],
    );
    for ((l, r), &k) in left
        .iter_mut()
        .zip(right.iter_mut())
        .zip(&columns.gather[span.clone()])
    {
        // Every gathered index is at most `last` already ([`Columns::gather`]); saying so
        // lets the compiler drop the two bounds checks per column.
        let k = k.min(last);
        (*l, *r) = (blended[k], blended[k + 1]);
    }
    let (w0, w1) = (&columns.w0[span.clone()], &columns.fc[span.clone()]);
    for ((((out, w0), w1), a), b) in line[span]
        .iter_mut()
        .zip(w0)
        .zip(w1)
        .zip(&*left)
        .zip(&*right)
    {
        *out = scale_ink((w0 * a + w1 * b - lo) * per_velocity);
    }
}

/// The tomogram's cells in one flat row-major array; its velocity at a point is bilinear
/// between the cell centres that exist.
struct Grid {
    n: f64,
    n_side: usize,
    cells: Vec<Option<f64>>,
}

impl Grid {
    fn new(t: &Tomogram) -> Self {
        Grid {
            n: t.n as f64,
            n_side: t.n,
            cells: t.velocity_m_s.iter().flatten().copied().collect(),
        }
    }

    /// Fractional column of the cell centres at x (units of the trunk radius).
    fn col_of(&self, x: f64) -> f64 {
        (x + 1.0) * 0.5 * self.n - 0.5
    }

    /// Fractional row of the cell centres at y (units of the trunk radius, +y up).
    fn row_of(&self, y: f64) -> f64 {
        (1.0 - y) * 0.5 * self.n - 0.5
    }

    /// `out[c]`: rows `r0` and `r0 + 1` blended at `r0 + fr` in column `c`, NaN where either
    /// cell is missing or off the grid.
    fn blend_rows(&self, r0: f64, fr: f64, out: &mut [f64]) {
        out.fill(f64::NAN);
        if r0 < 0.0 || r0 + 1.0 >= self.n {
            return;
        }
        let k = r0 as usize * self.n_side;
        let top = &self.cells[k..k + self.n_side];
        let bottom = &self.cells[k + self.n_side..k + 2 * self.n_side];
        for ((o, t), b) in out.iter_mut().zip(top).zip(bottom) {
            if let (Some(t), Some(b)) = (t, b) {
                *o = (1.0 - fr) * t + fr * b;
            }
        }
    }

    /// The four cells around the points between rows `r0` and `r0 + 1` and columns `c0` and
    /// `c0 + 1` (whole numbers): top left, top right, bottom left, bottom right; `None` where
    /// missing or off the grid.
    #[inline(always)]
    fn corners(&self, r0: f64, c0: f64) -> [Option<f64>; 4] {
        let n = self.n;
        std::array::from_fn(|q| {
            let (r, c) = (r0 + (q / 2) as f64, c0 + (q % 2) as f64);
            if r < 0.0 || c < 0.0 || r >= n || c >= n {
                None
            } else {
                self.cells[r as usize * self.n_side + c as usize]
            }
        })
    }
}

/// Bilinear value between the cell centres that exist among `corners` ([`Grid::corners`]) at
/// `fr` of the way down and `fc` of the way right (in [0, 1)).
#[inline(always)]
fn bilinear(corners: [Option<f64>; 4], fr: f64, fc: f64) -> Option<f64> {
    let (wr, wc) = (1.0 - fr, 1.0 - fc);
    // All four cells present (almost every pixel): the weights sum to 1 up to rounding, and
    // the division below is left out.
    if let [Some(v00), Some(v01), Some(v10), Some(v11)] = corners {
        return Some(wr * wc * v00 + wr * fc * v01 + fr * wc * v10 + fr * fc * v11);
    }
    let (mut s, mut w) = (0.0, 0.0);
    for (q, v) in corners.into_iter().enumerate() {
        let (wr, wc) = (
            if q < 2 { wr } else { fr },
            if q % 2 == 0 { wc } else { fc },
        );
        if let Some(v) = v {
            s += wr * wc * v;
            w += wr * wc;
        }
    }
    (w > 1e-9).then(|| s / w)
}

/// The top of the colour scale: the [`REFERENCE_PERCENTILE`] of the cells' velocities.
pub fn reference_velocity(t: &Tomogram) -> f64 {
    let mut v: Vec<f64> = t.values().collect();
    if v.is_empty() {
        return 1.0;
    }
    let k = ((v.len() - 1) as f64 * REFERENCE_PERCENTILE).round() as usize;
    // The k-th in the total order, as a full sort would put it.
    *v.select_nth_unstable_by(k, f64::total_cmp).1
}

/// Grey diagonal lines, one pixel wide every [`HATCH_PITCH`] pixels, over the cells of the
/// cross-section that rest on few rays ([`Tomogram::low_coverage`]): the colour stays readable
/// between them.
fn hatch_low_coverage(cv: &mut Canvas, t: &Tomogram) {
    let (cx, cy) = CENTRE;
    let cell_px = 2.0 * RADIUS_PX / t.n as f64;
    // The grid column of each pixel column, or row of each pixel row, if on the grid.
    let cell = |p: i64, from: f64| {
        let k = ((p as f64 + 0.5 - from) / cell_px).floor();
        (0.0..t.n as f64).contains(&k).then_some(k as usize)
    };
    let (px0, px1) = ((cx - RADIUS_PX) as i64, (cx + RADIUS_PX) as i64);
    let cols: Vec<Option<usize>> = (px0..=px1).map(|px| cell(px, cx - RADIUS_PX)).collect();
    let hatched: Vec<bool> = (0..t.n * t.n)
        .map(|k| t.velocity_m_s[k / t.n][k % t.n].is_some() && t.low_coverage(k / t.n, k % t.n))
        .collect();
    for py in (cy - RADIUS_PX) as i64..=(cy + RADIUS_PX) as i64 {
        let Some(r) = cell(py, cy - RADIUS_PX) else {
            continue;
        };
        let hatched = &hatched[r * t.n..(r + 1) * t.n];
        // Most rows of most pictures have no cell on few rays.
        if !hatched.contains(&true) {
            continue;
        }
        // The first pixel of this row on a hatch line (x + y a multiple of the pitch).
        let first = px0 + (HATCH_PITCH - (px0 + py).rem_euclid(HATCH_PITCH)) % HATCH_PITCH;
        for px in (first..=px1).step_by(HATCH_PITCH as usize) {
            if let Some(c) = cols[(px - px0) as usize]
                && hatched[c]
            {
                cv.set(px, py, GREY);
            }
        }
    }
}

/// Pixels between the hatch lines of [`hatch_low_coverage`].
const HATCH_PITCH: i64 = 7;

/// The colour scale's bar: left, top, width, height (px).
const SCALE_BAR: (i64, i64, i64, i64) = (612, 130, 30, 440);

/// What every picture draws the same over the cross-section, in this order: the outline, the
/// sensors numbered 1–8 outside it, the units, the colour scale (fast at the top), its frame
/// and its six tick marks.
fn draw_fixed(cv: &mut Canvas) {
    let (cx, cy) = CENTRE;
    cv.ring(CENTRE, RADIUS_PX - 1.0, RADIUS_PX + 2.0, BLACK);
    for k in 0..crate::device::N_SENSORS {
        let a = k as f64 * std::f64::consts::TAU / crate::device::N_SENSORS as f64;
        let (dx, dy) = (a.cos(), -a.sin());
        let at = (cx + RADIUS_PX * dx, cy + RADIUS_PX * dy);
        cv.ring(at, 0.0, 8.0, BLACK);
        cv.ring(at, 0.0, 4.5, WHITE);
        let label = format!("{}", k + 1);
        let scale = 3;
        let (w, h) = (text_width(&label, scale), GLYPH_H as i64 * scale);
        let (lx, ly) = (cx + (RADIUS_PX + 26.0) * dx, cy + (RADIUS_PX + 26.0) * dy);
        cv.text(lx as i64 - w / 2, ly as i64 - h / 2, &label, scale, BLACK);
    }
    let (bx, by, bw, bh) = SCALE_BAR;
    cv.text(bx - 4, by - 30, "m/s", 2, BLACK);
    for y in 0..bh {
        let f = 1.0 - y as f64 / (bh - 1) as f64;
        cv.rect(bx, by + y, bw, 1, scale_ink(f));
    }
    for (x, y, w, h) in [
        (bx - 1, by - 1, bw + 2, 1),
        (bx - 1, by + bh, bw + 2, 1),
        (bx - 1, by - 1, 1, bh + 2),
        (bx + bw, by - 1, 1, bh + 2),
    ] {
        cv.rect(x, y, w, h, BLACK);
    }
    let ticks = 5;
    for k in 0..=ticks {
        let f = k as f64 / ticks as f64;
        let y = by + ((1.0 - f) * (bh - 1) as f64).round() as i64;
        cv.rect(bx + bw, y, 6, 1, BLACK);
    }
}

/// The pixels [`draw_fixed`] sets and the ink each ends with, computed once: drawn on two
/// canvases of different inks, a pixel was set where either changed.
fn fixed_layer() -> &'static [(u32, Ink)] {
    static LAYER: std::sync::OnceLock<Vec<(u32, Ink)>> = std::sync::OnceLock::new();
    LAYER.get_or_init(|| {
        let (mut a, mut b) = (Canvas::new(), Canvas::new());
        b.px.fill(BLACK);
        draw_fixed(&mut a);
        draw_fixed(&mut b);
        a.px.iter()
            .zip(&b.px)
            .enumerate()
            .filter(|&(_, (&a, &b))| a != WHITE || b != BLACK)
            .map(|(k, (&a, _))| (k as u32, a))
            .collect()
    })
}

/// Draws the tomogram under `title` and returns the PNG file's bytes.
pub fn render_png(t: &Tomogram, title: &str) -> Vec<u8> {
    let mut cv = Canvas::new();
    let fastest = reference_velocity(t);
    let lo = SLOWEST_SHOWN * fastest;
    let per_velocity = 1.0 / (fastest - lo).max(1e-9);

    // The font has capitals only (and the `m` and `s` of the units): a device label in lower
    // case ("set-a") would come out mixed.
    cv.text(20, 14, &title.to_ascii_uppercase(), 2, BLACK);
    let sub = format!(
        "D={:.2} m  SIRT {}X{}  {} RAYS",
        t.extent_m, t.n, t.n, t.n_rays
    );
    cv.text(20, 40, &sub, 2, GREY);
    let legend = format!(
        "HATCHED = FEWER THAN {} RAYS NEAR  {:.0} PCT",
        super::LOW_COVERAGE_RAYS,
        100.0 * t.low_coverage_share()
    );
    cv.text(20, 64, &legend, 2, GREY);

    // The cross-section.
    cross_section(&mut cv, &Grid::new(t), lo, per_velocity);
    hatch_low_coverage(&mut cv, t);
    // The outline, the sensors, the colour scale and its tick marks: the same pixels in every
    // picture, drawn once.
    for &(k, ink) in fixed_layer() {
        cv.px[k as usize] = ink;
    }
    // The tick labels, beside the marks (they share no pixel with the fixed layer).
    let (bx, by, bw, bh) = SCALE_BAR;
    let ticks = 5;
    for k in 0..=ticks {
        let f = k as f64 / ticks as f64;
        let v = lo + f * (fastest - lo);
        let y = by + ((1.0 - f) * (bh - 1) as f64).round() as i64;
        cv.text(
            bx + bw + 9,
            y - GLYPH_H as i64 + 1,
            &format!("{v:.0}"),
            2,
            BLACK,
        );
    }
    cv.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(1_755_752_474), "2025-08-21 05:01 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(-86_400), "1969-12-31 00:00 UTC");
        assert_eq!(
            title(Some("20-79-18-81-6E-65"), 1_755_752_474),
            "20-79-18-81-6E-65 2025-08-21 05:01 UTC"
        );
    }

    #[test]
    fn png_decodes_with_the_expected_size_and_shows_the_decay() {
        use crate::geometry::chord_m;
        use crate::simulate::{Decay, SimParams, true_tof_us};
        let decay = Decay {
            x: 0.3,
            y: -0.2,
            radius: 0.45,
            velocity_factor: 0.45,
        };
        let p = SimParams {
            decay: Some(decay),
            ..SimParams::default()
        };
        let m = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                if i == j {
                    0.0
                } else {
                    chord_m(i, j, p.diameter_m) / true_tof_us(i, j, &p) * 1e6
                }
            })
        });
        let t = super::super::reconstruct(&m, p.diameter_m, &Default::default()).unwrap();
        let bytes = render_png(&t, &title(Some("20-79-18-81-6E-65"), 1_755_752_474));
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        // Palette indices to RGB, as viewers show them.
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().unwrap();
        assert_eq!(reader.info().color_type, png::ColorType::Indexed);
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
        assert!(info.width >= 512 && info.height >= 512);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let at = |x: f64, y: f64| {
            let px = (CENTRE.0 + x * RADIUS_PX) as usize;
            let py = (CENTRE.1 - y * RADIUS_PX) as usize;
            let k = (py * WIDTH + px) * 3;
            [buf[k], buf[k + 1], buf[k + 2]]
        };
        // The decay's centre is magenta/red (red above green), the far side green.
        let c = at(decay.x, decay.y);
        assert!(c[0] > c[1], "decay drawn as {c:?}");
        let s = at(-0.6, 0.5);
        assert!(s[1] > s[0] && s[1] > s[2], "sound wood drawn as {s:?}");
        // Outside the trunk stays white.
        assert_eq!(at(0.99, 0.99), [255, 255, 255]);
    }

    /// The bilinear value at row `r0 + fr`, column `c0 + fc` as first written.
    fn reference_bilinear(grid: &Grid, r0: f64, fr: f64, c0: f64, fc: f64) -> Option<f64> {
        let n = grid.n;
        // Inside the grid with all four cells present (almost every pixel), the weights sum
        // to 1 up to rounding, and the division below is left out.
        if r0 >= 0.0 && c0 >= 0.0 && r0 + 1.0 < n && c0 + 1.0 < n {
            let k = r0 as usize * grid.n_side + c0 as usize;
            if let (Some(v00), Some(v01), Some(v10), Some(v11)) = (
                grid.cells[k],
                grid.cells[k + 1],
                grid.cells[k + grid.n_side],
                grid.cells[k + grid.n_side + 1],
            ) {
                let (wr, wc) = (1.0 - fr, 1.0 - fc);
                return Some(wr * wc * v00 + wr * fc * v01 + fr * wc * v10 + fr * fc * v11);
            }
        }
        let (mut s, mut w) = (0.0, 0.0);
        for (dr, wr) in [(0.0, 1.0 - fr), (1.0, fr)] {
            for (dc, wc) in [(0.0, 1.0 - fc), (1.0, fc)] {
                let (r, c) = (r0 + dr, c0 + dc);
                if r < 0.0 || c < 0.0 || r >= n || c >= n {
                    continue;
                }
                if let Some(v) = grid.cells[r as usize * grid.n_side + c as usize] {
                    s += wr * wc * v;
                    w += wr * wc;
                }
            }
        }
        (w > 1e-9).then(|| s / w)
    }

    /// The cross-section as first written, one pixel after the other: [`cross_section`]
    /// must colour every pixel the same.
    fn reference_cross_section(cv: &mut Canvas, grid: &Grid, lo: f64, per_velocity: f64) {
        let frac = |v: f64| (v - lo) * per_velocity;
        let (cx, cy) = CENTRE;
        let (px0, px1) = ((cx - RADIUS_PX) as i64, (cx + RADIUS_PX) as i64);
        // (px, x, c0, fc, c0 as an index when it and c0 + 1 are grid columns)
        let columns: Vec<(i64, f64, f64, f64, Option<usize>)> = (px0..=px1)
            .map(|px| {
                let x = (px as f64 + 0.5 - cx) / RADIUS_PX;
                let gc = grid.col_of(x);
                let c0 = gc.floor();
                let inner = (c0 >= 0.0 && c0 + 1.0 < grid.n).then_some(c0 as usize);
                (px, x, c0, gc - c0, inner)
            })
            .collect();
        let mut blended = vec![f64::NAN; grid.n_side];
        for py in (cy - RADIUS_PX) as i64..=(cy + RADIUS_PX) as i64 {
            let y = (cy - (py as f64 + 0.5)) / RADIUS_PX;
            let gr = grid.row_of(y);
            let r0 = gr.floor();
            let fr = gr - r0;
            grid.blend_rows(r0, fr, &mut blended);
            for &(px, x, c0, fc, inner) in &columns {
                if x * x + y * y > 1.0 {
                    continue;
                }
                let blend = inner.and_then(|k| {
                    let (a, b) = (blended[k], blended[k + 1]);
                    (!(a.is_nan() || b.is_nan())).then_some((1.0 - fc) * a + fc * b)
                });
                let ink = match blend.or_else(|| reference_bilinear(grid, r0, fr, c0, fc)) {
                    Some(v) => scale_ink(frac(v)),
                    None => NO_DATA,
                };
                cv.set(px, py, ink);
            }
        }
    }

    /// Reconstructed tomograms (decays, lost rays, other grids), and grids of seeded random
    /// velocities with holes inside the trunk and odd values (infinite, huge, negative), so
    /// that every path of the pixel loop is taken.
    fn varied_tomograms() -> Vec<Tomogram> {
        use crate::tomogram::TomogramConfig;
        let mut rng = crate::rng::Rng::new(17);
        let mut out = Vec::new();
        for (k, n) in [64, 64, 80, 97].into_iter().enumerate() {
            let (diameter, m) = crate::tomogram::tests::varied_matrices()[k];
            let cfg = TomogramConfig {
                n,
                ..TomogramConfig::default()
            };
            let t = super::super::reconstruct(&m, diameter, &cfg).unwrap();
            let mut holed = t.clone();
            for row in &mut holed.velocity_m_s {
                for v in row.iter_mut() {
                    let u = rng.unit();
                    if u < 0.08 {
                        *v = None;
                    } else if u < 0.09 {
                        *v = Some(
                            [f64::INFINITY, 1e300, -40.0, 0.0, f64::NAN][(u * 1e4) as usize % 5],
                        );
                    } else if v.is_some() {
                        *v = Some(rng.uniform(200.0, 2500.0));
                    }
                }
            }
            out.extend([t, holed]);
        }
        out
    }

    #[test]
    fn cross_section_colours_every_pixel_as_the_pixel_by_pixel_reference() {
        for t in varied_tomograms() {
            let fastest = reference_velocity(&t);
            let lo = SLOWEST_SHOWN * fastest;
            let per_velocity = 1.0 / (fastest - lo).max(1e-9);
            let grid = Grid::new(&t);
            let (mut fast, mut reference) = (Canvas::new(), Canvas::new());
            cross_section(&mut fast, &grid, lo, per_velocity);
            reference_cross_section(&mut reference, &grid, lo, per_velocity);
            let differ = fast.px.iter().zip(&reference.px).filter(|(a, b)| a != b);
            assert_eq!(differ.count(), 0, "n = {}", t.n);
            // Not a blank canvas: the trunk is drawn, with several levels of the scale.
            let mut levels = reference.px.clone();
            levels.sort_unstable();
            levels.dedup();
            assert!(levels.len() > 20, "{} levels", levels.len());
        }
    }

    #[test]
    fn scale_inks_simd_matches_the_scalar_twin_and_the_pixel_formula() {
        let mut rng = crate::rng::Rng::new(5);
        let odd = [
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
            0.0,
            -0.0,
            1e300,
            -1e300,
        ];
        let scale = (600.0, 1.0 / 900.0);
        let mut coloured = 0;
        for t in varied_tomograms() {
            let grid = Grid::new(&t);
            let columns = Columns::new(&grid);
            let n_cols = columns.x.len();
            for _ in 0..50 {
                // A blended row of any values, some missing or odd, and any span.
                let blended: Vec<f64> = (0..t.n)
                    .map(|_| match rng.unit() {
                        u if u < 0.1 => odd[(u * 70.0) as usize],
                        _ => rng.uniform(-500.0, 3000.0),
                    })
                    .collect();
                let (a, b) = ((rng.unit() * n_cols as f64) as usize, rng.unit() * 1.2);
                let span = a..(a + (b * n_cols as f64) as usize).min(n_cols);
                let before: Vec<Ink> = (0..n_cols).map(|_| (rng.unit() * 256.0) as Ink).collect();
                // The pixels it serves take the formula's level; those outside the span
                // stay as they were; the others in the span are the general path's.
                let mut expected: Vec<Option<Ink>> = before.iter().copied().map(Some).collect();
                expected[span.clone()].fill(None);
                for (inner, run) in &columns.stretches {
                    let Some(k) = *inner else { continue };
                    for x in run.start.max(span.start)..run.end.min(span.end) {
                        if !(blended[k].is_nan() || blended[k + 1].is_nan()) {
                            let v = columns.w0[x] * blended[k] + columns.fc[x] * blended[k + 1];
                            expected[x] = Some(scale_ink((v - scale.0) * scale.1));
                            coloured += 1;
                        }
                    }
                }
                let mut gathered = Gathered::new(&columns);
                let mut scalar = before.clone();
                scale_inks(
                    &columns,
                    &blended,
                    span.clone(),
                    scale,
                    &mut scalar,
                    &mut gathered,
                );
                for (x, (&got, want)) in scalar.iter().zip(&expected).enumerate() {
                    if let Some(want) = *want {
                        assert_eq!(got, want, "scalar, column {x} of {span:?}");
                    }
                }
                let mut dispatched = before.clone();
                scale_inks_fn()(
                    &columns,
                    &blended,
                    span.clone(),
                    scale,
                    &mut dispatched,
                    &mut gathered,
                );
                assert_eq!(dispatched, scalar, "dispatched, {span:?}");
            }
        }
        assert!(coloured > 30_000, "{coloured}");
    }

    #[test]
    fn the_fixed_layer_is_what_drawing_the_fixed_parts_gives_over_any_picture() {
        let mut rng = crate::rng::Rng::new(41);
        for _ in 0..3 {
            let mut drawn = Canvas::new();
            for p in drawn.px.iter_mut() {
                *p = rng.next_u64() as Ink;
            }
            let mut layered = Canvas {
                px: drawn.px.clone(),
            };
            draw_fixed(&mut drawn);
            for &(k, ink) in fixed_layer() {
                layered.px[k as usize] = ink;
            }
            assert!(drawn.px == layered.px);
        }
        assert!(fixed_layer().len() > 10_000);
    }

    #[test]
    fn palette_levels_are_within_three_levels_of_the_exact_colour() {
        let palette = palette();
        assert_eq!(palette.len(), 256 * 3);
        let rgb = |ink: Ink| -> [u8; 3] {
            let k = ink as usize * 3;
            [palette[k], palette[k + 1], palette[k + 2]]
        };
        for k in 0..=100_000 {
            let f = k as f64 / 100_000.0;
            let (a, b) = (colour(f), rgb(scale_ink(f)));
            for c in 0..3 {
                assert!(a[c].abs_diff(b[c]) <= 3, "{f}: {a:?} vs {b:?}");
            }
        }
        for f in [0.0, 1.0, -3.0, 7.0, f64::NAN, f64::INFINITY] {
            assert_eq!(rgb(scale_ink(f)), colour(f), "{f}");
        }
        for (ink, c) in [(WHITE, [255; 3]), (BLACK, [0; 3]), (NO_DATA, [200; 3])] {
            assert_eq!(rgb(ink), c);
        }
    }

    #[test]
    fn colour_scale_runs_from_magenta_to_green() {
        assert_eq!(colour(0.0), STOPS[0].1);
        assert_eq!(colour(1.0), STOPS[4].1);
        assert_eq!(colour(-3.0), colour(0.0));
        assert_eq!(colour(f64::NAN), colour(0.0));
        let g = colour(1.0);
        assert!(g[1] > g[0] && g[1] > g[2]);
    }
}
