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
fn palette() -> Vec<u8> {
    FIXED
        .iter()
        .copied()
        .chain((0..SCALE_LEVELS).map(|k| colour(k as f64 / (SCALE_LEVELS - 1) as f64)))
        .flatten()
        .collect()
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
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, WIDTH as u32, HEIGHT as u32);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(palette());
            let mut w = enc.write_header().expect("writing to memory cannot fail");
            w.write_image_data(&self.px)
                .expect("the buffer matches the header");
        }
        out
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * (GLYPH_W as i64 + 1) * scale - scale
}

/// A pixel column of the cross-section: its unit x, and the grid column `c0` (whole) plus
/// `fc` where it falls between the cell centres.
struct Column {
    px: i64,
    x: f64,
    c0: f64,
    fc: f64,
    /// `c0` as an index when it and `c0 + 1` are grid columns.
    inner: Option<usize>,
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

    /// Bilinear value between the cell centres that exist around row `r0 + fr`, column
    /// `c0 + fc` (`r0`, `c0` whole numbers, `fr`, `fc` in [0, 1)).
    #[inline(always)]
    fn bilinear(&self, r0: f64, fr: f64, c0: f64, fc: f64) -> Option<f64> {
        let n = self.n;
        // Inside the grid with all four cells present (almost every pixel), the weights sum
        // to 1 up to rounding, and the division below is left out.
        if r0 >= 0.0 && c0 >= 0.0 && r0 + 1.0 < n && c0 + 1.0 < n {
            let k = r0 as usize * self.n_side + c0 as usize;
            if let (Some(v00), Some(v01), Some(v10), Some(v11)) = (
                self.cells[k],
                self.cells[k + 1],
                self.cells[k + self.n_side],
                self.cells[k + self.n_side + 1],
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
                if let Some(v) = self.cells[r as usize * self.n_side + c as usize] {
                    s += wr * wc * v;
                    w += wr * wc;
                }
            }
        }
        (w > 1e-9).then(|| s / w)
    }
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
    for py in (cy - RADIUS_PX) as i64..=(cy + RADIUS_PX) as i64 {
        let row = ((py as f64 + 0.5 - (cy - RADIUS_PX)) / cell_px).floor();
        if !(0.0..t.n as f64).contains(&row) {
            continue;
        }
        let mut px = (cx - RADIUS_PX) as i64;
        // The first pixel of this row on a hatch line (x + y a multiple of the pitch).
        px += (HATCH_PITCH - (px + py).rem_euclid(HATCH_PITCH)) % HATCH_PITCH;
        while px <= (cx + RADIUS_PX) as i64 {
            let col = ((px as f64 + 0.5 - (cx - RADIUS_PX)) / cell_px).floor();
            if (0.0..t.n as f64).contains(&col) {
                let (r, c) = (row as usize, col as usize);
                if t.velocity_m_s[r][c].is_some() && t.low_coverage(r, c) {
                    cv.set(px, py, GREY);
                }
            }
            px += HATCH_PITCH;
        }
    }
}

/// Pixels between the hatch lines of [`hatch_low_coverage`].
const HATCH_PITCH: i64 = 7;

/// Draws the tomogram under `title` and returns the PNG file's bytes.
pub fn render_png(t: &Tomogram, title: &str) -> Vec<u8> {
    let mut cv = Canvas::new();
    let fastest = reference_velocity(t);
    let lo = SLOWEST_SHOWN * fastest;
    let per_velocity = 1.0 / (fastest - lo).max(1e-9);
    let frac = |v: f64| (v - lo) * per_velocity;

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
    let (cx, cy) = CENTRE;
    let grid = Grid::new(t);
    let (px0, px1) = ((cx - RADIUS_PX) as i64, (cx + RADIUS_PX) as i64);
    // Per column: the unit x and where it falls between the cell centres.
    let columns: Vec<Column> = (px0..=px1)
        .map(|px| {
            let x = (px as f64 + 0.5 - cx) / RADIUS_PX;
            let gc = grid.col_of(x);
            let c0 = gc.floor();
            Column {
                px,
                x,
                c0,
                fc: gc - c0,
                // Both neighbouring grid columns exist: the blended row can serve.
                inner: (c0 >= 0.0 && c0 + 1.0 < grid.n).then_some(c0 as usize),
            }
        })
        .collect();
    let mut blended = vec![f64::NAN; t.n];
    for py in (cy - RADIUS_PX) as i64..=(cy + RADIUS_PX) as i64 {
        if !(0..HEIGHT as i64).contains(&py) {
            continue;
        }
        let y = (cy - (py as f64 + 0.5)) / RADIUS_PX;
        let gr = grid.row_of(y);
        let r0 = gr.floor();
        let fr = gr - r0;
        // Separably: the two grid rows around this pixel row blended once per grid column
        // (NaN where a cell is missing), then each pixel blends two columns. Pixels near a
        // missing cell take the general path.
        grid.blend_rows(r0, fr, &mut blended);
        // The pixels inside the outline, x² + y² ≤ 1, are one run of columns (x rises).
        let yy = y * y;
        let start = columns.partition_point(|c| c.x < 0.0 && c.x * c.x + yy > 1.0);
        let end = columns.partition_point(|c| c.x < 0.0 || c.x * c.x + yy <= 1.0);
        let line = &mut cv.px[py as usize * WIDTH..(py as usize + 1) * WIDTH];
        for c in &columns[start..end.max(start)] {
            let blend = c.inner.and_then(|k| {
                let (a, b) = (blended[k], blended[k + 1]);
                (!(a.is_nan() || b.is_nan())).then_some((1.0 - c.fc) * a + c.fc * b)
            });
            let ink = match blend.or_else(|| grid.bilinear(r0, fr, c.c0, c.fc)) {
                Some(v) => scale_ink(frac(v)),
                None => NO_DATA,
            };
            if (0..WIDTH as i64).contains(&c.px) {
                line[c.px as usize] = ink;
            }
        }
    }
    hatch_low_coverage(&mut cv, t);
    cv.ring(CENTRE, RADIUS_PX - 1.0, RADIUS_PX + 2.0, BLACK);

    // Sensors, numbered 1–8 outside the outline.
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

    // The colour scale, fast at the top.
    let (bx, by, bw, bh) = (612i64, 130i64, 30i64, 440i64);
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
        let v = lo + f * (fastest - lo);
        let y = by + ((1.0 - f) * (bh - 1) as f64).round() as i64;
        cv.rect(bx + bw, y, 6, 1, BLACK);
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
