//! Accelerate's `cblas_sgemm` (macOS only). On M1-M3 Accelerate runs
//! single-precision GEMM on Apple's matrix coprocessor (AMX), which has no
//! public instruction set: this call is the supported way to reach it. This
//! is the provider's only `unsafe` code.

use std::ffi::c_int;

use super::blas::{Checked, Sgemm, Transpose};

// Values of `enum CBLAS_ORDER` and `enum CBLAS_TRANSPOSE` as declared in
// Accelerate's `<Accelerate/vecLib/cblas.h>` (the same numbers as the
// reference CBLAS header, `cblas.h` of Netlib's CBLAS):
//   enum CBLAS_ORDER     { CblasRowMajor = 101, CblasColMajor = 102 };
//   enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };
// A C enum is passed as an `int` on Apple's ABIs.
const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

// The classic (LP64, 32-bit `int` dimensions) CBLAS entry point, exported by
// Accelerate under this name on every macOS version.
#[link(name = "Accelerate", kind = "framework")]
extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

/// Accelerate's sgemm.
#[derive(Copy, Clone, Debug, Default)]
pub struct AccelerateBlas;

fn cblas_trans(t: Transpose) -> c_int {
    match t {
        Transpose::No => CBLAS_NO_TRANS,
        Transpose::Yes => CBLAS_TRANS,
    }
}

/// A dimension as CBLAS's 32-bit `int`, or why it does not fit.
fn c_dim(what: &str, v: usize) -> Result<c_int, String> {
    c_int::try_from(v).map_err(|_| format!("{what} = {v} exceeds the 32-bit range of the CBLAS interface"))
}

impl Sgemm for AccelerateBlas {
    fn name(&self) -> &'static str {
        "accelerate"
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
        let (cm, cn, ck) = (c_dim("m", m)?, c_dim("n", n)?, c_dim("k", k)?);
        let (clda, cldb, cldc) = (c_dim("lda", lda)?, c_dim("ldb", ldb)?, c_dim("ldc", ldc)?);
        // SAFETY: `Checked` proves `check_sgemm_args` accepted these
        // arguments (it is made only by `Sgemm::sgemm`), so m, n, k >= 1;
        // lda, ldb and ldc are at least the stored row lengths (and >= 1),
        // which is all CBLAS requires of them; and the last element BLAS may
        // touch of each operand, `(rows - 1) * ld + cols - 1` of the stored
        // shape, lies inside `a`, `b` and `c` respectively. Every dimension
        // was converted to `int` without truncation just above. `c` is
        // borrowed mutably for the call, so A and B (shared borrows) cannot
        // alias it, and Accelerate keeps no pointer after returning.
        unsafe {
            cblas_sgemm(
                CBLAS_ROW_MAJOR,
                cblas_trans(trans_a),
                cblas_trans(trans_b),
                cm,
                cn,
                ck,
                alpha,
                a.as_ptr(),
                clda,
                b.as_ptr(),
                cldb,
                beta,
                c.as_mut_ptr(),
                cldc,
            )
        };
        Ok(())
    }
}
