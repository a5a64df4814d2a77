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
        let negative = bytes.get(self.pos) == Some(&b'-');
        let start = self.pos + usize::from(negative);
        let (magnitude, n_digits) = leading_digits(bytes, start);
        if n_digits == 0 || n_digits > MAX_DIGITS {
            return None;
        }
        if bytes[start] == b'0' && (n_digits > 1 || negative) {
            return None;
        }
        let end = start + n_digits;
        if let Some(b'.' | b'e' | b'E') = bytes.get(end) {
            return None;
        }
        self.pos = end;
        // At most 18 digits: fits an i64.
        let value = magnitude as i64;
        Some(if negative { -value } else { value })
    }

    /// An unsigned number of 1 to 15 digits at the cursor (no leading zero) and the byte after
    /// it, from one or two eight-byte loads; `None` where the general [`Cursor::int`] must look.
    /// The cursor does not move.
    #[inline]
    fn short_number(&self) -> Option<(u64, usize, u8)> {
        let first = self.bytes.get(self.pos..self.pos + 8)?;
        let first = u64::from_le_bytes(first.try_into().expect("eight bytes"));
        let (value, n) = eight_digits(first);
        if n == 0 || (first as u8 == b'0' && n > 1) {
            return None;
        }
        if n < 8 {
            // n is 1..=7, so the shift stays in range.
            return Some((value, n, (first >> (8 * n as u32)) as u8));
        }
        // Eight digits so far (the timestamps have nine): one more load.
        let second = self.bytes.get(self.pos + 8..self.pos + 16)?;
        let second = u64::from_le_bytes(second.try_into().expect("eight bytes"));
        let (rest, m) = eight_digits(second);
        if m == 8 {
            return None;
        }
        let delimiter = (second >> (8 * m as u32)) as u8;
        Some((value * POW10[m] + rest, 8 + m, delimiter))
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
            // The channels' case: four digits and a comma. The cursor then moves by a
            // constant, so the next load does not wait on this one's digits.
            if let Some(word) = self.bytes.get(self.pos..self.pos + 8) {
                let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
                if let Some(value) = four_digits_then_comma(word) {
                    out.push(conv(value as i64));
                    self.pos += 5;
                    // More are likely: six at a time while they come.
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        while let Some(ahead) = self.bytes.get(self.pos..self.pos + SIX_SPAN) {
                            // SAFETY: the CPU has AVX2, checked just above.
                            let Some(six) = (unsafe { six_four_digits_avx2(ahead) }) else {
                                break;
                            };
                            for v in six {
                                out.push(conv(i64::from(v)));
                            }
                            self.pos += 30;
                        }
                    }
                    continue;
                }
            }
            // The common case: a short unsigned number and a comma or the closing bracket,
            // all within eight bytes. The delimiter comes out of the same load, which keeps
            // the next number's address off the load-latency chain.
            if let Some((value, len, delimiter)) = self.short_number() {
                match delimiter {
                    b',' => {
                        out.push(conv(value as i64));
                        self.pos += len + 1;
                        continue;
                    }
                    b']' => {
                        out.push(conv(value as i64));
                        self.pos += len + 1;
                        return Some(());
                    }
                    _ => {}
                }
            }
            // Whitespace may follow a comma.
            self.skip_ws();
            out.push(conv(self.int()?));
            let mut delimiter = self.next()?;
            if let b' ' | b'\t' | b'\n' | b'\r' = delimiter {
                self.skip_ws();
                delimiter = self.next()?;
            }
            match delimiter {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }
}

/// More digits than this are left to the general parser (19 may overflow an i64).
const MAX_DIGITS: usize = 18;

const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// The run of ASCII digits starting at `start`: its value and its length. A run longer than
/// [`MAX_DIGITS`] is only reported as longer (value unspecified). Eight bytes at a time where
/// the input allows.
#[inline]
fn leading_digits(bytes: &[u8], start: usize) -> (u64, usize) {
    let mut pos = start;
    let mut value = 0u64;
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let chunk = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let (digits, n) = eight_digits(chunk);
        value = value.wrapping_mul(POW10[n]).wrapping_add(digits);
        pos += n;
        if n < 8 || pos - start > MAX_DIGITS {
            return (value, pos - start);
        }
    }
    let (tail, n) = leading_digits_scalar(&bytes[pos..], MAX_DIGITS + 1 - (pos - start));
    (
        value
            .wrapping_mul(10u64.wrapping_pow(n as u32))
            .wrapping_add(tail),
        pos - start + n,
    )
}

/// The scalar twin of [`leading_digits`]: the leading digits of `bytes`, at most `limit`.
#[inline]
fn leading_digits_scalar(bytes: &[u8], limit: usize) -> (u64, usize) {
    let mut value = 0u64;
    let mut n = 0;
    while let Some(&c) = bytes.get(n) {
        let digit = c.wrapping_sub(b'0');
        if digit > 9 || n == limit {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        n += 1;
    }
    (value, n)
}

/// Eight input bytes (first byte lowest) that start with four ASCII digits, the first not
/// `0`, and a comma: the value they spell; `None` for anything else. The same value
/// [`eight_digits`] gives, in fewer steps.
#[inline(always)]
fn four_digits_then_comma(word: u64) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = word.wrapping_sub(0x30 * ONES);
    // As in `eight_digits`: exact up to the first non-digit, which must be the fifth byte.
    let non_digit = (x.wrapping_add(0x76 * ONES) | x) & (0x80 * ONES);
    if non_digit & 0xff_ffff_ffff != 0x80_0000_0000 || (word >> 32) as u8 != b',' {
        return None;
    }
    if word as u8 == b'0' {
        return None;
    }
    // Pairs of digits (10·d0 + d1 in byte 0, 10·d2 + d3 in byte 2), then 100·pair + pair.
    let v = x & 0xffff_ffff;
    let v = (v * 10 + (v >> 8)) & 0x00ff_00ff;
    Some(((v * (1 + (100 << 16))) >> 16) & 0xffff)
}

/// The bytes [`six_four_digits_avx2`] reads: two 16-byte loads, at 0 and at 15.
#[cfg(target_arch = "x86_64")]
const SIX_SPAN: usize = 31;

/// `ahead` (at least [`SIX_SPAN`] bytes) starting with six numbers of four ASCII digits,
/// each followed by a comma and none starting with `0` (`1234,5678,…,9012,`, 30 bytes): their
/// values; `None` for anything else. Six times what [`four_digits_then_comma`] gives, in one
/// pass: each 128-bit lane holds three numbers and their commas, checked by one comparison
/// each, and the digits are gathered per number and summed as `10·d + d` then `100·p + p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn six_four_digits_avx2(ahead: &[u8]) -> Option<[u32; 6]> {
    use std::arch::x86_64::*;
    assert!(ahead.len() >= SIX_SPAN);
    // Per lane: digits at 0..4, 5..9, 10..14, commas at 4, 9 and 14, byte 15 not looked at.
    const DIGITS: u32 = 0b0011_1101_1110_1111;
    const COMMAS: u32 = 0b0100_0010_0001_0000;
    const FIRSTS: u32 = 0b0000_0100_0010_0001;
    const LANES: fn(u32) -> i32 = |m| (m | (m << 16)) as i32;
    // SAFETY: both loads lie within `ahead` (0..16 and 15..31), checked above; unaligned
    // loads need no alignment.
    let v = unsafe {
        _mm256_set_m128i(
            _mm_loadu_si128(ahead.as_ptr().add(15).cast()),
            _mm_loadu_si128(ahead.as_ptr().cast()),
        )
    };
    let x = _mm256_sub_epi8(v, _mm256_set1_epi8(b'0' as i8));
    let nine = _mm256_set1_epi8(9);
    let digit = _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_max_epu8(x, nine), nine));
    let comma = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b',' as i8)));
    let zero = _mm256_movemask_epi8(_mm256_cmpeq_epi8(x, _mm256_setzero_si256()));
    let shape = (digit & LANES(DIGITS)) | (comma & LANES(COMMAS));
    if shape != LANES(DIGITS | COMMAS) || zero & LANES(FIRSTS) != 0 {
        return None;
    }
    // Each number's four digits side by side (the fourth group empty), then pairs, then
    // whole numbers in 32-bit lanes.
    let gather = _mm256_setr_epi8(
        0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, -1, -1, -1, -1, //
        0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, -1, -1, -1, -1,
    );
    let d = _mm256_shuffle_epi8(x, gather);
    let pairs = _mm256_maddubs_epi16(d, _mm256_set1_epi16(0x010a));
    let values = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x0001_0064));
    let mut out = [0u32; 8];
    // SAFETY: `out` holds 32 bytes; an unaligned store needs no alignment.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), values) };
    Some([out[0], out[1], out[2], out[4], out[5], out[6]])
}

/// SWAR on eight input bytes (first byte lowest): how many leading bytes are ASCII digits
/// (0..=8) and the value they spell.
#[inline]
fn eight_digits(chunk: u64) -> (u64, usize) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Borrows and carries only run upwards, from the first non-digit on, so every byte up to
    // and including the first non-digit is exact.
    let x = chunk.wrapping_sub(0x30 * ONES);
    let non_digit = (x.wrapping_add(0x76 * ONES) | x) & (0x80 * ONES);
    let n = (non_digit.trailing_zeros() / 8) as usize;
    if n == 0 {
        return (0, 0);
    }
    // Digits to the top bytes, zeros (leading zero digits) below; then the usual
    // pairwise combination (as in simdjson's parse_eight_digits_unrolled).
    let d = x << (64 - 8 * n);
    let d = d.wrapping_mul(10).wrapping_add(d >> 8);
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let value = ((d & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((d >> 16) & MASK).wrapping_mul(MUL2)))
        >> 32;
    (value, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn four_digits_and_a_comma_match_the_general_digits() {
        let mut rng = Rng::new(77);
        let tails: [&[u8]; 4] = [b",123", b"]   ", b",,,,", b"5,12"];
        let mut accepted = 0;
        for n in 0..100_000u32 {
            for width in [3, 4, 5] {
                let digits = format!("{n:0width$}");
                if digits.len() != width {
                    continue;
                }
                for delimiter in [b',', b']', b' ', b'.', b'e', b'0'] {
                    let mut bytes = digits.clone().into_bytes();
                    bytes.push(delimiter);
                    bytes.extend_from_slice(tails[(rng.next_u64() % 4) as usize]);
                    bytes.truncate(8);
                    while bytes.len() < 8 {
                        bytes.push(b'7');
                    }
                    let word = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                    // Read from the bytes themselves: "100" then "0," spells 1000 too.
                    let expected = (bytes[..4].iter().all(u8::is_ascii_digit)
                        && bytes[0] != b'0'
                        && bytes[4] == b',')
                        .then(|| std::str::from_utf8(&bytes[..4]).unwrap().parse().unwrap());
                    assert_eq!(four_digits_then_comma(word), expected, "{bytes:?}");
                    if let Some(v) = expected {
                        assert_eq!(eight_digits(word), (v, 4));
                        accepted += 1;
                    }
                }
            }
        }
        // Every four-digit number with a comma, and some spelled across the delimiter.
        assert!(accepted > 9000, "{accepted}");
        // Bytes that are not digits, with the digits' bits nearby.
        for b in 0..=255u8 {
            for k in 0..4 {
                let mut bytes = *b"1234,567";
                bytes[k] = b;
                let word = u64::from_le_bytes(bytes);
                let ok = b.is_ascii_digit() && !(k == 0 && b == b'0');
                assert_eq!(four_digits_then_comma(word).is_some(), ok, "{bytes:?}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn six_four_digit_numbers_match_four_at_a_time() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = Rng::new(5);
        let mut accepted = 0;
        for case in 0..200_000 {
            // Mostly the shape, with one byte anywhere changed to a digit, a comma, a zero
            // first digit, or another byte.
            let mut bytes: Vec<u8> = (0..6)
                .flat_map(|_| format!("{},", 1000 + rng.next_u64() % 9000).into_bytes())
                .collect();
            bytes.extend_from_slice(b"789");
            if case % 2 == 1 {
                let at = (rng.next_u64() % 31) as usize;
                bytes[at] = match rng.next_u64() % 4 {
                    0 => b'0' + (rng.next_u64() % 10) as u8,
                    1 => b',',
                    2 => b'0',
                    _ => rng.next_u64() as u8,
                };
            }
            let one_by_one: Option<Vec<u32>> = (0..6)
                .map(|k| {
                    let word = u64::from_le_bytes(bytes[5 * k..5 * k + 8].try_into().unwrap());
                    four_digits_then_comma(word).map(|v| v as u32)
                })
                .collect();
            // SAFETY: the CPU has AVX2, checked above.
            let six = unsafe { six_four_digits_avx2(&bytes[..SIX_SPAN]) };
            assert_eq!(
                six.map(Vec::from),
                one_by_one,
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
            accepted += usize::from(six.is_some());
        }
        assert!(accepted > 100_000, "{accepted}");
    }

    #[test]
    fn swar_digits_match_the_scalar_twin() {
        let mut rng = Rng::new(11);
        let alphabet = b"0123456789012345678901234567890123456789,]. -e/:";
        for _ in 0..20_000 {
            let len = (rng.unit() * 30.0) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.unit() * alphabet.len() as f64) as usize])
                .collect();
            let start = (rng.unit() * (len + 1) as f64) as usize;
            let start = start.min(len);
            // Runs over MAX_DIGITS are only said to be too long.
            let too_long = |(value, n): (u64, usize)| {
                if n > MAX_DIGITS {
                    (0, MAX_DIGITS + 1)
                } else {
                    (value, n)
                }
            };
            assert_eq!(
                too_long(leading_digits(&bytes, start)),
                too_long(leading_digits_scalar(&bytes[start..], MAX_DIGITS + 1)),
                "{:?} from {start}",
                String::from_utf8_lossy(&bytes)
            );
        }
        for chunk in [
            *b"12345678",
            *b"00000000",
            *b"9,999999",
            *b"/:/:/:/:",
            *b"99999999",
        ] {
            let (value, n) = eight_digits(u64::from_le_bytes(chunk));
            assert_eq!((value, n), leading_digits_scalar(&chunk, 8));
        }
    }
}
