//! Scalar math written so that loops over slices auto-vectorize: no libm
//! calls, no data-dependent branches (every path is computed and selected),
//! only arithmetic, comparisons and bit casts. Callers map these over slices
//! (the functions are `#[inline(always)]`), so one definition serves every
//! loop shape.
//!
//! Accuracy (checked by the tests below against f64 references):
//! * [`exp_f32`]: within 2 ulp wherever the result is a normal float,
//!   correct overflow, NaN passes through; results below the smallest
//!   normal float flush to zero.
//!
//! No function here produces a subnormal from a normal input: on Intel
//! cores every vector operation with a subnormal result takes a microcode
//! assist (about a hundred cycles), and the deep tails of exp, erfc and
//! GELU are common in real data (masked attention scores, large negative
//! GELU inputs). On the Xeon a 128x3072x768 bf16 GEMM with an erf-GELU
//! epilogue ran 4.5x slower than without one; 1.9x once no subnormals (and
//! no masked stores, see `exp_with`) were left.
//! * [`erf_f32`]: absolute error below 2e-7.
//! * [`tanh_f32`], [`sigmoid_f32`]: a few ulp relative error.
//!
//! The polynomial coefficients were fitted for this file by weighted least
//! squares against double-precision references.

use std::f32::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, LOG2_E};

/// Hi/lo split of ln 2 (Cody-Waite): `k * LN2_HI` is exact for |k| < 2^15.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `erf(x) / x` as a polynomial in `x^2`, for |x| < 1.
const ERF_SMALL: [f32; 7] =
    [FRAC_2_SQRT_PI, -0.376_126_3, 0.112_836_12, -0.026_854_806, 0.005_190_049_8, -0.000_802_432_07, 7.898_098e-5];
/// `erfc(x) * exp(x^2)` as a polynomial in `t = 1 / (1 + x/2)`, for 1 <= x <= 10.
const ERFC_LARGE: [f32; 10] = [
    2.614_182_2e-6,
    0.282_011_66,
    0.283_252_4,
    0.237_558_87,
    0.223_503_57,
    -0.074_647_47,
    0.345_695_35,
    -0.542_359_1,
    0.307_258_87,
    -0.062_207_833,
];
/// `ln(erfc(a) / (2t)) + a^2` as a polynomial in `t = 1 / (1 + a/2)`, for
/// 0 <= a <= 9 (absolute error 5e-8, so `t * exp(poly(t) - a^2)` is
/// erfc(a)/2 with that relative error, tails included).
const HALF_ERFC_LOG: [f32; 10] = [
    -1.958_556,
    0.997_849_4,
    0.393_266_56,
    0.003_364_663_3,
    0.091_986_59,
    -0.249_122_37,
    -0.494_212_3,
    1.006_375_4,
    -0.617_495_4,
    0.133_396_24,
];
/// `e^r` for |r| <= ln2/2 (relative error 9e-8).
const EXP_MINIMAX: [f32; 6] = [1.0, 0.999_999_7, 0.499_991_5, 0.166_676_5, 0.041_897_826, 0.008_289_435];
/// `tanh(x) / x` as a polynomial in `x^2`, for |x| < 0.625.
const TANH_SMALL: [f32; 6] = [1.0, -0.333_332_75, 0.133_313_66, -0.053_735_826, 0.020_630_192, -0.005_697_406];

/// `a * b + c`: one fused instruction where the caller is compiled with
/// FMA (`FMA = true`, only inside the vector-feature wrappers of
/// `with_vector_features!`), else a multiply and an add. Rust never fuses
/// `a * b + c` on its own, and `mul_add` in code built without FMA is a
/// libm call, so the choice is made per caller.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn horner<const N: usize, const FMA: bool>(c: &[f32; N], u: f32) -> f32 {
    let mut r = c[N - 1];
    let mut i = N - 1;
    while i > 0 {
        i -= 1;
        r = madd::<FMA>(r, u, c[i]);
    }
    r
}

/// Taylor coefficients of e^r (degree 7): truncation error < 6e-9 for
/// |r| <= ln2/2.
const EXP_TAYLOR: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];

/// e^x.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp_f32`], with fused multiply-adds when `FMA`.
#[inline(always)]
pub fn exp_with<const FMA: bool>(x: f32) -> f32 {
    // A NaN x stays NaN through the clamp and every float step (the integer
    // steps give garbage scale factors, which NaN times anything ignores).
    // No final `is_nan` select: in an in-place loop it lets the compiler
    // turn the store into a masked one (unchanged lanes), which is slow.
    let xc = x.clamp(EXP_MIN_NORMAL_INPUT, 88.8);
    let t = xc * LOG2_E + ROUND_MAGIC;
    let kf = t - ROUND_MAGIC;
    let k = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = madd::<FMA>(-kf, LN2_LO, madd::<FMA>(-kf, LN2_HI, xc));
    let p = horner::<8, FMA>(&EXP_TAYLOR, r);
    // 2^k in two factors so that k = 128 (results near f32::MAX) works.
    let k1 = k >> 1;
    let k2 = k.wrapping_sub(k1);
    let s1 = f32::from_bits((k1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((k2.wrapping_add(127) as u32) << 23);
    let y = p * s1 * s2;
    let y = if x < EXP_MIN_NORMAL_INPUT { 0.0 } else { y };
    if x > 88.722_84 {
        f32::INFINITY
    } else {
        y
    }
}

/// e^x for x <= 0 (softmax after its max is taken off, erfc's tails): no
/// overflow to handle, so one scale factor and a shorter polynomial than
/// [`exp_with`], about half its operations. Within 2 ulp wherever the
/// result is a normal float; below that flushed to zero; NaN passes
/// through. Positive inputs are outside the domain (their results are
/// wrong above 88, never undefined behaviour).
#[inline(always)]
pub fn exp_nonpositive_with<const FMA: bool>(x: f32) -> f32 {
    // Written as a comparison so that NaN keeps going (`f32::max` would
    // replace it).
    let xc = if x < EXP_MIN_NORMAL_INPUT { EXP_MIN_NORMAL_INPUT } else { x };
    let t = madd::<FMA>(xc, LOG2_E, ROUND_MAGIC);
    let kf = t - ROUND_MAGIC;
    let r = madd::<FMA>(-kf, LN2_LO, madd::<FMA>(-kf, LN2_HI, xc));
    let p = horner::<6, FMA>(&EXP_MINIMAX, r);
    // k = t's bits less ROUND_MAGIC's, in [-126, 0]: 2^k is a normal float
    // whose exponent field is k + 127.
    let scale = f32::from_bits((t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits() - 127)) << 23);
    let y = p * scale;
    if x < EXP_MIN_NORMAL_INPUT {
        0.0
    } else {
        y
    }
}

/// Below this, e^x is under 1.7e-38 and [`exp_f32`] returns 0 (at and above
/// it, every step of the computation stays a normal float).
const EXP_MIN_NORMAL_INPUT: f32 = -87.0;
/// erfc(x) for x >= 9 is under 4.2e-37: the erfc-based tails are taken as
/// 0 there, before exp(-x^2) approaches the subnormal range.
const ERFC_ZERO_FROM: f32 = 9.0;

/// Logistic sigmoid 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    sigmoid_with::<false>(x)
}

/// [`sigmoid_f32`], with fused multiply-adds when `FMA`.
#[inline(always)]
pub fn sigmoid_with<const FMA: bool>(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp_with::<FMA>(-x));
    // Below -87 the quotient would be subnormal; the comparison is false
    // for NaN, which then propagates through `s`.
    if x < EXP_MIN_NORMAL_INPUT {
        0.0
    } else {
        s
    }
}

/// Hyperbolic tangent.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    tanh_with::<false>(x)
}

/// [`tanh_f32`], with fused multiply-adds when `FMA`.
#[inline(always)]
pub fn tanh_with<const FMA: bool>(x: f32) -> f32 {
    let ax = x.abs();
    let small = x * horner::<6, FMA>(&TANH_SMALL, x * x);
    let e = exp_with::<FMA>(2.0 * ax.min(10.0));
    let big = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    // Written so that NaN (every comparison false) takes the small path,
    // which propagates it.
    if ax >= 0.625 {
        big
    } else {
        small
    }
}

/// erfc(a) for 1 <= a <= 9 (relative error ~2e-6); beyond 9, erfc(9).
#[inline(always)]
fn erfc_large<const FMA: bool>(a: f32) -> f32 {
    let a = a.min(ERFC_ZERO_FROM);
    let t = 1.0 / madd::<FMA>(0.5, a, 1.0);
    exp_with::<FMA>(-a * a) * horner::<10, FMA>(&ERFC_LARGE, t)
}

/// An elementwise function of [`map_f32`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Unary {
    Exp,
    Sigmoid,
    Tanh,
    Erf,
}

/// `y[i] = f(x[i])` compiled for the CPU's vector unit (a scalar closure in
/// code built for baseline x86-64 runs 4 lanes without fused multiply-adds;
/// the ONNX Erf of an unfused GELU took about 2 ns a value that way). The
/// same functions as `exp_f32` and its siblings, with fused multiply-adds
/// where the CPU has them (so the last bit may differ from them).
pub fn map_f32(f: Unary, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "input and output lengths differ");
    with_vector_features!(map_body(f: Unary, x: &[f32], y: &mut [f32]))
}

#[inline(always)]
fn map_body<const FMA: bool>(f: Unary, x: &[f32], y: &mut [f32]) {
    let pairs = y.iter_mut().zip(x);
    match f {
        Unary::Exp => pairs.for_each(|(o, &v)| *o = exp_with::<FMA>(v)),
        Unary::Sigmoid => pairs.for_each(|(o, &v)| *o = sigmoid_with::<FMA>(v)),
        Unary::Tanh => pairs.for_each(|(o, &v)| *o = tanh_with::<FMA>(v)),
        Unary::Erf => pairs.for_each(|(o, &v)| *o = erf_with::<FMA>(v)),
    }
}

/// The error function.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    erf_with::<false>(x)
}

/// [`erf_f32`], with fused multiply-adds when `FMA`.
#[inline(always)]
pub fn erf_with<const FMA: bool>(x: f32) -> f32 {
    let ax = x.abs();
    let small = x * horner::<7, FMA>(&ERF_SMALL, x * x);
    let big = (1.0 - erfc_large::<FMA>(ax.max(1.0))).copysign(x);
    // NaN fails the comparison and takes the small path, which keeps it.
    if ax >= 1.0 {
        big
    } else {
        small
    }
}

/// GELU with the exact (erf) formulation: `x * Phi(x)`, Phi the normal
/// CDF. One branch-free path for every x: with `a = |x|/sqrt 2`,
/// `Phi(-|x|) = erfc(a)/2`, evaluated as `t * exp(poly(t) - a^2)`, so the
/// negative tail keeps its relative accuracy and the positive side is
/// `x * (1 - Phi(-|x|))`.
#[inline(always)]
pub fn gelu_erf_f32(x: f32) -> f32 {
    gelu_erf_with::<false>(x)
}

/// [`gelu_erf_f32`], with fused multiply-adds when `FMA`.
#[inline(always)]
pub fn gelu_erf_with<const FMA: bool>(x: f32) -> f32 {
    let az = (x * FRAC_1_SQRT_2).abs();
    // Comparisons rather than `min` so that NaN keeps going.
    let a = if az > ERFC_ZERO_FROM { ERFC_ZERO_FROM } else { az };
    let t = 1.0 / madd::<FMA>(0.5, a, 1.0);
    let tail = t * exp_nonpositive_with::<FMA>(madd::<FMA>(-a, a, horner::<10, FMA>(&HALF_ERFC_LOG, t)));
    // Past a = 9 the tail is under 3e-37: zero (and -inf gives -0, not NaN).
    let neg = if az >= ERFC_ZERO_FROM { -0.0 } else { x * tail };
    if x > 0.0 {
        x * (1.0 - tail)
    } else {
        neg
    }
}

/// GELU with the tanh approximation, written as x * sigmoid(2y) (the same
/// function as x/2 * (1 + tanh y), without cancellation for negative x).
#[inline(always)]
pub fn gelu_tanh_f32(x: f32) -> f32 {
    gelu_tanh_with::<false>(x)
}

/// [`gelu_tanh_f32`], with fused multiply-adds when `FMA`.
#[inline(always)]
pub fn gelu_tanh_with<const FMA: bool>(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    let y = K * madd::<FMA>(0.044_715 * x, x * x, x);
    // NaN propagates through y and exp.
    x / (1.0 + exp_with::<FMA>(-2.0 * y))
}

/// Maximum of a slice (NaNs are skipped; -inf for an empty slice).
#[inline(always)]
pub fn max_f32(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            lanes[j] = if c[j] > lanes[j] { c[j] } else { lanes[j] };
        }
    }
    // Halving the lanes keeps the reduction's chain of dependent compares
    // at 4 rather than 16 (it sits on the path of every short softmax row).
    let pick = |a: f32, b: f32| if a > b { a } else { b };
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        m = pick(v, m);
    }
    let l8: [f32; 8] = std::array::from_fn(|j| pick(lanes[j], lanes[j + 8]));
    let l4: [f32; 4] = std::array::from_fn(|j| pick(l8[j], l8[j + 4]));
    pick(pick(pick(l4[0], l4[2]), pick(l4[1], l4[3])), m)
}

/// Sum of a slice, with 16 partial sums (vectorizes, and is more accurate
/// than a single running sum).
#[inline(always)]
pub fn sum_f32(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            lanes[j] += c[j];
        }
    }
    let mut s = 0.0;
    for &v in chunks.remainder() {
        s += v;
    }
    let mut l8 = [0.0f32; 8];
    for j in 0..8 {
        l8[j] = lanes[j] + lanes[j + 8];
    }
    let l4 = [l8[0] + l8[4], l8[1] + l8[5], l8[2] + l8[6], l8[3] + l8[7]];
    s + ((l4[0] + l4[2]) + (l4[1] + l4[3]))
}

/// `y = softmax(x)` over one contiguous row. `x` and `y` have equal length.
pub fn softmax_row(x: &[f32], y: &mut [f32]) {
    with_vector_features!(softmax_body(x: &[f32], y: &mut [f32]))
}

/// Softmax's first half in place: `x = e^(x - max x)`; returns `1 / sum`
/// (the caller scales, possibly while converting or packing the row).
pub fn softmax_exp_in_place(x: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if wide_reductions::usable() {
        // SAFETY: the CPU has the features the function enables (checked
        // by `usable`).
        return unsafe { wide_reductions::softmax_exp(x) };
    }
    with_vector_features!(softmax_exp_body(x: &mut [f32]) -> f32)
}

/// GELU (erf form) over whole AVX-512 registers by pieces: on [-8, 8),
/// 32 intervals of width 1/2, each with its own degree-4 polynomial in the
/// offset from the interval's centre (coefficients from
/// `scripts/gelu_table.py`: a weighted least-squares fit in f64, so the
/// negative tail keeps relative accuracy), picked per lane by a 32-entry
/// permute. About half the instructions of [`gelu_erf_with`] (no division,
/// no exponential), for the GEMM epilogues where GELU follows every value
/// of a feed-forward layer. Accuracy (the test checks it against the f64
/// definition; measured 1.6e-5, 2.3e-3 and 2.5e-6): within 2e-5 relative
/// for x >= -3, 3e-3 relative on [-6, -3) (where |GELU| < 4.1e-3), 5e-6
/// absolute below 0; x >= 8 gives x, x < -8 gives -0 (|GELU| < 6e-15
/// there), NaN stays NaN. It serves only the reduced-precision products
/// (bf16 tiles, int8), whose next step rounds each value to bf16 (relative
/// error up to 2e-3) or to a row's int8 step: from -3 up GELU's error stays
/// two orders below that, and below -3 it is under 5e-6 in absolute terms,
/// values the next rounding barely sees. Degree 4 measured 8-12% faster
/// than degree 6 on the int8 first feed-forward product of BERT-base
/// (128x3072x768, GELU epilogue, 2 threads;
/// `benches/results/2026-11-28-attention-rows/gemm_ffn1_gelu4.txt`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod gelu_pieces {
    use std::arch::x86_64::*;

    /// `GELU_ERF_PIECES[d][i]`: coefficient of u^d on interval i, which
    /// covers [-8 + i/2, -7.5 + i/2), u = x - `GELU_ERF_POINTS[i]` (the
    /// centre; 0 for the two intervals that meet at 0, whose constant
    /// terms are 0, so that GELU(x) ~ x/2 keeps its relative accuracy).
    #[rustfmt::skip]
    const GELU_ERF_POINTS: [f32; 32] = [-7.75e+00, -7.25e+00, -6.75e+00, -6.25e+00, -5.75e+00, -5.25e+00, -4.75e+00, -4.25e+00, -3.75e+00, -3.25e+00, -2.75e+00, -2.25e+00, -1.75e+00, -1.25e+00, -7.5e-01, 0.0e+00, 0.0e+00, 7.5e-01, 1.25e+00, 1.75e+00, 2.25e+00, 2.75e+00, 3.25e+00, 3.75e+00, 4.25e+00, 4.75e+00, 5.25e+00, 5.75e+00, 6.25e+00, 6.75e+00, 7.25e+00, 7.75e+00];
    #[rustfmt::skip]
    const GELU_ERF_PIECES: [[f32; 32]; 5] = [
        [-3.525332e-14, -1.4998818e-12, -4.9648174e-11, -1.2784493e-09, -2.5605402e-08, -3.9879635e-07, -4.8282345e-06, -4.541393e-05, -3.3153305e-04, -1.8752973e-03, -8.194401e-03, -2.7505275e-02, -7.010373e-02, -1.3206218e-01, -1.6997054e-01, 0.0e+00, 0.0e+00, 5.8002883e-01, 1.1179377e+00, 1.6798966e+00, 2.222495e+00, 2.7418056e+00, 3.2481246e+00, 3.7496684e+00, 4.2499547e+00, 4.749995e+00, 5.2499995e+00, 5.75e+00, 6.25e+00, 6.75e+00, 7.25e+00, 7.75e+00],
        [-2.7440165e-13, -1.0883219e-11, -3.3465727e-10, -7.968734e-09, -1.467265e-07, -2.0854711e-06, -2.2829945e-05, -1.9190523e-04, -1.2331943e-03, -6.0166693e-03, -2.202936e-02, -5.9197806e-02, -1.1093532e-01, -1.2265399e-01, 8.025351e-04, 5.000067e-01, 4.999957e-01, 9.9919915e-01, 1.1226541e+00, 1.1109357e+00, 1.0591985e+00, 1.0220296e+00, 1.0060165e+00, 1.001233e+00, 1.0001918e+00, 1.0000228e+00, 1.000002e+00, 1.0000001e+00, 1.0e+00, 1.0e+00, 1.0e+00, 1.0e+00],
        [-1.1196112e-12, -4.0871414e-11, -1.1520259e-09, -2.5023883e-08, -4.1782005e-07, -5.344191e-06, -5.2118176e-05, -3.8492496e-04, -2.1309138e-03, -8.69183e-03, -2.5286151e-02, -4.8575696e-02, -4.580627e-02, 3.9958116e-02, 2.1644959e-01, 3.9930528e-01, 3.9922103e-01, 2.1652557e-01, 3.9981738e-02, -4.5840416e-02, -4.861185e-02, -2.5295906e-02, -8.68698e-03, -2.1259084e-03, -3.8289584e-04, -5.1616655e-05, -5.2602763e-06, -4.0787725e-07, -2.4168825e-08, -1.0978113e-09, -3.8282738e-11, -9.849846e-13],
        [-3.0147766e-12, -1.0241798e-10, -2.6629379e-09, -5.283885e-08, -7.969957e-07, -9.088687e-06, -7.7739016e-05, -4.926467e-04, -2.2656752e-03, -7.2653866e-03, -1.4721284e-02, -1.21017e-02, 2.4195975e-02, 9.2265874e-02, 1.2761116e-01, 3.0520016e-03, -2.6071363e-03, -1.276473e-01, -9.226735e-02, -2.4202505e-02, 1.2088e-02, 1.4716035e-02, 7.268838e-03, 2.2699514e-03, 4.946765e-04, 7.831436e-05, 9.197412e-06, 8.1137915e-07, 5.4207486e-08, 2.7581901e-09, 1.0720213e-10, 3.0801368e-12],
        [-3.9675906e-12, -1.2994304e-10, -3.2311134e-09, -6.071467e-08, -8.5665545e-07, -8.99374e-06, -6.929776e-05, -3.8306796e-04, -1.4552476e-03, -3.4238738e-03, -3.1296532e-03, 7.370308e-03, 2.8393444e-02, 3.376766e-02, -5.0095897e-03, -5.9403297e-02, -5.9992857e-02, -6.224632e-03, 3.3390507e-02, 2.8940419e-02, 7.952416e-03, -2.9715924e-03, -3.5031275e-03, -1.537785e-03, -4.168778e-04, -7.775311e-05, -1.0427143e-05, -1.0289655e-06, -7.576937e-08, -4.202258e-09, -1.7747606e-10, -6.5835813e-12],
    ];

    /// Whether the piecewise form can run here (AVX-512F).
    #[inline]
    pub(crate) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// GELU of 16 lanes. Written for a short dependency chain (the
    /// epilogues hand it two registers at a time): the interval index
    /// straight from a rounding conversion, not clamped below (a permute
    /// reads only its low five bits, and lanes under -8 are replaced at the
    /// end; NaN converts to 0x80000000 and still flows through `u`), the
    /// expansion point by permute, the polynomial as (c0 + c1 u) +
    /// (c2 + c3 u + c4 u^2) u^2.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gelu16(x: __m512, c: &[[__m512; 2]; 5], centres: &[__m512; 2]) -> __m512 {
        let t = _mm512_fmadd_ps(x, _mm512_set1_ps(2.0), _mm512_set1_ps(16.0));
        // Just below 8, t rounds up to 32: capped at the last interval.
        let idx = _mm512_min_epi32(
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t),
            _mm512_set1_epi32(31),
        );
        let pick = |pair: &[__m512; 2]| _mm512_permutex2var_ps(pair[0], idx, pair[1]);
        let u = _mm512_sub_ps(x, pick(centres));
        let u2 = _mm512_mul_ps(u, u);
        let c01 = _mm512_fmadd_ps(pick(&c[1]), u, pick(&c[0]));
        let c234 = _mm512_fmadd_ps(_mm512_fmadd_ps(pick(&c[4]), u, pick(&c[3])), u, pick(&c[2]));
        let p = _mm512_fmadd_ps(c234, u2, c01);
        let high = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(8.0));
        let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-8.0));
        let p = _mm512_mask_mov_ps(p, high, x);
        _mm512_mask_mov_ps(p, low, _mm512_set1_ps(-0.0))
    }

    /// GELU (erf form) of every element of `x`, in place.
    ///
    /// # Safety
    /// The CPU has AVX-512F ([`available`]).
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn gelu_erf_in_place(x: &mut [f32]) {
        // A 32-entry table as the two registers a permute picks from.
        let halves = |t: &[f32; 32]| -> [__m512; 2] {
            // SAFETY: 32 f32, two unaligned 16-lane loads.
            unsafe { [_mm512_loadu_ps(t.as_ptr()), _mm512_loadu_ps(t.as_ptr().add(16))] }
        };
        let centres = halves(&GELU_ERF_POINTS);
        let c: [[__m512; 2]; 5] = std::array::from_fn(|d| halves(&GELU_ERF_PIECES[d]));
        let mut chunks = x.chunks_exact_mut(16);
        for v in &mut chunks {
            // SAFETY: `v` is 16 f32, read and written whole.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), gelu16(_mm512_loadu_ps(v.as_ptr()), &c, &centres)) };
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mask: __mmask16 = (1u32 << rest.len()).wrapping_sub(1) as __mmask16;
            // SAFETY: the mask covers only the `rest.len()` elements that exist.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, rest.as_ptr());
                _mm512_mask_storeu_ps(rest.as_mut_ptr(), mask, gelu16(v, &c, &centres));
            }
        }
    }
}

/// Softmax rows with AVX-512: the compiler turns the portable reductions
/// ([`max_f32`], [`sum_f32`]) into 2-lane code inside the softmax loop,
/// and attention rows are short (one sequence), so the reductions cost as
/// much as the exponentials. Here they are 16 lanes wide by construction.
#[cfg(target_arch = "x86_64")]
mod wide_reductions {
    use super::exp_nonpositive_with;
    use std::arch::x86_64::*;

    pub(super) fn usable() -> bool {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Lanes `at..at + 16` of `x` (`fill` past its end).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes(x: &[f32], at: usize, fill: f32) -> __m512 {
        let n = x.len().saturating_sub(at).min(16);
        let mask = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: only the `n` lanes inside `x` are read (masked-off lanes
        // never fault).
        unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask, x.as_ptr().wrapping_add(at)) }
    }

    /// [`super::softmax_exp_body`]: `x = e^(x - max x)`, returns `1 / sum`.
    /// NaNs are skipped by the maximum (as [`super::max_f32`] does) and
    /// then propagate through the exponential and the sum.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn softmax_exp(x: &mut [f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for at in (0..x.len()).step_by(16) {
            // A NaN in the first operand yields the second: skipped.
            m = _mm512_max_ps(lanes(x, at, f32::NEG_INFINITY), m);
        }
        let m = _mm512_reduce_max_ps(m);
        for v in x.iter_mut() {
            *v = exp_nonpositive_with::<true>(*v - m);
        }
        let mut sum = _mm512_setzero_ps();
        for at in (0..x.len()).step_by(16) {
            sum = _mm512_add_ps(sum, lanes(x, at, 0.0));
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }
}

/// [`exp_nonpositive_with`] on 16 lanes at once, for kernels that keep
/// their values in AVX-512 registers (attention's softmax rows): the same
/// operations in the same order, so every lane has the bits the scalar
/// function gives (checked by `amx_machine_wide_exp_matches_the_scalar_function`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod wide_exp {
    use super::{EXP_MINIMAX, EXP_MIN_NORMAL_INPUT, LN2_HI, LN2_LO, LOG2_E, ROUND_MAGIC};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(crate) fn exp_nonpositive_x16(x: __m512) -> __m512 {
        let floor = _mm512_set1_ps(EXP_MIN_NORMAL_INPUT);
        // Ordered comparison: false for NaN, which goes on through the
        // arithmetic as in the scalar function.
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, floor);
        let xc = _mm512_mask_blend_ps(under, x, floor);
        let magic = _mm512_set1_ps(ROUND_MAGIC);
        let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(LOG2_E), magic);
        let kf = _mm512_sub_ps(t, magic);
        // fnmadd(a, b, c) = -(a b) + c, the scalar form's fma(-a, b, c).
        let r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(kf, _mm512_set1_ps(LN2_HI), xc));
        let mut p = _mm512_set1_ps(EXP_MINIMAX[5]);
        for c in EXP_MINIMAX[..5].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let bias = _mm512_set1_epi32((ROUND_MAGIC.to_bits() - 127) as i32);
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_sub_epi32(_mm512_castps_si512(t), bias)));
        _mm512_maskz_mov_ps(!under, _mm512_mul_ps(p, scale))
    }
}

/// `y = log_softmax(x)` over one contiguous row.
pub fn log_softmax_row(x: &[f32], y: &mut [f32]) {
    with_vector_features!(log_softmax_body(x: &[f32], y: &mut [f32]))
}

#[inline(always)]
fn softmax_body<const FMA: bool>(x: &[f32], y: &mut [f32]) {
    let m = max_f32(x);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = exp_nonpositive_with::<FMA>(v - m);
    }
    let inv = 1.0 / sum_f32(y);
    for o in y.iter_mut() {
        *o *= inv;
    }
}

#[inline(always)]
fn softmax_exp_body<const FMA: bool>(x: &mut [f32]) -> f32 {
    let m = max_f32(x);
    for v in x.iter_mut() {
        *v = exp_nonpositive_with::<FMA>(*v - m);
    }
    1.0 / sum_f32(x)
}

#[inline(always)]
fn log_softmax_body<const FMA: bool>(x: &[f32], y: &mut [f32]) {
    let m = max_f32(x);
    for (o, &v) in y.iter_mut().zip(x) {
        *o = exp_nonpositive_with::<FMA>(v - m);
    }
    let shift = m + (sum_f32(y) as f64).ln() as f32;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v - shift;
    }
}

/// Normalizes one row: `y = (x - mean) * inv * scale + bias` with `inv =
/// 1 / sqrt(var + eps)` (LayerNormalization), or with mean 0 and the mean
/// square as variance (`rms`, RMSNormalization). Returns (mean, inv).
/// Sums run in 16 f32 lanes over blocks of 1024 values, added up in f64,
/// so that long rows keep their accuracy and short ones vectorize.
pub fn norm_row(x: &[f32], y: &mut [f32], scale: &[f32], bias: Option<&[f32]>, eps: f32, rms: bool) -> (f32, f32) {
    with_vector_features!(norm_row_body(
        x: &[f32],
        y: &mut [f32],
        scale: &[f32],
        bias: Option<&[f32]>,
        eps: f32,
        rms: bool,
    ) -> (f32, f32))
}

#[inline(always)]
fn norm_row_body<const FMA: bool>(
    x: &[f32],
    y: &mut [f32],
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    rms: bool,
) -> (f32, f32) {
    assert!(y.len() == x.len() && scale.len() == x.len(), "row, output and scale lengths differ");
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f64;
    let mean = if rms { 0.0 } else { (block_sum(x, 0.0, false) / n) as f32 };
    let var = block_sum(x, mean, true) / n;
    let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
    match bias {
        Some(b) => {
            assert_eq!(b.len(), x.len(), "bias length differs from the row's");
            for (((o, &v), &s), &b) in y.iter_mut().zip(x).zip(scale).zip(b) {
                *o = madd::<FMA>((v - mean) * inv, s, b);
            }
        }
        None => {
            for ((o, &v), &s) in y.iter_mut().zip(x).zip(scale) {
                *o = (v - mean) * inv * s;
            }
        }
    }
    (mean, inv)
}

/// `sum(x - shift)` or, with `square`, `sum((x - shift)^2)`.
#[inline(always)]
fn block_sum(x: &[f32], shift: f32, square: bool) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(1024) {
        let mut lanes = [0.0f32; 16];
        let mut chunks = block.chunks_exact(16);
        for c in &mut chunks {
            for j in 0..16 {
                let d = c[j] - shift;
                lanes[j] += if square { d * d } else { d };
            }
        }
        let mut s = 0.0f32;
        for &v in chunks.remainder() {
            let d = v - shift;
            s += if square { d * d } else { d };
        }
        total += lanes.iter().map(|&l| l as f64).sum::<f64>() + s as f64;
    }
    total
}

/// The error function in double precision (relative error ~1e-15): a
/// series with positive terms below 2.5, a continued fraction for erfc above.
pub fn erf_f64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(a) = 2/sqrt(pi) e^(-a^2) sum_n (2a^2)^n a / (1*3*...*(2n+1))
        let a2 = a * a;
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term > sum * 1e-17 && n < 400.0 {
            term *= 2.0 * a2 / (2.0 * n + 3.0);
            sum += term;
            n += 1.0;
        }
        std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum
    } else if a < 6.5 {
        1.0 - erfc_cf(a)
    } else {
        1.0
    };
    r.copysign(x)
}

/// erfc(a) for a >= 2.5 by its continued fraction
/// erfc(a) = e^(-a^2)/sqrt(pi) / (a + (1/2)/(a + 1/(a + (3/2)/(a + ...)))).
fn erfc_cf(a: f64) -> f64 {
    let mut f = a;
    for k in (1..=80).rev() {
        f = a + (k as f64 * 0.5) / f;
    }
    (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector map against the scalar functions it compiles: equal, up
    /// to the rounding a fused multiply-add changes (a few ulps), on ragged
    /// lengths with edges (NaN, infinities, signed zeros, huge and tiny
    /// values) among random values.
    #[test]
    fn vector_map_matches_the_scalar_functions() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let edges = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 0.625, 1.0];
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let x: Vec<f32> = (0..len)
                .map(|i| {
                    if i % 7 == 3 {
                        edges[i / 7 % edges.len()]
                    } else {
                        ((next() >> 40) as f32 / (1 << 24) as f32 - 0.5) * 24.0
                    }
                })
                .collect();
            for (f, scalar) in [
                (Unary::Exp, exp_f32 as fn(f32) -> f32),
                (Unary::Sigmoid, sigmoid_f32),
                (Unary::Tanh, tanh_f32),
                (Unary::Erf, erf_f32),
            ] {
                let mut y = vec![0f32; len];
                map_f32(f, &x, &mut y);
                for (&v, &got) in x.iter().zip(&y) {
                    let want = scalar(v);
                    let close =
                        (got - want).abs() <= 4.0 * f32::EPSILON * want.abs() || got.to_bits() == want.to_bits();
                    assert!(close || (got.is_nan() && want.is_nan()), "{f:?}({v}) = {got}, scalar {want}");
                }
            }
        }
    }

    /// A test per name, running its `_impl` with and without fused
    /// multiply-adds.
    macro_rules! both_fma_variants {
        ($($name:ident => $body:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    $body::<false>();
                    $body::<true>();
                }
            )*
        };
    }

    both_fma_variants! {
        erf_f32_abs_error_below_1e6 => erf_f32_abs_error_below_1e6_impl,
        exp_f32_accuracy_and_edges => exp_f32_accuracy_and_edges_impl,
        exp_nonpositive_accuracy_and_edges => exp_nonpositive_accuracy_and_edges_impl,
        no_subnormal_results => no_subnormal_results_impl,
        tanh_sigmoid_gelu_accuracy => tanh_sigmoid_gelu_accuracy_impl,
    }

    /// (x, erf(x)) from Python's math.erf.
    const ERF_REF: [(f64, f64); 12] = [
        (0.0, 0.0),
        (1e-8, 1.1283791670955126e-08),
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (0.999, 0.8422852702064969),
        (1.0, 0.8427007929497149),
        (1.7, 0.9837904585907745),
        (2.4999, 0.9995928300996666),
        (2.5, 0.999593047982555),
        (3.3, 0.9999969422902035),
        (4.5, 0.9999999998033839),
        (6.0, 1.0),
    ];

    #[test]
    fn ln2_split_is_exact() {
        assert_eq!(LN2_HI.to_bits(), 0x3f31_8000);
        assert!(((LN2_HI as f64 + LN2_LO as f64) - std::f64::consts::LN_2).abs() < 1e-11);
    }

    #[test]
    fn erf_f64_matches_reference() {
        for &(x, e) in &ERF_REF {
            let got = erf_f64(x);
            assert!((got - e).abs() <= 2e-15 * e.abs().max(1e-300) + 1e-300, "erf({x}) = {got}, want {e}");
            assert_eq!(erf_f64(-x), -got);
        }
        assert!(erf_f64(f64::NAN).is_nan());
        assert_eq!(erf_f64(f64::INFINITY), 1.0);
        assert_eq!(erf_f64(f64::NEG_INFINITY), -1.0);
    }

    fn erf_f32_abs_error_below_1e6_impl<const F: bool>() {
        let mut worst = 0.0f64;
        let n = 400_000;
        for i in 0..=n {
            let x = -7.0 + 14.0 * i as f64 / n as f64;
            let got = erf_with::<F>(x as f32) as f64;
            let want = erf_f64(x as f32 as f64);
            worst = worst.max((got - want).abs());
        }
        assert!(worst < 2e-7, "worst abs error {worst}");
        assert!(erf_with::<F>(f32::NAN).is_nan());
        assert_eq!(erf_with::<F>(f32::INFINITY), 1.0);
        assert_eq!(erf_with::<F>(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf_with::<F>(0.0), 0.0);
    }

    fn ulp_diff(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn exp_f32_accuracy_and_edges_impl<const F: bool>() {
        let mut worst = 0;
        let mut x = EXP_MIN_NORMAL_INPUT;
        while x < 88.7 {
            let want = (x as f64).exp() as f32;
            if want.is_normal() {
                worst = worst.max(ulp_diff(exp_with::<F>(x), want));
            }
            x += 0.0137;
        }
        assert!(worst <= 2, "worst ulp error {worst}");
        assert_eq!(exp_with::<F>(0.0), 1.0);
        assert_eq!(exp_with::<F>(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_with::<F>(89.0), f32::INFINITY);
        assert_eq!(exp_with::<F>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_with::<F>(-200.0), 0.0);
        assert!(exp_with::<F>(f32::NAN).is_nan());
        // Flushed instead of subnormal.
        assert_eq!(exp_with::<F>(-87.5), 0.0);
        assert_eq!(exp_with::<F>(-100.0), 0.0);
        let smallest = exp_with::<F>(-87.0);
        assert!(smallest.is_normal() && ulp_diff(smallest, (-87.0f64).exp() as f32) <= 2);
    }

    fn exp_nonpositive_accuracy_and_edges_impl<const F: bool>() {
        let mut worst = 0;
        let mut x = EXP_MIN_NORMAL_INPUT;
        while x <= 0.0 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulp_diff(exp_nonpositive_with::<F>(x), want));
            x += 0.000_731;
        }
        // Near 0, where softmax's largest terms sit.
        for i in 0..100_000 {
            let x = -(i as f32) * 1e-6;
            worst = worst.max(ulp_diff(exp_nonpositive_with::<F>(x), (x as f64).exp() as f32));
        }
        assert!(worst <= 2, "worst ulp error {worst}");
        assert_eq!(exp_nonpositive_with::<F>(0.0), 1.0);
        assert_eq!(exp_nonpositive_with::<F>(-0.0), 1.0);
        assert_eq!(exp_nonpositive_with::<F>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive_with::<F>(-87.5), 0.0);
        assert!(exp_nonpositive_with::<F>(f32::NAN).is_nan());
        let smallest = exp_nonpositive_with::<F>(-87.0);
        assert!(smallest.is_normal() && ulp_diff(smallest, (-87.0f64).exp() as f32) <= 2);
    }

    /// No subnormal comes out of a normal input, anywhere in the domain
    /// (they cost a microcode assist per vector operation on Intel cores).
    fn no_subnormal_results_impl<const F: bool>() {
        let mut x = -200.0f32;
        while x < 200.0 {
            for (name, y) in [
                ("exp", exp_with::<F>(x)),
                ("exp_nonpositive", exp_nonpositive_with::<F>(-x.abs())),
                ("erf", erf_with::<F>(x)),
                ("tanh", tanh_with::<F>(x)),
                ("sigmoid", sigmoid_with::<F>(x)),
                ("gelu_erf", gelu_erf_with::<F>(x)),
                ("gelu_tanh", gelu_tanh_with::<F>(x)),
                ("silu", x * sigmoid_with::<F>(x)),
            ] {
                assert!(!y.is_subnormal(), "{name}({x}) = {y:e} is subnormal");
            }
            x += 0.0173;
        }
    }

    fn tanh_sigmoid_gelu_accuracy_impl<const F: bool>() {
        let mut x = -20.0f32;
        while x < 20.0 {
            let xd = x as f64;
            let t = tanh_with::<F>(x) as f64;
            assert!((t - xd.tanh()).abs() <= 3e-7 * xd.tanh().abs() + 1e-30, "tanh({x}) = {t}");
            let s = sigmoid_with::<F>(x) as f64;
            let sw = 1.0 / (1.0 + (-xd).exp());
            assert!((s - sw).abs() <= 4e-7 * sw, "sigmoid({x}) = {s}");
            let g = gelu_erf_with::<F>(x) as f64;
            let gw = 0.5 * xd * (1.0 + erf_f64(xd / 2f64.sqrt()));
            assert!((g - gw).abs() <= 2e-6 * gw.abs() + 1e-6, "gelu({x}) = {g}, want {gw}");
            let gt = gelu_tanh_with::<F>(x) as f64;
            let y = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
            let gtw = 0.5 * xd * (1.0 + y.tanh());
            assert!((gt - gtw).abs() <= 2e-6 * gtw.abs() + 1e-6, "gelu_tanh({x}) = {gt}, want {gtw}");
            x += 0.00731;
        }
        assert_eq!(tanh_with::<F>(f32::INFINITY), 1.0);
        assert_eq!(tanh_with::<F>(f32::NEG_INFINITY), -1.0);
        assert!(tanh_with::<F>(f32::NAN).is_nan());
        assert_eq!(sigmoid_with::<F>(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid_with::<F>(f32::INFINITY), 1.0);
        assert_eq!(gelu_erf_with::<F>(f32::NEG_INFINITY), 0.0);
        assert_eq!(gelu_erf_with::<F>(f32::INFINITY), f32::INFINITY);
        assert!(gelu_erf_with::<F>(f32::NAN).is_nan());
        assert_eq!(gelu_tanh_with::<F>(f32::INFINITY), f32::INFINITY);
        // The negative tail keeps relative accuracy.
        let g = gelu_erf_with::<F>(-6.0) as f64;
        let gw = -5.919_525_870_226_207e-9; // -3 * erfc(6 / sqrt 2)
        assert!((g - gw).abs() <= 1e-4 * gw.abs(), "{g} vs {gw}");
    }

    /// The piecewise AVX-512 GELU against the f64 definition: relative
    /// error within 2e-5 from -3 up, 3e-3 on [-6, -3), absolute within
    /// 5e-6 below 0; the ends and NaN as documented. Named for
    /// scripts/test's AMX check: every CPU with AMX has AVX-512F, so on an
    /// AMX machine (`TESSERA_REQUIRE_AMX=1`) it must run; elsewhere without
    /// AVX-512F it says what it skipped.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn gelu_pieces_match_the_definition_on_amx_machines() {
        let what = "piecewise GELU (the portable GELU is checked elsewhere)";
        if !crate::vector_test_runs(gelu_pieces::available(), "AVX-512F", what) {
            return;
        }
        let mut xs: Vec<f32> = Vec::new();
        let mut x = -20.0f32;
        while x < 20.0 {
            xs.push(x);
            x += 0.000_731;
        }
        // Interval edges and their neighbours, where the piece changes.
        for i in 0..=32 {
            let e = -8.0 + 0.5 * i as f32;
            xs.extend([e, f32::from_bits(e.to_bits() + 1), f32::from_bits(e.to_bits().wrapping_sub(1))]);
        }
        let mut y = xs.clone();
        // SAFETY: AVX-512F checked above.
        unsafe { gelu_pieces::gelu_erf_in_place(&mut y) };
        let (mut worst_rel_hi, mut worst_rel_mid, mut worst_abs) = (0f64, 0f64, 0f64);
        for (&x, &g) in xs.iter().zip(&y) {
            let xd = x as f64;
            let want = if xd < 0.0 {
                xd * 0.5 * (1.0 - erf_f64(-xd / 2f64.sqrt()))
            } else {
                0.5 * xd * (1.0 + erf_f64(xd / 2f64.sqrt()))
            };
            let err = (g as f64 - want).abs();
            if xd < 0.0 {
                worst_abs = worst_abs.max(err);
            }
            // Relative error where GELU is a normal f32 (subnormal results
            // keep only their absolute accuracy).
            if xd >= -3.0 && want.abs() >= f32::MIN_POSITIVE as f64 {
                worst_rel_hi = worst_rel_hi.max(err / want.abs());
            } else if (-6.0..-3.0).contains(&xd) {
                worst_rel_mid = worst_rel_mid.max(err / want.abs());
            }
        }
        eprintln!("gelu pieces: relative {worst_rel_hi:e} from -3 up, {worst_rel_mid:e} on [-6, -3), absolute {worst_abs:e} below 0");
        assert!(worst_rel_hi <= 2e-5, "relative error {worst_rel_hi:e} from -3 up");
        assert!(worst_rel_mid <= 3e-3, "relative error {worst_rel_mid:e} on [-6, -3)");
        assert!(worst_abs <= 5e-6, "absolute error {worst_abs:e} below 0");
        let mut ends = [8.0f32, 100.0, f32::INFINITY, -8.0001, -100.0, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0];
        // SAFETY: as above.
        unsafe { gelu_pieces::gelu_erf_in_place(&mut ends) };
        assert_eq!(&ends[..3], &[8.0, 100.0, f32::INFINITY]);
        assert!(ends[3..6].iter().all(|&v| v == 0.0), "{ends:?}");
        assert!(ends[6].is_nan());
        assert_eq!(ends[7], 0.0);
        assert_eq!(ends[8], 0.0);
        // Ragged lengths take the masked tail.
        for len in [1usize, 15, 17, 33] {
            let mut v: Vec<f32> = (0..len).map(|i| i as f32 * 0.37 - 3.0).collect();
            let want: Vec<f32> = v.clone();
            // SAFETY: as above.
            unsafe { gelu_pieces::gelu_erf_in_place(&mut v) };
            for (g, &x) in v.iter().zip(&want) {
                assert!((g - gelu_erf_f32(x)).abs() <= 5e-6 * (1.0 + x.abs()), "len {len}: gelu({x}) = {g}");
            }
        }
    }

    #[test]
    fn norm_row_matches_f64_statistics() {
        for (len, rms) in [(1usize, false), (17, false), (768, false), (768, true), (5000, false), (3001, true)] {
            let x: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.37 + 3.0).collect();
            let scale: Vec<f32> = (0..len).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
            let bias: Vec<f32> = (0..len).map(|i| (i % 5) as f32 * 0.2 - 0.4).collect();
            let mut y = vec![f32::NAN; len];
            let (mean, inv) = norm_row(&x, &mut y, &scale, if rms { None } else { Some(&bias) }, 1e-5, rms);
            let n = len as f64;
            let m = if rms { 0.0 } else { x.iter().map(|&v| v as f64).sum::<f64>() / n };
            let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
            let iv = 1.0 / (var + 1e-5).sqrt();
            assert!((mean as f64 - m).abs() <= 1e-5 * m.abs().max(1.0), "{len}: mean {mean} vs {m}");
            assert!((inv as f64 - iv).abs() <= 1e-5 * iv, "{len}: inv {inv} vs {iv}");
            for i in 0..len {
                let b = if rms { 0.0 } else { bias[i] as f64 };
                let want = (x[i] as f64 - m) * iv * scale[i] as f64 + b;
                assert!((y[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{len} at {i}: {} vs {want}", y[i]);
            }
        }
    }

    #[test]
    fn rows() {
        let x = [1.0f32, 2.0, 3.0];
        let mut y = [0.0f32; 3];
        softmax_row(&x, &mut y);
        let want = [0.09003057, 0.24472847, 0.66524096];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-7);
        }
        log_softmax_row(&x, &mut y);
        let want = [-2.407_606, -1.407_606, -0.407_606];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        let v: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        assert_eq!(max_f32(&v), 15.0);
        assert_eq!(sum_f32(&v), v.iter().sum::<f32>());
        assert_eq!(max_f32(&[]), f32::NEG_INFINITY);
        assert_eq!(max_f32(&[f32::NAN, -2.0, f32::NAN]), -2.0);
    }

    /// The 16-lane exponential against the scalar one, bit for bit (the
    /// floor at -87 and around it, -inf, NaN, ±0 and 20000 values down to
    /// -100). Named for scripts/test's AMX check: an AMX machine has
    /// AVX-512, so there it must run (`TESSERA_REQUIRE_AMX=1`).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn amx_machine_wide_exp_matches_the_scalar_function() {
        use std::arch::x86_64::*;
        let available = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma");
        if !crate::vector_test_runs(available, "AVX-512", "the 16-lane exponential") {
            return;
        }
        let mut xs: Vec<f32> =
            vec![0.0, -0.0, -87.0, -87.000_01, -86.999_99, -88.0, -1e30, f32::NEG_INFINITY, f32::NAN];
        let mut state = 0x2545_f491_u32;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            xs.push(-((state >> 8) as f32 / (1u32 << 24) as f32) * 100.0);
        }
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F and FMA checked above; both arrays are 16 f32.
            unsafe {
                let v = wide_exp::exp_nonpositive_x16(_mm512_loadu_ps(lanes.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), v);
            }
            for (&x, &g) in lanes.iter().zip(&got) {
                let want = exp_nonpositive_with::<true>(x);
                assert!(g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()), "e^{x}: {g} against {want}");
            }
        }
    }

    /// The in-place softmax (AVX-512 reductions where the CPU has them) and
    /// the portable body against f64, on every length up to 3 vectors and a
    /// ragged tail, with masked keys (-1e9, -inf) and a NaN row.
    #[test]
    fn softmax_exp_in_place_matches_f64() {
        for n in 1..=50usize {
            let mut x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 113) as f32 - 56.0) * 0.37).collect();
            if n > 3 {
                x[n / 2] = -1e9;
                x[n - 1] = f32::NEG_INFINITY;
            }
            let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut portable = x.clone();
            let inv_portable = softmax_exp_body::<false>(&mut portable);
            let mut y = x.clone();
            let inv = softmax_exp_in_place(&mut y);
            for (got, inv) in [(&y, inv), (&portable, inv_portable)] {
                assert!(((inv as f64) * sum - 1.0).abs() < 1e-6, "n {n}: 1/sum {inv} against {}", 1.0 / sum);
                for (j, (&g, &w)) in got.iter().zip(&e).enumerate() {
                    // 2 ulp for the exponential, plus the rounding of x - max in f32.
                    let tol = if w == 0.0 { 0.0 } else { (2.5e-7 + (m - x[j] as f64) * 6e-8) * w + 1e-37 };
                    assert!((g as f64 - w).abs() <= tol, "n {n}, {j}: {g} against {w}");
                }
            }
        }
        let mut nan = vec![1.0f32, f32::NAN, 2.0, 3.0];
        assert!(softmax_exp_in_place(&mut nan).is_nan() && nan[1].is_nan() && nan[3] == 1.0);
    }
}
