//! Softmax, LogSoftmax and Hardmax.
//!
//! Before opset 13 the input is coerced to 2-D at `axis` (default 1) and the
//! operator works on the flattened rows; from 13 it works along `axis`
//! (default -1). Rows (the last axis) are the fast path: for f32 one tight
//! pass each for max, exp, sum and scale, in parallel over rows. Other axes
//! work column-wise on `[outer, axis, inner]` blocks.

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::elementwise as k;

use super::super::elementwise::scalar::{bad_dtype, store_f32, to_f32_vec, Real, Scalar, PAR_MIN};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::req;

#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum SKind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

pub(super) fn register(r: &mut OpRegistry) {
    r.add("Softmax", |n, c| build(n, c, SKind::Softmax));
    r.add("LogSoftmax", |n, c| build(n, c, SKind::LogSoftmax));
    r.add("Hardmax", |n, c| build(n, c, SKind::Hardmax));
}

fn build(node: &Node, ctx: &BuildCtx, kind: SKind) -> Result<Box<dyn CpuOp>> {
    let legacy = ctx.opset < 13;
    let axis = node.attr_int_or("axis", if legacy { 1 } else { -1 })?;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        Ok(vec![softmax(&node, kind, x, axis, legacy, rc)?])
    }))
}

/// `(outer, axis length, inner)` of the operator's view of `shape`.
fn layout(node: &Node, shape: &[usize], axis: i64, legacy: bool) -> Result<(usize, usize, usize)> {
    let r = shape.len() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if legacy {
        // Coerced to 2-D [prod(shape[..a]), prod(shape[a..])]; a == rank is allowed.
        if a < 0 || a > r {
            return Err(Error::node(node, format!("axis {axis} out of range for rank {r}")));
        }
        let a = a as usize;
        return Ok((shape[..a].iter().product(), shape[a..].iter().product(), 1));
    }
    if r == 0 && (axis == 0 || axis == -1) {
        return Ok((1, 1, 1));
    }
    if a < 0 || a >= r {
        return Err(Error::node(node, format!("axis {axis} out of range for rank {r}")));
    }
    let a = a as usize;
    Ok((shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product()))
}

pub(crate) fn softmax(
    node: &Node,
    kind: SKind,
    x: &Tensor,
    axis: i64,
    legacy: bool,
    ctx: &mut RunCtx,
) -> Result<Tensor> {
    let dt = x.dtype();
    let (_, a, inner) = layout(node, x.shape(), axis, legacy)?;
    let mut out = ctx.alloc(dt, x.shape())?;
    if x.numel() == 0 {
        return Ok(out);
    }
    match dt {
        DType::F32 => run::<f32>(kind, x.as_slice()?, out.as_mut_slice()?, a, inner),
        DType::F64 => run::<f64>(kind, x.as_slice()?, out.as_mut_slice()?, a, inner),
        DType::F16 | DType::BF16 => {
            let v = to_f32_vec(x)?;
            let mut y = vec![0f32; v.len()];
            run::<f32>(kind, &v, &mut y, a, inner);
            store_f32(&mut out, &y)?;
        }
        _ => return Err(bad_dtype(node, dt)),
    }
    Ok(out)
}

trait RowKernel: Real {
    fn softmax_row(x: &[Self], y: &mut [Self]);
    fn log_softmax_row(x: &[Self], y: &mut [Self]);
}

impl RowKernel for f32 {
    fn softmax_row(x: &[f32], y: &mut [f32]) {
        k::softmax_row(x, y)
    }
    fn log_softmax_row(x: &[f32], y: &mut [f32]) {
        k::log_softmax_row(x, y)
    }
}

impl RowKernel for f64 {
    fn softmax_row(x: &[f64], y: &mut [f64]) {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        let mut s = 0.0;
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (v - m).exp();
            s += *o;
        }
        let inv = 1.0 / s;
        for o in y.iter_mut() {
            *o *= inv;
        }
    }
    fn log_softmax_row(x: &[f64], y: &mut [f64]) {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        let s: f64 = x.iter().map(|&v| (v - m).exp()).sum();
        let shift = m + s.ln();
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v - shift;
        }
    }
}

/// Index of the first maximum (a NaN counts as the maximum).
fn argmax_first<R: Scalar>(it: impl Iterator<Item = R>) -> usize {
    let mut best = R::lowest();
    let mut bi = 0;
    for (i, v) in it.enumerate() {
        if i == 0 || (!best.is_nan() && (v > best || v.is_nan())) {
            best = v;
            bi = i;
        }
    }
    bi
}

fn run<R: RowKernel>(kind: SKind, x: &[R], y: &mut [R], a: usize, inner: usize) {
    let block = a * inner;
    if block == 0 {
        return;
    }
    let one = |xb: &[R], yb: &mut [R]| {
        if inner == 1 {
            match kind {
                SKind::Softmax => R::softmax_row(xb, yb),
                SKind::LogSoftmax => R::log_softmax_row(xb, yb),
                SKind::Hardmax => {
                    yb.fill(R::zero());
                    yb[argmax_first(xb.iter().copied())] = R::one();
                }
            }
        } else {
            columns(kind, xb, yb, a, inner);
        }
    };
    if x.len() >= PAR_MIN {
        let per = (PAR_MIN / 4 / block).max(1) * block;
        y.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(yc, xc)| {
            for (yb, xb) in yc.chunks_mut(block).zip(xc.chunks(block)) {
                one(xb, yb);
            }
        });
    } else {
        for (yb, xb) in y.chunks_mut(block).zip(x.chunks(block)) {
            one(xb, yb);
        }
    }
}

/// One `[a, inner]` block, reducing over `a` for every column at once.
fn columns<R: Real>(kind: SKind, x: &[R], y: &mut [R], a: usize, inner: usize) {
    if kind == SKind::Hardmax {
        y.fill(R::zero());
        for j in 0..inner {
            let i = argmax_first((0..a).map(|r| x[r * inner + j]));
            y[i * inner + j] = R::one();
        }
        return;
    }
    let mut m = vec![R::lowest(); inner];
    for xr in x.chunks(inner) {
        for (mj, &v) in m.iter_mut().zip(xr) {
            if v > *mj {
                *mj = v;
            }
        }
    }
    let mut s = vec![R::zero(); inner];
    for (yr, xr) in y.chunks_mut(inner).zip(x.chunks(inner)) {
        for (((o, &v), &mj), sj) in yr.iter_mut().zip(xr).zip(&m).zip(s.iter_mut()) {
            *o = (v - mj).exp();
            *sj = *sj + *o;
        }
    }
    match kind {
        SKind::Softmax => {
            let inv: Vec<R> = s.iter().map(|&v| R::one() / v).collect();
            for yr in y.chunks_mut(inner) {
                for (o, &iv) in yr.iter_mut().zip(&inv) {
                    *o = *o * iv;
                }
            }
        }
        _ => {
            let shift: Vec<R> = s.iter().zip(&m).map(|(&v, &mj)| mj + v.ln()).collect();
            for (yr, xr) in y.chunks_mut(inner).zip(x.chunks(inner)) {
                for ((o, &v), &sh) in yr.iter_mut().zip(xr).zip(&shift) {
                    *o = v - sh;
                }
            }
        }
    }
}
