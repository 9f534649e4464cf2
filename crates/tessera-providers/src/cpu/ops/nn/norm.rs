//! Normalizations: BatchNormalization, InstanceNormalization,
//! LayerNormalization, GroupNormalization, RMSNormalization, LRN,
//! MeanVarianceNormalization and LpNormalization. Statistics accumulate in
//! f64.

use std::borrow::Cow;

use rayon::prelude::*;
use tessera_core::{Error, Node, Result, Tensor};

use tessera_kernels::gemm::GemmScalar;

use crate::cpu::ops::fused::Activation;

use super::common::{expect_float, for_each_strided, strides_of, with_float, write_output, write_whole_output, Float};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{broadcast_strides, norm_axis, opt, req};

pub fn register(r: &mut OpRegistry) {
    r.add("BatchNormalization", build_batch_norm);
    r.add_domain("tessera", tessera_core::passes::fuse_conv::FUSED_BATCH_NORM, build_batch_norm);
    r.add("InstanceNormalization", build_instance_norm);
    r.add("LayerNormalization", build_layer_norm);
    r.add("GroupNormalization", build_group_norm);
    r.add("RMSNormalization", build_rms_norm);
    r.add("LRN", build_lrn);
    r.add("MeanVarianceNormalization", build_mvn);
    r.add("LpNormalization", build_lp_norm);
    r.add("SwiGLU", build_swiglu);
}

/// `x / ||x||_p` along `axis` (p = 1 or 2); a zero norm gives 0, not NaN.
fn build_lp_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let axis = node.attr_int_or("axis", -1)?;
    let p = node.attr_int_or("p", 2)?;
    if p != 1 && p != 2 {
        return Err(Error::node(&node, format!("p must be 1 or 2, got {p}")));
    }
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        if s.is_empty() {
            return Err(Error::node(&node, "input must have rank >= 1"));
        }
        let a = norm_axis(&node, axis, s.len())?;
        let (n, inner) = (s[a], s[a + 1..].iter().product::<usize>());
        if x.numel() == 0 {
            return Ok(vec![ctx.alloc(x.dtype(), s)?]);
        }
        let dt = x.dtype();
        with_float!(dt, &node, T => {
            let xs = T::read(x)?;
            let y = write_whole_output::<T>(ctx, dt, s, |y| {
                // Each block of `n * inner` values holds `inner` vectors of
                // `n` values, `inner` apart.
                for (xb, yb) in xs.chunks(n * inner).zip(y.chunks_mut(n * inner)) {
                    for j in 0..inner {
                        let norm = (0..n)
                            .map(|i| xb[i * inner + j].to_f64().abs())
                            .map(|v| if p == 1 { v } else { v * v })
                            .sum::<f64>();
                        let norm = if p == 1 { norm } else { norm.sqrt() };
                        for i in 0..n {
                            let v = xb[i * inner + j].to_f64();
                            yb[i * inner + j] = T::from_f64(if norm == 0.0 { 0.0 } else { v / norm });
                        }
                    }
                }
                Ok(())
            })?;
            Ok(vec![y])
        })
    }))
}

/// SwiGLU: `y = a · sigmoid(alpha · a) · b` for `a` and `b` of one shape
/// and type (no broadcasting).
fn build_swiglu(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let alpha = node.attr_float_or("alpha", 1.0)? as f64;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let (a, b) = (req(&node, inputs, 0)?, req(&node, inputs, 1)?);
        expect_float(&node, a, "A")?;
        if a.shape() != b.shape() || a.dtype() != b.dtype() {
            return Err(Error::node(
                &node,
                format!(
                    "A ({} {:?}) and B ({} {:?}) must match in shape and type",
                    a.dtype(),
                    a.shape(),
                    b.dtype(),
                    b.shape()
                ),
            ));
        }
        let dt = a.dtype();
        with_float!(dt, &node, T => {
            let (av, bv) = (T::read(a)?, T::read(b)?);
            let y = write_whole_output::<T>(ctx, dt, a.shape(), |y| {
                for ((o, &x), &g) in y.iter_mut().zip(av.iter()).zip(bv.iter()) {
                    let x = x.to_f64();
                    *o = T::from_f64(x / (1.0 + (-alpha * x).exp()) * g.to_f64());
                }
                Ok(())
            })?;
            Ok(vec![y])
        })
    }))
}

/// Mean and population variance of `x`.
fn mean_var<T: Float>(x: &[T]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|v| {
            let d = v.to_f64() - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, var)
}

/// `y = x * a + b` per channel over `[N, C, plane]`.
fn affine_channels<T: Float>(x: &[T], y: &mut [T], c: usize, plane: usize, a: &[T], b: &[T], act: Activation) {
    if plane == 0 || c == 0 {
        return;
    }
    let f = |i: usize, (yp, xp): (&mut [T], &[T])| {
        let (av, bv) = (a[i % c], b[i % c]);
        for (o, &v) in yp.iter_mut().zip(xp) {
            *o = v * av + bv;
        }
        // While the plane is in L1 (tessera:FusedBatchNorm).
        if act != Activation::None {
            crate::cpu::ops::fused::apply_row(act, yp);
        }
    };
    if x.len() > (1 << 16) {
        y.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(i, p)| f(i, p));
    } else {
        y.chunks_mut(plane).zip(x.chunks(plane)).enumerate().for_each(|(i, p)| f(i, p));
    }
}

/// Reads a per-channel vector input of length `c`.
fn channel_vec<'a, T: Float>(node: &Node, t: &'a Tensor, c: usize, what: &str) -> Result<Cow<'a, [T]>> {
    if t.numel() != c {
        return Err(Error::node(node, format!("{what} of shape {:?} does not have {c} values", t.shape())));
    }
    expect_float(node, t, what)?;
    T::read(t)
}

fn eps_attr(node: &Node, default: f32) -> Result<f64> {
    Ok(node.attr_float_or("epsilon", default)? as f64)
}

/// BatchNormalization, and `tessera:FusedBatchNorm` (an inference
/// BatchNormalization with the optimizer's `activation` attribute).
fn build_batch_norm(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let act =
        if node.domain == "tessera" { crate::cpu::ops::fused::parse_activation(&node)? } else { Activation::None };
    let eps = eps_attr(&node, 1e-5)?;
    let momentum = node.attr_float_or("momentum", 0.9)? as f64;
    let extra_outputs = node.outputs.iter().skip(1).any(|o| !o.is_empty());
    let training = if bctx.opset >= 14 { node.attr_int_or("training_mode", 0)? != 0 } else { extra_outputs };
    if bctx.opset < 9 && node.attr_int_or("spatial", 1)? == 0 {
        return Err(tessera_core::unsupported!("node '{}': BatchNormalization with spatial=0", node.name));
    }
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        if s.len() < 2 {
            return Err(Error::node(&node, format!("input must be at least 2-D, got {s:?}")));
        }
        let (n, c) = (s[0], s[1]);
        let plane: usize = s[2..].iter().product();
        let dt = x.dtype();
        with_float!(dt, &node, T => {
            let xs = T::read(x)?;
            let scale = channel_vec::<T>(&node, req(&node, inputs, 1)?, c, "scale")?;
            let bias = channel_vec::<T>(&node, req(&node, inputs, 2)?, c, "B")?;
            let mean = channel_vec::<T>(&node, req(&node, inputs, 3)?, c, "mean")?;
            let var = channel_vec::<T>(&node, req(&node, inputs, 4)?, c, "var")?;
            // Statistics used to normalize: the running ones, or in training
            // mode those of the batch.
            let (bm, bv): (Vec<f64>, Vec<f64>) = if training {
                (0..c)
                    .map(|ci| {
                        let mut vals = Vec::with_capacity(n * plane);
                        for ni in 0..n {
                            vals.extend_from_slice(&xs[(ni * c + ci) * plane..(ni * c + ci + 1) * plane]);
                        }
                        mean_var(&vals)
                    })
                    .unzip()
            } else {
                (mean.iter().map(|v| v.to_f64()).collect(), var.iter().map(|v| v.to_f64()).collect())
            };
            let a: Vec<T> = (0..c).map(|i| T::from_f64(scale[i].to_f64() / (bv[i] + eps).sqrt())).collect();
            let b: Vec<T> = (0..c).map(|i| T::from_f64(bias[i].to_f64() - bm[i] * a[i].to_f64())).collect();
            let y = write_output::<T>(ctx, dt, s, |y| {
                affine_channels(&xs, y, c, plane, &a, &b, act);
                Ok(())
            })?;
            let mut outs = vec![y];
            if training {
                let run_mean: Vec<T> =
                    (0..c).map(|i| T::from_f64(mean[i].to_f64() * momentum + bm[i] * (1.0 - momentum))).collect();
                let run_var: Vec<T> =
                    (0..c).map(|i| T::from_f64(var[i].to_f64() * momentum + bv[i] * (1.0 - momentum))).collect();
                let mut extra = vec![run_mean, run_var];
                if legacy_five_outputs(&node) {
                    extra.push(bm.iter().map(|&v| T::from_f64(v)).collect());
                    extra.push(bv.iter().map(|&v| T::from_f64(v)).collect());
                }
                for (k, vals) in extra.into_iter().enumerate() {
                    if node.outputs.get(k + 1).is_some_and(|o| !o.is_empty()) {
                        outs.push(write_output::<T>(ctx, dt, &[c], |o| {
                            o.copy_from_slice(&vals);
                            Ok(())
                        })?);
                    } else if k + 1 < node.outputs.len() {
                        outs.push(Tensor::zeros(dt, &[0])?);
                    }
                }
            }
            Ok(outs)
        })
    }))
}

/// Older BatchNormalization versions (before opset 14) have five outputs;
/// the last two are the batch statistics. Detected from the output count.
fn legacy_five_outputs(node: &Node) -> bool {
    node.outputs.len() > 3
}

fn build_instance_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let eps = eps_attr(&node, 1e-5)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        if s.len() < 2 {
            return Err(Error::node(&node, format!("input must be at least 2-D, got {s:?}")));
        }
        let c = s[1];
        let plane: usize = s[2..].iter().product();
        let dt = x.dtype();
        let y = with_float!(dt, &node, T => {
            let xs = T::read(x)?;
            let scale = channel_vec::<T>(&node, req(&node, inputs, 1)?, c, "scale")?;
            let bias = channel_vec::<T>(&node, req(&node, inputs, 2)?, c, "B")?;
            write_output::<T>(ctx, dt, s, |y| {
                if plane == 0 {
                    return Ok(());
                }
                let f = |i: usize, (yp, xp): (&mut [T], &[T])| {
                    let (m, v) = mean_var(xp);
                    let a = scale[i % c].to_f64() / (v + eps).sqrt();
                    let b = bias[i % c].to_f64() - m * a;
                    let (a, b) = (T::from_f64(a), T::from_f64(b));
                    for (o, &xv) in yp.iter_mut().zip(xp) {
                        *o = xv * a + b;
                    }
                };
                y.par_chunks_mut(plane).zip(xs.par_chunks(plane)).enumerate().for_each(|(i, p)| f(i, p));
                Ok(())
            })
        })?;
        Ok(vec![y])
    }))
}

/// A scale/bias input laid over the normalized trailing shape `inner`
/// (unidirectional broadcast), as a dense vector.
fn inner_param<T: Float>(node: &Node, t: &Tensor, inner: &[usize], what: &str) -> Result<Vec<T>> {
    expect_float(node, t, what)?;
    let vals = T::read(t)?;
    let n: usize = inner.iter().product();
    if vals.len() == n {
        return Ok(vals.into_owned());
    }
    let ts = t.shape();
    let compatible =
        ts.len() <= inner.len() && ts.iter().rev().zip(inner.iter().rev()).all(|(&a, &b)| a == b || a == 1);
    if !compatible {
        return Err(Error::node(node, format!("{what} of shape {ts:?} does not broadcast to {inner:?}")));
    }
    let st = broadcast_strides(ts, inner);
    let mut out = vec![T::ZERO; n];
    for_each_strided(inner, &st, |d, s| out[d] = vals[s]);
    Ok(out)
}

/// One row of LayerNorm or RMSNorm: the f32 rows run the vectorized
/// kernel, f64 rows the plain loop (statistics in f64 either way).
trait RowNorm: Float {
    /// Normalizes `x` into `y`; returns (mean, inverse standard deviation).
    fn norm_row(x: &[Self], y: &mut [Self], scale: &[Self], bias: Option<&[Self]>, eps: f64, rms: bool) -> (f64, f64);
}

impl RowNorm for f32 {
    fn norm_row(x: &[f32], y: &mut [f32], scale: &[f32], bias: Option<&[f32]>, eps: f64, rms: bool) -> (f64, f64) {
        let (mean, inv) = tessera_kernels::elementwise::norm_row(x, y, scale, bias, eps as f32, rms);
        (mean as f64, inv as f64)
    }
}

impl RowNorm for f64 {
    fn norm_row(x: &[f64], y: &mut [f64], scale: &[f64], bias: Option<&[f64]>, eps: f64, rms: bool) -> (f64, f64) {
        let n = x.len() as f64;
        let (mean, var) = if rms { (0.0, x.iter().map(|v| v * v).sum::<f64>() / n) } else { mean_var(x) };
        let inv = 1.0 / (var + eps).sqrt();
        match bias {
            Some(b) => {
                for (((o, &xv), &s), &bv) in y.iter_mut().zip(x).zip(scale).zip(b) {
                    *o = (xv - mean) * inv * s + bv;
                }
            }
            None => {
                for ((o, &xv), &s) in y.iter_mut().zip(x).zip(scale) {
                    *o = (xv - mean) * inv * s;
                }
            }
        }
        (mean, inv)
    }
}

/// Normalizes rows of length `inner`: LayerNorm (`rms == false`) or RMSNorm.
/// Fills the per-row mean (0 for RMS) and inverse standard deviation.
#[allow(clippy::too_many_arguments)]
fn norm_rows<T: RowNorm>(
    x: &[T],
    y: &mut [T],
    inner: usize,
    scale: &[T],
    bias: Option<&[T]>,
    eps: f64,
    rms: bool,
    stats: &mut [(f64, f64)],
) {
    if inner == 0 {
        return;
    }
    type Row<'a, T> = (usize, ((&'a mut [T], &'a [T]), &'a mut (f64, f64)));
    let f = |(r, ((yr, xr), st)): Row<T>| {
        // Rows usually come straight from another kernel (often another
        // core's cache): the next row's lines travel while this one is
        // normalized.
        if let Some(next) = x.get((r + 1) * inner..(r + 2) * inner) {
            tessera_kernels::prefetch_for_reading(next);
        }
        *st = T::norm_row(xr, yr, scale, bias, eps, rms)
    };
    if x.len() > (1 << 15) {
        y.par_chunks_mut(inner).zip(x.par_chunks(inner)).zip(stats.par_iter_mut()).enumerate().for_each(f);
    } else {
        y.chunks_mut(inner).zip(x.chunks(inner)).zip(stats.iter_mut()).enumerate().for_each(f);
    }
}

fn build_layer_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    build_row_norm(node, false)
}

fn build_rms_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    build_row_norm(node, true)
}

fn build_row_norm(node: &Node, rms: bool) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let axis = node.attr_int_or("axis", -1)?;
    let eps = eps_attr(&node, 1e-5)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        let a = norm_axis(&node, axis, s.len())?;
        let inner_shape = &s[a..];
        let inner: usize = inner_shape.iter().product();
        let rows: usize = s[..a].iter().product();
        let dt = x.dtype();
        with_float!(dt, &node, T => {
            let xs = T::read(x)?;
            let scale = inner_param::<T>(&node, req(&node, inputs, 1)?, inner_shape, "scale")?;
            let bias = match (rms, opt(inputs, 2)) {
                (false, Some(b)) => Some(inner_param::<T>(&node, b, inner_shape, "B")?),
                _ => None,
            };
            let mut stats = vec![(0.0, 0.0); rows];
            // Every row is written.
            let y = write_whole_output::<T>(ctx, dt, s, |y| {
                norm_rows(&xs, y, inner, &scale, bias.as_deref(), eps, rms, &mut stats);
                Ok(())
            })?;
            let mut outs = vec![y];
            if !rms {
                let mut stat_shape = s[..a].to_vec();
                stat_shape.extend(std::iter::repeat_n(1, s.len() - a));
                for k in 0..2 {
                    if node.outputs.get(k + 1).is_some_and(|o| !o.is_empty()) {
                        outs.push(write_output::<T>(ctx, dt, &stat_shape, |o| {
                            for (v, st) in o.iter_mut().zip(&stats) {
                                *v = T::from_f64(if k == 0 { st.0 } else { st.1 });
                            }
                            Ok(())
                        })?);
                    } else if k + 1 < node.outputs.len() {
                        outs.push(Tensor::zeros(dt, &[0])?);
                    }
                }
            }
            Ok(outs)
        })
    }))
}

fn build_group_norm(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let eps = eps_attr(&node, 1e-5)?;
    let groups = node.attr_int("num_groups")?.ok_or_else(|| Error::node(&node, "num_groups is required"))?;
    if !(1..=(1 << 32)).contains(&groups) {
        return Err(Error::node(&node, format!("num_groups must be positive, got {groups}")));
    }
    let groups = groups as usize;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        if s.len() < 2 || !s[1].is_multiple_of(groups) {
            return Err(Error::node(&node, format!("input {s:?} does not split into {groups} channel groups")));
        }
        let (c, plane) = (s[1], s[2..].iter().product::<usize>());
        let cg = c / groups;
        let dt = x.dtype();
        let y = with_float!(dt, &node, T => {
            let xs = T::read(x)?;
            let sc = req(&node, inputs, 1)?;
            let bi = req(&node, inputs, 2)?;
            // Opset 18 gives scale/bias per group, opset 21 per channel.
            let per_group = sc.numel() == groups && groups != c;
            let want = if per_group { groups } else { c };
            let scale = channel_vec::<T>(&node, sc, want, "scale")?;
            let bias = channel_vec::<T>(&node, bi, want, "bias")?;
            write_output::<T>(ctx, dt, s, |y| {
                let chunk = cg * plane;
                if chunk == 0 {
                    return Ok(());
                }
                let f = |i: usize, (yg, xg): (&mut [T], &[T])| {
                    let (m, v) = mean_var(xg);
                    let inv = 1.0 / (v + eps).sqrt();
                    let gi = i % groups;
                    for (cc, (yp, xp)) in yg.chunks_mut(plane.max(1)).zip(xg.chunks(plane.max(1))).enumerate() {
                        let ch = if per_group { gi } else { gi * cg + cc };
                        let a = scale[ch].to_f64() * inv;
                        let b = bias[ch].to_f64() - m * a;
                        let (a, b) = (T::from_f64(a), T::from_f64(b));
                        for (o, &xv) in yp.iter_mut().zip(xp) {
                            *o = xv * a + b;
                        }
                    }
                };
                y.par_chunks_mut(chunk).zip(xs.par_chunks(chunk)).enumerate().for_each(|(i, p)| f(i, p));
                Ok(())
            })
        })?;
        Ok(vec![y])
    }))
}

fn build_lrn(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let size = node.attr_int("size")?.ok_or_else(|| Error::node(&node, "size is required"))?;
    if !(1..=(1 << 20)).contains(&size) {
        return Err(Error::node(&node, format!("size must be positive, got {size}")));
    }
    let size = size as usize;
    let alpha = node.attr_float_or("alpha", 1e-4)? as f64;
    let beta = node.attr_float_or("beta", 0.75)? as f64;
    let bias = node.attr_float_or("bias", 1.0)? as f64;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        if s.len() < 2 {
            return Err(Error::node(&node, format!("input must be at least 2-D, got {s:?}")));
        }
        let (n, c) = (s[0], s[1]);
        let plane: usize = s[2..].iter().product();
        let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
        let dt = x.dtype();
        if dt == tessera_core::DType::F32 {
            let xs = x.as_slice::<f32>()?;
            let mut y = ctx.alloc_for_overwrite(dt, s)?;
            lrn_f32(xs, y.as_mut_slice::<f32>()?, c, plane, (lo, hi), size, (alpha, beta, bias));
            return Ok(vec![y]);
        }
        let y = with_float!(dt, &node, T => {
            let xs = T::read(x)?;
            write_output::<T>(ctx, dt, s, |y| {
                for ni in 0..n {
                    for ci in 0..c {
                        let c0 = ci.saturating_sub(lo);
                        let c1 = (ci + hi).min(c - 1);
                        for p in 0..plane {
                            let mut sq = 0.0f64;
                            for cc in c0..=c1 {
                                let v = xs[(ni * c + cc) * plane + p].to_f64();
                                sq += v * v;
                            }
                            let i = (ni * c + ci) * plane + p;
                            y[i] = T::from_f64(xs[i].to_f64() / (bias + alpha / size as f64 * sq).powf(beta));
                        }
                    }
                }
                Ok(())
            })
        })?;
        Ok(vec![y])
    }))
}

/// LRN on f32 in f32 arithmetic, one output plane per task: the window's
/// squares summed plane-wise (a vectorized loop), then `x * base^-beta`,
/// with `beta = 0.75` (AlexNet's and GoogLeNet's) as two square roots.
fn lrn_f32(
    x: &[f32],
    y: &mut [f32],
    c: usize,
    plane: usize,
    (lo, hi): (usize, usize),
    size: usize,
    (alpha, beta, bias): (f64, f64, f64),
) {
    if plane == 0 || c == 0 {
        return;
    }
    let (scale, beta, bias) = ((alpha / size as f64) as f32, beta as f32, bias as f32);
    y.par_chunks_mut(plane).enumerate().for_each_init(
        || vec![0f32; plane],
        |sq, (i, yp)| {
            let (ni, ci) = (i / c, i % c);
            let (c0, c1) = (ci.saturating_sub(lo), (ci + hi).min(c - 1));
            sq.fill(0.0);
            for cc in c0..=c1 {
                let xc = &x[(ni * c + cc) * plane..][..plane];
                for (s, &v) in sq.iter_mut().zip(xc) {
                    *s += v * v;
                }
            }
            let xp = &x[i * plane..][..plane];
            if beta == 0.75 {
                for ((o, &v), &s) in yp.iter_mut().zip(xp).zip(sq.iter()) {
                    let r = (bias + scale * s).sqrt();
                    *o = v / (r * r.sqrt());
                }
            } else {
                for ((o, &v), &s) in yp.iter_mut().zip(xp).zip(sq.iter()) {
                    *o = v * (bias + scale * s).powf(-beta);
                }
            }
        },
    );
}

fn build_mvn(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let axes = node.attr_ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        let mut reduced = vec![false; s.len()];
        for &a in &axes {
            reduced[norm_axis(&node, a, s.len())?] = true;
        }
        // Each element maps to the index of its statistics slot.
        let kept: Vec<usize> = s.iter().zip(&reduced).map(|(&d, &r)| if r { 1 } else { d }).collect();
        let ks = strides_of(&kept);
        let st: Vec<usize> = ks.iter().zip(&reduced).map(|(&k, &r)| if r { 0 } else { k }).collect();
        let slots: usize = kept.iter().product();
        let count = (x.numel() / slots.max(1)).max(1) as f64;
        let dt = x.dtype();
        let y = with_float!(dt, &node, T => {
            let xs = T::read(x)?;
            let mut sum = vec![0.0f64; slots];
            for_each_strided(s, &st, |i, k| sum[k] += xs[i].to_f64());
            let mean: Vec<f64> = sum.iter().map(|v| v / count).collect();
            let mut sq = vec![0.0f64; slots];
            for_each_strided(s, &st, |i, k| {
                let d = xs[i].to_f64() - mean[k];
                sq[k] += d * d;
            });
            let denom: Vec<f64> = sq.iter().map(|v| (v / count).sqrt() + 1e-9).collect();
            write_output::<T>(ctx, dt, s, |y| {
                for_each_strided(s, &st, |i, k| y[i] = T::from_f64((xs[i].to_f64() - mean[k]) / denom[k]));
                Ok(())
            })
        })?;
        Ok(vec![y])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::{run_node, t_f32};
    use tessera_core::Attr;

    #[test]
    fn lp_normalization_p1_p2_axes_and_zero_vectors() {
        // [[3, -4], [0, 0]]: rows (axis -1) and columns (axis 0).
        let x = t_f32(&[2, 2], &[3.0, -4.0, 0.0, 0.0]);
        let run = |p: i64, axis: i64| {
            let n = Node::new("LpNormalization", "l", &["x"], &["y"])
                .with_attr("p", Attr::Int(p))
                .with_attr("axis", Attr::Int(axis));
            run_node(&n, 22, &[Some(x.clone())]).map(|y| y[0].as_slice::<f32>().unwrap().to_vec())
        };
        close(&run(2, -1).unwrap(), &[0.6, -0.8, 0.0, 0.0], 1e-7);
        close(&run(1, -1).unwrap(), &[3.0 / 7.0, -4.0 / 7.0, 0.0, 0.0], 1e-7);
        close(&run(2, 0).unwrap(), &[1.0, -1.0, 0.0, 0.0], 1e-7);
        close(&run(1, 0).unwrap(), &[1.0, -1.0, 0.0, 0.0], 1e-7);
        assert!(run(3, -1).unwrap_err().to_string().contains("p must be 1 or 2"));
        assert!(run(2, 2).is_err());
        // Defaults (p 2, the last axis), a middle axis of a rank-3 input,
        // an empty input and a scalar.
        let lp = |x: Tensor, attrs: &[(&str, i64)]| {
            let mut n = Node::new("LpNormalization", "l", &["x"], &["y"]);
            for (k, v) in attrs {
                n = n.with_attr(k, Attr::Int(*v));
            }
            run_node(&n, 22, &[Some(x)])
        };
        let y = lp(x.clone(), &[]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[0.6, -0.8, 0.0, 0.0], 1e-7);
        // [2, 2, 2]: along axis 1, the pairs (x[b, 0, j], x[b, 1, j]).
        let x3 = t_f32(&[2, 2, 2], &[3.0, 1.0, 4.0, 0.0, 0.0, 5.0, 0.0, 12.0]);
        let y = lp(x3, &[("axis", 1)]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[0.6, 1.0, 0.8, 0.0, 0.0, 5.0 / 13.0, 0.0, 12.0 / 13.0], 1e-7);
        let y = lp(t_f32(&[3, 0], &[]), &[("axis", 0)]).unwrap();
        assert_eq!(y[0].shape(), [3, 0]);
        assert!(lp(Tensor::scalar(2.0f32), &[("axis", 0)]).unwrap_err().to_string().contains("rank"));
    }

    #[test]
    fn swiglu_gates_b_with_the_swish_of_a() {
        let a = t_f32(&[3], &[-1.0, 0.5, 2.0]);
        let b = t_f32(&[3], &[2.0, -3.0, 0.25]);
        let run = |alpha: f32, b: &Tensor| {
            let n = Node::new("SwiGLU", "s", &["a", "b"], &["y"]).with_attr("alpha", Attr::Float(alpha));
            run_node(&n, 26, &[Some(a.clone()), Some(b.clone())]).map(|y| y[0].as_slice::<f32>().unwrap().to_vec())
        };
        let want = |alpha: f64| -> Vec<f32> {
            [(-1.0f64, 2.0f64), (0.5, -3.0), (2.0, 0.25)]
                .iter()
                .map(|&(x, g)| (x / (1.0 + (-alpha * x).exp()) * g) as f32)
                .collect()
        };
        close(&run(1.0, &b).unwrap(), &want(1.0), 1e-6);
        close(&run(1.702, &b).unwrap(), &want(1.702), 1e-6);
        assert!(run(1.0, &t_f32(&[1, 3], &[1.0; 3])).unwrap_err().to_string().contains("must match"));
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn batch_norm_inference() {
        // ONNX test_batchnorm_example values.
        let x = t_f32(&[1, 2, 1, 3], &[-1., 0., 1., 2., 3., 4.]);
        let s = t_f32(&[2], &[1.0, 1.5]);
        let b = t_f32(&[2], &[0.0, 1.0]);
        let m = t_f32(&[2], &[0.0, 3.0]);
        let v = t_f32(&[2], &[1.0, 1.5]);
        let n = Node::new("BatchNormalization", "bn", &["x", "s", "b", "m", "v"], &["y"]);
        let y = run_node(&n, 15, &[Some(x), Some(s), Some(b), Some(m), Some(v)]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[-0.999995, 0., 0.999995, -0.22474074, 1., 2.2247407], 1e-5);
    }

    /// tessera:FusedBatchNorm is the BatchNormalization then the activation,
    /// in one pass: the ONNX example's values through ReLU and SiLU, and a
    /// tensor big enough for the parallel planes.
    #[test]
    fn fused_batch_norm_is_the_normalization_then_the_activation() {
        let ins = |x: Tensor| {
            let s = t_f32(&[2], &[1.0, 1.5]);
            let b = t_f32(&[2], &[0.0, 1.0]);
            let m = t_f32(&[2], &[0.0, 3.0]);
            let v = t_f32(&[2], &[1.0, 1.5]);
            vec![Some(x), Some(s), Some(b), Some(m), Some(v)]
        };
        let plain = Node::new("BatchNormalization", "bn", &["x", "s", "b", "m", "v"], &["y"]);
        let big: Vec<f32> = (0..2 * 2 * 150 * 150).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.13).collect();
        for x in [t_f32(&[1, 2, 1, 3], &[-1., 0., 1., 2., 3., 4.]), t_f32(&[2, 2, 150, 150], &big)] {
            let want = run_node(&plain, 15, &ins(x.clone())).unwrap();
            for act in [Activation::Relu, Activation::Silu] {
                let mut fused = plain.clone().with_attr("activation", Attr::String(act.name().as_bytes().to_vec()));
                fused.domain = "tessera".into();
                fused.op_type = tessera_core::passes::fuse_conv::FUSED_BATCH_NORM.into();
                let got = run_node(&fused, 15, &ins(x.clone())).unwrap();
                let by_hand: Vec<f32> = want[0].as_slice::<f32>().unwrap().iter().map(|&v| act.apply(v)).collect();
                close(got[0].as_slice::<f32>().unwrap(), &by_hand, 1e-6);
            }
        }
    }

    #[test]
    fn layer_norm_with_stats() {
        let x = t_f32(&[2, 2], &[1., 3., 2., 4.]);
        let sc = t_f32(&[2], &[1., 2.]);
        let b = t_f32(&[2], &[0., 1.]);
        let n = Node::new("LayerNormalization", "ln", &["x", "s", "b"], &["y", "m", "i"])
            .with_attr("epsilon", Attr::Float(0.0));
        let y = run_node(&n, 17, &[Some(x), Some(sc), Some(b)]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[-1., 3., -1., 3.], 1e-6);
        assert_eq!(y[1].shape(), &[2, 1]);
        close(y[1].as_slice::<f32>().unwrap(), &[2., 3.], 1e-6);
        close(y[2].as_slice::<f32>().unwrap(), &[1., 1.], 1e-6);
    }

    #[test]
    fn rms_group_instance_lrn_mvn() {
        let x = t_f32(&[1, 4], &[1., 1., 1., 1.]);
        let sc = t_f32(&[4], &[1., 2., 3., 4.]);
        let n = Node::new("RMSNormalization", "r", &["x", "s"], &["y"]).with_attr("epsilon", Attr::Float(0.0));
        let y = run_node(&n, 23, &[Some(x), Some(sc)]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[1., 2., 3., 4.], 1e-6);

        // Group norm, 2 groups of 2 channels, 1 element each.
        let x = t_f32(&[1, 4, 1], &[1., 3., 5., 7.]);
        let sc = t_f32(&[4], &[1., 1., 1., 2.]);
        let b = t_f32(&[4], &[0., 0., 1., 1.]);
        let n = Node::new("GroupNormalization", "g", &["x", "s", "b"], &["y"])
            .with_attr("num_groups", Attr::Int(2))
            .with_attr("epsilon", Attr::Float(0.0));
        let y = run_node(&n, 21, &[Some(x.clone()), Some(sc), Some(b)]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[-1., 1., 0., 3.], 1e-6);

        let x = t_f32(&[1, 2, 2], &[1., 3., 2., 6.]);
        let sc = t_f32(&[2], &[1., 2.]);
        let b = t_f32(&[2], &[0., 1.]);
        let n =
            Node::new("InstanceNormalization", "i", &["x", "s", "b"], &["y"]).with_attr("epsilon", Attr::Float(0.0));
        let y = run_node(&n, 6, &[Some(x), Some(sc), Some(b)]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[-1., 1., -1., 3.], 1e-6);

        // LRN over 3 channels, size 3, alpha 3, beta 1, bias 1: y = x / (1 + sum sq).
        let x = t_f32(&[1, 3, 1, 1], &[1., 2., 3.]);
        let n = Node::new("LRN", "l", &["x"], &["y"])
            .with_attr("size", Attr::Int(3))
            .with_attr("alpha", Attr::Float(3.0))
            .with_attr("beta", Attr::Float(1.0));
        let y = run_node(&n, 13, &[Some(x)]).unwrap();
        close(y[0].as_slice::<f32>().unwrap(), &[1. / 6., 2. / 15., 3. / 14.], 1e-6);
        // The f32 path (both beta forms, even and odd window sizes) against
        // the definition in f64, on two images of 7 channels.
        let (n, c, plane) = (2usize, 7usize, 15usize);
        let xs: Vec<f32> = (0..n * c * plane).map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0).collect();
        for (size, beta) in [(5usize, 0.75f32), (4, 0.6), (1, 0.75)] {
            let node = Node::new("LRN", "l", &["x"], &["y"])
                .with_attr("size", Attr::Int(size as i64))
                .with_attr("alpha", Attr::Float(0.02))
                .with_attr("beta", Attr::Float(beta))
                .with_attr("bias", Attr::Float(2.0));
            let y = run_node(&node, 13, &[Some(t_f32(&[n, c, 3, 5], &xs))]).unwrap();
            let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
            let want: Vec<f32> = (0..n * c * plane)
                .map(|i| {
                    let (ni, ci, p) = (i / (c * plane), (i / plane) % c, i % plane);
                    let sq: f64 = (ci.saturating_sub(lo)..=(ci + hi).min(c - 1))
                        .map(|cc| (xs[(ni * c + cc) * plane + p] as f64).powi(2))
                        .sum();
                    (xs[i] as f64 / (2.0 + 0.02 / size as f64 * sq).powf(beta as f64)) as f32
                })
                .collect();
            close(y[0].as_slice::<f32>().unwrap(), &want, 1e-6);
        }

        let x = t_f32(&[1, 1, 1, 4], &[1., 2., 3., 4.]);
        let n = Node::new("MeanVarianceNormalization", "m", &["x"], &["y"]);
        let y = run_node(&n, 13, &[Some(x)]).unwrap();
        let sd = 1.25f32.sqrt();
        close(y[0].as_slice::<f32>().unwrap(), &[-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd], 1e-5);
    }
}
