// Batched GCC-PHAT (see src/gpu.rs for the host side and the buffer contract).
//
// `forward`: one workgroup per window; real window -> complex spectrum (radix-2 FFT in
// workgroup memory, decimation in time after a bit-reversed load).
// `cross`: one workgroup per pair; PHAT-weighted cross-spectrum sig * conj(ref) / (|.| + eps),
// inverse FFT, real part scaled by 1/n_fft written to out[pair * n_fft + lag].
// Twiddles come from the host (f64-accurate): twiddles[k] = exp(-2*pi*i*k/n_fft), k < n_fft/2.

struct Params {
    n_fft: u32,
    log2_n: u32,
    n_windows: u32,
    n_pairs: u32,
}

// Workgroups along x per dispatch row; the host dispatches (min(count, ROW), ceil(count/ROW)).
const ROW: u32 = 32768u;
const WG: u32 = 64u;
const MAX_FFT: u32 = 1024u;
const PHAT_EPS: f32 = 1e-12;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> twiddles: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> windows: array<f32>;
@group(0) @binding(3) var<storage, read> pairs: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> spectra: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> buf: array<vec2<f32>, MAX_FFT>;

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

fn bit_reversed(i: u32) -> u32 {
    return reverseBits(i) >> (32u - params.log2_n);
}

// In-place FFT of `buf` (already in bit-reversed order). `sign` = 1 forward, -1 inverse.
fn fft_in_buf(lid: u32, sign: f32) {
    let n = params.n_fft;
    for (var s = 0u; s < params.log2_n; s++) {
        let half = 1u << s;
        let stride = n >> (s + 1u);
        for (var b = lid; b < n / 2u; b += WG) {
            let j = b & (half - 1u);
            let i0 = (b >> s) * 2u * half + j;
            let i1 = i0 + half;
            let tw = twiddles[j * stride];
            let t = cmul(vec2<f32>(tw.x, sign * tw.y), buf[i1]);
            let u = buf[i0];
            buf[i0] = u + t;
            buf[i1] = u - t;
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = wg.x + wg.y * ROW;
    if (w >= params.n_windows) {
        return;
    }
    let n = params.n_fft;
    let base = w * n;
    for (var i = lid; i < n; i += WG) {
        buf[bit_reversed(i)] = vec2<f32>(windows[base + i], 0.0);
    }
    workgroupBarrier();
    fft_in_buf(lid, 1.0);
    for (var i = lid; i < n; i += WG) {
        spectra[base + i] = buf[i];
    }
}

@compute @workgroup_size(64)
fn cross(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = wg.x + wg.y * ROW;
    if (p >= params.n_pairs) {
        return;
    }
    let n = params.n_fft;
    let r = pairs[p].x * n;
    let s = pairs[p].y * n;
    for (var i = lid; i < n; i += WG) {
        let a = spectra[r + i];
        let b = spectra[s + i];
        let g = vec2<f32>(b.x * a.x + b.y * a.y, b.y * a.x - b.x * a.y);
        buf[bit_reversed(i)] = g / (sqrt(g.x * g.x + g.y * g.y) + PHAT_EPS);
    }
    workgroupBarrier();
    fft_in_buf(lid, -1.0);
    let scale = 1.0 / f32(n);
    for (var i = lid; i < n; i += WG) {
        out[p * n + i] = buf[i].x * scale;
    }
}
