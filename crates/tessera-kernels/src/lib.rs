//! CPU kernels over plain slices. Operators (shapes, attributes, dtypes)
//! live in `tessera-providers`; this crate only does arithmetic.

/// Calls `body::<FMA>(args)` (an `#[inline(always)]` function generic over
/// `const FMA: bool`) compiled for the widest x86 vector unit the CPU has:
/// the body is inlined into a wrapper with AVX-512 (F and BW, for byte and
/// 16-bit lanes) or AVX2, FMA enabled (and `FMA = true`), so its plain
/// loops vectorize to that width and its multiply-adds fuse. The crate
/// itself is built for baseline x86-64, where the body runs with
/// `FMA = false`.
macro_rules! with_vector_features {
    ($body:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,fma")]
            fn wide($($arg: $ty),*) $(-> $ret)? {
                $body::<true>($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            fn narrow($($arg: $ty),*) $(-> $ret)? {
                $body::<true>($($arg),*)
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX-512F/BW and FMA (checked just above).
                return unsafe { wide($($arg),*) };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { narrow($($arg),*) };
            }
        }
        // aarch64 always has fused multiply-add.
        $body::<{ cfg!(target_arch = "aarch64") }>($($arg),*)
    }};
}

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod pool;
pub mod quant;
pub mod weight_mem;
