//! The one BLAS routine the provider needs, behind a trait: Accelerate's
//! `cblas_sgemm` on macOS, the kernels' portable fp32 GEMM everywhere else,
//! so that every graph-level decision (claiming, shapes, broadcasting,
//! epilogues, the convolution lowering) is tested on any machine.
//!
//! Arguments follow CBLAS in row-major order: `op(A)` is `m x k`, `op(B)` is
//! `k x n`, `C` is `m x n`, and each leading dimension is the row stride of
//! the matrix *as stored* (before the transpose). Every implementation calls
//! [`check_sgemm_args`] first, so a bad call is an error, never a read or
//! write out of bounds.

use tessera_kernels::gemm::{MatRef, Parallel};

/// Whether an operand is used as stored or transposed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Transpose {
    No,
    Yes,
}

/// `C = alpha * op(A) @ op(B) + beta * C` in single precision.
pub trait Sgemm: Send + Sync {
    /// What runs the product, for messages and profiles ("accelerate",
    /// "portable").
    fn name(&self) -> &'static str;

    /// The product, or why the arguments do not describe matrices inside
    /// their slices. `beta == 0` never reads `C` (it may hold anything).
    // The argument list mirrors `cblas_sgemm` (less the order, always
    // row-major) so that the FFI call is a direct translation.
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
        &self,
        trans_a: Transpose,
        trans_b: Transpose,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) -> Result<(), String> {
        match check_sgemm_args(trans_a, trans_b, m, n, k, a.len(), lda, b.len(), ldb, c.len(), ldc)? {
            SgemmWork::Nothing => Ok(()),
            SgemmWork::ScaleOnly => {
                scale_output(m, n, beta, c, ldc);
                Ok(())
            }
            SgemmWork::Product => {
                self.product(Checked(()), trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
            }
        }
    }

    /// The product itself, for arguments [`Sgemm::sgemm`] has checked
    /// (`Checked` can only be made here): m, n, k >= 1 and every operand
    /// inside its slice with leading dimensions at least its row length.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        checked: Checked,
        trans_a: Transpose,
        trans_b: Transpose,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) -> Result<(), String>;
}

/// Proof that [`check_sgemm_args`] accepted a product's arguments.
pub struct Checked(());

/// What remains to be done once the arguments are known to be valid.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum SgemmWork {
    /// `m` or `n` is zero: the output is empty.
    Nothing,
    /// `k` is zero: `C = beta * C`, done by [`scale_output`] (BLAS would
    /// reject a leading dimension of 0 for an `m x 0` operand).
    ScaleOnly,
    /// A real product; every operand lies inside its slice.
    Product,
}

/// Elements a stored `rows x cols` matrix with row stride `ld` spans, or an
/// error when that stride is too short for a row or the span overflows.
fn span(what: &str, rows: usize, cols: usize, ld: usize) -> Result<usize, String> {
    if ld < cols.max(1) {
        return Err(format!("{what}: leading dimension {ld} is shorter than a row of {cols}"));
    }
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    (rows - 1)
        .checked_mul(ld)
        .and_then(|v| v.checked_add(cols))
        .ok_or_else(|| format!("{what}: {rows}x{cols} with leading dimension {ld} overflows"))
}

/// Checks an sgemm call: each leading dimension at least its stored row
/// length (and at least 1, as CBLAS requires), each operand inside its
/// slice. The checks cover exactly the elements BLAS may touch, which is
/// what the FFI call's safety rests on.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_sgemm_args(
    trans_a: Transpose,
    trans_b: Transpose,
    m: usize,
    n: usize,
    k: usize,
    a_len: usize,
    lda: usize,
    b_len: usize,
    ldb: usize,
    c_len: usize,
    ldc: usize,
) -> Result<SgemmWork, String> {
    // Stored shapes: A is m x k, or k x m when transposed; likewise B.
    let (a_rows, a_cols) = if trans_a == Transpose::No { (m, k) } else { (k, m) };
    let (b_rows, b_cols) = if trans_b == Transpose::No { (k, n) } else { (n, k) };
    let need_a = span("A", a_rows, a_cols, lda)?;
    let need_b = span("B", b_rows, b_cols, ldb)?;
    let need_c = span("C", m, n, ldc)?;
    if m == 0 || n == 0 {
        return Ok(SgemmWork::Nothing);
    }
    if need_c > c_len {
        return Err(format!("C: {m}x{n} with leading dimension {ldc} needs {need_c} elements, the slice has {c_len}"));
    }
    if k == 0 {
        return Ok(SgemmWork::ScaleOnly);
    }
    if need_a > a_len {
        return Err(format!(
            "A: {a_rows}x{a_cols} with leading dimension {lda} needs {need_a} elements, the slice has {a_len}"
        ));
    }
    if need_b > b_len {
        return Err(format!(
            "B: {b_rows}x{b_cols} with leading dimension {ldb} needs {need_b} elements, the slice has {b_len}"
        ));
    }
    Ok(SgemmWork::Product)
}

/// `C = beta * C` over an `m x n` block (the `k == 0` product); `beta == 0`
/// writes zeros without reading.
pub(crate) fn scale_output(m: usize, n: usize, beta: f32, c: &mut [f32], ldc: usize) {
    for row in c.chunks_mut(ldc.max(1)).take(m) {
        let len = n.min(row.len());
        let row = &mut row[..len];
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|v| *v *= beta);
        }
    }
}

/// The kernels' fp32 GEMM (the `gemm` crate, parallel over rayon): the
/// stand-in for Accelerate off macOS, and the reference the provider's
/// tests run.
#[derive(Copy, Clone, Debug, Default)]
pub struct PortableSgemm;

impl Sgemm for PortableSgemm {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn product(
        &self,
        _: Checked,
        trans_a: Transpose,
        trans_b: Transpose,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) -> Result<(), String> {
        let view = |data, rows, cols, ld, trans| {
            if trans == Transpose::No {
                MatRef { data, rows, cols, row_stride: ld, col_stride: 1 }
            } else {
                MatRef { data, rows: cols, cols: rows, row_stride: ld, col_stride: 1 }.t()
            }
        };
        let av = view(a, m, k, lda, trans_a);
        let bv = view(b, k, n, ldb, trans_b);
        // The views and C were checked above, so the kernel's own bounds
        // assertions cannot fire.
        let threads = rayon::current_num_threads().max(1);
        tessera_kernels::gemm::sgemm(av, bv, c, ldc, alpha, beta, Parallel::Rayon(threads));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_reject_what_blas_would_misread() {
        // A 2x3 row-major A needs lda >= 3 and 6 elements.
        assert!(check_sgemm_args(Transpose::No, Transpose::No, 2, 2, 3, 6, 2, 6, 2, 4, 2).is_err());
        assert!(check_sgemm_args(Transpose::No, Transpose::No, 2, 2, 3, 5, 3, 6, 2, 4, 2).is_err());
        // Transposed A is stored 3x2: lda 2 is enough.
        assert_eq!(check_sgemm_args(Transpose::Yes, Transpose::No, 2, 2, 3, 6, 2, 6, 2, 4, 2), Ok(SgemmWork::Product));
        // C too short for its leading dimension.
        assert!(check_sgemm_args(Transpose::No, Transpose::No, 2, 2, 3, 6, 3, 6, 2, 4, 3).is_err());
        // Leading dimension 0 is rejected even for empty operands, as CBLAS does.
        assert!(check_sgemm_args(Transpose::No, Transpose::No, 2, 2, 0, 0, 0, 0, 2, 4, 2).is_err());
        assert_eq!(check_sgemm_args(Transpose::No, Transpose::No, 2, 2, 0, 0, 1, 0, 2, 4, 2), Ok(SgemmWork::ScaleOnly));
        assert_eq!(check_sgemm_args(Transpose::No, Transpose::No, 0, 2, 3, 0, 3, 6, 2, 0, 2), Ok(SgemmWork::Nothing));
        // Overflowing spans are errors, not wrapped lengths.
        assert!(check_sgemm_args(Transpose::No, Transpose::No, usize::MAX, 1, 1, 0, 1, 1, 1, 0, 1).is_err());
    }

    #[test]
    fn portable_sgemm_honours_transposes_strides_and_beta() {
        // op(A) = [[1, 2], [3, 4]] stored transposed with a padded stride of 3.
        let a = [1.0, 3.0, -9.0, 2.0, 4.0, -9.0];
        // op(B) = identity scaled by 2, stored as is.
        let b = [2.0, 0.0, 0.0, 2.0];
        let mut c = [1.0, 1.0, 1.0, 1.0];
        PortableSgemm.sgemm(Transpose::Yes, Transpose::No, 2, 2, 2, 0.5, &a, 3, &b, 2, 3.0, &mut c, 2).unwrap();
        assert_eq!(c, [4.0, 5.0, 6.0, 7.0]);
        // k == 0 with beta == 0 overwrites whatever C held.
        let mut c = [f32::NAN; 4];
        PortableSgemm.sgemm(Transpose::No, Transpose::No, 2, 2, 0, 1.0, &[], 1, &[], 2, 0.0, &mut c, 2).unwrap();
        assert_eq!(c, [0.0; 4]);
        assert!(PortableSgemm
            .sgemm(Transpose::No, Transpose::No, 2, 2, 2, 1.0, &a[..3], 2, &b, 2, 0.0, &mut c, 2)
            .is_err());
    }
}
