//! An 8-bit indexed PNG encoder that writes exactly the bytes of the png crate (0.17) at its
//! fast level: the chunks `IHDR`, `PLTE`, one `IDAT` and `IEND`; every row Sub-filtered; the
//! zlib stream of fdeflate (0.3), whose one block uses fixed Huffman codes tuned for filtered
//! PNG data and codes runs of zero bytes as matches at distance 1; stored blocks instead where
//! that would be larger than the raw rows, as the png crate does.
//!
//! Why not the png crate itself: it filters each row into a buffer, feeds fdeflate a row at a
//! time through a `Cursor`, which writes every 8 bytes of output through `io::Write`, then
//! copies the stream into the chunk. Here the filter, the codes and the bit writer are one
//! loop into an output reserved once, which costs about half as much per picture. The
//! choices of what to code as a run and what as literals are fdeflate's, row by row (its
//! `Compressor::write_data` is called once per filtered row and ends its run at the row's
//! end), so the bytes are the same; `tests::matches_the_png_crate_*` hold it to that.

use std::sync::OnceLock;

/// The PNG signature.
const SIGNATURE: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];

/// fdeflate's zlib header and the start of its block: the dynamic Huffman table of
/// [`LIT_LENGTHS`] (53 bytes and 5 bits).
const HEADER: [u8; 54] = [
    120, 1, 237, 192, 3, 160, 36, 89, 150, 198, 241, 255, 119, 238, 141, 200, 204, 167, 114, 75,
    99, 174, 109, 219, 182, 109, 219, 182, 109, 219, 182, 109, 105, 140, 158, 150, 74, 175, 158,
    50, 51, 34, 238, 249, 118, 183, 106, 122, 166, 135, 59, 107, 213, 15,
];

/// fdeflate's code lengths of the literal/length alphabet (0–255 bytes, 256 end of block,
/// 257–285 lengths); its distance alphabet gives distance 1 a one-bit code `0`.
const LIT_LENGTHS: [u8; 286] = [
    2, 3, 4, 5, 5, 6, 6, 7, 7, 7, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10,
    10, 10, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 11, 11, 11, 11, 11, 11, 11,
    11, 11, 11, 10, 11, 10, 10, 10, 10, 10, 10, 10, 10, 10, 9, 9, 9, 9, 9, 8, 9, 8, 8, 8, 8, 8, 7,
    7, 7, 6, 6, 6, 5, 4, 3, 12, 12, 12, 9, 9, 11, 10, 11, 11, 10, 11, 11, 11, 11, 11, 11, 12, 11,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 9,
];

/// The canonical codes of [`LIT_LENGTHS`], bit-reversed for LSB-first writing, each with its
/// length in bits 16..: one load per symbol.
fn lit_codes() -> [u32; 286] {
    let mut codes = [0u32; 286];
    let mut code = 0u32;
    for len in 1..=16u8 {
        for (sym, &l) in LIT_LENGTHS.iter().enumerate() {
            if l == len {
                let reversed = (code as u16).reverse_bits() >> (16 - len);
                codes[sym] = u32::from(reversed) | (u32::from(len) << 16);
                code += 1;
            }
        }
        code <<= 1;
    }
    codes
}

/// The deflate length symbol for a match of `len` (3..=258) and the number of its extra bits
/// (deflate's tables).
fn length_symbol(len: u32) -> (usize, u32) {
    const BASE: [u32; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const EXTRA: [u32; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    let k = BASE.partition_point(|&b| b <= len) - 1;
    (257 + k, EXTRA[k])
}

/// Runs up to this long are coded from [`Codes::runs`], in one write of at most 50 bits.
const TABLED_RUN: usize = 1024;

/// The codes, computed once.
struct Codes {
    /// Per symbol: the code, bit-reversed, with its length in bits 16...
    lit: [u32; 286],
    /// Per run length (index 0 unused): the bits of [`run_pieces`] joined, and their number.
    runs: Vec<(u64, u32)>,
}

fn codes() -> &'static Codes {
    static CODES: OnceLock<Codes> = OnceLock::new();
    CODES.get_or_init(|| {
        let lit = lit_codes();
        let runs = (0..=TABLED_RUN as u32)
            .map(|run| {
                let (mut acc, mut n) = (0u64, 0u32);
                if run > 0 {
                    run_pieces(&lit, run, |bits, nbits| {
                        acc |= bits << n;
                        n += nbits;
                    });
                }
                assert!(n <= 56, "a tabled run fits one write");
                (acc, n)
            })
            .collect();
        Codes { lit, runs }
    })
}

/// LSB-first bits into a byte buffer: every write stores eight bytes at `pos` and moves on by
/// the whole bytes it completed, so it never branches on the bits.
struct Bits {
    /// Written up to `pos`; the rest is room (zeros or bytes to be overwritten).
    out: Vec<u8>,
    pos: usize,
    /// Bits not yet whole bytes, fewer than 8, also stored at `out[pos]`.
    acc: u64,
    n: u32,
}

impl Bits {
    fn new(capacity: usize) -> Self {
        Bits {
            out: vec![0; capacity.max(8)],
            pos: 0,
            acc: 0,
            n: 0,
        }
    }

    /// Makes room for `bytes` more bytes.
    fn reserve(&mut self, bytes: usize) {
        let need = self.pos + bytes + 8;
        if self.out.len() < need {
            self.out.resize(need.max(2 * self.out.len()), 0);
        }
    }

    /// Appends the low `nbits` (≤ 56) of `bits`; the bits above are zero. The caller has
    /// reserved room.
    #[inline(always)]
    fn put(&mut self, bits: u64, nbits: u32) {
        self.acc |= bits << self.n;
        self.n += nbits;
        self.out[self.pos..self.pos + 8].copy_from_slice(&self.acc.to_le_bytes());
        let whole = self.n / 8;
        self.pos += whole as usize;
        // At most 63 bits, so at most 7 whole bytes: the shift stays below 64.
        self.acc >>= 8 * whole;
        self.n %= 8;
    }

    /// Appends whole bytes (at a byte boundary).
    fn put_bytes(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.n, 0);
        self.reserve(bytes.len());
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    /// Pads to a whole byte with zeros and returns the bytes.
    fn finish(mut self) -> Vec<u8> {
        self.reserve(0);
        self.pos += self.n.div_ceil(8) as usize;
        self.out.truncate(self.pos);
        self.out
    }
}

/// One symbol's code and its length.
#[inline(always)]
fn code(lit: &[u32; 286], sym: usize) -> (u64, u32) {
    let c = lit[sym];
    (u64::from(c & 0xffff), c >> 16)
}

/// fdeflate's `write_run`, piece by piece: a literal zero, then `run − 1` more as matches at
/// distance 1 (lengths of 258 while at least 258 are left, then one match, or up to four more
/// literal zeros), each match followed by the one-bit code of distance 1.
fn run_pieces(lit: &[u32; 286], mut run: u32, mut emit: impl FnMut(u64, u32)) {
    let (c0, l0) = code(lit, 0);
    emit(c0, l0);
    run -= 1;
    let (c285, l285) = code(lit, 285);
    while run >= 258 {
        emit(c285, l285 + 1);
        run -= 258;
    }
    if run > 4 {
        let (sym, extra_bits) = length_symbol(run);
        let (c, l) = code(lit, sym);
        emit(c, l);
        // fdeflate masks `run − 3`, which equals `run − base` for every length symbol.
        let extra = u64::from((run - 3) & ((1 << extra_bits) - 1));
        emit(extra, extra_bits + 1);
    } else {
        // The zero byte's code is all zeros.
        emit(0, run * l0);
    }
}

#[inline(always)]
fn put_run(bits: &mut Bits, codes: &Codes, run: u32) {
    match codes.runs.get(run as usize) {
        Some(&(b, n)) => bits.put(b, n),
        None => {
            bits.reserve(run as usize / 200 + 16);
            run_pieces(&codes.lit, run, |b, n| bits.put(b, n));
        }
    }
}

/// Of the four bytes `b`, the literals of those whose bit is set in `keep` (the others cost
/// nothing: their code and length are masked to zero): their bits and how many (≤ 48).
#[inline(always)]
fn literals4(lit: &[u32; 286], b: [u8; 4], keep: u32) -> (u64, u32) {
    let c = |k: usize| lit[b[k] as usize] & 0u32.wrapping_sub((keep >> k) & 1);
    let (c0, c1, c2, c3) = (c(0), c(1), c(2), c(3));
    let (l0, l1, l2, l3) = (c0 >> 16, c1 >> 16, c2 >> 16, c3 >> 16);
    let word = |c: u32| u64::from(c & 0xffff);
    let acc = word(c0) | word(c1) << l0 | word(c2) << (l0 + l1) | word(c3) << (l0 + l1 + l2);
    (acc, l0 + l1 + l2 + l3)
}

#[inline(always)]
fn put_literals4(bits: &mut Bits, lit: &[u32; 286], b: [u8; 4], keep: u32) {
    let (acc, n) = literals4(lit, b, keep);
    bits.put(acc, n);
}

/// fdeflate's `Compressor::write_data` on one filtered row. Per 8 bytes: all zero extends
/// the run; otherwise a pending run takes the chunk's leading zeros and is written, the
/// bytes up to the chunk's trailing zeros are literals (zeros among them too), and those
/// trailing zeros start the next run. A run still open at the row's end is written there,
/// then the bytes after the last whole chunk as literals.
fn put_row(bits: &mut Bits, codes: &Codes, row: &[u8]) {
    // At most 12 bits a byte, and a run's codes are shorter than its bytes'.
    bits.reserve(row.len() * 3 / 2 + 16);
    let lit = &codes.lit;
    let mut run = 0u32;
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if word == 0 {
            run += 8;
            continue;
        }
        // The pending run with the chunk's leading zeros, as one tabled code where it can.
        let (mut run_bits, mut run_n, mut start) = (0, 0, 0);
        if run > 0 {
            let leading = word.trailing_zeros() / 8;
            match codes.runs.get((run + leading) as usize) {
                Some(&(b, n)) => (run_bits, run_n) = (b, n),
                None => put_run(bits, codes, run + leading),
            }
            start = leading;
        }
        run = word.leading_zeros() / 8;
        // The chunk's bytes start..8 − run.
        let keep = (0xffu32 << start) & (0xffu32 >> run);
        let (low, low_n) = literals4(lit, [chunk[0], chunk[1], chunk[2], chunk[3]], keep);
        let (high, high_n) = literals4(lit, [chunk[4], chunk[5], chunk[6], chunk[7]], keep >> 4);
        // Usually a short run and a few small literals: one write (the writes are a chain).
        if run_n + low_n + high_n <= 56 {
            bits.put(
                run_bits | low << run_n | high << (run_n + low_n),
                run_n + low_n + high_n,
            );
        } else {
            bits.put(run_bits, run_n);
            bits.put(low, low_n);
            bits.put(high, high_n);
        }
    }
    if run > 0 {
        put_run(bits, codes, run);
    }
    for four in chunks.remainder().chunks(4) {
        let mut b = [0u8; 4];
        b[..four.len()].copy_from_slice(four);
        put_literals4(bits, lit, b, (1 << four.len()) - 1);
    }
}

/// Appends a chunk: length, type, data and the CRC of type and data.
fn put_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The size of the zlib stream of stored blocks for `raw` bytes (fdeflate's
/// `StoredOnlyCompressor::compressed_size`).
fn stored_size(raw: usize) -> usize {
    let max = u16::MAX as usize;
    (raw.saturating_sub(1) / max) * (max + 5) + (raw % max + 5) + 6
}

/// The zlib stream of the unfiltered rows (filter byte 0) in stored blocks of at most 65535
/// bytes, as fdeflate's `StoredOnlyCompressor` writes it.
fn stored_stream(width: usize, pixels: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(pixels.len() + pixels.len() / width);
    for row in pixels.chunks(width) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 65535 * 5 + 11);
    out.extend_from_slice(&[0x78, 0x01]);
    // fdeflate starts a block only when more data comes, so the last block may be full.
    let n_blocks = raw.len().div_ceil(u16::MAX as usize);
    for (k, block) in raw.chunks(u16::MAX as usize).enumerate() {
        let size = block.len() as u16;
        out.push(u8::from(k + 1 == n_blocks));
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(!size).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut adler = simd_adler32::Adler32::new();
    adler.write(&raw);
    out.extend_from_slice(&adler.finish().to_be_bytes());
    out
}

/// The PNG file of a `width`×`height` image of palette indices (`pixels`, row after row) with
/// `palette` (RGB triples, at most 256).
///
/// # Panics
/// If the sizes disagree, an image side is 0 or the palette is empty, too long or not RGB
/// triples: the caller's constants, not data.
pub fn encode(width: usize, height: usize, palette: &[u8], pixels: &[u8]) -> Vec<u8> {
    assert!(width > 0 && height > 0, "an image side is 0");
    assert_eq!(pixels.len(), width * height, "pixels for {width}×{height}");
    assert!(
        !palette.is_empty() && palette.len().is_multiple_of(3) && palette.len() <= 3 * 256,
        "a palette of RGB triples, at most 256"
    );
    let codes = codes();
    // The zlib stream: header, one block of rows, end of block, Adler-32 of the filtered rows.
    // A byte costs at most 12 bits and a row's run less than its bytes, so 1.5 bytes per byte
    // and a little per row bound it.
    let mut bits = Bits::new(64 + (width + 1) * height / 4);
    bits.put_bytes(&HEADER[..53]);
    bits.put(u64::from(HEADER[53]), 5);
    let mut adler = simd_adler32::Adler32::new();
    let mut filtered = vec![0u8; width + 1];
    filtered[0] = 1; // the Sub filter
    for row in pixels.chunks_exact(width) {
        filtered[1] = row[0];
        for (f, w) in filtered[2..].iter_mut().zip(row.windows(2)) {
            *f = w[1].wrapping_sub(w[0]);
        }
        adler.write(&filtered);
        put_row(&mut bits, codes, &filtered);
    }
    let (c256, l256) = code(&codes.lit, 256);
    bits.reserve(8);
    bits.put(c256, l256);
    let mut stream = bits.finish();
    stream.extend_from_slice(&adler.finish().to_be_bytes());
    if stream.len() > stored_size((width + 1) * height) {
        stream = stored_stream(width, pixels);
    }

    let mut out = Vec::with_capacity(8 + 25 + 12 + palette.len() + 12 + stream.len() + 12);
    out.extend_from_slice(&SIGNATURE);
    let mut ihdr = [0u8; 13];
    ihdr[..4].copy_from_slice(&(width as u32).to_be_bytes());
    ihdr[4..8].copy_from_slice(&(height as u32).to_be_bytes());
    // Bit depth 8, colour type 3 (indexed), deflate, adaptive filtering, no interlace.
    ihdr[8..].copy_from_slice(&[8, 3, 0, 0, 0]);
    put_chunk(&mut out, b"IHDR", &ihdr);
    put_chunk(&mut out, b"PLTE", palette);
    put_chunk(&mut out, b"IDAT", &stream);
    put_chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The png crate's bytes for the same image, as the picture was encoded before.
    fn png_crate(width: usize, height: usize, palette: &[u8], pixels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(palette.to_vec());
            let mut w = enc.write_header().unwrap();
            w.write_image_data(pixels).unwrap();
        }
        out
    }

    fn palette(n: usize) -> Vec<u8> {
        (0..3 * n).map(|k| (k * 7 % 256) as u8).collect()
    }

    /// Images that exercise every branch of the run logic: runs across chunk borders, runs
    /// longer than 258 and than a row, runs of 1–4, rows whose length is and is not a
    /// multiple of 8, flat, noisy and striped content, and the stored fallback.
    fn cases() -> Vec<(usize, usize, Vec<u8>)> {
        let mut rng = Rng::new(17);
        let mut cases = Vec::new();
        for &(w, h) in &[
            (1, 1),
            (1, 9),
            (7, 3),
            (8, 8),
            (9, 5),
            (15, 4),
            (16, 16),
            (17, 17),
            (63, 7),
            (64, 9),
            (257, 3),
            (300, 4),
            (720, 6),
            (1000, 3),
            // Runs longer than the table's (1024), coded piece by piece.
            (2100, 3),
        ] {
            let n = w * h;
            cases.push((w, h, vec![0; n]));
            cases.push((w, h, vec![5; n]));
            cases.push((w, h, (0..n).map(|_| (rng.next_u64() % 256) as u8).collect()));
            // Sparse changes: zero runs of every length after filtering.
            for p in [0.02, 0.1, 0.3, 0.6] {
                let mut v = 0u8;
                let px = (0..n)
                    .map(|_| {
                        if rng.unit() < p {
                            v = v.wrapping_add(1 + (rng.next_u64() % 5) as u8);
                        }
                        v
                    })
                    .collect();
                cases.push((w, h, px));
            }
            // Blocks of a few levels, as the picture's cross-section.
            let px = (0..n)
                .map(|k| ((k % w) / 3 + (k / w) / 2) as u8 % 7)
                .collect();
            cases.push((w, h, px));
        }
        cases
    }

    #[test]
    fn matches_the_png_crate_on_varied_images() {
        let mut stored = 0;
        for (w, h, px) in cases() {
            for n_colours in [1, 4, 256] {
                let pal = palette(n_colours);
                let ours = encode(w, h, &pal, &px);
                let theirs = png_crate(w, h, &pal, &px);
                assert!(
                    ours == theirs,
                    "{w}×{h}, {n_colours} colours: the bytes differ"
                );
                // The stored fallback: the zlib stream's first block is stored (BTYPE 00)
                // rather than fdeflate's dynamic block.
                let idat = 8 + 25 + 12 + pal.len() + 8;
                if ours[idat + 2] & 0b110 == 0 {
                    stored += 1;
                }
            }
        }
        assert!(stored > 0, "the stored fallback was never taken");
    }

    #[test]
    fn matches_the_png_crate_on_stored_sizes_at_block_edges() {
        // Random rows (the stored fallback) whose raw size is at, below and above a multiple
        // of the 65535-byte stored block.
        let mut rng = Rng::new(5);
        for (w, h) in [(65534, 1), (65535, 1), (65536, 1), (32767, 2), (43689, 3)] {
            let px: Vec<u8> = (0..w * h).map(|_| (rng.next_u64() % 256) as u8).collect();
            let pal = palette(256);
            assert!(
                encode(w, h, &pal, &px) == png_crate(w, h, &pal, &px),
                "{w}×{h}: the bytes differ"
            );
        }
    }

    #[test]
    fn length_symbols_follow_deflate() {
        assert_eq!(length_symbol(3), (257, 0));
        assert_eq!(length_symbol(10), (264, 0));
        assert_eq!(length_symbol(11), (265, 1));
        assert_eq!(length_symbol(12), (265, 1));
        assert_eq!(length_symbol(227), (284, 5));
        assert_eq!(length_symbol(257), (284, 5));
        assert_eq!(length_symbol(258), (285, 0));
    }
}
