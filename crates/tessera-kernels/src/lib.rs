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

/// A raw output pointer that may cross threads; each task writes a region
/// no other task touches (documented at each use).
#[derive(Copy, Clone)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: the pointer is only used to write regions that are disjoint
// between tasks (documented at each use), and T itself is Send.
unsafe impl<T: Send> Send for SyncPtr<T> {}
// SAFETY: as above; shared access never touches the same element twice.
unsafe impl<T: Send> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// A method (not field access) so closures capture the whole wrapper.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
    /// The address of element `i` (computed, not dereferenced).
    pub(crate) fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

pub mod attention;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod gemm;
pub mod pool;
pub mod quant;
pub mod weight_mem;

/// For tests of vector kernels that every AMX CPU has (AVX-512, its BF16
/// conversions): whether the test can run here. Where it cannot, an AMX
/// machine (`TESSERA_REQUIRE_AMX=1`, set by scripts/test) fails the test,
/// and elsewhere the skip is printed with `what`.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn vector_test_runs(available: bool, missing: &str, what: &str) -> bool {
    if !available {
        assert!(std::env::var("TESSERA_REQUIRE_AMX").as_deref() != Ok("1"), "AMX machine without {missing}");
        eprintln!("SKIPPED {what}: no {missing} here");
    }
    available
}

/// Asks for the lines of `values` in L1 (a hint; no effect on results),
/// at most its first 8 KiB (a sixth of a 48 KiB L1, so that a long row's
/// prefetch does not push out the row being worked on): for a pass over
/// rows that another core has just written, the next row's misses then
/// overlap the current row's work instead of each row waiting for its own.
pub fn prefetch_for_reading<T>(values: &[T]) {
    prefetch_lines(values, 8 << 10, true);
}

/// Asks for each 64-byte line of the first `max_bytes` of `values` (a hint;
/// no effect on results), into L1 (`to_l1`) or L2.
pub(crate) fn prefetch_lines<T>(values: &[T], max_bytes: usize, to_l1: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        let (start, bytes) = (values.as_ptr() as usize, std::mem::size_of_val(values).min(max_bytes));
        let mut line = start & !63;
        while line < start + bytes {
            // SAFETY: a prefetch is a hint and never faults; the line
            // holds bytes of the live slice. SSE is part of the x86-64
            // baseline.
            unsafe {
                if to_l1 {
                    _mm_prefetch::<_MM_HINT_T0>(line as *const i8)
                } else {
                    _mm_prefetch::<_MM_HINT_T1>(line as *const i8)
                }
            };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (values, max_bytes, to_l1);
}
