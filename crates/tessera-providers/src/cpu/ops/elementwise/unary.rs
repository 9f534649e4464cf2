//! Unary operators: math functions, activations, rounding, predicates, Not,
//! BitwiseNot and Clip.
//!
//! Float inputs run through [`Real`] (f32 with vectorizable kernels, f64
//! with std's libm); f16/bf16 are widened to f32 and rounded back. The few
//! operators defined on integers (Abs, Neg, Sign, Relu, Shrink, Clip,
//! BitwiseNot) have integer paths.

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};

use super::scalar::{bad_dtype, map, store_f32, to_f32_vec, with_float, with_int, with_numeric, IntOps, Real, Scalar};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{opt, req};

#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Un {
    Abs,
    Neg,
    Sign,
    Relu,
    Floor,
    Ceil,
    Round,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Sigmoid,
    Tanh,
    Erf,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Softsign,
    Softplus,
    Mish,
    HardSwish,
    LeakyRelu(f32),
    Elu(f32),
    Selu {
        alpha: f32,
        gamma: f32,
    },
    Celu(f32),
    /// `x · sigmoid(alpha · x)` (opset 24).
    Swish(f32),
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    ThresholdedRelu(f32),
    Gelu {
        tanh: bool,
    },
    Shrink {
        bias: f32,
        lambd: f32,
    },
    Not,
    BitwiseNot,
    IsNaN,
    IsInf {
        pos: bool,
        neg: bool,
    },
}

impl Un {
    /// Operators also defined on integer inputs.
    fn on_ints(self) -> bool {
        matches!(self, Un::Abs | Un::Neg | Un::Sign | Un::Relu | Un::Shrink { .. })
    }
}

pub(super) fn register(r: &mut OpRegistry) {
    for name in [
        "Abs",
        "Neg",
        "Sign",
        "Relu",
        "Floor",
        "Ceil",
        "Round",
        "Exp",
        "Log",
        "Sqrt",
        "Reciprocal",
        "Sigmoid",
        "Tanh",
        "Erf",
        "Sin",
        "Cos",
        "Tan",
        "Asin",
        "Acos",
        "Atan",
        "Sinh",
        "Cosh",
        "Asinh",
        "Acosh",
        "Atanh",
        "Softsign",
        "Softplus",
        "Mish",
        "HardSwish",
    ] {
        r.add(name, build_simple);
    }
    r.add("Not", |n, c| build(n, c, Un::Not));
    r.add("BitwiseNot", |n, c| build(n, c, Un::BitwiseNot));
    r.add("IsNaN", |n, c| build(n, c, Un::IsNaN));
    r.add("IsInf", |n, c| {
        let pos = n.attr_int_or("detect_positive", 1)? != 0;
        let neg = n.attr_int_or("detect_negative", 1)? != 0;
        build(n, c, Un::IsInf { pos, neg })
    });
    r.add("LeakyRelu", |n, c| build(n, c, Un::LeakyRelu(n.attr_float_or("alpha", 0.01)?)));
    r.add("Elu", |n, c| build(n, c, Un::Elu(n.attr_float_or("alpha", 1.0)?)));
    r.add("Selu", |n, c| {
        let alpha = n.attr_float_or("alpha", 1.673_263_2)?;
        let gamma = n.attr_float_or("gamma", 1.050_701)?;
        build(n, c, Un::Selu { alpha, gamma })
    });
    r.add("Celu", |n, c| build(n, c, Un::Celu(n.attr_float_or("alpha", 1.0)?)));
    r.add("Swish", |n, c| build(n, c, Un::Swish(n.attr_float_or("alpha", 1.0)?)));
    r.add("HardSigmoid", |n, c| {
        let alpha = n.attr_float_or("alpha", 0.2)?;
        let beta = n.attr_float_or("beta", 0.5)?;
        build(n, c, Un::HardSigmoid { alpha, beta })
    });
    r.add("ThresholdedRelu", |n, c| build(n, c, Un::ThresholdedRelu(n.attr_float_or("alpha", 1.0)?)));
    r.add("Shrink", |n, c| {
        let bias = n.attr_float_or("bias", 0.0)?;
        let lambd = n.attr_float_or("lambd", 0.5)?;
        build(n, c, Un::Shrink { bias, lambd })
    });
    r.add("Gelu", |n, c| {
        let tanh = match n.attr_string("approximate")?.as_deref() {
            None | Some("none") => false,
            Some("tanh") => true,
            Some(a) => return Err(Error::node(n, format!("attribute 'approximate' must be none or tanh, got '{a}'"))),
        };
        build(n, c, Un::Gelu { tanh })
    });
    r.add("Clip", build_clip);
}

/// The attribute-free operators, looked up by op type.
fn build_simple(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let op = match node.op_type.as_str() {
        "Abs" => Un::Abs,
        "Neg" => Un::Neg,
        "Sign" => Un::Sign,
        "Relu" => Un::Relu,
        "Floor" => Un::Floor,
        "Ceil" => Un::Ceil,
        "Round" => Un::Round,
        "Exp" => Un::Exp,
        "Log" => Un::Log,
        "Sqrt" => Un::Sqrt,
        "Reciprocal" => Un::Reciprocal,
        "Sigmoid" => Un::Sigmoid,
        "Tanh" => Un::Tanh,
        "Erf" => Un::Erf,
        "Sin" => Un::Sin,
        "Cos" => Un::Cos,
        "Tan" => Un::Tan,
        "Asin" => Un::Asin,
        "Acos" => Un::Acos,
        "Atan" => Un::Atan,
        "Sinh" => Un::Sinh,
        "Cosh" => Un::Cosh,
        "Asinh" => Un::Asinh,
        "Acosh" => Un::Acosh,
        "Atanh" => Un::Atanh,
        "Softsign" => Un::Softsign,
        "Softplus" => Un::Softplus,
        "Mish" => Un::Mish,
        "HardSwish" => Un::HardSwish,
        other => return Err(Error::node(node, format!("{other} is not a unary operator"))),
    };
    build(node, ctx, op)
}

fn build(node: &Node, _ctx: &BuildCtx, op: Un) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        Ok(vec![run_unary(&node, op, x, rc)?])
    }))
}

pub(crate) fn run_unary(node: &Node, op: Un, x: &Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
    let dt = x.dtype();
    match op {
        Un::Not => {
            if dt != DType::Bool {
                return Err(bad_dtype(node, dt));
            }
            let mut out = ctx.alloc(DType::Bool, x.shape())?;
            map(x.as_slice::<u8>()?, out.as_mut_slice::<u8>()?, |v| (v == 0) as u8);
            Ok(out)
        }
        Un::BitwiseNot => {
            let mut out = ctx.alloc(dt, x.shape())?;
            with_int!(dt, T, { map(x.as_slice::<T>()?, out.as_mut_slice::<T>()?, |v| v.bit_not()) }, {
                return Err(bad_dtype(node, dt));
            });
            Ok(out)
        }
        Un::IsNaN | Un::IsInf { .. } => {
            let mut out = ctx.alloc(DType::Bool, x.shape())?;
            let o = out.as_mut_slice::<u8>()?;
            with_float!(
                dt,
                T,
                {
                    let xs = x.as_slice::<T>()?;
                    match op {
                        Un::IsInf { pos, neg } => map(xs, o, |v| {
                            let f = v.to_f64();
                            ((pos && f == f64::INFINITY) || (neg && f == f64::NEG_INFINITY)) as u8
                        }),
                        _ => map(xs, o, |v| v.is_nan() as u8),
                    }
                },
                return Err(bad_dtype(node, dt))
            );
            Ok(out)
        }
        _ if dt.is_float() => {
            let mut out = ctx.alloc_for_overwrite(dt, x.shape())?;
            match (dt, op) {
                (DType::F32, Un::Gelu { tanh }) => {
                    // The kernels' activation runs compiled for the CPU's
                    // vector unit (a closure through `map` runs scalar).
                    use tessera_kernels::gemm::{epilogue::activate, Activation};
                    let act = if tanh { Activation::GeluTanh } else { Activation::GeluErf };
                    let (xs, ys) = (x.as_slice::<f32>()?, out.as_mut_slice::<f32>()?);
                    let ch = super::scalar::par_chunk(ys.len());
                    ys.par_chunks_mut(ch).zip(xs.par_chunks(ch)).for_each(|(y, x)| {
                        y.copy_from_slice(x);
                        activate(act, y);
                    });
                }
                (DType::F32, Un::Exp | Un::Sigmoid | Un::Tanh | Un::Erf) => {
                    use tessera_kernels::elementwise::{map_f32, Unary};
                    let f = match op {
                        Un::Exp => Unary::Exp,
                        Un::Sigmoid => Unary::Sigmoid,
                        Un::Tanh => Unary::Tanh,
                        _ => Unary::Erf,
                    };
                    let (xs, ys) = (x.as_slice::<f32>()?, out.as_mut_slice::<f32>()?);
                    let ch = super::scalar::par_chunk(ys.len());
                    ys.par_chunks_mut(ch).zip(xs.par_chunks(ch)).for_each(|(y, x)| map_f32(f, x, y));
                }
                (DType::F32, _) => apply_real::<f32>(op, x.as_slice()?, out.as_mut_slice()?),
                (DType::F64, _) => apply_real::<f64>(op, x.as_slice()?, out.as_mut_slice()?),
                _ => {
                    let v = to_f32_vec(x)?;
                    let mut y = vec![0f32; v.len()];
                    apply_real::<f32>(op, &v, &mut y);
                    store_f32(&mut out, &y)?;
                }
            }
            Ok(out)
        }
        _ if dt.is_int() && op.on_ints() => {
            let mut out = ctx.alloc(dt, x.shape())?;
            with_int!(dt, T, { apply_int::<T>(op, x.as_slice()?, out.as_mut_slice()?) }, {
                return Err(bad_dtype(node, dt));
            });
            Ok(out)
        }
        _ => Err(bad_dtype(node, dt)),
    }
}

fn apply_int<T: IntOps>(op: Un, x: &[T], y: &mut [T]) {
    let zero = T::zero();
    match op {
        Un::Abs => map(x, y, |v| v.abs()),
        Un::Neg => map(x, y, |v| v.neg()),
        Un::Sign => map(x, y, |v| v.signum()),
        Un::Relu => map(x, y, |v| if v < zero { zero } else { v }),
        Un::Shrink { bias, lambd } => {
            let (bias, lambd) = (bias as f64, lambd as f64);
            map(x, y, |v| {
                let f = v.to_f64();
                if f < -lambd {
                    T::from_f64(f + bias)
                } else if f > lambd {
                    T::from_f64(f - bias)
                } else {
                    zero
                }
            })
        }
        _ => map(x, y, |v| v),
    }
}

#[inline(always)]
fn softplus<R: Real>(v: R) -> R {
    // log(1 + e^v) without overflow for large v.
    if v > R::zero() {
        v + (-v).exp().ln_1p()
    } else {
        v.exp().ln_1p()
    }
}

/// Applies a float operator to a slice.
pub(crate) fn apply_real<R: Real>(op: Un, x: &[R], y: &mut [R]) {
    let zero = R::zero();
    let one = R::one();
    match op {
        Un::Abs => map(x, y, |v| v.abs()),
        Un::Neg => map(x, y, |v| -v),
        Un::Sign => map(x, y, |v| v.signum()),
        Un::Relu => map(x, y, |v| if v < zero { zero } else { v }),
        Un::Floor => map(x, y, |v| v.floor()),
        Un::Ceil => map(x, y, |v| v.ceil()),
        Un::Round => map(x, y, |v| v.round_even()),
        Un::Exp => map(x, y, |v| v.exp()),
        Un::Log => map(x, y, |v| v.ln()),
        Un::Sqrt => map(x, y, |v| v.sqrt()),
        Un::Reciprocal => map(x, y, |v| one / v),
        Un::Sigmoid => map(x, y, |v| v.sigmoid()),
        Un::Tanh => map(x, y, |v| v.tanh()),
        Un::Erf => map(x, y, |v| v.erf()),
        Un::Sin => map(x, y, |v| v.sin()),
        Un::Cos => map(x, y, |v| v.cos()),
        Un::Tan => map(x, y, |v| v.tan()),
        Un::Asin => map(x, y, |v| v.asin()),
        Un::Acos => map(x, y, |v| v.acos()),
        Un::Atan => map(x, y, |v| v.atan()),
        Un::Sinh => map(x, y, |v| v.sinh()),
        Un::Cosh => map(x, y, |v| v.cosh()),
        Un::Asinh => map(x, y, |v| v.asinh()),
        Un::Acosh => map(x, y, |v| v.acosh()),
        Un::Atanh => map(x, y, |v| v.atanh()),
        Un::Softsign => map(x, y, |v| v / (one + v.abs())),
        Un::Softplus => map(x, y, softplus),
        Un::Mish => map(x, y, |v| v * softplus(v).tanh()),
        Un::HardSwish => {
            let (a, b) = (R::c(1.0 / 6.0), R::c(0.5));
            map(x, y, move |v| {
                let t = a * v + b;
                let t = if t < zero { zero } else { t };
                v * if t > one { one } else { t }
            })
        }
        Un::LeakyRelu(a) => {
            let a = R::c(a as f64);
            map(x, y, move |v| if v < zero { v * a } else { v })
        }
        Un::Elu(a) => {
            let a = R::c(a as f64);
            map(x, y, move |v| if v < zero { a * v.exp_m1() } else { v })
        }
        Un::Selu { alpha, gamma } => {
            let (a, g) = (R::c(alpha as f64), R::c(gamma as f64));
            map(x, y, move |v| if v > zero { g * v } else { g * (a * v.exp() - a) })
        }
        Un::Swish(a) => {
            let a = R::c(a as f64);
            map(x, y, move |v| v * (a * v).sigmoid())
        }
        Un::Celu(a) => {
            let a = R::c(a as f64);
            map(x, y, move |v| if v > zero { v } else { a * (v / a).exp_m1() })
        }
        Un::HardSigmoid { alpha, beta } => {
            let (a, b) = (R::c(alpha as f64), R::c(beta as f64));
            map(x, y, move |v| {
                let t = a * v + b;
                let t = if t < zero { zero } else { t };
                if t > one {
                    one
                } else {
                    t
                }
            })
        }
        Un::ThresholdedRelu(a) => {
            let a = R::c(a as f64);
            map(x, y, move |v| if v > a { v } else { zero })
        }
        Un::Gelu { tanh: false } => map(x, y, |v| v.gelu_erf()),
        Un::Gelu { tanh: true } => map(x, y, |v| v.gelu_tanh()),
        Un::Shrink { bias, lambd } => {
            let (b, l) = (R::c(bias as f64), R::c(lambd as f64));
            map(x, y, move |v| {
                if v < -l {
                    v + b
                } else if v > l {
                    v - b
                } else {
                    zero
                }
            })
        }
        Un::Not | Un::BitwiseNot | Un::IsNaN | Un::IsInf { .. } => map(x, y, |v| v),
    }
}

/// Clip: bounds are attributes before opset 11, optional inputs from 11.
fn build_clip(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let attrs = if ctx.opset < 11 { Some((node.attr_float("min")?, node.attr_float("max")?)) } else { None };
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let dt = x.dtype();
        let (lo, hi) = match attrs {
            Some((lo, hi)) => (lo.map(|v| v as f64), hi.map(|v| v as f64)),
            None => (bound(&node, opt(inputs, 1), "min")?, bound(&node, opt(inputs, 2), "max")?),
        };
        let mut out = rc.alloc(dt, x.shape())?;
        with_numeric!(
            dt,
            T,
            {
                // Bounds given in x's own type are used as is (exact for i64).
                let exact = |t: Option<&Tensor>| -> Result<Option<T>> {
                    Ok(match t {
                        Some(t) if t.dtype() == dt && t.numel() == 1 => Some(t.as_slice::<T>()?[0]),
                        _ => None,
                    })
                };
                let (elo, ehi) =
                    if attrs.is_none() { (exact(opt(inputs, 1))?, exact(opt(inputs, 2))?) } else { (None, None) };
                let lo = elo.or(lo.map(T::from_f64)).unwrap_or(T::lowest());
                let hi = ehi.or(hi.map(T::from_f64)).unwrap_or(T::highest());
                map(x.as_slice::<T>()?, out.as_mut_slice::<T>()?, move |v| {
                    let t = if v < lo { lo } else { v };
                    if t > hi {
                        hi
                    } else {
                        t
                    }
                });
            },
            return Err(bad_dtype(&node, dt))
        );
        Ok(vec![out])
    }))
}

/// A Clip bound input: absent or empty means unbounded, otherwise one value.
fn bound(node: &Node, t: Option<&Tensor>, name: &str) -> Result<Option<f64>> {
    match t {
        None => Ok(None),
        Some(t) if t.numel() == 0 => Ok(None),
        Some(t) if t.numel() == 1 => {
            if t.dtype() == DType::Bool {
                return Err(bad_dtype(node, t.dtype()));
            }
            Ok(Some(t.to_f64_vec()[0]))
        }
        Some(t) => Err(Error::node(node, format!("'{name}' must be a scalar, got shape {:?}", t.shape()))),
    }
}
