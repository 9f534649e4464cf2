//! Broadcasting binary operators (arithmetic, Pow, Mod, comparisons, logic,
//! bitwise, PRelu), the variadic ones (Max, Min, Sum, Mean) and Where.

use tessera_core::{DType, Error, Node, Result, Tensor};

use super::broadcast::{binary, Plan};
use super::scalar::{bad_dtype, map, with_all, with_float, with_int, with_numeric, IntOps, Scalar};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{broadcast_shapes, req};

#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Mod { fmod: bool },
    Pow,
    PRelu,
    Max,
    Min,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
    BitAnd,
    BitOr,
    BitXor,
    ShiftLeft,
    ShiftRight,
}

pub(super) fn register(r: &mut OpRegistry) {
    r.add("Add", |n, c| build(n, c, Bin::Add));
    r.add("Sub", |n, c| build(n, c, Bin::Sub));
    r.add("Mul", |n, c| build(n, c, Bin::Mul));
    r.add("Div", |n, c| build(n, c, Bin::Div));
    r.add("Pow", |n, c| build(n, c, Bin::Pow));
    r.add("PRelu", |n, c| build(n, c, Bin::PRelu));
    r.add("Mod", |n, c| {
        let fmod = match n.attr_int_or("fmod", 0)? {
            0 => false,
            1 => true,
            v => return Err(Error::node(n, format!("attribute 'fmod' must be 0 or 1, got {v}"))),
        };
        build(n, c, Bin::Mod { fmod })
    });
    r.add("Equal", |n, c| build(n, c, Bin::Equal));
    r.add("Less", |n, c| build(n, c, Bin::Less));
    r.add("LessOrEqual", |n, c| build(n, c, Bin::LessOrEqual));
    r.add("Greater", |n, c| build(n, c, Bin::Greater));
    r.add("GreaterOrEqual", |n, c| build(n, c, Bin::GreaterOrEqual));
    r.add("And", |n, c| build(n, c, Bin::And));
    r.add("Or", |n, c| build(n, c, Bin::Or));
    r.add("Xor", |n, c| build(n, c, Bin::Xor));
    r.add("BitwiseAnd", |n, c| build(n, c, Bin::BitAnd));
    r.add("BitwiseOr", |n, c| build(n, c, Bin::BitOr));
    r.add("BitwiseXor", |n, c| build(n, c, Bin::BitXor));
    r.add("BitShift", |n, c| {
        let op = match n.attr_string("direction")?.as_deref() {
            Some("LEFT") => Bin::ShiftLeft,
            Some("RIGHT") => Bin::ShiftRight,
            Some(d) => return Err(Error::node(n, format!("attribute 'direction' must be LEFT or RIGHT, got '{d}'"))),
            None => return Err(Error::node(n, "missing attribute 'direction'")),
        };
        build(n, c, op)
    });
    r.add("Max", |n, c| build_variadic(n, c, Bin::Max));
    r.add("Min", |n, c| build_variadic(n, c, Bin::Min));
    r.add("Sum", |n, c| build_variadic(n, c, Bin::Add));
    r.add("Mean", |n, c| build_variadic(n, c, Bin::Div));
    r.add("Where", build_where);
}

/// Opset < 7 broadcasting: with `broadcast=1`, B is aligned with A starting
/// at `axis` (or at the trailing dimensions when `axis` is absent).
#[derive(Copy, Clone, Debug)]
struct Legacy {
    axis: Option<i64>,
}

fn legacy(node: &Node, ctx: &BuildCtx) -> Result<Option<Legacy>> {
    if ctx.opset >= 7 || node.attr_int_or("broadcast", 0)? == 0 {
        return Ok(None);
    }
    Ok(Some(Legacy { axis: node.attr_int("axis")? }))
}

fn legacy_b_shape(node: &Node, leg: Option<Legacy>, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let Some(Legacy { axis: Some(axis) }) = leg else {
        return Ok(b.to_vec());
    };
    let ra = a.len() as i64;
    let ax = if axis < 0 { axis + ra } else { axis };
    if ax < 0 || ax + b.len() as i64 > ra {
        return Err(Error::node(node, format!("legacy broadcast of {b:?} onto {a:?} at axis {axis} is out of range")));
    }
    let mut s = vec![1; a.len()];
    s[ax as usize..ax as usize + b.len()].copy_from_slice(b);
    Ok(s)
}

fn build(node: &Node, ctx: &BuildCtx, op: Bin) -> Result<Box<dyn CpuOp>> {
    let leg = legacy(node, ctx)?;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let a = req(&node, inputs, 0)?;
        let b = req(&node, inputs, 1)?;
        let bs = legacy_b_shape(&node, leg, a.shape(), b.shape())?;
        Ok(vec![run_binary(&node, op, a, b, &bs, rc)?])
    }))
}

/// `op(a, b)` with broadcasting; `b_shape` is b's shape as broadcast (it
/// differs from `b.shape()` only for legacy broadcasting).
pub(crate) fn run_binary(
    node: &Node,
    op: Bin,
    a: &Tensor,
    b: &Tensor,
    b_shape: &[usize],
    ctx: &mut RunCtx,
) -> Result<Tensor> {
    let dt = a.dtype();
    if op == Bin::Pow {
        return pow(node, a, b, b_shape, ctx);
    }
    if b.dtype() != dt {
        return Err(Error::node(node, format!("input types differ: {} and {}", dt, b.dtype())));
    }
    match op {
        Bin::Add | Bin::Sub | Bin::Mul | Bin::Div | Bin::Mod { .. } | Bin::PRelu | Bin::Max | Bin::Min => {
            with_numeric!(dt, T, { arith::<T>(node, op, a, b, b_shape, ctx) }, Err(bad_dtype(node, dt)))
        }
        Bin::Equal | Bin::Less | Bin::LessOrEqual | Bin::Greater | Bin::GreaterOrEqual => {
            with_all!(dt, T, { compare::<T>(node, op, a, b, b_shape, ctx) }, Err(bad_dtype(node, dt)))
        }
        Bin::And | Bin::Or | Bin::Xor => {
            if dt != DType::Bool {
                return Err(bad_dtype(node, dt));
            }
            let bd = DType::Bool;
            match op {
                Bin::And => binary::<u8, u8, u8>(node, a, b, b_shape, bd, ctx, |x, y| ((x != 0) & (y != 0)) as u8),
                Bin::Or => binary::<u8, u8, u8>(node, a, b, b_shape, bd, ctx, |x, y| ((x != 0) | (y != 0)) as u8),
                _ => binary::<u8, u8, u8>(node, a, b, b_shape, bd, ctx, |x, y| ((x != 0) ^ (y != 0)) as u8),
            }
        }
        _ => with_int!(dt, T, { bitwise::<T>(node, op, a, b, b_shape, ctx) }, Err(bad_dtype(node, dt))),
    }
}

fn arith<T: Scalar>(node: &Node, op: Bin, a: &Tensor, b: &Tensor, bs: &[usize], ctx: &mut RunCtx) -> Result<Tensor> {
    let dt = T::DTYPE;
    match op {
        Bin::Add => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.add(y)),
        Bin::Sub => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.sub(y)),
        Bin::Mul => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.mul(y)),
        Bin::Div => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.div(y)),
        Bin::Max => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.max_nan(y)),
        Bin::Min => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.min_nan(y)),
        Bin::Mod { fmod: true } => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.rem(y, true)),
        Bin::Mod { fmod: false } => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.rem(y, false)),
        Bin::PRelu => {
            let out = broadcast_shapes(node, &[a.shape(), bs])?;
            if out != a.shape() {
                return Err(Error::node(
                    node,
                    format!("slope of shape {bs:?} does not broadcast to the input shape {:?}", a.shape()),
                ));
            }
            let zero = T::zero();
            binary::<T, T, T>(node, a, b, bs, dt, ctx, move |x, s| if x < zero { x.mul(s) } else { x })
        }
        _ => Err(bad_dtype(node, dt)),
    }
}

fn compare<T: Scalar>(node: &Node, op: Bin, a: &Tensor, b: &Tensor, bs: &[usize], ctx: &mut RunCtx) -> Result<Tensor> {
    let bd = DType::Bool;
    match op {
        Bin::Equal => binary::<T, T, u8>(node, a, b, bs, bd, ctx, |x, y| (x == y) as u8),
        Bin::Less => binary::<T, T, u8>(node, a, b, bs, bd, ctx, |x, y| (x < y) as u8),
        Bin::LessOrEqual => binary::<T, T, u8>(node, a, b, bs, bd, ctx, |x, y| (x <= y) as u8),
        Bin::Greater => binary::<T, T, u8>(node, a, b, bs, bd, ctx, |x, y| (x > y) as u8),
        _ => binary::<T, T, u8>(node, a, b, bs, bd, ctx, |x, y| (x >= y) as u8),
    }
}

fn bitwise<T: IntOps>(node: &Node, op: Bin, a: &Tensor, b: &Tensor, bs: &[usize], ctx: &mut RunCtx) -> Result<Tensor> {
    let dt = T::DTYPE;
    match op {
        Bin::BitAnd => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.bit_and(y)),
        Bin::BitOr => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.bit_or(y)),
        Bin::BitXor => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.bit_xor(y)),
        Bin::ShiftLeft => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.shl_full(y)),
        Bin::ShiftRight => binary::<T, T, T>(node, a, b, bs, dt, ctx, |x, y| x.shr_full(y)),
        _ => Err(bad_dtype(node, dt)),
    }
}

/// Integer power: exact (wrapping) for non-negative integral exponents,
/// otherwise through f64 and truncated like numpy's `astype`.
#[inline(always)]
fn int_pow<T: IntOps>(x: T, e: f64) -> T {
    if e >= 0.0 && e <= u32::MAX as f64 && e.fract() == 0.0 {
        x.pow_wrapping(e as u32)
    } else {
        T::from_f64(x.to_f64().powf(e))
    }
}

fn pow(node: &Node, a: &Tensor, b: &Tensor, bs: &[usize], ctx: &mut RunCtx) -> Result<Tensor> {
    let (da, db) = (a.dtype(), b.dtype());
    if !db.is_float() && !db.is_int() {
        return Err(bad_dtype(node, db));
    }
    match (da, db) {
        (DType::F32, DType::F32) => {
            if b.numel() == 1 {
                let e = b.as_slice::<f32>()?[0];
                // Common exponents without powf (same results).
                return if e == 1.0 {
                    binary::<f32, f32, f32>(node, a, b, bs, da, ctx, |x, _| x)
                } else if e == 2.0 {
                    binary::<f32, f32, f32>(node, a, b, bs, da, ctx, |x, _| x * x)
                } else if e == 3.0 {
                    binary::<f32, f32, f32>(node, a, b, bs, da, ctx, |x, _| x * x * x)
                } else if e == -1.0 {
                    binary::<f32, f32, f32>(node, a, b, bs, da, ctx, |x, _| 1.0 / x)
                } else if e == 0.5 {
                    binary::<f32, f32, f32>(node, a, b, bs, da, ctx, |x, _| {
                        if x == f32::NEG_INFINITY {
                            f32::INFINITY
                        } else {
                            x.sqrt() + 0.0
                        }
                    })
                } else {
                    binary::<f32, f32, f32>(node, a, b, bs, da, ctx, f32::powf)
                };
            }
            binary::<f32, f32, f32>(node, a, b, bs, da, ctx, f32::powf)
        }
        (DType::F64, DType::F64) => binary::<f64, f64, f64>(node, a, b, bs, da, ctx, f64::powf),
        _ => {
            let e = if db == DType::F64 { b.clone() } else { Tensor::from_vec(b.shape(), b.to_f64_vec())? };
            if da.is_float() {
                with_float!(
                    da,
                    T,
                    { binary::<T, f64, T>(node, a, &e, bs, da, ctx, |x, y| T::from_f64(x.to_f64().powf(y))) },
                    Err(bad_dtype(node, da))
                )
            } else {
                with_int!(
                    da,
                    T,
                    { binary::<T, f64, T>(node, a, &e, bs, da, ctx, int_pow::<T>) },
                    Err(bad_dtype(node, da))
                )
            }
        }
    }
}

/// Max, Min, Sum and Mean (`Bin::Div` stands for Mean: sum, then divide).
fn build_variadic(node: &Node, _ctx: &BuildCtx, op: Bin) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        if inputs.is_empty() {
            return Err(Error::node(&node, "needs at least one input"));
        }
        let xs: Vec<&Tensor> = (0..inputs.len()).map(|i| req(&node, inputs, i)).collect::<Result<_>>()?;
        let dt = xs[0].dtype();
        if let Some(x) = xs.iter().find(|x| x.dtype() != dt) {
            return Err(Error::node(&node, format!("input types differ: {} and {}", dt, x.dtype())));
        }
        let step = if op == Bin::Div { Bin::Add } else { op };
        let mut acc = xs[0].clone();
        for x in &xs[1..] {
            let next = run_binary(&node, step, &acc, x, x.shape(), rc)?;
            rc.release(std::mem::replace(&mut acc, next));
        }
        if op == Bin::Div && xs.len() > 1 {
            let n = xs.len() as f64;
            let mut out = rc.alloc(dt, acc.shape())?;
            with_numeric!(
                dt,
                T,
                {
                    let d = T::from_f64(n);
                    map(acc.as_slice::<T>()?, out.as_mut_slice::<T>()?, |v| v.div(d));
                },
                return Err(bad_dtype(&node, dt))
            );
            rc.release(acc);
            acc = out;
        }
        Ok(vec![acc])
    }))
}

fn build_where(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let c = req(&node, inputs, 0)?;
        let x = req(&node, inputs, 1)?;
        let y = req(&node, inputs, 2)?;
        if c.dtype() != DType::Bool {
            return Err(Error::node(&node, format!("condition must be bool, got {}", c.dtype())));
        }
        if x.dtype() != y.dtype() {
            return Err(Error::node(&node, format!("input types differ: {} and {}", x.dtype(), y.dtype())));
        }
        let plan = Plan::new(&node, [c.shape(), x.shape(), y.shape()])?;
        let mut out = rc.alloc(x.dtype(), &plan.out_shape)?;
        let cs = c.as_slice::<u8>()?;
        with_all!(
            x.dtype(),
            T,
            { where_into::<T>(&plan, cs, x.as_slice::<T>()?, y.as_slice::<T>()?, out.as_mut_slice::<T>()?) },
            return Err(bad_dtype(&node, x.dtype()))
        );
        Ok(vec![out])
    }))
}

fn where_into<T: Copy + Send + Sync>(plan: &Plan<3>, c: &[u8], x: &[T], y: &[T], out: &mut [T]) {
    let [sc, sx, sy] = plan.inner_strides;
    plan.run(out, |o, [oc, ox, oy]| {
        let n = o.len();
        if sc == 1 && sx == 1 && sy == 1 {
            for (((r, &k), &a), &b) in o.iter_mut().zip(&c[oc..oc + n]).zip(&x[ox..ox + n]).zip(&y[oy..oy + n]) {
                *r = if k != 0 { a } else { b };
            }
        } else if sc == 1 && sx == 0 && sy == 0 {
            let (a, b) = (x[ox], y[oy]);
            for (r, &k) in o.iter_mut().zip(&c[oc..oc + n]) {
                *r = if k != 0 { a } else { b };
            }
        } else {
            for (i, r) in o.iter_mut().enumerate() {
                *r = if c[oc + i * sc] != 0 { x[ox + i * sx] } else { y[oy + i * sy] };
            }
        }
    });
}
