//! MaxPool, AveragePool, LpPool, their Global forms, and MaxRoiPool.

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::pool::{avg_pool, lp_pool, max_pool, PoolGeom};

use super::common::{expect_float, to3, window_out, with_float, write_output, Float, Spatial, MAX_SPATIAL};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::req;

pub fn register(r: &mut OpRegistry) {
    r.add("MaxPool", build_max_pool);
    r.add("AveragePool", build_avg_pool);
    r.add("LpPool", build_lp_pool);
    r.add("GlobalMaxPool", build_global_max);
    r.add("GlobalAveragePool", build_global_avg);
    r.add("GlobalLpPool", build_global_lp);
    r.add("MaxRoiPool", build_max_roi_pool);
}

/// Geometry and output shape of a windowed pool over `x`.
fn pool_geom(node: &Node, sp: &Spatial, ceil_mode: bool, x: &[usize]) -> Result<(PoolGeom, Vec<usize>)> {
    if x.len() < 3 {
        return Err(Error::node(node, format!("input must be at least 3-D (N, C, spatial...), got {x:?}")));
    }
    let r = x.len() - 2;
    if r > MAX_SPATIAL {
        return Err(tessera_core::unsupported!("node '{}': pooling over {r} spatial dimensions", node.name));
    }
    let kernel = sp.kernel_shape.as_ref().ok_or_else(|| Error::node(node, "kernel_shape is required"))?;
    if kernel.len() != r {
        return Err(Error::node(node, format!("kernel_shape {kernel:?} does not fit input {x:?}")));
    }
    let (strides, dil, pads) = sp.resolve(node, r)?;
    let (mut out, mut pb, mut pe) = (vec![], vec![], vec![]);
    for d in 0..r {
        let span = (kernel[d] - 1) * dil[d] + 1;
        let (o, b, e) = window_out(sp.auto_pad, x[2 + d], span, strides[d], pads[d], pads[r + d], ceil_mode);
        if b < 0 || e < 0 {
            return Err(Error::node(node, format!("negative pads {pads:?} are not allowed")));
        }
        out.push(o);
        pb.push(b as usize);
        pe.push(e as usize);
    }
    let g = PoolGeom {
        planes: x[0] * x[1],
        input: to3(&x[2..], 1),
        output: to3(&out, 1),
        kernel: to3(kernel, 1),
        stride: to3(&strides, 1),
        pad: to3(&pb, 0),
        pad_end: to3(&pe, 0),
        dilation: to3(&dil, 1),
    };
    let mut shape = vec![x[0], x[1]];
    shape.extend(out);
    tessera_core::tensor::checked_numel(&shape)?;
    Ok((g, shape))
}

fn ceil_attr(node: &Node) -> Result<bool> {
    Ok(node.attr_int_or("ceil_mode", 0)? != 0)
}

fn build_max_pool(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let sp = Spatial::parse(&node)?;
    let ceil = ceil_attr(&node)?;
    let column_major = match node.attr_int_or("storage_order", 0)? {
        0 => false,
        1 => true,
        o => return Err(Error::node(&node, format!("storage_order must be 0 or 1, got {o}"))),
    };
    let want_indices = node.outputs.get(1).is_some_and(|s| !s.is_empty());
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let (g, shape) = pool_geom(&node, &sp, ceil, x.shape())?;
        let mut ind = if want_indices { Some(ctx.alloc(DType::I64, &shape)?) } else { None };
        let dt = x.dtype();
        macro_rules! native {
            ($t:ty, $empty:expr) => {{
                let mut y = ctx.alloc(dt, &shape)?;
                let iv = match ind.as_mut() {
                    Some(t) => Some(t.as_mut_slice::<i64>()?),
                    None => None,
                };
                max_pool(&g, x.as_slice::<$t>()?, y.as_mut_slice::<$t>()?, iv, column_major, $empty);
                y
            }};
        }
        let y = match dt {
            DType::U8 => native!(u8, 0),
            DType::I8 => native!(i8, i8::MIN),
            DType::F32 => native!(f32, f32::MIN),
            DType::F64 => native!(f64, f64::MIN),
            DType::F16 | DType::BF16 => {
                let xs = f32::read(x)?;
                let iv = match ind.as_mut() {
                    Some(t) => Some(t.as_mut_slice::<i64>()?),
                    None => None,
                };
                write_output::<f32>(ctx, dt, &shape, |y| {
                    max_pool(&g, &xs, y, iv, column_major, f32::MIN);
                    Ok(())
                })?
            }
            d => return Err(Error::node(&node, format!("unsupported input type {d}"))),
        };
        let mut outs = vec![y];
        outs.extend(ind);
        Ok(outs)
    }))
}

fn build_avg_pool(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let sp = Spatial::parse(&node)?;
    let ceil = ceil_attr(&node)?;
    let include_pad = node.attr_int_or("count_include_pad", 0)? != 0;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let (g, shape) = pool_geom(&node, &sp, ceil, x.shape())?;
        let y = with_float!(x.dtype(), &node, T => {
            let xs = T::read(x)?;
            write_output::<T>(ctx, x.dtype(), &shape, |y| {
                avg_pool(&g, &xs, y, include_pad);
                Ok(())
            })
        })?;
        Ok(vec![y])
    }))
}

fn p_attr(node: &Node) -> Result<f64> {
    let p = node.attr_float_or("p", 2.0)? as f64;
    if !(p > 0.0 && p.is_finite()) {
        return Err(Error::node(node, format!("p must be positive, got {p}")));
    }
    Ok(p)
}

fn build_lp_pool(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let sp = Spatial::parse(&node)?;
    let ceil = ceil_attr(&node)?;
    let p = p_attr(&node)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        expect_float(&node, x, "input")?;
        let (g, shape) = pool_geom(&node, &sp, ceil, x.shape())?;
        let y = with_float!(x.dtype(), &node, T => {
            let xs = T::read(x)?;
            write_output::<T>(ctx, x.dtype(), &shape, |y| {
                lp_pool(&g, &xs, y, p);
                Ok(())
            })
        })?;
        Ok(vec![y])
    }))
}

#[derive(Copy, Clone)]
enum Global {
    Max,
    Avg,
    Lp(f64),
}

/// Reduces every (n, c) plane to one value.
fn global_pool(node: &Node, kind: Global, x: &Tensor, ctx: &mut RunCtx) -> Result<Tensor> {
    let s = x.shape();
    if s.len() < 2 {
        return Err(Error::node(node, format!("input must be at least 2-D, got {s:?}")));
    }
    let mut shape = s.to_vec();
    shape[2..].iter_mut().for_each(|d| *d = 1);
    let plane: usize = s[2..].iter().product();
    if !matches!(kind, Global::Max) {
        expect_float(node, x, "input")?;
    }
    let reduce = |xs: &[f64]| -> f64 {
        match kind {
            Global::Max => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Global::Avg => xs.iter().sum::<f64>() / xs.len() as f64,
            Global::Lp(p) => xs.iter().map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p),
        }
    };
    match x.dtype() {
        DType::F32 if !matches!(kind, Global::Lp(_)) => {
            let xs = x.as_slice::<f32>()?;
            let mut y = ctx.alloc(DType::F32, &shape)?;
            let ys = y.as_mut_slice::<f32>()?;
            let f = |(i, o): (usize, &mut f32)| {
                let p = &xs[i * plane..(i + 1) * plane];
                *o = match kind {
                    Global::Max => p.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    _ => (p.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32,
                };
            };
            if xs.len() > (1 << 16) {
                ys.par_iter_mut().enumerate().for_each(f);
            } else {
                ys.iter_mut().enumerate().for_each(f);
            }
            Ok(y)
        }
        DType::U8 | DType::I8 if matches!(kind, Global::Max) => {
            let vals = x.to_f64_vec();
            let r: Vec<f64> = vals.chunks(plane.max(1)).map(reduce).collect();
            Tensor::from_f64(x.dtype(), &shape, &r)
        }
        d if d.is_float() => {
            let vals = x.to_f64_vec();
            let r: Vec<f64> = if plane == 0 {
                vec![f64::NAN; shape.iter().product()]
            } else {
                vals.chunks(plane).map(reduce).collect()
            };
            Tensor::from_f64(d, &shape, &r)
        }
        d => Err(Error::node(node, format!("unsupported input type {d}"))),
    }
}

fn build_global_max(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        Ok(vec![global_pool(&node, Global::Max, req(&node, inputs, 0)?, ctx)?])
    }))
}

fn build_global_avg(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        Ok(vec![global_pool(&node, Global::Avg, req(&node, inputs, 0)?, ctx)?])
    }))
}

fn build_global_lp(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let p = p_attr(&node)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        Ok(vec![global_pool(&node, Global::Lp(p), req(&node, inputs, 0)?, ctx)?])
    }))
}

/// MaxRoiPool (Fast R-CNN): each region of interest `[batch, x1, y1, x2,
/// y2]` (scaled by `spatial_scale`, rounded) is split into a grid of
/// `pooled_shape` bins; each bin takes its maximum (0 when empty).
fn build_max_roi_pool(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let pooled = node.attr_ints("pooled_shape")?.ok_or_else(|| Error::node(&node, "pooled_shape is required"))?;
    if pooled.len() != 2 || pooled.iter().any(|&v| !(1..=(1 << 20)).contains(&v)) {
        return Err(Error::node(&node, format!("pooled_shape must be two positive values, got {pooled:?}")));
    }
    let (ph, pw) = (pooled[0] as usize, pooled[1] as usize);
    let scale = node.attr_float_or("spatial_scale", 1.0)? as f64;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], _ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let rois = req(&node, inputs, 1)?;
        expect_float(&node, x, "input")?;
        let s = x.shape();
        if s.len() != 4 || rois.rank() != 2 || rois.shape()[1] != 5 {
            return Err(Error::node(
                &node,
                format!("expects X [N, C, H, W] and rois [R, 5], got {s:?} and {:?}", rois.shape()),
            ));
        }
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let r = rois.shape()[0];
        let rv = rois.to_f64_vec();
        let xv = x.to_f64_vec();
        let mut out = vec![0.0f64; r * c * ph * pw];
        for ri in 0..r {
            let roi = &rv[ri * 5..ri * 5 + 5];
            let bi = roi[0];
            if !(bi >= 0.0 && (bi as usize) < n) {
                return Err(Error::node(&node, format!("roi {ri} refers to batch {bi}, input has {n}")));
            }
            let bi = bi as usize;
            let sw = (roi[1] * scale).round() as i64;
            let sh = (roi[2] * scale).round() as i64;
            let ew = (roi[3] * scale).round() as i64;
            let eh = (roi[4] * scale).round() as i64;
            let rh = (eh - sh + 1).max(1) as f64;
            let rw = (ew - sw + 1).max(1) as f64;
            let (bh, bw) = (rh / ph as f64, rw / pw as f64);
            for ci in 0..c {
                let plane = &xv[(bi * c + ci) * h * w..(bi * c + ci + 1) * h * w];
                for py in 0..ph {
                    let hs = ((py as f64 * bh).floor() as i64 + sh).clamp(0, h as i64) as usize;
                    let he = (((py + 1) as f64 * bh).ceil() as i64 + sh).clamp(0, h as i64) as usize;
                    for px in 0..pw {
                        let ws = ((px as f64 * bw).floor() as i64 + sw).clamp(0, w as i64) as usize;
                        let we = (((px + 1) as f64 * bw).ceil() as i64 + sw).clamp(0, w as i64) as usize;
                        let mut m = f64::NEG_INFINITY;
                        for yy in hs..he {
                            for xx in ws..we {
                                m = m.max(plane[yy * w + xx]);
                            }
                        }
                        out[((ri * c + ci) * ph + py) * pw + px] = if he <= hs || we <= ws { 0.0 } else { m };
                    }
                }
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype(), &[r, c, ph, pw], &out)?])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::{run_node, t_f32};
    use tessera_core::Attr;

    #[test]
    fn max_pool_same_upper_and_indices() {
        // 1x1x3x3, kernel 2, SAME_UPPER: pads (0, 1) per dim.
        let x = t_f32(&[1, 1, 3, 3], &[1., 5., 2., 7., 3., 9., 4., 8., 6.]);
        let n = Node::new("MaxPool", "p", &["x"], &["y", "i"])
            .with_attr("kernel_shape", Attr::Ints(vec![2, 2]))
            .with_attr("auto_pad", Attr::String(b"SAME_UPPER".to_vec()));
        let y = run_node(&n, 12, &[Some(x)]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[7., 9., 9., 8., 9., 9., 8., 8., 6.]);
        assert_eq!(y[1].to_i64_vec().unwrap(), vec![3, 5, 5, 7, 5, 5, 7, 7, 8]);
    }

    #[test]
    fn avg_pool_pads_and_global() {
        let x = t_f32(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let n = Node::new("AveragePool", "p", &["x"], &["y"])
            .with_attr("kernel_shape", Attr::Ints(vec![2, 2]))
            .with_attr("pads", Attr::Ints(vec![1, 1, 0, 0]));
        let y = run_node(&n, 19, &[Some(x.clone())]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[1., 1.5, 2., 2.5]);
        let n = n.with_attr("count_include_pad", Attr::Int(1));
        let y = run_node(&n, 19, &[Some(x.clone())]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[0.25, 0.75, 1., 2.5]);
        let g = Node::new("GlobalAveragePool", "g", &["x"], &["y"]);
        let y = run_node(&g, 1, &[Some(x.clone())]).unwrap();
        assert_eq!(y[0].shape(), &[1, 1, 1, 1]);
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[2.5]);
        let g = Node::new("GlobalLpPool", "g", &["x"], &["y"]);
        let y = run_node(&g, 2, &[Some(x)]).unwrap();
        assert!((y[0].as_slice::<f32>().unwrap()[0] - 30f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn max_roi_pool_by_hand() {
        let x = t_f32(&[1, 1, 4, 4], &(0..16).map(|v| v as f32).collect::<Vec<_>>());
        let rois = t_f32(&[1, 5], &[0., 0., 0., 3., 3.]);
        let n = Node::new("MaxRoiPool", "r", &["x", "rois"], &["y"]).with_attr("pooled_shape", Attr::Ints(vec![2, 2]));
        let y = run_node(&n, 1, &[Some(x), Some(rois)]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[5., 7., 13., 15.]);
    }
}
