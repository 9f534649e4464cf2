//! ArgMax and ArgMin (i64 indices; first or last occurrence of ties; a NaN
//! counts as both the largest and the smallest value, as in numpy).

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};

use super::super::elementwise::scalar::{bad_dtype, widen_to_f32, with_numeric, Scalar, PAR_MIN};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{norm_axis, req};

pub(super) fn register(r: &mut OpRegistry) {
    r.add("ArgMax", |n, c| build(n, c, true));
    r.add("ArgMin", |n, c| build(n, c, false));
}

fn build(node: &Node, _ctx: &BuildCtx, is_max: bool) -> Result<Box<dyn CpuOp>> {
    let axis = node.attr_int_or("axis", 0)?;
    let keepdims = node.attr_int_or("keepdims", 1)? != 0;
    let last = node.attr_int_or("select_last_index", 0)? != 0;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        Ok(vec![arg_reduce(&node, x, axis, keepdims, is_max, last, rc)?])
    }))
}

/// Whether `v` replaces the current best `best`.
#[inline(always)]
fn better<T: Scalar>(v: T, best: T, is_max: bool, last: bool) -> bool {
    if best.is_nan() {
        return last && v.is_nan();
    }
    if v.is_nan() {
        return true;
    }
    if is_max {
        v > best || (last && v == best)
    } else {
        v < best || (last && v == best)
    }
}

pub(crate) fn arg_reduce(
    node: &Node,
    x: &Tensor,
    axis: i64,
    keepdims: bool,
    is_max: bool,
    last: bool,
    ctx: &mut RunCtx,
) -> Result<Tensor> {
    let shape = x.shape();
    if shape.is_empty() {
        return Err(Error::node(node, "input must have rank >= 1"));
    }
    let ax = norm_axis(node, axis, shape.len())?;
    let a = shape[ax];
    let outer: usize = shape[..ax].iter().product();
    let inner: usize = shape[ax + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    if keepdims {
        out_shape[ax] = 1;
    } else {
        out_shape.remove(ax);
    }
    let mut out = ctx.alloc(DType::I64, &out_shape)?;
    if outer * inner == 0 {
        return Ok(out);
    }
    if a == 0 {
        return Err(Error::node(node, format!("cannot take {} over axis {axis} of length 0", node.op_type)));
    }
    let o = out.as_mut_slice::<i64>()?;
    let dt = x.dtype();
    match dt {
        DType::F16 | DType::BF16 => {
            let xf = widen_to_f32(x)?;
            kernel::<f32>(xf.as_slice()?, o, a, inner, is_max, last);
        }
        _ => with_numeric!(dt, T, { kernel::<T>(x.as_slice()?, o, a, inner, is_max, last) }, {
            return Err(bad_dtype(node, dt));
        }),
    }
    Ok(out)
}

fn kernel<T: Scalar>(x: &[T], out: &mut [i64], a: usize, inner: usize, is_max: bool, last: bool) {
    // One `[a, inner]` block of x gives `inner` outputs.
    let block = |xb: &[T], ob: &mut [i64]| {
        if inner == 1 {
            let mut best = xb[0];
            let mut bi = 0;
            for (i, &v) in xb.iter().enumerate().skip(1) {
                if better(v, best, is_max, last) {
                    best = v;
                    bi = i;
                }
            }
            ob[0] = bi as i64;
        } else {
            let mut best = xb[..inner].to_vec();
            ob.fill(0);
            for (r, row) in xb.chunks(inner).enumerate().skip(1) {
                for ((b, o), &v) in best.iter_mut().zip(ob.iter_mut()).zip(row) {
                    if better(v, *b, is_max, last) {
                        *b = v;
                        *o = r as i64;
                    }
                }
            }
        }
    };
    let bl = a * inner;
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(inner).zip(x.par_chunks(bl)).for_each(|(ob, xb)| block(xb, ob));
    } else {
        for (ob, xb) in out.chunks_mut(inner).zip(x.chunks(bl)) {
            block(xb, ob);
        }
    }
}
