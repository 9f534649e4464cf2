//! Integer matrix products for the quantized operators. Operands arrive as
//! i16 with their zero points already subtracted (u8/i8 minus a zero point
//! always fits), products accumulate in i32 (wrapping, as ONNX specifies
//! 32-bit accumulation), and the right-hand side is stored transposed so
//! every output is a contiguous dot product (which compiles to
//! multiply-add-pairs instructions).

use rayon::prelude::*;

use crate::conv::{depthwise_taps, im2row, ConvGeom};

const LANES: usize = 16;

#[inline]
fn dot(a: &[i16], b: &[i16]) -> i32 {
    let k = a.len().min(b.len());
    let (a, b) = (&a[..k], &b[..k]);
    let mut acc = [0i32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] = acc[l].wrapping_add(x[l] as i32 * y[l] as i32);
        }
    }
    let mut s = acc.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s = s.wrapping_add(*x as i32 * *y as i32);
    }
    s
}

/// Four dot products sharing the left operand.
#[inline]
fn dot4(a: &[i16], b: [&[i16]; 4]) -> [i32; 4] {
    let k = a.len();
    let mut acc = [[0i32; LANES]; 4];
    let full = k / LANES * LANES;
    let mut p = 0;
    while p < full {
        let x = &a[p..p + LANES];
        for (j, bj) in b.iter().enumerate() {
            let y = &bj[p..p + LANES];
            for l in 0..LANES {
                acc[j][l] = acc[j][l].wrapping_add(x[l] as i32 * y[l] as i32);
            }
        }
        p += LANES;
    }
    let mut out = [0i32; 4];
    for j in 0..4 {
        let mut s = acc[j].iter().fold(0i32, |s, &v| s.wrapping_add(v));
        for q in full..k {
            s = s.wrapping_add(a[q] as i32 * b[j][q] as i32);
        }
        out[j] = s;
    }
    out
}

/// `c[i * ldc + j] = sum_p a[i * lda + p] * bt[j * ldb + p]` for `i < m`,
/// `j < n`, `p < k` (single-threaded).
#[allow(clippy::too_many_arguments)]
pub fn igemm_i16(
    m: usize,
    n: usize,
    k: usize,
    a: &[i16],
    lda: usize,
    bt: &[i16],
    ldb: usize,
    c: &mut [i32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || ((m - 1) * lda + k <= a.len() && (n - 1) * ldb + k <= bt.len()), "igemm operands too small");
    assert!((m - 1) * ldc + n <= c.len(), "igemm output too small");
    for i in 0..m {
        let ai = &a[i * lda..i * lda + k];
        let ci = &mut c[i * ldc..i * ldc + n];
        let mut j = 0;
        while j + 4 <= n {
            let r = dot4(
                ai,
                [&bt[j * ldb..][..k], &bt[(j + 1) * ldb..][..k], &bt[(j + 2) * ldb..][..k], &bt[(j + 3) * ldb..][..k]],
            );
            ci[j..j + 4].copy_from_slice(&r);
            j += 4;
        }
        while j < n {
            ci[j] = dot(ai, &bt[j * ldb..][..k]);
            j += 1;
        }
    }
}

/// [`igemm_i16`] with contiguous operands (`a` is `m x k`, `bt` is `n x k`,
/// `c` is `m x n`), parallel over blocks of rows.
pub fn igemm_i16_par(m: usize, n: usize, k: usize, a: &[i16], bt: &[i16], c: &mut [i32]) {
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m * n * k.max(1) < (1 << 16) {
        igemm_i16(m, n, k, a, k, bt, k, c, n);
        return;
    }
    let rows = m.div_ceil(2 * threads).max(1);
    c.par_chunks_mut(rows * n).enumerate().for_each(|(bi, cb)| {
        let r0 = bi * rows;
        let mr = cb.len() / n;
        igemm_i16(mr, n, k, &a[r0 * k..], k, bt, k, cb, n);
    });
}

/// Integer convolution: `x` is `[N, C, in...]` as i16 (zero point already
/// subtracted, so padding is 0), `w` is `[M, C / groups, k...]` as i16, `y`
/// receives i32 sums `[N, M, out...]`.
pub fn conv_i16(g: &ConvGeom, x: &[i16], w: &[i16], y: &mut [i32]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let (cin_g, cout_g, groups) = (g.in_per_group(), g.out_per_group(), g.groups);
    let ck = cin_g * ks;
    assert!(x.len() >= g.batch * g.in_channels * in_size, "conv input too small");
    assert!(w.len() >= g.out_channels * ck, "conv weights too small");
    assert!(y.len() >= g.batch * g.out_channels * out_size, "conv output too small");
    let y = &mut y[..g.batch * g.out_channels * out_size];
    if y.is_empty() {
        return;
    }
    if cin_g == 1 {
        depthwise_i16(g, x, w, y);
        return;
    }
    let nb = ((1usize << 19) / (ck.max(1) * 2)).clamp(16, 1024).min(out_size);
    // One task per (image, group): its output rows are contiguous.
    let task = |ng: usize, yg: &mut [i32]| {
        let (n, gi) = (ng / groups, ng % groups);
        let xg = &x[(n * g.in_channels + gi * cin_g) * in_size..][..cin_g * in_size];
        let wg = &w[gi * cout_g * ck..][..cout_g * ck];
        let mut rows = vec![0i16; nb * ck];
        let mut tmp = vec![0i32; cout_g * nb];
        let mut p0 = 0;
        while p0 < out_size {
            let p1 = (p0 + nb).min(out_size);
            let cols = p1 - p0;
            im2row(g, xg, cin_g, p0, p1, &mut rows[..cols * ck]);
            igemm_i16(cout_g, cols, ck, wg, ck, &rows, ck, &mut tmp, cols);
            for m in 0..cout_g {
                yg[m * out_size + p0..m * out_size + p1].copy_from_slice(&tmp[m * cols..(m + 1) * cols]);
            }
            p0 = p1;
        }
    };
    let chunk = cout_g * out_size;
    if chunk == 0 {
        return;
    }
    y.par_chunks_mut(chunk).enumerate().for_each(|(ng, yg)| task(ng, yg));
}

/// Values per parallel task of the elementwise quantizers: large enough to
/// amortize the task, small enough to spread a 128x768 activation.
const QUANT_CHUNK: usize = 16 * 1024;

/// 1.5 * 2^23: adding it to an f32 of magnitude < 2^22 rounds it to an
/// integer (kept in the low mantissa bits).
const MAGIC: f32 = 12_582_912.0;

/// `round_ties_even(v)` for `|v| <= 2^22`, without a libm call: adding and
/// removing 1.5 * 2^23 leaves the value rounded to an integer by the FPU's
/// round-to-nearest-even mode, and the loop vectorizes.
#[inline(always)]
pub(crate) fn round_even_small(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// The low byte of the integer `v` (|v| < 2^22) in two's complement:
/// adding 1.5 * 2^23 puts the integer in the low mantissa bits. Unlike an
/// `as` cast (which saturates, and compiles to a scalar check per lane),
/// this vectorizes.
#[inline(always)]
fn low_byte(v: f32) -> u8 {
    (v + MAGIC).to_bits() as u8
}

/// DynamicQuantizeLinear on fp32: `scale = (max(x, 0) - min(x, 0)) / 255`
/// (1/255 when that range is empty), `zero = saturate(round(-min / scale))`,
/// `y = saturate(round(x / scale) + zero)`, rounding half to even as the
/// ONNX operator specifies. Returns `(scale, zero)`.
pub fn dynamic_quantize_u8(x: &[f32], y: &mut [u8]) -> (f32, u8) {
    assert_eq!(x.len(), y.len(), "input and output lengths differ");
    let (mn, mx) = x.par_chunks(QUANT_CHUNK).map(min_max).reduce(|| (0.0, 0.0), |(a, b), (c, d)| (a.min(c), b.max(d)));
    let scale = (if mx == mn { 1.0 } else { mx - mn }) / 255.0f32;
    let zero = (0.0 - mn / scale).clamp(0.0, 255.0).round_ties_even();
    y.par_chunks_mut(QUANT_CHUNK).zip(x.par_chunks(QUANT_CHUNK)).for_each(|(yc, xc)| quantize_u8(xc, yc, scale, zero));
    (scale, zero as u8)
}

/// (min(0, x), max(0, x)), NaNs skipped.
fn min_max(x: &[f32]) -> (f32, f32) {
    with_vector_features!(min_max_body(x: &[f32]) -> (f32, f32))
}

#[inline(always)]
fn min_max_body<const FMA: bool>(x: &[f32]) -> (f32, f32) {
    // 16 independent lanes (a single running min is a serial chain the
    // compiler cannot reorder); a comparison select skips NaN as `min` does.
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            lo[j] = if c[j] < lo[j] { c[j] } else { lo[j] };
            hi[j] = if c[j] > hi[j] { c[j] } else { hi[j] };
        }
    }
    let fold = |acc: (f32, f32), v: f32| (if v < acc.0 { v } else { acc.0 }, if v > acc.1 { v } else { acc.1 });
    let lanes = lo.iter().zip(&hi).fold((0f32, 0f32), |a, (&l, &h)| fold(fold(a, l), h));
    chunks.remainder().iter().fold(lanes, |a, &v| fold(a, v))
}

/// `y = saturate(round(x / scale) + zero)` into uint8.
fn quantize_u8(x: &[f32], y: &mut [u8], scale: f32, zero: f32) {
    quantize_8bit(x, y, scale, zero, false)
}

/// [`conv_i16`] with one input channel per group (depthwise, any channel
/// multiplier): each output plane is a sum of its kernel's taps times
/// shifted input rows, an i32 multiply-add along each output row that
/// vectorizes for stride 1, where im2row and a one-row product per group
/// would do a few multiplies per copied value.
fn depthwise_i16(g: &ConvGeom, x: &[i16], w: &[i16], y: &mut [i32]) {
    let (in_size, out_size, ks) = (g.in_size(), g.out_size(), g.kernel_size());
    let (cout_g, m_all, c_all) = (g.out_per_group(), g.out_channels, g.in_channels);
    let [od, oh, ow] = g.output;
    let (iw, s2) = (g.input[2], g.stride[2]);
    if out_size == 0 {
        return;
    }
    let plane = |nm: usize, yplane: &mut [i32]| {
        let (n, m) = (nm / m_all, nm % m_all);
        let c = m / cout_g.max(1);
        let xp = &x[(n * c_all + c) * in_size..][..in_size];
        let wk = &w[m * ks..][..ks];
        yplane.fill(0);
        for oz in 0..od {
            for oy in 0..oh {
                let yl = &mut yplane[(oz * oh + oy) * ow..][..ow];
                depthwise_taps(g, oz, oy, |k, line, lo, hi, ix0| {
                    let (wv, xl) = (wk[k] as i32, &xp[line..][..iw]);
                    if s2 == 1 {
                        for (yv, &xv) in yl[lo..hi].iter_mut().zip(&xl[ix0..ix0 + hi - lo]) {
                            *yv = yv.wrapping_add(wv * xv as i32);
                        }
                    } else {
                        for (i, yv) in yl[lo..hi].iter_mut().enumerate() {
                            *yv = yv.wrapping_add(wv * xl[ix0 + i * s2] as i32);
                        }
                    }
                });
            }
        }
    };
    y.par_chunks_mut(out_size).enumerate().for_each(|(i, p)| plane(i, p));
}

/// QuantizeLinear with one scale and zero point into 8 bits, spread over
/// the rayon pool: `y = saturate(round(x / scale) + zero)`, rounding half
/// to even, saturating to int8 (`signed`, stored as its bit pattern) or
/// uint8; NaN becomes 0. `zero` must lie in the type's range.
pub fn quantize_linear_8bit(x: &[f32], y: &mut [u8], scale: f32, zero: i32, signed: bool) {
    assert_eq!(x.len(), y.len(), "input and output lengths differ");
    let (lo, hi) = if signed { (-128, 127) } else { (0, 255) };
    assert!((lo..=hi).contains(&zero), "zero point {zero} is out of the 8-bit range");
    let zero = zero as f32;
    y.par_chunks_mut(QUANT_CHUNK)
        .zip(x.par_chunks(QUANT_CHUNK))
        .for_each(|(yc, xc)| quantize_8bit(xc, yc, scale, zero, signed));
}

/// One chunk of [`quantize_linear_8bit`] (the division as the operator
/// defines it, not a multiply by the inverse, which can round differently).
fn quantize_8bit(x: &[f32], y: &mut [u8], scale: f32, zero: f32, signed: bool) {
    with_vector_features!(quantize_8bit_body(x: &[f32], y: &mut [u8], scale: f32, zero: f32, signed: bool))
}

#[inline(always)]
fn quantize_8bit_body<const FMA: bool>(x: &[f32], y: &mut [u8], scale: f32, zero: f32, signed: bool) {
    let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
    // Clamped before rounding, to bounds that are integers once the zero
    // point is added: the same as rounding first (rounding is monotone and
    // keeps integers), and it keeps the rounding trick in range.
    let (lo, hi) = (lo - zero, hi - zero);
    for (o, &v) in y.iter_mut().zip(x) {
        let t = v / scale;
        let q = round_even_small(t.clamp(lo, hi)) + zero;
        *o = low_byte(if t.is_nan() { 0.0 } else { q });
    }
}

/// QLinearConv's output stage: the i32 sums `acc`, laid out as planes of
/// `plane` values whose channel is `plane index % mults.len()` (NCHW), plus
/// the channel's `bias` (wrapping, as i32 sums add), rescaled by the
/// channel's `mults` and saturated into 8 bits around `zero`:
/// `round(clamp(acc * mult + zero))`, rounding half to even, in f64 (the
/// zero point added before rounding, as the operator did before).
/// int8 values are stored as their bit patterns. Spread over the rayon pool
/// in runs of whole planes; the loop vectorizes (no libm rounding call).
pub fn requantize_planes(
    acc: &[i32],
    plane: usize,
    bias: Option<&[i32]>,
    mults: &[f64],
    zero: i32,
    signed: bool,
    out: &mut [u8],
) {
    assert_eq!(acc.len(), out.len(), "sums and output lengths differ");
    let m = mults.len();
    if acc.is_empty() {
        return;
    }
    assert!(plane > 0 && m > 0 && acc.len().is_multiple_of(plane), "sums are not whole planes");
    assert!(bias.is_none_or(|b| b.len() == m), "a bias per channel");
    let planes_per_task = (QUANT_CHUNK / plane).max(1);
    out.par_chunks_mut(planes_per_task * plane)
        .zip(acc.par_chunks(planes_per_task * plane))
        .enumerate()
        .for_each(|(t, (o, a))| requantize_run(a, o, t * planes_per_task, plane, bias, mults, zero, signed));
}

/// Planes `first..` of [`requantize_planes`], one vector-unit dispatch for
/// the run (a 1x1 output is one value per plane).
#[allow(clippy::too_many_arguments)]
fn requantize_run(
    acc: &[i32],
    out: &mut [u8],
    first: usize,
    plane: usize,
    bias: Option<&[i32]>,
    mults: &[f64],
    zero: i32,
    signed: bool,
) {
    with_vector_features!(requantize_run_body(
        acc: &[i32],
        out: &mut [u8],
        first: usize,
        plane: usize,
        bias: Option<&[i32]>,
        mults: &[f64],
        zero: i32,
        signed: bool,
    ))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn requantize_run_body<const FMA: bool>(
    acc: &[i32],
    out: &mut [u8],
    first: usize,
    plane: usize,
    bias: Option<&[i32]>,
    mults: &[f64],
    zero: i32,
    signed: bool,
) {
    let (m, zero) = (mults.len(), zero as f64);
    let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
    for (i, (op, ap)) in out.chunks_mut(plane).zip(acc.chunks(plane)).enumerate() {
        let ch = (first + i) % m;
        let b = bias.map_or(0, |b| b[ch]);
        requantize_plane_body::<FMA>(ap, op, b, mults[ch], zero, lo, hi);
    }
}

/// One plane of [`requantize_planes`] whose sums arrive as f32 holding
/// exact integers of magnitude at most 2^24 (the depthwise loop's; see
/// [`int8_sums_exact_in_f32`](crate::depthwise::int8_sums_exact_in_f32)):
/// the same values, bit for bit, as for those sums in i32.
pub fn requantize_plane_f32(sums: &[f32], out: &mut [u8], bias: i32, mult: f64, zero: i32, signed: bool) {
    assert_eq!(sums.len(), out.len(), "sums and output lengths differ");
    with_vector_features!(requantize_plane_f32_body(
        sums: &[f32],
        out: &mut [u8],
        bias: i32,
        mult: f64,
        zero: i32,
        signed: bool,
    ))
}

#[inline(always)]
fn requantize_plane_f32_body<const FMA: bool>(
    sums: &[f32],
    out: &mut [u8],
    bias: i32,
    mult: f64,
    zero: i32,
    signed: bool,
) {
    let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
    if (bias as i64).abs() + (1 << 24) <= i32::MAX as i64 {
        // The sums are at most 2^24 in magnitude, so with this bias the i32
        // addition cannot wrap and f64 adds exactly: no f32 -> i32 cast
        // (a saturating one, which does not vectorize).
        for (o, &c) in out.iter_mut().zip(sums) {
            let v = ((c as f64 + bias as f64) * mult + zero as f64).clamp(lo, hi);
            *o = (v + MAGIC64).to_bits() as u8;
        }
    } else {
        for (o, &c) in out.iter_mut().zip(sums) {
            let v = ((c as i32).wrapping_add(bias) as f64 * mult + zero as f64).clamp(lo, hi);
            *o = (v + MAGIC64).to_bits() as u8;
        }
    }
}

/// 1.5 * 2^52: adding it to an f64 of magnitude < 2^51 rounds it to an
/// integer held in the low mantissa bits.
const MAGIC64: f64 = 6_755_399_441_055_744.0;

#[inline(always)]
fn requantize_plane_body<const FMA: bool>(
    acc: &[i32],
    out: &mut [u8],
    bias: i32,
    mult: f64,
    zero: f64,
    lo: f64,
    hi: f64,
) {
    for (o, &c) in out.iter_mut().zip(acc) {
        // Clamped before rounding to integer bounds: the same as after.
        let v = (c.wrapping_add(bias) as f64 * mult + zero).clamp(lo, hi);
        *o = (v + MAGIC64).to_bits() as u8;
    }
}

/// Symmetric per-row int8 quantization of an `m x k` row-major matrix:
/// `scale[i] = max |x[i, :]| / 127` (1 for an all-zero or non-finite row),
/// `q[i, j] = round(x[i, j] / scale[i])` half to even, as i8 bit patterns.
/// Rows are spread over the rayon pool; the loops vectorize (no libm
/// rounding call).
pub fn quantize_rows_i8(x: &[f32], k: usize, q: &mut Vec<u8>, scales: &mut Vec<f32>) {
    let k = k.max(1);
    assert_eq!(x.len() % k, 0, "input is not whole rows of {k}");
    q.resize(x.len(), 0);
    scales.resize(x.len() / k, 0.0);
    let rows_per_task = (QUANT_CHUNK / k).max(1);
    q.par_chunks_mut(rows_per_task * k)
        .zip(x.par_chunks(rows_per_task * k))
        .zip(scales.par_chunks_mut(rows_per_task))
        .for_each(|((qc, xc), sc)| {
            for ((qr, row), s) in qc.chunks_mut(k).zip(xc.chunks(k)).zip(sc.iter_mut()) {
                *s = quantize_row_i8(row, qr);
            }
        });
}

/// One row of [`quantize_rows_i8`]; returns its scale.
pub(crate) fn quantize_row_i8(row: &[f32], q: &mut [u8]) -> f32 {
    with_vector_features!(quantize_row_i8_body(row: &[f32], q: &mut [u8]) -> f32)
}

#[inline(always)]
fn quantize_row_i8_body<const FMA: bool>(row: &[f32], q: &mut [u8]) -> f32 {
    // max |x| from the lane-parallel min and max (NaN skipped; a row of
    // only NaN scales by 1, as does one with an infinity).
    let (lo, hi) = min_max_body::<FMA>(row);
    let m = hi.max(-lo);
    let s = if m > 0.0 && m.is_finite() { m / 127.0 } else { 1.0 };
    let inv = 1.0 / s;
    for (d, &v) in q.iter_mut().zip(row) {
        // NaN quantizes to 0 (its low byte would be garbage), as in the
        // fused AVX-512 quantizer of the tile driver.
        let y = v * inv;
        let y = if y.is_nan() { 0.0 } else { y };
        *d = low_byte(round_even_small(y.clamp(-127.0, 127.0)));
    }
    s
}

#[cfg(test)]
mod tests {
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// The depthwise path (one input channel per group, channel
        /// multipliers 1 to 3) against a direct sum over the taps, on random
        /// 2-D geometries: borders, asymmetric padding, strides and
        /// dilations; the output starts stale.
        #[test]
        fn depthwise_conv_i16_matches_direct(
            n in 1usize..3, c in 1usize..5, mult in 1usize..4, h in 1usize..12, w_ in 1usize..12,
            kh in 1usize..4, kw in 1usize..4, s in 1usize..3, d in 1usize..3, pads in (0usize..3, 0usize..3),
            seed in any::<u64>(),
        ) {
            let (ph, pw) = pads;
            let out = |i: usize, k: usize, p: usize| (i + 2 * p).checked_sub(d * (k - 1) + 1).map(|v| v / s + 1);
            let (Some(oh), Some(ow)) = (out(h, kh, ph), out(w_, kw, pw)) else { return Ok(()) };
            let m = c * mult;
            let g = crate::conv::ConvGeom {
                batch: n, in_channels: c, out_channels: m, groups: c,
                input: [1, h, w_], output: [1, oh, ow], kernel: [1, kh, kw], stride: [1, s, s],
                pad: [0, ph as isize, pw as isize], dilation: [1, d, d],
            };
            let val = |i: usize, salt: u64| ((seed ^ salt).wrapping_add(i as u64 * 2_654_435_761) >> 9) as i16 % 256 - 128;
            let x: Vec<i16> = (0..n * c * h * w_).map(|i| val(i, 1)).collect();
            let wt: Vec<i16> = (0..m * kh * kw).map(|i| val(i, 2)).collect();
            let mut y = vec![i32::MIN; n * m * oh * ow];
            super::conv_i16(&g, &x, &wt, &mut y);
            for ni in 0..n {
                for mi in 0..m {
                    let ci = mi / mult;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut want = 0i32;
                            for a in 0..kh {
                                for b in 0..kw {
                                    let iy = (oy * s + a * d) as isize - ph as isize;
                                    let ix = (ox * s + b * d) as isize - pw as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w_ {
                                        let xv = x[((ni * c + ci) * h + iy as usize) * w_ + ix as usize] as i32;
                                        want += xv * wt[(mi * kh + a) * kw + b] as i32;
                                    }
                                }
                            }
                            prop_assert_eq!(y[((ni * m + mi) * oh + oy) * ow + ox], want, "n {} m {} at ({}, {})", ni, mi, oy, ox);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn per_row_int8_quantization_matches_its_definition() {
        let (m, k) = (37, 301);
        let mut x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013).collect();
        x[5 * k..6 * k].fill(0.0); // an all-zero row scales by 1
        let (mut q, mut s) = (Vec::new(), Vec::new());
        super::quantize_rows_i8(&x, k, &mut q, &mut s);
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            let mx = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let want_s = if mx > 0.0 { mx / 127.0 } else { 1.0 };
            assert_eq!(s[i], want_s, "row {i} scale");
            for j in 0..k {
                let want = (row[j] / want_s).clamp(-127.0, 127.0).round_ties_even() as i8;
                let got = q[i * k + j] as i8;
                // x * (1/s) and x / s may differ in the last bit, moving a
                // value off an exact tie: one step at most.
                assert!((got as i32 - want as i32).abs() <= 1, "({i},{j}): {got} vs {want}");
            }
            assert!(q[i * k..(i + 1) * k].iter().any(|&v| v as i8 == 127 || v as i8 == -127) || mx == 0.0);
        }
    }

    #[test]
    fn dynamic_quantize_matches_the_operator_definition() {
        // Random values, exact ties at x / scale = n + 0.5, all-positive,
        // all-negative and constant inputs, and a large ragged length.
        let mut s = 0x1234_5678u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut cases: Vec<Vec<f32>> = vec![
            (0..40_003).map(|_| rnd() * 3.0).collect(),
            (0..1000).map(|_| rnd().abs() + 0.5).collect(),
            (0..1000).map(|_| -rnd().abs() - 0.5).collect(),
            vec![0.7; 33],
            vec![],
        ];
        // Exact ties: the range [-100, 155] gives scale 1 and zero 100.
        let mut ties: Vec<f32> = (-20..20).map(|i| i as f32 + 0.5).collect();
        ties.extend([-100.0, 155.0]);
        cases.push(ties);
        for x in cases {
            let mut y = vec![0u8; x.len()];
            let (scale, zero) = dynamic_quantize_u8(&x, &mut y);
            let (mn, mx) = x.iter().fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
            let want_scale = (if mx == mn { 1.0 } else { mx - mn }) / 255.0;
            assert_eq!(scale, want_scale);
            let want_zero = (0.0 - mn / want_scale).clamp(0.0, 255.0).round_ties_even();
            assert_eq!(zero as f32, want_zero);
            for (&v, &q) in x.iter().zip(&y) {
                let want = ((v / want_scale).round_ties_even() + want_zero).clamp(0.0, 255.0) as u8;
                assert_eq!(q, want, "x = {v}");
            }
        }
    }
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn igemm_matches_naive(m in 1usize..40, n in 1usize..40, k in 0usize..70, seed in any::<u64>()) {
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; ((s % 511) as i16) - 255 };
            let a: Vec<i16> = (0..m * k).map(|_| next()).collect();
            let bt: Vec<i16> = (0..n * k).map(|_| next()).collect();
            let mut c = vec![0i32; m * n];
            igemm_i16_par(m, n, k, &a, &bt, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let r: i32 = (0..k).map(|p| a[i * k + p] as i32 * bt[j * k + p] as i32).sum();
                    prop_assert_eq!(c[i * n + j], r);
                }
            }
        }

        /// The f32 sums' requantization at its fast path's edge: sums of
        /// +-2^24 with a bias just inside (no i32 wrap, f64 adds) and just
        /// outside (the i32 sum wraps), against the i32 path.
        #[test]
        fn requantized_f32_sums_at_the_wrap_edge(signed: bool, mult_pick in 0usize..3) {
            let mult = [1e-9f64, 0.5, 3.0e-7][mult_pick];
            let acc = [1 << 24, -(1 << 24), 0, 1, -1];
            let sums: Vec<f32> = acc.iter().map(|&v| v as f32).collect();
            let edge = i32::MAX - (1 << 24);
            for b in [edge, edge + 1, -edge, -edge - 1] {
                let (mut o32, mut o) = ([0u8; 5], [0u8; 5]);
                requantize_plane_f32(&sums, &mut o32, b, mult, 3, signed);
                requantize_planes(&acc, 5, Some(&[b][..]), &[mult], 3, signed, &mut o);
                prop_assert_eq!(o32, o, "bias {}", b);
            }
        }

        /// QLinearConv's output stage against its definition per value
        /// (f64, `round_ties_even`): ragged planes, a bias or none, sums
        /// that saturate both ends, exact ties (mult 0.5, odd sums), int8
        /// and uint8.
        #[test]
        fn requantized_planes_match_the_definition(
            planes in prop_oneof![1usize..12, 20usize..40], plane in prop_oneof![1usize..70, 900usize..1100],
            m in 1usize..5, with_bias: bool, signed: bool, zero_pick in 0usize..3, seed in any::<u64>(),
        ) {
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            let acc: Vec<i32> = (0..planes * plane).map(|_| (next() % 2001) as i32 - 1000).collect();
            let mults: Vec<f64> = (0..m).map(|c| if c == 0 { 0.5 } else { (next() % 1000) as f64 / 2000.0 + 0.01 }).collect();
            let bias: Vec<i32> = (0..m).map(|_| (next() % 201) as i32 - 100).collect();
            let zero = if signed { [-128, 0, 127][zero_pick] } else { [0, 128, 255][zero_pick] };
            let mut out = vec![0u8; acc.len()];
            requantize_planes(&acc, plane, with_bias.then_some(&bias[..]), &mults, zero, signed, &mut out);
            let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
            for (i, (&c, &o)) in acc.iter().zip(&out).enumerate() {
                let ch = (i / plane) % m;
                let c = c + if with_bias { bias[ch] } else { 0 };
                let want = (c as f64 * mults[ch] + zero as f64).clamp(lo, hi).round_ties_even();
                let got = if signed { o as i8 as f64 } else { o as f64 };
                prop_assert_eq!(got, want, "value {} (channel {})", i, ch);
            }
            // The same sums as exact f32 integers, plane by plane.
            let mut out32 = vec![0u8; acc.len()];
            for (p, (a, o)) in acc.chunks(plane).zip(out32.chunks_mut(plane)).enumerate() {
                let sums: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                let b = if with_bias { bias[p % m] } else { 0 };
                requantize_plane_f32(&sums, o, b, mults[p % m], zero, signed);
            }
            prop_assert_eq!(out32, out);
            // A bias at the ends of i32 wraps as the i32 sums do.
            for b in [i32::MAX - 3, i32::MIN + 2] {
                let sums: Vec<f32> = acc[..plane].iter().map(|&v| v as f32).collect();
                let (mut o32, mut o) = (vec![0u8; plane], vec![0u8; plane]);
                requantize_plane_f32(&sums, &mut o32, b, mults[0], zero, signed);
                requantize_planes(&acc[..plane], plane, Some(&[b][..]), &mults[..1], zero, signed, &mut o);
                prop_assert_eq!(o32, o);
            }
        }

        /// Every value against the operator's definition, in f64 with an
        /// explicit half-to-even rounding: random magnitudes around the
        /// scale, exact ties (`x / scale` at n + 0.5), values past both ends
        /// of the range, infinities and NaN, on ragged lengths.
        #[test]
        fn quantize_linear_matches_the_operator_definition(
            len in 0usize..3000, seed in any::<u64>(), signed: bool, zero_pick in 0usize..4, scale_pick in 0usize..3,
        ) {
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            let scale = [0.5f32, 0.0173, 3.0e-3][scale_pick];
            let zero: i32 = if signed { [0, -128, 127, 5][zero_pick] } else { [0, 255, 128, 3][zero_pick] };
            let x: Vec<f32> = (0..len).map(|_| {
                let r = next();
                match r % 8 {
                    // An exact tie: scale 0.5 makes n + 0.5 exact in both
                    // the input and the quotient.
                    0 => (((r >> 8) % 600) as f32 - 300.0 + 0.5) * scale,
                    // NaN with payload bits (whose low byte would show).
                    1 => [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::from_bits(0xffc0_00ab), 1e30, -1e30, 0.0, -0.0][(r >> 8) as usize % 8],
                    _ => (((r >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32 * 400.0 * scale,
                }
            }).collect();
            let mut y = vec![0u8; len];
            quantize_linear_8bit(&x, &mut y, scale, zero, signed);
            let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
            for (&v, &q) in x.iter().zip(&y) {
                let t = (v / scale) as f64;
                let want = if t.is_nan() {
                    0.0
                } else {
                    let f = t.floor();
                    let r = if t - f > 0.5 || (t - f == 0.5 && f % 2.0 != 0.0) { f + 1.0 } else { f };
                    (r + zero as f64).clamp(lo, hi)
                };
                let got = if signed { q as i8 as f64 } else { q as f64 };
                prop_assert_eq!(got, want, "x = {} scale {} zero {}", v, scale, zero);
            }
        }
    }
}
