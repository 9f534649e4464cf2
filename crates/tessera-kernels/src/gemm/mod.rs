//! Matrix multiplication. For now the portable fp32 path goes through the
//! `gemm` crate (AVX-512 with its `x86-v4` feature); the AMX, NEON and SME
//! microkernels will share packing and the 5-loop driver in this module.

/// Row-major (possibly strided) matrix view descriptor.
#[derive(Copy, Clone, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Element distance between consecutive rows.
    pub row_stride: usize,
    /// Element distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view exceeds its slice");
        }
    }
}

/// Threading hint for one GEMM call.
#[derive(Copy, Clone, Debug)]
pub enum Parallel {
    None,
    Rayon(usize),
}

/// `c = alpha * a @ b + beta * c`, with `c` row-major `m x n` (`ldc` = row stride).
/// Panics only if the views do not fit their slices (a caller bug).
pub fn sgemm(a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, alpha: f32, beta: f32, par: Parallel) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "output does not fit its slice");
    if k == 0 {
        for i in 0..m {
            for v in &mut c[i * ldc..i * ldc + n] {
                *v *= beta;
            }
        }
        return;
    }
    let parallelism = match par {
        Parallel::None => gemm::Parallelism::None,
        Parallel::Rayon(t) if t > 1 && m * n * k > 64 * 64 * 64 => gemm::Parallelism::Rayon(t),
        Parallel::Rayon(_) => gemm::Parallelism::None,
    };
    let read_dst = beta != 0.0;
    // SAFETY: every view was bounds-checked above against its slice (the
    // last element index is inside), strides are in elements as `gemm`
    // expects, and `c` is exclusively borrowed for the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            read_dst,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Plain triple loop, the reference the fast paths are tested against.
pub fn sgemm_reference(a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, alpha: f32, beta: f32) {
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut acc = 0.0f64;
            for p in 0..a.cols {
                acc += a.data[i * a.row_stride + p * a.col_stride] as f64
                    * b.data[p * b.row_stride + j * b.col_stride] as f64;
            }
            let dst = &mut c[i * ldc + j];
            *dst = alpha * acc as f32 + if beta == 0.0 { 0.0 } else { beta * *dst };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn sgemm_matches_reference(m in 1usize..70, k in 1usize..90, n in 1usize..70, ta in any::<bool>(), tb in any::<bool>(), beta in prop_oneof![Just(0.0f32), Just(1.0f32)], seed in any::<u64>()) {
            let a = rand_vec(m * k, seed);
            let b = rand_vec(k * n, seed ^ 7);
            let av = if ta { MatRef::row_major(&a, k, m).t() } else { MatRef::row_major(&a, m, k) };
            let bv = if tb { MatRef::row_major(&b, n, k).t() } else { MatRef::row_major(&b, k, n) };
            let c0 = rand_vec(m * n, seed ^ 9);
            let mut c1 = c0.clone();
            let mut c2 = c0.clone();
            sgemm(av, bv, &mut c1, n, 1.0, beta, Parallel::Rayon(2));
            sgemm_reference(av, bv, &mut c2, n, 1.0, beta);
            for (x, y) in c1.iter().zip(&c2) {
                prop_assert!((x - y).abs() <= 1e-4 * (k as f32).sqrt(), "{} vs {}", x, y);
            }
        }
    }
}
