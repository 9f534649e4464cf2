//! Arm NEON microkernels for the vector driver ([`crate::gemm::vector`]):
//! fp32 (8x12), fp16 (8x16, fp16 products summed over one K block) and
//! int8 dot products (8x12, `sdot`, FEAT_DotProd).
//!
//! Register budget (32 x 128-bit): fp32 uses 24 accumulators + 2 A + 3 B;
//! fp16 16 accumulators + 1 A + 2 B; int8 24 accumulators + 2 A + 3 B.
//! The fp16 and int8 kernels are `asm!` because their intrinsics are not
//! stable Rust; NEON itself is part of the aarch64 baseline.

use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

use crate::gemm::vector::VectorKernel;

/// Whether the CPU has FEAT_FP16 (half-precision arithmetic).
pub fn has_fp16() -> bool {
    std::arch::is_aarch64_feature_detected!("fp16")
}

/// Whether the CPU has FEAT_DotProd (`sdot`/`udot`).
pub fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// fp32 multiply-add, 8 rows x 12 columns.
pub struct NeonF32;

impl VectorKernel for NeonF32 {
    type In = f32;
    type Acc = f32;
    fn name(&self) -> &'static str {
        "neon-fp32"
    }
    fn mr(&self) -> usize {
        8
    }
    fn nr(&self) -> usize {
        12
    }
    fn kgroup(&self) -> usize {
        1
    }
    fn run(&self, groups: usize, a: &[f32], b: &[f32], tile: &mut [f32]) {
        assert!(a.len() >= groups * 8 && b.len() >= groups * 12 && tile.len() >= 96, "panel or tile too short");
        // SAFETY: every load reads within the first `groups * 8` values of
        // `a` and `groups * 12` of `b`, every store within the first 96 of
        // `tile` (lengths asserted above); NEON is always present on aarch64.
        unsafe {
            let z = vdupq_n_f32(0.0);
            let mut c = [[z; 3]; 8];
            let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
            for _ in 0..groups {
                let a0 = vld1q_f32(pa);
                let a1 = vld1q_f32(pa.add(4));
                let bv = [vld1q_f32(pb), vld1q_f32(pb.add(4)), vld1q_f32(pb.add(8))];
                macro_rules! row {
                    ($r:expr, $a:expr, $lane:literal) => {
                        for q in 0..3 {
                            c[$r][q] = vfmaq_laneq_f32::<$lane>(c[$r][q], bv[q], $a);
                        }
                    };
                }
                row!(0, a0, 0);
                row!(1, a0, 1);
                row!(2, a0, 2);
                row!(3, a0, 3);
                row!(4, a1, 0);
                row!(5, a1, 1);
                row!(6, a1, 2);
                row!(7, a1, 3);
                pa = pa.add(8);
                pb = pb.add(12);
            }
            let t = tile.as_mut_ptr();
            for (r, row) in c.iter().enumerate() {
                for (q, v) in row.iter().enumerate() {
                    vst1q_f32(t.add(r * 12 + q * 4), *v);
                }
            }
        }
    }
}

/// fp16 multiply-add (FEAT_FP16), 8 rows x 16 columns, fp16 accumulators.
pub struct NeonF16;

impl VectorKernel for NeonF16 {
    type In = f16;
    type Acc = f16;
    fn name(&self) -> &'static str {
        "neon-fp16"
    }
    fn mr(&self) -> usize {
        8
    }
    fn nr(&self) -> usize {
        16
    }
    fn kgroup(&self) -> usize {
        1
    }
    fn run(&self, groups: usize, a: &[f16], b: &[f16], tile: &mut [f16]) {
        assert!(has_fp16(), "neon-fp16 needs FEAT_FP16");
        assert!(a.len() >= groups * 8 && b.len() >= groups * 16 && tile.len() >= 128, "panel or tile too short");
        // SAFETY: the loop reads `groups` x 16 bytes of `a` and 32 of `b`,
        // the stores write 8 rows x 32 bytes = the first 128 values of
        // `tile` (lengths asserted above); FEAT_FP16 was checked above.
        // v16-v31 hold the tile (row r in v(16+2r), v(17+2r)); the element
        // operand of a by-element fp16 `fmla` must be v0-v15, hence A in v0.
        unsafe {
            asm!(
                ".arch_extension fp16",
                "movi v16.16b, #0", "movi v17.16b, #0", "movi v18.16b, #0", "movi v19.16b, #0",
                "movi v20.16b, #0", "movi v21.16b, #0", "movi v22.16b, #0", "movi v23.16b, #0",
                "movi v24.16b, #0", "movi v25.16b, #0", "movi v26.16b, #0", "movi v27.16b, #0",
                "movi v28.16b, #0", "movi v29.16b, #0", "movi v30.16b, #0", "movi v31.16b, #0",
                "cbz {n}, 2f",
                "1:",
                "ldr q0, [{a}], #16",
                "ldp q1, q2, [{b}], #32",
                "fmla v16.8h, v1.8h, v0.h[0]", "fmla v17.8h, v2.8h, v0.h[0]",
                "fmla v18.8h, v1.8h, v0.h[1]", "fmla v19.8h, v2.8h, v0.h[1]",
                "fmla v20.8h, v1.8h, v0.h[2]", "fmla v21.8h, v2.8h, v0.h[2]",
                "fmla v22.8h, v1.8h, v0.h[3]", "fmla v23.8h, v2.8h, v0.h[3]",
                "fmla v24.8h, v1.8h, v0.h[4]", "fmla v25.8h, v2.8h, v0.h[4]",
                "fmla v26.8h, v1.8h, v0.h[5]", "fmla v27.8h, v2.8h, v0.h[5]",
                "fmla v28.8h, v1.8h, v0.h[6]", "fmla v29.8h, v2.8h, v0.h[6]",
                "fmla v30.8h, v1.8h, v0.h[7]", "fmla v31.8h, v2.8h, v0.h[7]",
                "subs {n}, {n}, #1",
                "b.ne 1b",
                "2:",
                "stp q16, q17, [{t}], #32", "stp q18, q19, [{t}], #32",
                "stp q20, q21, [{t}], #32", "stp q22, q23, [{t}], #32",
                "stp q24, q25, [{t}], #32", "stp q26, q27, [{t}], #32",
                "stp q28, q29, [{t}], #32", "stp q30, q31, [{t}], #32",
                n = inout(reg) groups => _,
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                t = inout(reg) tile.as_mut_ptr() => _,
                out("v0") _, out("v1") _, out("v2") _,
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nostack),
            );
        }
    }
}

/// Signed int8 dot products (FEAT_DotProd `sdot`), 8 rows x 12 columns,
/// K in groups of 4, exact i32 accumulators.
pub struct NeonI8Dot;

impl VectorKernel for NeonI8Dot {
    type In = i8;
    type Acc = i32;
    fn name(&self) -> &'static str {
        "neon-i8dot"
    }
    fn mr(&self) -> usize {
        8
    }
    fn nr(&self) -> usize {
        12
    }
    fn kgroup(&self) -> usize {
        4
    }
    fn run(&self, groups: usize, a: &[i8], b: &[i8], tile: &mut [i32]) {
        assert!(has_dotprod(), "neon-i8dot needs FEAT_DotProd");
        assert!(a.len() >= groups * 32 && b.len() >= groups * 48 && tile.len() >= 96, "panel or tile too short");
        // SAFETY: the loop reads `groups` x 32 bytes of `a` and 48 of `b`,
        // the stores write 8 rows x 12 i32 = the first 96 values of `tile`
        // (lengths asserted above); FEAT_DotProd was checked above.
        // A group: v0 = rows 0-3, v1 = rows 4-7 (4 bytes of K each); B group:
        // v2-v4 = columns 0-3, 4-7, 8-11. Row r's tile is v(8+3r)..v(10+3r).
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "movi v8.16b, #0", "movi v9.16b, #0", "movi v10.16b, #0", "movi v11.16b, #0",
                "movi v12.16b, #0", "movi v13.16b, #0", "movi v14.16b, #0", "movi v15.16b, #0",
                "movi v16.16b, #0", "movi v17.16b, #0", "movi v18.16b, #0", "movi v19.16b, #0",
                "movi v20.16b, #0", "movi v21.16b, #0", "movi v22.16b, #0", "movi v23.16b, #0",
                "movi v24.16b, #0", "movi v25.16b, #0", "movi v26.16b, #0", "movi v27.16b, #0",
                "movi v28.16b, #0", "movi v29.16b, #0", "movi v30.16b, #0", "movi v31.16b, #0",
                "cbz {n}, 2f",
                "1:",
                "ldp q0, q1, [{a}], #32",
                "ldp q2, q3, [{b}], #32",
                "ldr q4, [{b}], #16",
                "sdot v8.4s, v2.16b, v0.4b[0]", "sdot v9.4s, v3.16b, v0.4b[0]", "sdot v10.4s, v4.16b, v0.4b[0]",
                "sdot v11.4s, v2.16b, v0.4b[1]", "sdot v12.4s, v3.16b, v0.4b[1]", "sdot v13.4s, v4.16b, v0.4b[1]",
                "sdot v14.4s, v2.16b, v0.4b[2]", "sdot v15.4s, v3.16b, v0.4b[2]", "sdot v16.4s, v4.16b, v0.4b[2]",
                "sdot v17.4s, v2.16b, v0.4b[3]", "sdot v18.4s, v3.16b, v0.4b[3]", "sdot v19.4s, v4.16b, v0.4b[3]",
                "sdot v20.4s, v2.16b, v1.4b[0]", "sdot v21.4s, v3.16b, v1.4b[0]", "sdot v22.4s, v4.16b, v1.4b[0]",
                "sdot v23.4s, v2.16b, v1.4b[1]", "sdot v24.4s, v3.16b, v1.4b[1]", "sdot v25.4s, v4.16b, v1.4b[1]",
                "sdot v26.4s, v2.16b, v1.4b[2]", "sdot v27.4s, v3.16b, v1.4b[2]", "sdot v28.4s, v4.16b, v1.4b[2]",
                "sdot v29.4s, v2.16b, v1.4b[3]", "sdot v30.4s, v3.16b, v1.4b[3]", "sdot v31.4s, v4.16b, v1.4b[3]",
                "subs {n}, {n}, #1",
                "b.ne 1b",
                "2:",
                "st1 {{v8.4s, v9.4s, v10.4s}}, [{t}], #48",
                "st1 {{v11.4s, v12.4s, v13.4s}}, [{t}], #48",
                "st1 {{v14.4s, v15.4s, v16.4s}}, [{t}], #48",
                "st1 {{v17.4s, v18.4s, v19.4s}}, [{t}], #48",
                "st1 {{v20.4s, v21.4s, v22.4s}}, [{t}], #48",
                "st1 {{v23.4s, v24.4s, v25.4s}}, [{t}], #48",
                "st1 {{v26.4s, v27.4s, v28.4s}}, [{t}], #48",
                "st1 {{v29.4s, v30.4s, v31.4s}}, [{t}], #48",
                n = inout(reg) groups => _,
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                t = inout(reg) tile.as_mut_ptr() => _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nostack),
            );
        }
    }
}
