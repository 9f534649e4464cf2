//! TopK: the k largest (or smallest) values along an axis and their i64
//! indices, sorted, ties broken by the lower index. NaN sorts above every
//! number. `k` is an attribute before opset 10 and an input from 10.

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};

use super::super::elementwise::scalar::{bad_dtype, with_numeric, Scalar, PAR_MIN};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{norm_axis, req};

pub(super) fn register(r: &mut OpRegistry) {
    r.add("TopK", build);
}

fn build(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let k_attr = if ctx.opset < 10 {
        Some(node.attr_int("k")?.ok_or_else(|| Error::node(node, "missing attribute 'k'"))?)
    } else {
        None
    };
    let axis = node.attr_int_or("axis", -1)?;
    let largest = node.attr_int_or("largest", 1)? != 0;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let k = match k_attr {
            Some(k) => k,
            None => {
                let kt = req(&node, inputs, 1)?;
                if kt.numel() != 1 {
                    return Err(Error::node(&node, format!("k must hold one value, got shape {:?}", kt.shape())));
                }
                kt.to_i64_vec().map_err(|e| Error::node(&node, format!("k: {e}")))?[0]
            }
        };
        let (v, i) = topk(&node, x, k, axis, largest, rc)?;
        Ok(vec![v, i])
    }))
}

pub(crate) fn topk(
    node: &Node,
    x: &Tensor,
    k: i64,
    axis: i64,
    largest: bool,
    ctx: &mut RunCtx,
) -> Result<(Tensor, Tensor)> {
    let shape = x.shape();
    if shape.is_empty() {
        return Err(Error::node(node, "input must have rank >= 1"));
    }
    let ax = norm_axis(node, axis, shape.len())?;
    let a = shape[ax];
    if k < 0 || k as u64 > a as u64 {
        return Err(Error::node(node, format!("k = {k} is out of range for an axis of length {a}")));
    }
    let k = k as usize;
    let inner: usize = shape[ax + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape[ax] = k;
    let dt = x.dtype();
    let mut vals = ctx.alloc(dt, &out_shape)?;
    let mut idx = ctx.alloc(DType::I64, &out_shape)?;
    if vals.numel() == 0 {
        return Ok((vals, idx));
    }
    with_numeric!(
        dt,
        T,
        { kernel::<T>(x.as_slice()?, vals.as_mut_slice()?, idx.as_mut_slice()?, a, inner, k, largest) },
        return Err(bad_dtype(node, dt))
    );
    Ok((vals, idx))
}

/// Sorts the first k of `v` by the requested order (index breaks ties).
fn select<T: Scalar>(v: &mut [(T, i64)], k: usize, largest: bool) {
    let cmp = |p: &(T, i64), q: &(T, i64)| {
        let by_val = if largest { q.0.total_cmp_nan_max(&p.0) } else { p.0.total_cmp_nan_max(&q.0) };
        by_val.then(p.1.cmp(&q.1))
    };
    if k < v.len() {
        v.select_nth_unstable_by(k - 1, cmp);
    }
    v[..k].sort_unstable_by(cmp);
}

fn kernel<T: Scalar>(x: &[T], vals: &mut [T], idx: &mut [i64], a: usize, inner: usize, k: usize, largest: bool) {
    let bl = a * inner;
    if inner == 1 {
        let row = |xr: &[T], vr: &mut [T], ir: &mut [i64]| {
            let mut v: Vec<(T, i64)> = xr.iter().enumerate().map(|(i, &t)| (t, i as i64)).collect();
            select(&mut v, k, largest);
            for ((o, oi), &(t, i)) in vr.iter_mut().zip(ir.iter_mut()).zip(&v[..k]) {
                *o = t;
                *oi = i;
            }
        };
        if x.len() >= PAR_MIN {
            vals.par_chunks_mut(k)
                .zip(idx.par_chunks_mut(k))
                .zip(x.par_chunks(bl))
                .for_each(|((vr, ir), xr)| row(xr, vr, ir));
        } else {
            for ((vr, ir), xr) in vals.chunks_mut(k).zip(idx.chunks_mut(k)).zip(x.chunks(bl)) {
                row(xr, vr, ir);
            }
        }
        return;
    }
    let mut v: Vec<(T, i64)> = Vec::with_capacity(a);
    for (o, xb) in x.chunks(bl).enumerate() {
        for j in 0..inner {
            v.clear();
            v.extend((0..a).map(|r| (xb[r * inner + j], r as i64)));
            select(&mut v, k, largest);
            for (r, &(t, i)) in v[..k].iter().enumerate() {
                let p = (o * k + r) * inner + j;
                vals[p] = t;
                idx[p] = i;
            }
        }
    }
}
