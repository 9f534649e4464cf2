//! Layout operators: Transpose, DepthToSpace, SpaceToDepth, Expand, Tile,
//! Slice, Pad, CenterCropPad, Concat, Split.

use tessera_core::{Error, Node, Result, Tensor};

use rayon::prelude::*;

use super::copy::{copy_axis_range, gather_copy, pad_constant, Src, PAR_BYTES};
use super::{axes_list, axis, boxed, dim, ints, numel, slim, strides};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{broadcast_shapes, opt, req};

pub(super) fn register(r: &mut OpRegistry) {
    r.add("Transpose", build_transpose);
    r.add("DepthToSpace", build_depth_to_space);
    r.add("SpaceToDepth", build_space_to_depth);
    r.add("Expand", build_expand);
    r.add("Tile", build_tile);
    r.add("Slice", build_slice);
    r.add("Pad", build_pad);
    r.add("CenterCropPad", build_center_crop_pad);
    r.add("Concat", build_concat);
    r.add("Split", build_split);
}

/// `transpose(x.reshape(view), perm)` reshaped to `out_shape`.
fn permute(
    node: &Node,
    x: &Tensor,
    view: &[usize],
    perm: &[usize],
    out_shape: &[usize],
    ctx: &mut RunCtx,
) -> Result<Tensor> {
    let st = strides(view);
    let shape: Vec<usize> = perm.iter().map(|&p| view[p]).collect();
    if numel(node, &shape)? != x.numel() || numel(node, out_shape)? != x.numel() {
        return Err(Error::node(node, format!("cannot view {:?} as {view:?}", x.shape())));
    }
    // A permutation that keeps the order of the non-unit axes is a reshape.
    let order: Vec<usize> = perm.iter().copied().filter(|&p| view[p] != 1).collect();
    if order.windows(2).all(|w| w[0] < w[1]) {
        return x.reshape(out_shape).map_err(|e| Error::node(node, e.to_string()));
    }
    let mut out = ctx.alloc(x.dtype(), out_shape)?;
    let axes = perm.iter().map(|&p| Src::step(st[p])).collect();
    gather_copy(out.bytes_mut(), x.bytes(), x.dtype().size(), &shape, axes)?;
    Ok(out)
}

fn build_transpose(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let perm_attr = node.attr_ints("perm")?;
    boxed(move |inputs, ctx| {
        let x = req(&n, inputs, 0)?;
        let r = x.rank();
        let perm: Vec<usize> = match &perm_attr {
            None => (0..r).rev().collect(),
            Some(p) => {
                if p.len() != r {
                    return Err(Error::node(&n, format!("perm {p:?} does not match the input rank {r}")));
                }
                let v = axes_list(&n, p, r)?;
                if p.iter().any(|&a| a < 0) {
                    return Err(Error::node(&n, format!("perm {p:?} has negative entries")));
                }
                v
            }
        };
        let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
        Ok(vec![permute(&n, x, x.shape(), &perm, &out_shape, ctx)?])
    })
}

fn mode_attr(node: &Node, default: &str) -> Result<bool> {
    match node.attr_string("mode")?.as_deref().unwrap_or(default) {
        "DCR" => Ok(true),
        "CRD" => Ok(false),
        m => Err(Error::node(node, format!("unknown mode '{m}' (expected DCR or CRD)"))),
    }
}

fn blocksize(node: &Node) -> Result<usize> {
    let b = node.attr_int("blocksize")?.ok_or_else(|| Error::node(node, "missing attribute 'blocksize'"))?;
    if b <= 0 || b > 1 << 20 {
        return Err(Error::node(node, format!("blocksize must be positive, got {b}")));
    }
    Ok(b as usize)
}

fn nchw(node: &Node, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(Error::node(node, format!("input must be 4-D (N, C, H, W), got shape {:?}", x.shape()))),
    }
}

fn build_depth_to_space(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let dcr = mode_attr(node, "DCR")?;
    let b = blocksize(node)?;
    boxed(move |inputs, ctx| {
        let x = req(&n, inputs, 0)?;
        let [bn, c, h, w] = nchw(&n, x)?;
        if c % (b * b) != 0 {
            return Err(Error::node(&n, format!("channels {c} are not divisible by blocksize^2 = {}", b * b)));
        }
        let cc = c / (b * b);
        let out_shape = [bn, cc, h * b, w * b];
        let y = if dcr {
            permute(&n, x, &[bn, b, b, cc, h, w], &[0, 3, 4, 1, 5, 2], &out_shape, ctx)?
        } else {
            permute(&n, x, &[bn, cc, b, b, h, w], &[0, 1, 4, 2, 5, 3], &out_shape, ctx)?
        };
        Ok(vec![y])
    })
}

fn build_space_to_depth(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let dcr = mode_attr(node, "DCR")?;
    let b = blocksize(node)?;
    boxed(move |inputs, ctx| {
        let x = req(&n, inputs, 0)?;
        let [bn, c, h, w] = nchw(&n, x)?;
        if h % b != 0 || w % b != 0 {
            return Err(Error::node(&n, format!("spatial size {h}x{w} is not divisible by blocksize {b}")));
        }
        let view = [bn, c, h / b, b, w / b, b];
        let out_shape = [bn, c * b * b, h / b, w / b];
        let perm: &[usize] = if dcr { &[0, 3, 5, 1, 2, 4] } else { &[0, 1, 3, 5, 2, 4] };
        Ok(vec![permute(&n, x, &view, perm, &out_shape, ctx)?])
    })
}

fn build_expand(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    boxed(move |inputs, ctx| {
        let x = req(&n, inputs, 0)?;
        let spec = ints(&n, req(&n, inputs, 1)?, "shape")?;
        let shape = spec.iter().map(|&d| dim(&n, d, "shape")).collect::<Result<Vec<_>>>()?;
        let out_shape = broadcast_shapes(&n, &[x.shape(), &shape])?;
        if out_shape == x.shape() {
            return Ok(vec![x.clone()]);
        }
        numel(&n, &out_shape)?;
        let off = out_shape.len() - x.rank();
        let st = strides(x.shape());
        let axes = (0..out_shape.len())
            .map(|d| if d < off || x.shape()[d - off] == 1 { Src::step(0) } else { Src::step(st[d - off]) })
            .collect();
        let mut out = ctx.alloc(x.dtype(), &out_shape)?;
        gather_copy(out.bytes_mut(), x.bytes(), x.dtype().size(), &out_shape, axes)?;
        Ok(vec![out])
    })
}

fn build_tile(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let reps = ints(&n, req(&n, inputs, 1)?, "repeats")?;
        if reps.len() != x.rank() {
            return Err(Error::node(&n, format!("repeats {reps:?} must have one entry per input axis ({})", x.rank())));
        }
        let reps = reps.iter().map(|&r| dim(&n, r, "repeats")).collect::<Result<Vec<_>>>()?;
        let out_shape: Vec<usize> = x.shape().iter().zip(&reps).map(|(&d, &r)| d.saturating_mul(r)).collect();
        if numel(&n, &out_shape)? == 0 {
            return Ok(vec![c.alloc(x.dtype(), &out_shape)?]);
        }
        let st = strides(x.shape());
        let mut view = Vec::with_capacity(2 * x.rank());
        let mut axes = Vec::with_capacity(2 * x.rank());
        for d in 0..x.rank() {
            view.extend([reps[d], x.shape()[d]]);
            axes.extend([Src::step(0), Src::step(st[d])]);
        }
        let mut out = c.alloc(x.dtype(), &out_shape)?;
        gather_copy(out.bytes_mut(), x.bytes(), x.dtype().size(), &view, axes)?;
        Ok(vec![out])
    })
}

/// Resolves one Slice axis: returns (start, step, count).
fn slice_axis(node: &Node, dimn: usize, start: i64, end: i64, step: i64) -> Result<(usize, i64, usize)> {
    if step == 0 {
        return Err(Error::node(node, "slice step must not be zero"));
    }
    let d = dimn as i128;
    let (mut s, mut e, st) = (start as i128, end as i128, step as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let count = if st > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
        if e > s {
            (e - s + st - 1) / st
        } else {
            0
        }
    } else {
        s = s.clamp(-1, d - 1);
        e = e.clamp(-1, d - 1);
        if s > e {
            (s - e - st - 1) / -st
        } else {
            0
        }
    };
    Ok((if count == 0 { 0 } else { s as usize }, step, count as usize))
}

fn build_slice(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let attrs = if ctx.opset < 10 {
        let starts = node.attr_ints("starts")?.ok_or_else(|| Error::node(node, "missing attribute 'starts'"))?;
        let ends = node.attr_ints("ends")?.ok_or_else(|| Error::node(node, "missing attribute 'ends'"))?;
        Some((starts, ends, node.attr_ints("axes")?))
    } else {
        None
    };
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let (starts, ends, axes, steps) = match &attrs {
            Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
            None => (
                ints(&n, req(&n, inputs, 1)?, "starts")?,
                ints(&n, req(&n, inputs, 2)?, "ends")?,
                opt(inputs, 3).map(|t| ints(&n, t, "axes")).transpose()?,
                opt(inputs, 4).map(|t| ints(&n, t, "steps")).transpose()?,
            ),
        };
        let k = starts.len();
        let axes = axes.unwrap_or_else(|| (0..k as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; k]);
        if ends.len() != k || axes.len() != k || steps.len() != k {
            return Err(Error::node(
                &n,
                format!(
                    "starts, ends, axes and steps must have the same length ({k}, {}, {}, {})",
                    ends.len(),
                    axes.len(),
                    steps.len()
                ),
            ));
        }
        let axes = axes_list(&n, &axes, x.rank())?;
        let st = strides(x.shape());
        let mut out_shape = x.shape().to_vec();
        let mut maps: Vec<Src> = st.iter().map(|&s| Src::step(s)).collect();
        for i in 0..k {
            let a = axes[i];
            let (s, step, count) = slice_axis(&n, x.shape()[a], starts[i], ends[i], steps[i])?;
            out_shape[a] = count;
            // With two or more elements |step| < the axis size, so this cannot overflow.
            let step = if count < 2 { 0 } else { step as isize * st[a] as isize };
            maps[a] = Src::Affine { start: s * st[a], step };
        }
        if out_shape == x.shape() && steps.iter().all(|&s| s == 1) {
            return Ok(vec![x.clone()]);
        }
        let mut out = c.alloc(x.dtype(), &out_shape)?;
        gather_copy(out.bytes_mut(), x.bytes(), x.dtype().size(), &out_shape, maps)?;
        Ok(vec![out])
    })
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// The bytes of one element of `dtype` holding `v` (converted).
fn elem_bytes(dtype: tessera_core::DType, v: &Tensor) -> Result<Vec<u8>> {
    if v.dtype() == dtype {
        return Ok(v.bytes()[..dtype.size()].to_vec());
    }
    Ok(Tensor::from_f64(dtype, &[], &v.to_f64_vec()[..1])?.bytes().to_vec())
}

/// Source index along one axis for padded output index `o` (non-constant
/// modes); `n` is the (cropped) input size, `b` the (non-negative) begin pad.
fn pad_index(mode: PadMode, o: usize, b: usize, n: usize) -> usize {
    let s = o as i64 - b as i64;
    let n = n as i64;
    let v = match mode {
        PadMode::Edge | PadMode::Constant => s.clamp(0, n - 1),
        PadMode::Wrap => s.rem_euclid(n),
        PadMode::Reflect => {
            if n == 1 {
                0
            } else {
                let p = 2 * (n - 1);
                let m = s.rem_euclid(p);
                if m < n {
                    m
                } else {
                    p - m
                }
            }
        }
    };
    v as usize
}

/// Pads (or crops, with negative pads) `x`; `pads` holds the begin and end
/// pads of every axis (length 2 * rank).
fn pad(
    node: &Node,
    x: &Tensor,
    pads: &[i64],
    mode: PadMode,
    value: Option<&Tensor>,
    ctx: &mut RunCtx,
) -> Result<Tensor> {
    let r = x.rank();
    let (pb, pe) = pads.split_at(r);
    let mut out_shape = Vec::with_capacity(r);
    for d in 0..r {
        let o = x.shape()[d] as i128 + pb[d] as i128 + pe[d] as i128;
        if o < 0 {
            return Err(Error::node(
                node,
                format!("pads {pads:?} remove more than the whole axis {d} of {:?}", x.shape()),
            ));
        }
        out_shape.push(dim(node, o.min(i64::MAX as i128) as i64, "padded output")?);
    }
    numel(node, &out_shape)?;
    let mut out = ctx.alloc(x.dtype(), &out_shape)?;
    let es = x.dtype().size();
    if mode == PadMode::Constant {
        let v = match value {
            Some(v) if v.numel() > 0 => elem_bytes(x.dtype(), v)?,
            _ => vec![0u8; es],
        };
        pad_constant(out.bytes_mut(), x.bytes(), x.shape(), &out_shape, pb, &v)?;
        return Ok(out);
    }
    let st = strides(x.shape());
    let mut maps = Vec::with_capacity(r);
    for d in 0..r {
        // Crop first (negative pads), then pad the cropped range.
        let crop_b = pb[d].saturating_neg().max(0) as usize;
        let crop_e = pe[d].saturating_neg().max(0) as usize;
        let m = x.shape()[d].saturating_sub(crop_b.saturating_add(crop_e));
        let b = pb[d].max(0) as usize;
        if m == 0 && out_shape[d] > 0 {
            return Err(Error::node(node, format!("cannot pad an empty axis {d} in {mode:?} mode")));
        }
        if pb[d] == 0 && pe[d] == 0 {
            maps.push(Src::step(st[d]));
        } else {
            maps.push(Src::Table((0..out_shape[d]).map(|o| (crop_b + pad_index(mode, o, b, m)) * st[d]).collect()));
        }
    }
    gather_copy(out.bytes_mut(), x.bytes(), es, &out_shape, maps)?;
    Ok(out)
}

fn build_pad(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let opset = ctx.opset;
    let mode = match node.attr_string("mode")?.as_deref().unwrap_or("constant") {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        m => return Err(Error::node(node, format!("unknown pad mode '{m}'"))),
    };
    let attr_pads = if opset < 11 {
        let key = if opset < 2 { "paddings" } else { "pads" };
        Some(node.attr_ints(key)?.ok_or_else(|| Error::node(node, format!("missing attribute '{key}'")))?)
    } else {
        None
    };
    let attr_value = if opset < 11 { Some(Tensor::scalar(node.attr_float_or("value", 0.0)? as f64)) } else { None };
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let r = x.rank();
        let raw = match &attr_pads {
            Some(p) => p.clone(),
            None => ints(&n, req(&n, inputs, 1)?, "pads")?,
        };
        let axes = match opt(inputs, 3) {
            Some(t) if opset >= 18 => axes_list(&n, &ints(&n, t, "axes")?, r)?,
            _ => (0..r).collect(),
        };
        if raw.len() != 2 * axes.len() {
            return Err(Error::node(&n, format!("pads {raw:?} must have 2 entries per padded axis ({})", axes.len())));
        }
        let mut pads = vec![0i64; 2 * r];
        for (i, &a) in axes.iter().enumerate() {
            pads[a] = raw[i];
            pads[r + a] = raw[axes.len() + i];
        }
        let value = match &attr_value {
            Some(v) => Some(v),
            None => opt(inputs, 2),
        };
        Ok(vec![pad(&n, x, &pads, mode, value, c)?])
    })
}

fn build_center_crop_pad(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let attr_axes = node.attr_ints("axes")?;
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let r = x.rank();
        let want = ints(&n, req(&n, inputs, 1)?, "shape")?;
        let axes = match &attr_axes {
            Some(a) => axes_list(&n, a, r)?,
            None => (0..r).collect(),
        };
        if want.len() != axes.len() {
            return Err(Error::node(&n, format!("shape {want:?} must have one entry per axis ({})", axes.len())));
        }
        let mut out_shape = x.shape().to_vec();
        let mut begin = vec![0i64; r];
        for (&a, &w) in axes.iter().zip(&want) {
            let w = dim(&n, w, "shape")?;
            let d = x.shape()[a];
            out_shape[a] = w;
            begin[a] = if w <= d { -(((d - w) / 2) as i64) } else { ((w - d) / 2) as i64 };
        }
        numel(&n, &out_shape)?;
        let mut out = c.alloc(x.dtype(), &out_shape)?;
        let zero = vec![0u8; x.dtype().size()];
        pad_constant(out.bytes_mut(), x.bytes(), x.shape(), &out_shape, &begin, &zero)?;
        Ok(vec![out])
    })
}

fn build_concat(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let a = match node.attr_int("axis")? {
        Some(a) => a,
        None if ctx.opset < 4 => 1,
        None => return Err(Error::node(node, "missing attribute 'axis'")),
    };
    boxed(move |inputs, c| {
        let xs: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
        let first = *xs.first().ok_or_else(|| Error::node(&n, "Concat needs at least one input"))?;
        let r = first.rank();
        let ax = axis(&n, a, r)?;
        let mut out_shape = first.shape().to_vec();
        out_shape[ax] = 0;
        for x in &xs {
            let same = x.rank() == r && (0..r).all(|d| d == ax || x.shape()[d] == first.shape()[d]);
            if !same || x.dtype() != first.dtype() {
                return Err(Error::node(
                    &n,
                    format!(
                        "inputs {:?} ({}) and {:?} ({}) cannot be concatenated on axis {a}",
                        first.shape(),
                        first.dtype(),
                        x.shape(),
                        x.dtype()
                    ),
                ));
            }
            out_shape[ax] = out_shape[ax].saturating_add(x.shape()[ax]);
        }
        if xs.len() == 1 {
            return Ok(vec![first.clone()]);
        }
        let mut out = c.alloc(first.dtype(), &out_shape)?;
        let es = first.dtype().size();
        let inner: usize = out_shape[ax + 1..].iter().product::<usize>() * es;
        let out_row = out_shape[ax] * inner;
        if out_row > 0 {
            let copy_outer = |(o, drow): (usize, &mut [u8])| {
                let mut pos = 0;
                for x in &xs {
                    let chunk = x.shape()[ax] * inner;
                    drow[pos..pos + chunk].copy_from_slice(&x.bytes()[o * chunk..(o + 1) * chunk]);
                    pos += chunk;
                }
            };
            let dst = out.bytes_mut();
            if dst.len() >= PAR_BYTES && dst.len() > out_row {
                dst.par_chunks_mut(out_row).enumerate().for_each(copy_outer);
            } else {
                dst.chunks_mut(out_row).enumerate().for_each(copy_outer);
            }
        }
        Ok(vec![out])
    })
}

fn build_split(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let n = slim(node);
    let opset = ctx.opset;
    let a = node.attr_int_or("axis", 0)?;
    let attr_split = if opset < 13 { node.attr_ints("split")? } else { None };
    let num_outputs = if opset >= 18 { node.attr_int("num_outputs")? } else { None };
    let n_out = node.outputs.len();
    if let Some(k) = num_outputs {
        if k <= 0 || k as usize != n_out {
            return Err(Error::node(node, format!("num_outputs is {k} but the node has {n_out} outputs")));
        }
    }
    boxed(move |inputs, c| {
        let x = req(&n, inputs, 0)?;
        let ax = axis(&n, a, x.rank())?;
        let d = x.shape()[ax];
        let split = match &attr_split {
            Some(s) => Some(s.clone()),
            None => opt(inputs, 1).map(|t| ints(&n, t, "split")).transpose()?,
        };
        let sizes: Vec<usize> = match split {
            Some(s) if !s.is_empty() || n_out == 0 => {
                let s = s.iter().map(|&v| dim(&n, v, "split")).collect::<Result<Vec<_>>>()?;
                if s.len() != n_out || s.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(d) {
                    return Err(Error::node(
                        &n,
                        format!("split {s:?} must have {n_out} entries summing to the axis size {d}"),
                    ));
                }
                s
            }
            _ => {
                if n_out == 0 {
                    return Err(Error::node(&n, "Split has no outputs"));
                }
                // Uneven sizes: every chunk has ceil(d / n) elements, the
                // last ones get what is left.
                let chunk = d.div_ceil(n_out);
                (0..n_out).map(|i| chunk.min(d.saturating_sub(i * chunk))).collect()
            }
        };
        let es = x.dtype().size();
        let mut outs = Vec::with_capacity(n_out);
        let mut start = 0;
        for &len in &sizes {
            let mut shape = x.shape().to_vec();
            shape[ax] = len;
            let mut o = c.alloc(x.dtype(), &shape)?;
            copy_axis_range(o.bytes_mut(), x.bytes(), es, x.shape(), ax, start, len)?;
            start += len;
            outs.push(o);
        }
        Ok(outs)
    })
}
