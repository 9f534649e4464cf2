//! Conv and ConvTranspose (1-D to 3-D): attribute and shape resolution; the
//! arithmetic is in `tessera_kernels::conv`.

use std::sync::Arc;

use rayon::prelude::*;

use tessera_core::{Error, Node, Result, Tensor};
use tessera_kernels::conv::{conv_forward, conv_transpose, ConvGeom};

use super::common::{
    expect_float, read_or_pre, to3, widen_const, window_out, with_float, write_output, AutoPad, Float, Spatial,
    MAX_SPATIAL,
};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{opt, req};

pub fn register(r: &mut OpRegistry) {
    r.add("Conv", build_conv);
    r.add_domain("tessera", tessera_core::passes::fuse_conv::FUSED_CONV, build_fused_conv);
    r.add("ConvTranspose", build_conv_transpose);
}

fn group_attr(node: &Node) -> Result<usize> {
    let g = node.attr_int_or("group", 1)?;
    if !(1..=(1 << 32)).contains(&g) {
        return Err(Error::node(node, format!("group must be positive, got {g}")));
    }
    Ok(g as usize)
}

/// Common checks on X and W of a convolution; returns the spatial rank.
fn check_ranks(node: &Node, x: &[usize], w: &[usize]) -> Result<usize> {
    if x.len() < 3 {
        return Err(Error::node(node, format!("input must be at least 3-D (N, C, spatial...), got {x:?}")));
    }
    if w.len() != x.len() {
        return Err(Error::node(node, format!("weights of shape {w:?} do not match the input rank of {x:?}")));
    }
    let r = x.len() - 2;
    if r > MAX_SPATIAL {
        return Err(tessera_core::unsupported!("node '{}': convolution over {r} spatial dimensions", node.name));
    }
    if w[2..].contains(&0) {
        return Err(Error::node(node, format!("kernel of shape {w:?} has an empty dimension")));
    }
    Ok(r)
}

fn check_kernel_attr(node: &Node, sp: &Spatial, kernel: &[usize]) -> Result<()> {
    if let Some(ks) = &sp.kernel_shape {
        if ks.as_slice() != kernel {
            return Err(Error::node(node, format!("kernel_shape {ks:?} does not match the weights' {kernel:?}")));
        }
    }
    Ok(())
}

/// Geometry and output shape of a forward convolution (shared with
/// ConvInteger and QLinearConv).
pub(crate) fn conv_geom(
    node: &Node,
    sp: &Spatial,
    group: usize,
    x: &[usize],
    w: &[usize],
) -> Result<(ConvGeom, Vec<usize>)> {
    let r = check_ranks(node, x, w)?;
    let (n, c, m) = (x[0], x[1], w[0]);
    if !c.is_multiple_of(group) || w[1] * group != c {
        return Err(Error::node(
            node,
            format!("input has {c} channels but the weights {w:?} expect {} with group {group}", w[1] * group),
        ));
    }
    if !m.is_multiple_of(group) {
        return Err(Error::node(node, format!("{m} output channels are not divisible by group {group}")));
    }
    let kernel = &w[2..];
    check_kernel_attr(node, sp, kernel)?;
    let (strides, dil, pads) = sp.resolve(node, r)?;
    let mut out = Vec::with_capacity(r);
    let mut pad = Vec::with_capacity(r);
    for d in 0..r {
        let span = (kernel[d] - 1) * dil[d] + 1;
        let (o, pb, _) = window_out(sp.auto_pad, x[2 + d], span, strides[d], pads[d], pads[r + d], false);
        out.push(o);
        pad.push(pb as isize);
    }
    let g = ConvGeom {
        batch: n,
        in_channels: c,
        out_channels: m,
        groups: group,
        input: to3(&x[2..], 1),
        output: to3(&out, 1),
        kernel: to3(kernel, 1),
        stride: to3(&strides, 1),
        pad: to3(&pad, 0),
        dilation: to3(&dil, 1),
    };
    g.validate().map_err(|e| Error::node(node, e))?;
    let mut shape = vec![n, m];
    shape.extend(out);
    tessera_core::tensor::checked_numel(&shape)?;
    Ok((g, shape))
}

fn check_bias(node: &Node, b: Option<&Tensor>, m: usize) -> Result<()> {
    if let Some(b) = b {
        if b.numel() != m || b.rank() != 1 {
            return Err(Error::node(node, format!("bias of shape {:?} does not match {m} output channels", b.shape())));
        }
    }
    Ok(())
}

fn check_types(node: &Node, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<()> {
    expect_float(node, x, "input")?;
    if w.dtype() != x.dtype() || b.is_some_and(|b| b.dtype() != x.dtype()) {
        return Err(Error::node(node, "input, weights and bias must share one type"));
    }
    Ok(())
}

fn build_conv(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let sp = Spatial::parse(&node)?;
    let group = group_attr(&node)?;
    // Constant weights stay in their tensor (already the GEMM's row-major
    // [M, C/g * k] layout, so nothing is copied per run); f16/bf16 weights
    // are widened here once.
    let w_pre: Option<Arc<Vec<f32>>> = widen_const(bctx.const_input(&node, 1));
    let b_pre: Option<Arc<Vec<f32>>> = widen_const(bctx.const_input(&node, 2));
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let w = req(&node, inputs, 1)?;
        let b = opt(inputs, 2);
        check_types(&node, x, w, b)?;
        let (g, shape) = conv_geom(&node, &sp, group, x.shape(), w.shape())?;
        check_bias(&node, b, g.out_channels)?;
        let out = with_float!(x.dtype(), &node, T => {
            let xs = T::read(x)?;
            let ws = read_or_pre::<T>(w_pre.as_deref().map(|v| v.as_slice()), w)?;
            let bs = match b {
                Some(b) => Some(read_or_pre::<T>(b_pre.as_deref().map(|v| v.as_slice()), b)?),
                None => None,
            };
            write_output::<T>(ctx, x.dtype(), &shape, |y| {
                conv_forward(&g, &xs, &ws, bs.as_deref(), y);
                Ok(())
            })
        })?;
        Ok(vec![out])
    }))
}

/// The plain Conv inside a `tessera:FusedConv` (its first three inputs and
/// Conv's attributes).
pub(crate) fn plain_conv(node: &Node) -> Node {
    let mut plain = node.clone();
    plain.domain.clear();
    plain.op_type = "Conv".into();
    plain.inputs.truncate(3);
    plain.attrs.remove("activation");
    plain
}

/// `tessera:FusedConv(X, W, [B], [residual])`: the Conv, then
/// `act(y + residual)` in one pass over its f32 output.
fn build_fused_conv(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let conv = build_conv(&plain_conv(&node), bctx)?;
    let act = crate::cpu::ops::fused::parse_activation(&node)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let mut y = conv.run(&inputs[..inputs.len().min(3)], ctx)?.remove(0);
        if y.dtype() != tessera_core::DType::F32 {
            return Err(Error::node(&node, format!("FusedConv takes f32, got {}", y.dtype())));
        }
        let residual = opt(inputs, 3);
        if let Some(r) = residual {
            if r.shape() != y.shape() || r.dtype() != y.dtype() {
                return Err(Error::node(
                    &node,
                    format!("residual {:?} {} does not match the output {:?}", r.shape(), r.dtype(), y.shape()),
                ));
            }
        }
        let r = residual.map(|r| r.as_slice::<f32>()).transpose()?;
        let ys = y.as_mut_slice::<f32>()?;
        // Cache-sized runs, spread over the pool: the residual add and the
        // activation in one pass.
        const RUN: usize = 4096;
        ys.par_chunks_mut(RUN).enumerate().for_each(|(i, run)| {
            if let Some(r) = r {
                for (v, &x) in run.iter_mut().zip(&r[i * RUN..]) {
                    *v += x;
                }
            }
            tessera_kernels::gemm::epilogue::activate(act, run);
        });
        Ok(vec![y])
    }))
}

/// Geometry and output shape of a transposed convolution.
fn conv_transpose_geom(
    node: &Node,
    sp: &Spatial,
    group: usize,
    output_padding: &Option<Vec<i64>>,
    output_shape: &Option<Vec<i64>>,
    x: &[usize],
    w: &[usize],
) -> Result<(ConvGeom, Vec<usize>)> {
    let r = check_ranks(node, x, w)?;
    let (n, c) = (x[0], x[1]);
    if w[0] != c || !c.is_multiple_of(group) {
        return Err(Error::node(
            node,
            format!(
                "input has {c} channels, weights {w:?} (group {group}) expect a multiple of the group equal to {}",
                w[0]
            ),
        ));
    }
    let m = w[1] * group;
    let kernel = &w[2..];
    check_kernel_attr(node, sp, kernel)?;
    let (strides, dil, pads) = sp.resolve(node, r)?;
    let op: Vec<i64> = match output_padding {
        None => vec![0; r],
        Some(v) if v.len() == r => v.clone(),
        Some(v) if v.len() == 2 * r => v[..r].to_vec(),
        Some(v) => return Err(Error::node(node, format!("output_padding {v:?} does not have {r} values"))),
    };
    if op.iter().any(|&v| !(0..=(1 << 32)).contains(&v)) {
        return Err(Error::node(node, format!("output_padding {op:?} out of range")));
    }
    let os: Option<Vec<i64>> = match output_shape {
        None => None,
        Some(v) if v.len() == r => Some(v.clone()),
        Some(v) if v.len() == r + 2 => Some(v[2..].to_vec()),
        Some(v) => return Err(Error::node(node, format!("output_shape {v:?} does not have {r} values"))),
    };
    let mut out = Vec::with_capacity(r);
    let mut pad = Vec::with_capacity(r);
    for d in 0..r {
        let (i, s, k, dl) = (x[2 + d] as i64, strides[d] as i64, kernel[d] as i64, dil[d] as i64);
        let natural = s * (i - 1).max(0) + op[d] + (k - 1) * dl + 1;
        let target = match (&os, sp.auto_pad) {
            (Some(os), _) => Some(os[d]),
            (None, AutoPad::SameUpper | AutoPad::SameLower) => Some(i * s),
            _ => None,
        };
        let (o, pb) = match target {
            Some(t) => {
                let total = natural - t;
                let half = total.div_euclid(2);
                let pb = if sp.auto_pad == AutoPad::SameUpper { half } else { total - half };
                (t, pb)
            }
            None => {
                let (pb, pe) = if sp.auto_pad == AutoPad::Valid { (0, 0) } else { (pads[d], pads[r + d]) };
                (natural - pb - pe, pb)
            }
        };
        if !(0..=(1 << 40)).contains(&o) {
            return Err(Error::node(node, format!("output size {o} along spatial dim {d} is invalid")));
        }
        out.push(o as usize);
        pad.push(pb as isize);
    }
    let g = ConvGeom {
        batch: n,
        in_channels: c,
        out_channels: m,
        groups: group,
        input: to3(&x[2..], 1),
        output: to3(&out, 1),
        kernel: to3(kernel, 1),
        stride: to3(&strides, 1),
        pad: to3(&pad, 0),
        dilation: to3(&dil, 1),
    };
    g.validate().map_err(|e| Error::node(node, e))?;
    let mut shape = vec![n, m];
    shape.extend(out);
    tessera_core::tensor::checked_numel(&shape)?;
    Ok((g, shape))
}

fn build_conv_transpose(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let sp = Spatial::parse(&node)?;
    let group = group_attr(&node)?;
    let output_padding = node.attr_ints("output_padding")?;
    let output_shape = node.attr_ints("output_shape")?;
    let w_pre: Option<Arc<Vec<f32>>> = widen_const(bctx.const_input(&node, 1));
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let w = req(&node, inputs, 1)?;
        let b = opt(inputs, 2);
        check_types(&node, x, w, b)?;
        let (g, shape) = conv_transpose_geom(&node, &sp, group, &output_padding, &output_shape, x.shape(), w.shape())?;
        check_bias(&node, b, g.out_channels)?;
        let out = with_float!(x.dtype(), &node, T => {
            let xs = T::read(x)?;
            let ws = read_or_pre::<T>(w_pre.as_deref().map(|v| v.as_slice()), w)?;
            let bs = b.map(T::read).transpose()?;
            write_output::<T>(ctx, x.dtype(), &shape, |y| {
                conv_transpose(&g, &xs, &ws, bs.as_deref(), y);
                Ok(())
            })
        })?;
        Ok(vec![out])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::{run_node, t_f32};
    use tessera_core::Attr;

    #[test]
    fn conv_basic_with_padding() {
        // ONNX test_basic_conv_with_padding: 5x5 input 0..25, 3x3 ones, pads 1.
        let x = t_f32(&[1, 1, 5, 5], &(0..25).map(|v| v as f32).collect::<Vec<_>>());
        let w = t_f32(&[1, 1, 3, 3], &[1.0; 9]);
        let n = Node::new("Conv", "c", &["x", "w"], &["y"])
            .with_attr("kernel_shape", Attr::Ints(vec![3, 3]))
            .with_attr("pads", Attr::Ints(vec![1, 1, 1, 1]));
        let y = run_node(&n, 11, &[Some(x), Some(w)]).unwrap();
        assert_eq!(y[0].shape(), &[1, 1, 5, 5]);
        let want = [
            12., 21., 27., 33., 24., 33., 54., 63., 72., 51., 63., 99., 108., 117., 81., 93., 144., 153., 162., 111.,
            72., 111., 117., 123., 84.,
        ];
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &want);
    }

    #[test]
    fn conv_strided_same_upper_and_group() {
        // auto_pad SAME_UPPER, stride 2 on 5x5: output 3x3, pads (1, 1).
        let x = t_f32(&[1, 1, 5, 5], &(0..25).map(|v| v as f32).collect::<Vec<_>>());
        let w = t_f32(&[1, 1, 3, 3], &[1.0; 9]);
        let n = Node::new("Conv", "c", &["x", "w"], &["y"])
            .with_attr("auto_pad", Attr::String(b"SAME_UPPER".to_vec()))
            .with_attr("strides", Attr::Ints(vec![2, 2]));
        let y = run_node(&n, 11, &[Some(x), Some(w)]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[12., 27., 24., 63., 108., 81., 72., 117., 84.]);
        // depthwise, two channels with a bias, 1-D
        let x = t_f32(&[1, 2, 4], &[1., 2., 3., 4., 10., 20., 30., 40.]);
        let w = t_f32(&[2, 1, 2], &[1., -1., 0.5, 0.5]);
        let b = t_f32(&[2], &[0., 1.]);
        let n = Node::new("Conv", "c", &["x", "w", "b"], &["y"]).with_attr("group", Attr::Int(2));
        let y = run_node(&n, 11, &[Some(x), Some(w), Some(b)]).unwrap();
        assert_eq!(y[0].shape(), &[1, 2, 3]);
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[-1., -1., -1., 16., 26., 36.]);
    }

    #[test]
    fn conv_rejects_bad_shapes() {
        let n = Node::new("Conv", "c", &["x", "w"], &["y"]);
        let x = t_f32(&[1, 3, 4, 4], &[0.0; 48]);
        let w = t_f32(&[2, 2, 3, 3], &[0.0; 36]);
        assert!(run_node(&n, 11, &[Some(x.clone()), Some(w)]).is_err());
        // A kernel larger than the input gives an empty output, not an error.
        let w = t_f32(&[2, 3, 5, 5], &[0.0; 150]);
        assert_eq!(run_node(&n, 11, &[Some(x), Some(w)]).unwrap()[0].shape(), &[1, 2, 0, 0]);
    }

    #[test]
    fn conv_transpose_by_hand() {
        // 1-D: x = [1, 2, 3], w = [1, 1, 1], stride 1 -> [1, 3, 6, 5, 3]
        let x = t_f32(&[1, 1, 3], &[1., 2., 3.]);
        let w = t_f32(&[1, 1, 3], &[1., 1., 1.]);
        let n = Node::new("ConvTranspose", "t", &["x", "w"], &["y"]);
        let y = run_node(&n, 11, &[Some(x.clone()), Some(w.clone())]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[1., 3., 6., 5., 3.]);
        // stride 2 with output_padding 1: [1, 1, 3, 2, 5, 3, 3, 0]
        let n2 = n.clone().with_attr("strides", Attr::Ints(vec![2])).with_attr("output_padding", Attr::Ints(vec![1]));
        let y = run_node(&n2, 11, &[Some(x.clone()), Some(w.clone())]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[1., 1., 3., 2., 5., 3., 3., 0.]);
        // output_shape larger than natural: zero at the end
        let n3 = n.clone().with_attr("output_shape", Attr::Ints(vec![6]));
        let y = run_node(&n3, 11, &[Some(x.clone()), Some(w.clone())]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[1., 3., 6., 5., 3., 0.]);
        // pads crop both ends
        let n4 = n.with_attr("pads", Attr::Ints(vec![1, 1]));
        let y = run_node(&n4, 11, &[Some(x), Some(w)]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[3., 6., 5.]);
    }
}
