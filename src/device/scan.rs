//! Fast scanner for the device's tap-file layout.
//!
//! A tap file is a JSON array of objects whose values are integer arrays (`value1`..`value8`,
//! `timestamp`) or plain strings (`guid`, `guidteensy`). [`scan`] reads exactly that shape in
//! one pass, parsing the integers straight into the channel and timestamp vectors, and returns
//! a [`RawTap`] with the same contents the general JSON path would build.
//!
//! Contract: `scan` answers only where it is sure. It returns `None` for anything outside the
//! simple shape (invalid or truncated JSON, floats, numbers over 18 digits, leading zeros,
//! `-0`, escapes or non-ASCII in strings, nested or non-array values, unknown `value…` keys,
//! a key twice in one object, a channel twice, two channels in one object); the caller then
//! runs the general path, which decides and names the error. So the scanner never produces an
//! error of its own, and what it accepts is bit-for-bit what the general path accepts.

use super::{N_SENSORS, RawTap};

/// Scans `bytes`; `None` means "not the simple shape, ask the general parser".
pub(super) fn scan(bytes: &[u8]) -> Option<RawTap> {
    let mut cur = Cursor { bytes, pos: 0 };
    let mut raw = RawTap::default();
    // Arrays in one file have the same length; the first one sizes the others.
    let mut len_hint = 0;
    cur.skip_ws();
    cur.expect(b'[')?;
    cur.skip_ws();
    if cur.peek()? == b']' {
        cur.pos += 1;
    } else {
        loop {
            cur.object(&mut raw, &mut len_hint)?;
            cur.skip_ws();
            match cur.next()? {
                b',' => cur.skip_ws(),
                b']' => break,
                _ => return None,
            }
        }
    }
    cur.skip_ws();
    (cur.pos == bytes.len()).then_some(raw)
}

/// Keys the scanner tracks per object, as bit positions: 0..8 are the channels.
const KEY_TIMESTAMP: usize = N_SENSORS;
const KEY_GUID: usize = N_SENSORS + 1;
const KEY_GUID_TEENSY: usize = N_SENSORS + 2;
const KEY_OTHER: usize = usize::MAX;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    #[inline]
    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON whitespace only (space, tab, LF, CR).
    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// One object; fills `raw` in document order, as the general path does.
    fn object(&mut self, raw: &mut RawTap, len_hint: &mut usize) -> Option<()> {
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        let mut seen = 0u32;
        let mut channel_here = None;
        let mut guid_here = None;
        loop {
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let slot = match key {
                b"timestamp" => KEY_TIMESTAMP,
                b"guid" => KEY_GUID,
                b"guidteensy" => KEY_GUID_TEENSY,
                [b'v', b'a', b'l', b'u', b'e', rest @ ..] => match rest {
                    [d @ b'1'..=b'8'] => usize::from(d - b'1'),
                    // `value01`, `value+1`, `value9`…: the general path decides.
                    _ => return None,
                },
                _ => KEY_OTHER,
            };
            if slot != KEY_OTHER {
                if seen & (1 << slot) != 0 {
                    return None;
                }
                seen |= 1 << slot;
            }
            match slot {
                KEY_TIMESTAMP => {
                    let mut ts = Vec::with_capacity(*len_hint);
                    // Through f64, as the general path converts every number.
                    self.int_array(&mut ts, |x| x as f64 as i64)?;
                    *len_hint = (*len_hint).max(ts.len());
                    raw.timestamps = Some(ts);
                }
                KEY_GUID => guid_here = Some(self.string_value()?),
                KEY_GUID_TEENSY => raw.guid_teensy = Some(self.string_value()?),
                KEY_OTHER => self.skip_scalar()?,
                k => {
                    if channel_here.is_some() || raw.channels[k].is_some() {
                        return None;
                    }
                    let mut ch = Vec::with_capacity(*len_hint);
                    self.int_array(&mut ch, |x| x as f64 as f32)?;
                    *len_hint = (*len_hint).max(ch.len());
                    raw.channels[k] = Some(ch);
                    channel_here = Some(k);
                }
            }
            self.skip_ws();
            match self.next()? {
                b',' => self.skip_ws(),
                b'}' => break,
                _ => return None,
            }
        }
        if let (Some(k), Some(guid)) = (channel_here, guid_here) {
            raw.guids[k] = Some(guid);
        }
        Some(())
    }

    /// A string of printable ASCII without escapes, returned without its quotes.
    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let rest = &self.bytes[start..];
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c))?;
        if rest[len] != b'"' {
            return None;
        }
        self.pos = start + len + 1;
        Some(&rest[..len])
    }

    fn string_value(&mut self) -> Option<String> {
        let s = self.string()?;
        // Printable ASCII is always UTF-8.
        std::str::from_utf8(s).ok().map(str::to_string)
    }

    /// An unknown key's value: a plain string, an integer, `true`, `false` or `null`.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.int().map(drop),
            _ => {
                let rest = &self.bytes[self.pos..];
                let len = [&b"true"[..], b"false", b"null"]
                    .iter()
                    .find(|lit| rest.starts_with(lit))?
                    .len();
                self.pos += len;
                Some(())
            }
        }
    }

    /// `-?(0|[1-9][0-9]{0,17})` not followed by a fraction or exponent.
    #[inline]
    fn int(&mut self) -> Option<i64> {
        let bytes = self.bytes;
        let mut pos = self.pos;
        let negative = bytes.get(pos) == Some(&b'-');
        pos += usize::from(negative);
        let start = pos;
        let mut magnitude = 0u64;
        while let Some(&c) = bytes.get(pos) {
            let digit = c.wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            magnitude = magnitude.wrapping_mul(10).wrapping_add(u64::from(digit));
            pos += 1;
        }
        let n_digits = pos - start;
        if n_digits == 0 || n_digits > 18 {
            return None;
        }
        if bytes[start] == b'0' && (n_digits > 1 || negative) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = bytes.get(pos) {
            return None;
        }
        self.pos = pos;
        // 18 digits fit an i64.
        let value = magnitude as i64;
        Some(if negative { -value } else { value })
    }

    /// An array of integers, each converted with `conv` and pushed onto `out`.
    #[inline]
    fn int_array<T>(&mut self, out: &mut Vec<T>, conv: impl Fn(i64) -> T) -> Option<()> {
        self.expect(b'[')?;
        self.skip_ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        loop {
            out.push(conv(self.int()?));
            self.skip_ws();
            match self.next()? {
                b',' => self.skip_ws(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }
}
