//! The report's tomogram, written by hand in exactly the bytes `serde_json::to_vec_pretty`
//! gives (two-space indents, `": "` after keys, `null` for a missing or non-finite number,
//! floats in their shortest round-trip form by `zmij`, the formatter serde_json uses).
//!
//! Why: the two 64×64 grids are most of the report (about 125 KB), and serde's pretty printer
//! writes each cell through several `io::Write` calls; here a cell is one indent, one number
//! and one comma into a reserved buffer. `tests` hold every writer here against serde_json
//! on the same values, edge cases included.

use serde::Serialize;

/// `"\n"` and the indent of a grid cell inside the report's `tomogram` object (level 4).
const NL_INDENT: &[u8] = b"\n                                ";

/// Appends a newline and the indent of nesting `level` (two spaces each).
fn newline(out: &mut Vec<u8>, level: usize) {
    out.extend_from_slice(&NL_INDENT[..1 + 2 * level]);
}

/// Appends `value` as compact JSON (a scalar: the same bytes as pretty).
pub(super) fn scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *out, value).expect("a scalar always serialises");
}

/// An `f64` as serde_json writes it: `null` when not finite, else zmij's shortest form.
pub(super) fn float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A float that is a whole number of tenths, as [`float`] writes it, without the general
/// shortest-form search where it can: for `v` the double nearest `k / 10` with `|k| < 10^10`
/// (so `v` is a whole number or has a fraction no double nearby shares), the shortest form
/// that reads back as `v` is `k / 10` written out with one decimal (`1234.5`, `-0.5`, and
/// `1234.0` for a whole number, as zmij writes it). Anything else goes to [`float`].
pub(super) fn tenths(out: &mut Vec<u8>, v: f64) {
    let k = (v * 10.0).round();
    if !(k.abs() < 1e10 && k / 10.0 == v) {
        return float(out, v);
    }
    if v.is_sign_negative() {
        out.push(b'-');
    }
    let k = k.abs() as u64;
    let mut digits = itoa::Buffer::new();
    let whole = digits.format(k / 10);
    out.extend_from_slice(whole.as_bytes());
    out.extend_from_slice(&[b'.', b'0' + (k % 10) as u8]);
}

/// A grid (rows of cells) at nesting `level`, each cell written by `cell`; `[]` where empty,
/// as serde_json writes an empty sequence.
pub(super) fn grid<T>(
    out: &mut Vec<u8>,
    rows: &[Vec<T>],
    level: usize,
    mut cell: impl FnMut(&mut Vec<u8>, &T),
) {
    seq(out, rows, level, |out, row| {
        seq(out, row, level + 1, &mut cell)
    });
}

/// A sequence at nesting `level`, each item written by `item` on a line of its own; `[]`
/// where empty.
fn seq<T>(out: &mut Vec<u8>, items: &[T], level: usize, mut item: impl FnMut(&mut Vec<u8>, &T)) {
    if items.is_empty() {
        out.extend_from_slice(b"[]");
        return;
    }
    out.push(b'[');
    for (k, v) in items.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        newline(out, level + 1);
        item(out, v);
    }
    newline(out, level);
    out.push(b']');
}

/// An object at nesting `level`: `fields` writes each value after its key.
pub(super) struct Object<'a> {
    out: &'a mut Vec<u8>,
    level: usize,
    first: bool,
}

impl<'a> Object<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>, level: usize) -> Self {
        out.push(b'{');
        Object {
            out,
            level,
            first: true,
        }
    }

    /// Starts the field `key` (plain ASCII, nothing to escape) and returns the buffer for its
    /// value.
    pub(super) fn key(&mut self, key: &str) -> &mut Vec<u8> {
        debug_assert!(
            key.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        );
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        newline(self.out, self.level + 1);
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\": ");
        self.out
    }

    pub(super) fn end(self) {
        if self.first {
            self.out.push(b'}');
        } else {
            newline(self.out, self.level);
            self.out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn serde_pretty<T: Serialize>(v: &T) -> String {
        String::from_utf8(serde_json::to_vec_pretty(v).unwrap()).unwrap()
    }

    /// Floats that probe the formatter: signed zeros, non-finite values, the ends of the
    /// range, subnormals, whole numbers, tenths and values just beside them, and the places
    /// where serde switches to exponents.
    fn odd_floats() -> Vec<f64> {
        let mut v = vec![
            0.0,
            -0.0,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            -5e-324,
            f64::EPSILON,
            1.0,
            -1.0,
            0.1,
            -0.1,
            0.05,
            0.25,
            0.3,
            1e-5,
            1e-6,
            1e-7,
            1.5e-7,
            1e15,
            1e16,
            1e17,
            123456789012345680.0,
            9007199254740993.0,
            999999999.9,
            999999999.95,
            1e9,
            1e10,
            -1e10,
            1234.5,
            1234.55,
            1234.0,
            0.1 + 0.2,
            2.0f64.powi(52) + 0.5,
            2.0f64.powi(60),
            1e300,
            1e-300,
        ];
        for e in -30..=30 {
            v.push(10f64.powi(e));
            v.push(-1.5 * 10f64.powi(e));
            v.push(std::f64::consts::PI * 10f64.powi(e));
        }
        v
    }

    #[test]
    fn float_writes_what_serde_json_writes() {
        let mut rng = Rng::new(3);
        let mut values = odd_floats();
        for _ in 0..200_000 {
            values.push(f64::from_bits(rng.next_u64()));
            values.push((rng.unit() - 0.5) * 10f64.powi((rng.next_u64() % 40) as i32 - 20));
        }
        for v in values {
            let mut ours = Vec::new();
            float(&mut ours, v);
            let theirs = serde_json::to_vec(&v).unwrap();
            assert_eq!(ours, theirs, "{v:e} ({:#x})", v.to_bits());
        }
    }

    #[test]
    fn tenths_writes_what_serde_json_writes() {
        let mut rng = Rng::new(4);
        let mut values = odd_floats();
        // Every tenth up to ±20000.0, as the grid's velocities are rounded.
        for k in -200_000..=200_000 {
            values.push((k as f64) / 10.0);
        }
        for _ in 0..300_000 {
            // Rounded as the report rounds, over every magnitude up to 10^12.
            let x = (rng.unit() - 0.5) * 10f64.powi((rng.next_u64() % 15) as i32 - 2);
            values.push((x * 10.0).round() / 10.0);
            values.push(x);
            let k = (rng.next_u64() % 20_000_000_000) as f64 - 1e10;
            values.push(k / 10.0);
            values.push(f64::from_bits(rng.next_u64()));
        }
        for v in values {
            let mut ours = Vec::new();
            tenths(&mut ours, v);
            let theirs = serde_json::to_vec(&v).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap(),
                "{v:e} ({:#x})",
                v.to_bits()
            );
        }
    }

    #[test]
    fn grids_and_objects_write_what_serde_json_writes() {
        #[derive(Serialize)]
        struct Nested {
            a: Vec<Vec<Option<f64>>>,
            b: Vec<Vec<Option<u8>>>,
            c: usize,
            d: &'static str,
            e: f64,
        }
        let mut rng = Rng::new(9);
        let shapes: Vec<Vec<usize>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![3, 0, 2],
            vec![64; 64],
        ];
        for lens in shapes {
            let a: Vec<Vec<Option<f64>>> = lens
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| match rng.next_u64() % 5 {
                            0 => None,
                            1 => Some(f64::NAN),
                            2 => Some(-0.0),
                            _ => Some(((rng.unit() * 30_000.0) * 10.0).round() / 10.0),
                        })
                        .collect()
                })
                .collect();
            let b: Vec<Vec<Option<u8>>> = lens
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| (!rng.next_u64().is_multiple_of(3)).then(|| rng.next_u64() as u8))
                        .collect()
                })
                .collect();
            let value = Nested {
                a: a.clone(),
                b: b.clone(),
                c: lens.len(),
                d: "sirt",
                e: 0.125,
            };
            // Nested one level inside an object, as the report's tomogram is.
            let reference = serde_pretty(&std::collections::BTreeMap::from([("t", &value)]));
            let mut out = Vec::new();
            let mut outer = Object::new(&mut out, 0);
            let buf = outer.key("t");
            let mut o = Object::new(buf, 1);
            grid(o.key("a"), &a, 2, |out, v| match v {
                Some(v) => tenths(out, *v),
                None => out.extend_from_slice(b"null"),
            });
            grid(o.key("b"), &b, 2, scalar);
            scalar(o.key("c"), &value.c);
            scalar(o.key("d"), value.d);
            float(o.key("e"), value.e);
            o.end();
            outer.end();
            assert_eq!(String::from_utf8(out).unwrap(), reference, "{lens:?}");
        }
        let mut out = Vec::new();
        Object::new(&mut out, 3).end();
        assert_eq!(out, b"{}");
    }
}
