//! Matrix multiplication. The portable fp32 path goes through the `gemm`
//! crate (AVX-512 with its `x86-v4` feature); the tile path (AMX today)
//! shares packing ([`pack`]), the driver ([`tile`]) and the epilogues
//! ([`epilogue`]), with the ISA-specific code in [`ukernel`].

mod batched;
pub mod epilogue;
pub mod pack;
pub mod tile;
pub mod ukernel;
pub mod vector;

pub use batched::{gemm_batched, BatchRef, RowEpilogue};
pub use epilogue::{Activation, Epilogue, Requantize, Residual};
pub use pack::Split;
pub use tile::{
    stage_ticks_since_last, tick_count, tile_igemm, tile_igemm_gather, tile_igemm_with, tile_mlp, tile_mlp_with,
    tile_sgemm, tile_sgemm_rows, tile_sgemm_rows_with, tile_sgemm_transposed, tile_sgemm_with, I8Mat, I8Out, PackedA,
    PackedB, Prefetch, StagedA, TileBlocking, WeightStream,
};
pub use ukernel::TileIsa;
pub use vector::{vector_igemm, vector_sgemm, vector_sgemm_packed, Blocking, PackedRhs, VectorKernel};

/// Element types the `gemm` crate multiplies natively (f32 and f64).
pub trait GemmScalar:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + PartialOrd
    + std::fmt::Debug
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Runs `f` with a per-thread scratch buffer of at least `len` elements
    /// (contents unspecified). The buffer is taken out of its thread-local
    /// slot while `f` runs, so a nested call on the same thread (rayon work
    /// stealing) gets its own buffer instead of aliasing this one.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// `values` as f32 when `Self` is f32 (for kernels that exist only
    /// for f32).
    fn as_f32(values: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;
}

macro_rules! gemm_scalar {
    ($t:ty, $tls:ident, $to_f32:expr) => {
        thread_local! {
            static $tls: std::cell::Cell<Vec<$t>> = const { std::cell::Cell::new(Vec::new()) };
        }
        impl GemmScalar for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                let mut buf = $tls.with(|c| c.take());
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
                let r = f(&mut buf[..len]);
                $tls.with(|c| {
                    let old = c.take();
                    // Keep the larger of the two buffers for the next call.
                    c.set(if old.len() > buf.len() { old } else { buf });
                });
                r
            }
            fn as_f32(values: &[Self]) -> Option<&[f32]> {
                ($to_f32)(values)
            }
            fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
                ($to_f32)(values)
            }
        }
    };
}
gemm_scalar!(f32, SCRATCH_F32, Some);
gemm_scalar!(f64, SCRATCH_F64, |_| None);

/// Row-major (possibly strided) matrix view descriptor.
#[derive(Copy, Clone, Debug)]
pub struct MatRef<'a, T = f32> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    /// Element distance between consecutive rows.
    pub row_stride: usize,
    /// Element distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
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
    /// Rows `r0..r0 + rows` as a view.
    pub fn rows_range(self, r0: usize, rows: usize) -> Self {
        assert!(r0 + rows <= self.rows, "row range exceeds the matrix");
        let start = (r0 * self.row_stride).min(self.data.len());
        MatRef { data: &self.data[start..], rows, ..self }
    }
    /// Columns `c0..c0 + cols` as a view.
    pub fn cols_range(self, c0: usize, cols: usize) -> Self {
        assert!(c0 + cols <= self.cols, "column range exceeds the matrix");
        let start = (c0 * self.col_stride).min(self.data.len());
        MatRef { data: &self.data[start..], cols, ..self }
    }
    /// Row `i` as a slice: in place when its elements are adjacent, else
    /// gathered into `scratch` (for views such as a transpose).
    pub(crate) fn row<'s>(&self, i: usize, scratch: &'s mut Vec<T>) -> &'s [T]
    where
        'a: 's,
        T: Copy,
    {
        let base = i * self.row_stride;
        if self.cols == 0 {
            &[]
        } else if self.col_stride == 1 {
            &self.data[base..base + self.cols]
        } else {
            scratch.clear();
            scratch.extend((0..self.cols).map(|kk| self.data[base + kk * self.col_stride]));
            scratch
        }
    }
    /// The view's values in row-major order (a copy).
    pub fn to_vec(&self) -> Vec<T>
    where
        T: Copy,
    {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        let mut scratch = Vec::new();
        for i in 0..self.rows {
            out.extend_from_slice(self.row(i, &mut scratch));
        }
        out
    }
    pub(crate) fn check(&self) {
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
    gemm_checked(a, b, c, ldc, alpha, beta, par)
}

/// The f64 twin of [`sgemm`].
pub fn dgemm(a: MatRef<f64>, b: MatRef<f64>, c: &mut [f64], ldc: usize, alpha: f64, beta: f64, par: Parallel) {
    gemm_checked(a, b, c, ldc, alpha, beta, par)
}

/// [`sgemm`] for any [`GemmScalar`].
pub fn gemm_checked<T: GemmScalar>(
    a: MatRef<T>,
    b: MatRef<T>,
    c: &mut [T],
    ldc: usize,
    alpha: T,
    beta: T,
    par: Parallel,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "output does not fit its slice");
    // SAFETY: the views were bounds-checked above, the output region
    // (rows < m with stride ldc, columns < n) lies inside `c`, which is
    // exclusively borrowed for the call.
    unsafe { gemm_raw(a, b, c.as_mut_ptr(), ldc, alpha, beta, par) }
}

/// The unchecked core shared by the safe entry points and the convolution
/// driver (which writes disjoint strided blocks of one output from several
/// threads).
///
/// # Safety
/// `a` and `b` must fit their slices; `dst + i * ldc + j` must be valid for
/// reads and writes for all `i < a.rows`, `j < b.cols`, and no other thread
/// may access those elements during the call.
pub(crate) unsafe fn gemm_raw<T: GemmScalar>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst: *mut T,
    ldc: usize,
    alpha: T,
    beta: T,
    par: Parallel,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: inside the region the caller vouches for.
                let p = unsafe { dst.add(i * ldc + j) };
                // SAFETY: as above; `beta == 0` must not read (the memory may be uninitialised garbage such as NaN).
                unsafe { *p = if beta == T::ZERO { T::ZERO } else { beta * *p } };
            }
        }
        return;
    }
    let parallelism = match par {
        Parallel::None => gemm::Parallelism::None,
        Parallel::Rayon(t) if t > 1 && m * n * k > 64 * 64 * 64 => gemm::Parallelism::Rayon(t),
        Parallel::Rayon(_) => gemm::Parallelism::None,
    };
    let read_dst = beta != T::ZERO;
    // SAFETY: the caller guarantees the views fit and the output region is
    // valid and exclusive; strides are in elements as `gemm` expects, and T
    // is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
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

/// The number format a kernel reads its inputs in, as the accuracy checks
/// model it: how an fp32 input is rounded, and the format's smallest normal
/// magnitude (below it values and sums are subnormal, and their error is
/// absolute, not relative).
#[derive(Clone, Copy, Debug)]
pub struct InputFormat {
    pub round: fn(f32) -> f32,
    pub smallest_normal: f64,
}

impl InputFormat {
    pub const FP32: InputFormat = InputFormat { round: |v| v, smallest_normal: f32::MIN_POSITIVE as f64 };
    pub const BF16: InputFormat =
        InputFormat { round: |v| half::bf16::from_f32(v).to_f32(), smallest_normal: f32::MIN_POSITIVE as f64 };
    /// fp16's smallest normal is 2^-14: a product of two inputs near 1e-2
    /// already lands in its subnormals.
    pub const FP16: InputFormat =
        InputFormat { round: |v| half::f16::from_f32(v).to_f32(), smallest_normal: 6.103_515_625e-5 };
}

/// Largest `|got - want|` relative to `sum_k |a b|` of each output (the
/// error scale of a dot product), over an `m x n` result (row-major `a` and
/// `b`); `format` models the kernel's input precision. Where `sum_k |a b|`
/// falls below `k` times the format's smallest normal, the error is taken
/// relative to that floor instead (subnormal products and sums carry an
/// absolute error of up to half their spacing each). Infinite when `got`
/// holds a non-finite value.
pub fn dot_error(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, got: &[f32], format: InputFormat) -> f64 {
    let round = format.round;
    let floor = k as f64 * format.smallest_normal;
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut want, mut mag) = (0f64, 1e-30f64);
            for kk in 0..k {
                let p = round(a[i * k + kk]) as f64 * round(b[kk * n + j]) as f64;
                want += p;
                mag += p.abs();
            }
            let g = got[i * n + j] as f64;
            worst = worst.max(if g.is_finite() { (g - want).abs() / mag.max(floor) } else { f64::INFINITY });
        }
    }
    worst
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
