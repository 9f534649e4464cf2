//! Integer matrix products for the quantized operators. Operands arrive as
//! i16 with their zero points already subtracted (u8/i8 minus a zero point
//! always fits), products accumulate in i32 (wrapping, as ONNX specifies
//! 32-bit accumulation), and the right-hand side is stored transposed so
//! every output is a contiguous dot product (which compiles to
//! multiply-add-pairs instructions).

use rayon::prelude::*;

use crate::conv::{im2row, ConvGeom};

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

#[cfg(test)]
mod tests {
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
    }
}
