//! CumSum and CumProd (inclusive or exclusive, forward or reverse) along an
//! axis given as a scalar input.

use tessera_core::{DType, Error, Node, Result, Tensor};

use super::super::elementwise::scalar::{bad_dtype, store_f32, widen_to_f32, with_numeric, Scalar};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{norm_axis, req};

pub(super) fn register(r: &mut OpRegistry) {
    r.add("CumSum", build);
    r.add("CumProd", build);
}

fn build(node: &Node, _ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let product = node.op_type == "CumProd";
    let exclusive = node.attr_int_or("exclusive", 0)? != 0;
    let reverse = node.attr_int_or("reverse", 0)? != 0;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let axis_t = req(&node, inputs, 1)?;
        if axis_t.numel() != 1 {
            return Err(Error::node(&node, format!("axis must hold one value, got shape {:?}", axis_t.shape())));
        }
        let axis = axis_t.to_i64_vec().map_err(|e| Error::node(&node, format!("axis: {e}")))?[0];
        Ok(vec![scan(&node, x, axis, exclusive, reverse, product, rc)?])
    }))
}

/// The running sum (or `product`) of `x` along `axis`.
pub(crate) fn scan(
    node: &Node,
    x: &Tensor,
    axis: i64,
    exclusive: bool,
    reverse: bool,
    product: bool,
    ctx: &mut RunCtx,
) -> Result<Tensor> {
    let shape = x.shape();
    if shape.is_empty() {
        return Err(Error::node(node, "input must have rank >= 1"));
    }
    let ax = norm_axis(node, axis, shape.len())?;
    let a = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    let dt = x.dtype();
    let mut out = ctx.alloc(dt, shape)?;
    if x.numel() == 0 {
        return Ok(out);
    }
    match dt {
        DType::F16 | DType::BF16 => {
            let xf = widen_to_f32(x)?;
            let mut y = vec![0f32; x.numel()];
            kernel::<f32>(xf.as_slice()?, &mut y, a, inner, exclusive, reverse, product);
            store_f32(&mut out, &y)?;
        }
        _ => with_numeric!(
            dt,
            T,
            { kernel::<T>(x.as_slice()?, out.as_mut_slice()?, a, inner, exclusive, reverse, product) },
            return Err(bad_dtype(node, dt))
        ),
    }
    Ok(out)
}

fn kernel<T: Scalar>(x: &[T], y: &mut [T], a: usize, inner: usize, exclusive: bool, reverse: bool, product: bool) {
    let bl = a * inner;
    let (start, step): (T, fn(T, T) -> T) = if product { (T::one(), T::mul) } else { (T::zero(), T::add) };
    let mut acc = vec![start; inner];
    for (xb, yb) in x.chunks(bl).zip(y.chunks_mut(bl)) {
        acc.fill(start);
        for s in 0..a {
            let r = if reverse { a - 1 - s } else { s };
            let xr = &xb[r * inner..(r + 1) * inner];
            let yr = &mut yb[r * inner..(r + 1) * inner];
            for ((o, c), &v) in yr.iter_mut().zip(acc.iter_mut()).zip(xr) {
                if exclusive {
                    *o = *c;
                    *c = step(*c, v);
                } else {
                    *c = step(*c, v);
                    *o = *c;
                }
            }
        }
    }
}
