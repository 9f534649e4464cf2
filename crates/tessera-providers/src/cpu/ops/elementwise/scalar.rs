//! Element traits and dtype dispatch shared by the elementwise and the
//! reduction operators.
//!
//! * [`Scalar`]: every numeric element type (f32, f64, f16, bf16 and the eight
//!   integer types). Integer arithmetic wraps like C/numpy, integer division
//!   by zero gives 0 (never a panic); f16/bf16 compute through f32.
//! * [`IntOps`]: bitwise operations and shifts of the integer types.
//! * [`Real`]: the math library for f32 and f64 (f16/bf16 are converted to
//!   f32 first). f32 uses the vectorizable kernels of `tessera_kernels`.
//! * `with_*!` macros: run a block with a type alias bound to the Rust type
//!   of a runtime [`DType`](tessera_core::DType).

use std::cmp::Ordering;
use std::ops::{Add, Div, Mul, Neg, Sub};

use half::{bf16, f16};
use rayon::prelude::*;
use tessera_core::dtype::Element;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::elementwise as k;

/// Work (in elements) above which loops are split across rayon threads.
pub(crate) const PAR_MIN: usize = 1 << 16;

/// A value in a form every element type converts into exactly, so that a
/// cast is `Dst::from_repr(src.to_repr())` with C/numpy semantics.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Repr {
    F(f64),
    I(i64),
    U(u64),
}

pub(crate) trait Scalar: Element + Copy + PartialOrd + Default + std::fmt::Debug {
    fn zero() -> Self;
    fn one() -> Self;
    /// The identity of max: -inf for floats, MIN for integers.
    fn lowest() -> Self;
    /// The identity of min: +inf for floats, MAX for integers.
    fn highest() -> Self;
    fn to_f64(self) -> f64;
    /// Float to int saturates and truncates toward zero (NaN gives 0).
    fn from_f64(v: f64) -> Self;
    fn to_repr(self) -> Repr;
    fn from_repr(r: Repr) -> Self;
    fn is_nan(self) -> bool;
    fn is_zero(self) -> bool;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Integer division truncates toward zero; x / 0 is 0 for integers.
    fn div(self, o: Self) -> Self;
    /// `fmod`: remainder with the dividend's sign (C fmod); otherwise the
    /// divisor's sign (Python/numpy mod). x mod 0 is 0 for integers.
    fn rem(self, o: Self, fmod: bool) -> Self;
    fn abs(self) -> Self;
    fn neg(self) -> Self;
    /// -1, 0 or 1 (NaN stays NaN, -0 stays -0).
    fn signum(self) -> Self;
    /// A total order in which NaN is greater than everything (NaNs equal).
    fn total_cmp_nan_max(&self, o: &Self) -> Ordering;
    /// numpy `maximum`: NaN propagates.
    #[inline(always)]
    fn max_nan(self, o: Self) -> Self {
        if self > o || self.is_nan() {
            self
        } else {
            o
        }
    }
    /// numpy `minimum`: NaN propagates.
    #[inline(always)]
    fn min_nan(self, o: Self) -> Self {
        if self < o || self.is_nan() {
            self
        } else {
            o
        }
    }
    #[inline(always)]
    fn cast<D: Scalar>(self) -> D {
        D::from_repr(self.to_repr())
    }
}

macro_rules! impl_float_prim {
    ($t:ty) => {
        impl Scalar for $t {
            #[inline(always)]
            fn zero() -> Self {
                0.0
            }
            #[inline(always)]
            fn one() -> Self {
                1.0
            }
            #[inline(always)]
            fn lowest() -> Self {
                <$t>::NEG_INFINITY
            }
            #[inline(always)]
            fn highest() -> Self {
                <$t>::INFINITY
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_repr(self) -> Repr {
                Repr::F(self as f64)
            }
            #[inline(always)]
            fn from_repr(r: Repr) -> Self {
                match r {
                    Repr::F(v) => v as $t,
                    Repr::I(v) => v as $t,
                    Repr::U(v) => v as $t,
                }
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn is_zero(self) -> bool {
                self == 0.0
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            #[inline(always)]
            fn rem(self, o: Self, fmod: bool) -> Self {
                let r = self % o;
                if fmod {
                    r
                } else if r != 0.0 {
                    if (r < 0.0) != (o < 0.0) {
                        r + o
                    } else {
                        r
                    }
                } else {
                    (0.0 as $t).copysign(o)
                }
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn neg(self) -> Self {
                -self
            }
            #[inline(always)]
            fn signum(self) -> Self {
                if self > 0.0 {
                    1.0
                } else if self < 0.0 {
                    -1.0
                } else {
                    self
                }
            }
            #[inline(always)]
            fn total_cmp_nan_max(&self, o: &Self) -> Ordering {
                match self.partial_cmp(o) {
                    Some(c) => c,
                    None => self.is_nan().cmp(&o.is_nan()),
                }
            }
        }
    };
}
impl_float_prim!(f32);
impl_float_prim!(f64);

macro_rules! impl_half {
    ($t:ty) => {
        impl Scalar for $t {
            #[inline(always)]
            fn zero() -> Self {
                <$t>::ZERO
            }
            #[inline(always)]
            fn one() -> Self {
                <$t>::ONE
            }
            #[inline(always)]
            fn lowest() -> Self {
                <$t>::NEG_INFINITY
            }
            #[inline(always)]
            fn highest() -> Self {
                <$t>::INFINITY
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self.to_f64()
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            #[inline(always)]
            fn to_repr(self) -> Repr {
                Repr::F(self.to_f64())
            }
            #[inline(always)]
            fn from_repr(r: Repr) -> Self {
                match r {
                    Repr::F(v) => <$t>::from_f64(v),
                    Repr::I(v) => <$t>::from_f64(v as f64),
                    Repr::U(v) => <$t>::from_f64(v as f64),
                }
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn is_zero(self) -> bool {
                self.to_f32() == 0.0
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() + o.to_f32())
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() - o.to_f32())
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() * o.to_f32())
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() / o.to_f32())
            }
            #[inline(always)]
            fn rem(self, o: Self, fmod: bool) -> Self {
                <$t>::from_f32(Scalar::rem(self.to_f32(), o.to_f32(), fmod))
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::from_bits(self.to_bits() & 0x7fff)
            }
            #[inline(always)]
            fn neg(self) -> Self {
                -self
            }
            #[inline(always)]
            fn signum(self) -> Self {
                <$t>::from_f32(Scalar::signum(self.to_f32()))
            }
            #[inline(always)]
            fn total_cmp_nan_max(&self, o: &Self) -> Ordering {
                self.to_f32().total_cmp_nan_max(&o.to_f32())
            }
        }
    };
}
impl_half!(f16);
impl_half!(bf16);

macro_rules! impl_int {
    ($t:ty, $repr:ident, $rt:ty) => {
        impl Scalar for $t {
            #[inline(always)]
            fn zero() -> Self {
                0
            }
            #[inline(always)]
            fn one() -> Self {
                1
            }
            #[inline(always)]
            fn lowest() -> Self {
                <$t>::MIN
            }
            #[inline(always)]
            fn highest() -> Self {
                <$t>::MAX
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_repr(self) -> Repr {
                Repr::$repr(self as $rt)
            }
            #[inline(always)]
            fn from_repr(r: Repr) -> Self {
                match r {
                    Repr::F(v) => v as $t,
                    Repr::I(v) => v as $t,
                    Repr::U(v) => v as $t,
                }
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                false
            }
            #[inline(always)]
            fn is_zero(self) -> bool {
                self == 0
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                if o == 0 {
                    0
                } else {
                    self.wrapping_div(o)
                }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn rem(self, o: Self, fmod: bool) -> Self {
                if o == 0 {
                    return 0;
                }
                let r = self.wrapping_rem(o);
                if !fmod && r != 0 && ((r < 0) != (o < 0)) {
                    r.wrapping_add(o)
                } else {
                    r
                }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn abs(self) -> Self {
                if self < 0 {
                    (0 as $t).wrapping_sub(self)
                } else {
                    self
                }
            }
            #[inline(always)]
            fn neg(self) -> Self {
                (0 as $t).wrapping_sub(self)
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn signum(self) -> Self {
                if self > 0 {
                    1
                } else if self < 0 {
                    (0 as $t).wrapping_sub(1)
                } else {
                    0
                }
            }
            #[inline(always)]
            fn total_cmp_nan_max(&self, o: &Self) -> Ordering {
                self.cmp(o)
            }
        }
    };
}
impl_int!(i8, I, i64);
impl_int!(i16, I, i64);
impl_int!(i32, I, i64);
impl_int!(i64, I, i64);
impl_int!(u8, U, u64);
impl_int!(u16, U, u64);
impl_int!(u32, U, u64);
impl_int!(u64, U, u64);

/// Bitwise operations of the integer types.
pub(crate) trait IntOps: Scalar {
    fn bit_and(self, o: Self) -> Self;
    fn bit_or(self, o: Self) -> Self;
    fn bit_xor(self, o: Self) -> Self;
    fn bit_not(self) -> Self;
    /// `self << amount`; an amount outside [0, bits) gives 0.
    fn shl_full(self, amount: Self) -> Self;
    /// `self >> amount` (arithmetic for signed types); an amount outside
    /// [0, bits) gives 0, or -1 for a negative value.
    fn shr_full(self, amount: Self) -> Self;
    /// Exact integer power with wrapping.
    fn pow_wrapping(self, e: u32) -> Self;
}

macro_rules! impl_intops {
    ($t:ty) => {
        impl IntOps for $t {
            #[inline(always)]
            fn bit_and(self, o: Self) -> Self {
                self & o
            }
            #[inline(always)]
            fn bit_or(self, o: Self) -> Self {
                self | o
            }
            #[inline(always)]
            fn bit_xor(self, o: Self) -> Self {
                self ^ o
            }
            #[inline(always)]
            fn bit_not(self) -> Self {
                !self
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn shl_full(self, amount: Self) -> Self {
                if amount >= 0 && (amount as u64) < <$t>::BITS as u64 {
                    self << (amount as u32)
                } else {
                    0
                }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn shr_full(self, amount: Self) -> Self {
                if amount >= 0 && (amount as u64) < <$t>::BITS as u64 {
                    self >> (amount as u32)
                } else if self < 0 {
                    (0 as $t).wrapping_sub(1)
                } else {
                    0
                }
            }
            #[inline(always)]
            fn pow_wrapping(self, e: u32) -> Self {
                self.wrapping_pow(e)
            }
        }
    };
}
impl_intops!(i8);
impl_intops!(i16);
impl_intops!(i32);
impl_intops!(i64);
impl_intops!(u8);
impl_intops!(u16);
impl_intops!(u32);
impl_intops!(u64);

/// Float math for f32 and f64.
pub(crate) trait Real:
    Scalar + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self>
{
    /// A constant (attribute values are converted once, outside loops).
    fn c(v: f64) -> Self;
    fn exp(self) -> Self;
    fn exp_m1(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn sigmoid(self) -> Self;
    fn erf(self) -> Self;
    fn gelu_erf(self) -> Self;
    fn gelu_tanh(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tan(self) -> Self;
    fn asin(self) -> Self;
    fn acos(self) -> Self;
    fn atan(self) -> Self;
    fn sinh(self) -> Self;
    fn cosh(self) -> Self;
    fn asinh(self) -> Self;
    fn acosh(self) -> Self;
    fn atanh(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn round_even(self) -> Self;
}

macro_rules! std_math {
    ($($f:ident),*) => {
        $(
            #[inline(always)]
            fn $f(self) -> Self {
                <Self>::$f(self)
            }
        )*
    };
}

impl Real for f32 {
    #[inline(always)]
    fn c(v: f64) -> Self {
        v as f32
    }
    std_math!(exp_m1, ln, ln_1p, sqrt, sin, cos, tan, asin, acos, atan, sinh, cosh, asinh, acosh, atanh, floor, ceil);
    #[inline(always)]
    fn exp(self) -> Self {
        k::exp_f32(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        k::tanh_f32(self)
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        k::sigmoid_f32(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        k::erf_f32(self)
    }
    #[inline(always)]
    fn gelu_erf(self) -> Self {
        k::gelu_erf_f32(self)
    }
    #[inline(always)]
    fn gelu_tanh(self) -> Self {
        k::gelu_tanh_f32(self)
    }
    #[inline(always)]
    fn round_even(self) -> Self {
        self.round_ties_even()
    }
}

impl Real for f64 {
    #[inline(always)]
    fn c(v: f64) -> Self {
        v
    }
    std_math!(
        exp, exp_m1, ln, ln_1p, sqrt, tanh, sin, cos, tan, asin, acos, atan, sinh, cosh, asinh, acosh, atanh, floor,
        ceil
    );
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn erf(self) -> Self {
        k::erf_f64(self)
    }
    #[inline(always)]
    fn gelu_erf(self) -> Self {
        0.5 * self * (1.0 + k::erf_f64(self * std::f64::consts::FRAC_1_SQRT_2))
    }
    #[inline(always)]
    fn gelu_tanh(self) -> Self {
        let y = (2.0 / std::f64::consts::PI).sqrt() * (self + 0.044715 * self * self * self);
        0.5 * self * (1.0 + y.tanh())
    }
    #[inline(always)]
    fn round_even(self) -> Self {
        self.round_ties_even()
    }
}

/// `y[i] = f(x[i])`, split across threads for large slices.
pub(crate) fn map<A: Copy + Sync, B: Send>(x: &[A], y: &mut [B], f: impl Fn(A) -> B + Sync) {
    let body = |xs: &[A], ys: &mut [B]| {
        for (o, &v) in ys.iter_mut().zip(xs) {
            *o = f(v);
        }
    };
    if y.len() >= PAR_MIN {
        let ch = par_chunk(y.len());
        y.par_chunks_mut(ch).zip(x.par_chunks(ch)).for_each(|(ys, xs)| body(xs, ys));
    } else {
        body(x, y);
    }
}

/// Chunk length for splitting `n` elements of work across threads.
pub(crate) fn par_chunk(n: usize) -> usize {
    let t = rayon::current_num_threads().max(1);
    n.div_ceil(t * 4).max(PAR_MIN / 4).next_multiple_of(64)
}

/// The values of an f16/bf16/f32 tensor as f32.
pub(crate) fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    use half::slice::HalfFloatSliceExt;
    let mut v = vec![0f32; t.numel()];
    match t.dtype() {
        DType::F16 => t.as_slice::<f16>()?.convert_to_f32_slice(&mut v),
        DType::BF16 => t.as_slice::<bf16>()?.convert_to_f32_slice(&mut v),
        DType::F32 => v.copy_from_slice(t.as_slice::<f32>()?),
        d => return Err(Error::Other(format!("expected a float tensor, got {d}"))),
    }
    Ok(v)
}

/// Writes f32 values into an f16/bf16/f32 tensor (round to nearest even).
pub(crate) fn store_f32(t: &mut Tensor, v: &[f32]) -> Result<()> {
    use half::slice::HalfFloatSliceExt;
    match t.dtype() {
        DType::F16 => t.as_mut_slice::<f16>()?.convert_from_f32_slice(v),
        DType::BF16 => t.as_mut_slice::<bf16>()?.convert_from_f32_slice(v),
        DType::F32 => t.as_mut_slice::<f32>()?.copy_from_slice(v),
        d => return Err(Error::Other(format!("expected a float tensor, got {d}"))),
    }
    Ok(())
}

/// An f32 tensor holding the values of an f16/bf16 tensor (a shared copy
/// when it already is f32).
pub(crate) fn widen_to_f32(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        return Ok(t.clone());
    }
    Tensor::from_vec(t.shape(), to_f32_vec(t)?)
}

/// The error for a dtype an operator does not accept.
pub(crate) fn bad_dtype(node: &Node, dt: DType) -> Error {
    Error::node(node, format!("input type {dt} is not supported by {}", node.op_type))
}

/// Runs `$body` with `$T` bound to the Rust type of float dtype `$dt`.
macro_rules! with_float {
    ($dt:expr, $T:ident, $body:block, $fallback:expr) => {
        match $dt {
            ::tessera_core::DType::F32 => {
                type $T = f32;
                $body
            }
            ::tessera_core::DType::F64 => {
                type $T = f64;
                $body
            }
            ::tessera_core::DType::F16 => {
                type $T = half::f16;
                $body
            }
            ::tessera_core::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            _ => $fallback,
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust type of integer dtype `$dt`.
macro_rules! with_int {
    ($dt:expr, $T:ident, $body:block, $fallback:expr) => {
        match $dt {
            ::tessera_core::DType::I8 => {
                type $T = i8;
                $body
            }
            ::tessera_core::DType::I16 => {
                type $T = i16;
                $body
            }
            ::tessera_core::DType::I32 => {
                type $T = i32;
                $body
            }
            ::tessera_core::DType::I64 => {
                type $T = i64;
                $body
            }
            ::tessera_core::DType::U8 => {
                type $T = u8;
                $body
            }
            ::tessera_core::DType::U16 => {
                type $T = u16;
                $body
            }
            ::tessera_core::DType::U32 => {
                type $T = u32;
                $body
            }
            ::tessera_core::DType::U64 => {
                type $T = u64;
                $body
            }
            _ => $fallback,
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust type of numeric dtype `$dt`.
macro_rules! with_numeric {
    ($dt:expr, $T:ident, $body:block, $fallback:expr) => {
        match $dt {
            ::tessera_core::DType::F32 => {
                type $T = f32;
                $body
            }
            ::tessera_core::DType::F64 => {
                type $T = f64;
                $body
            }
            ::tessera_core::DType::F16 => {
                type $T = half::f16;
                $body
            }
            ::tessera_core::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            d => $crate::cpu::ops::elementwise::scalar::with_int!(d, $T, $body, $fallback),
        }
    };
}

/// Like [`with_numeric`], and bool as u8.
macro_rules! with_all {
    ($dt:expr, $T:ident, $body:block, $fallback:expr) => {
        match $dt {
            ::tessera_core::DType::Bool => {
                type $T = u8;
                $body
            }
            d => $crate::cpu::ops::elementwise::scalar::with_numeric!(d, $T, $body, $fallback),
        }
    };
}

pub(crate) use {with_all, with_float, with_int, with_numeric};
