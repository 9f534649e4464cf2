//! NEON and SME kernels through the vector driver against plain
//! references, on random shapes with ragged edges. Run under
//! `qemu-aarch64` by `scripts/test` (SME at 512-bit streaming vectors, as
//! on the M4). A kernel the CPU lacks fails the test when
//! `TESSERA_REQUIRE_<NEON_FP16|NEON_DOTPROD|SME>=1` says it must be there,
//! and is reported as skipped otherwise.

use proptest::prelude::*;

use super::neon::{has_dotprod, has_fp16, NeonF16, NeonF32, NeonI8Dot};
use super::sme::{has_sme, streaming_vector_bytes, SmeBf16, SmeF32};
use crate::gemm::vector::tests::rand_f32;
use crate::gemm::vector::{vector_igemm, vector_sgemm, Blocking, FloatKernel, VectorKernel};
use crate::gemm::{dot_error, Epilogue, InputFormat, MatRef};

/// Whether the feature is present; panics if the environment requires it
/// and it is missing (so a misconfigured runner cannot skip silently).
fn present(have: bool, var: &str) -> bool {
    if !have {
        assert!(std::env::var(var).ok().as_deref() != Some("1"), "{var}=1 but the CPU lacks the feature");
        eprintln!("SKIPPED: CPU lacks the feature that {var} names");
    }
    have
}

/// Runs a float kernel on `m x k · k x n` with small blocks (several K,
/// M and N blocks) and returns the largest error relative to `sum |a||b|`.
fn float_error<K: FloatKernel>(kern: &K, m: usize, k: usize, n: usize, seed: u64, format: InputFormat) -> f64 {
    let a = rand_f32(m * k, seed);
    let b = rand_f32(k * n, seed + 7);
    let blk = Blocking { kc: 48, mc: 2 * kern.mr(), nc: 3 * kern.nr() };
    let mut c = vec![f32::NAN; m * n];
    vector_sgemm(kern, blk, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), &mut c, n, &Epilogue::default());
    let worst = dot_error(&a, &b, m, k, n, &c, format);
    assert!(worst.is_finite(), "{} left a non-finite value", kern.name());
    worst
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn neon_fp32_matches_reference(m in 1usize..40, k in 0usize..120, n in 1usize..40, seed in 0u64..1000) {
        let e = float_error(&NeonF32, m, k, n, seed, InputFormat::FP32);
        prop_assert!(e <= 1e-6, "relative error {e:e}");
    }

    #[test]
    fn neon_fp16_matches_reference(m in 1usize..40, k in 0usize..120, n in 1usize..40, seed in 0u64..1000) {
        if present(has_fp16(), "TESSERA_REQUIRE_NEON_FP16") {
            // fp16 sums over one K block (48 here): about 2^-11 per add.
            let e = float_error(&NeonF16, m, k, n, seed, InputFormat::FP16);
            prop_assert!(e <= 1e-2, "relative error {e:e}");
        }
    }

    #[test]
    fn neon_i8dot_exact(m in 1usize..40, k in 0usize..150, n in 1usize..40, seed in 0u64..1000) {
        if present(has_dotprod(), "TESSERA_REQUIRE_NEON_DOTPROD") {
            let a: Vec<i8> = rand_f32(m * k, seed).iter().map(|v| (v * 128.0).clamp(-128.0, 127.0) as i8).collect();
            let b: Vec<i8> = rand_f32(k * n, seed + 3).iter().map(|v| (v * 128.0).clamp(-128.0, 127.0) as i8).collect();
            let mut c = vec![-1i32; m * n];
            vector_igemm(&NeonI8Dot, Blocking { kc: 64, mc: 16, nc: 24 }, &a, &b, m, k, n, &mut c, n);
            for i in 0..m {
                for j in 0..n {
                    let want: i32 = (0..k).map(|kk| a[i * k + kk] as i32 * b[kk * n + j] as i32).sum();
                    prop_assert_eq!(c[i * n + j], want, "({}, {})", i, j);
                }
            }
        }
    }

    #[test]
    fn sme_fp32_matches_reference(m in 1usize..80, k in 0usize..100, n in 1usize..80, seed in 0u64..1000) {
        if present(has_sme(), "TESSERA_REQUIRE_SME") {
            let e = float_error(&SmeF32::new().unwrap(), m, k, n, seed, InputFormat::FP32);
            prop_assert!(e <= 1e-6, "relative error {e:e}");
        }
    }

    #[test]
    fn sme_bf16_matches_reference(m in 1usize..80, k in 0usize..100, n in 1usize..80, seed in 0u64..1000) {
        if present(has_sme(), "TESSERA_REQUIRE_SME") {
            // Inputs rounded to bf16, products exact, fp32 sums.
            let e = float_error(&SmeBf16::new().unwrap(), m, k, n, seed, InputFormat::BF16);
            prop_assert!(e <= 1e-5, "relative error {e:e}");
        }
    }
}

#[test]
fn sme_tile_follows_the_streaming_vector_length() {
    if present(has_sme(), "TESSERA_REQUIRE_SME") {
        let bytes = streaming_vector_bytes().unwrap();
        let k = SmeF32::new().unwrap();
        assert_eq!(k.mr(), 2 * bytes / 4);
        assert_eq!(k.nr(), 2 * bytes / 4);
        if let Ok(want) = std::env::var("TESSERA_EXPECT_SVL_BITS") {
            assert_eq!(bytes * 8, want.parse::<usize>().unwrap(), "streaming vector length");
        }
        eprintln!("SME streaming vector length: {} bits, fp32 tile {}x{}", bytes * 8, k.mr(), k.nr());
    }
}
