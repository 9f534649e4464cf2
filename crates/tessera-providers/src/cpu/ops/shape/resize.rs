//! Resize (opsets 10, 11, 13, 18, 19) and Upsample (opsets 7, 9).
//!
//! Resizing is separable: every resized axis gets, per output position, a
//! list of source indices and weights ("taps"). Nearest mode without
//! extrapolation is a pure gather through the copy engine (exact for every
//! dtype); linear and cubic modes run one weighted pass per axis in f32
//! (f32/f16/bf16 inputs) or f64 (other dtypes, rounded back for integers).

use rayon::prelude::*;
use tessera_core::{limits, DType, Error, Node, Result, Tensor};

use super::copy::{gather_copy, Src};
use super::{axes_list, boxed, ints, numel, slim, strides};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{opt, req};

pub(super) fn register(r: &mut OpRegistry) {
    r.add("Resize", build_resize);
    r.add("Upsample", build_upsample);
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Opset < 11 behaviour: floor when upsampling, ceil when downsampling.
    Simple,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Aspect {
    Stretch,
    NotLarger,
    NotSmaller,
}

#[derive(Clone, Debug)]
struct Cfg {
    mode: Mode,
    coord: Coord,
    nearest: Nearest,
    cubic_a: f32,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
    axes: Option<Vec<i64>>,
    aspect: Aspect,
    roi_input: Option<usize>,
    scales_input: Option<usize>,
    sizes_input: Option<usize>,
    attr_scales: Option<Vec<f32>>,
}

fn parse_mode(node: &Node) -> Result<Mode> {
    match node.attr_string("mode")?.as_deref().unwrap_or("nearest") {
        "nearest" => Ok(Mode::Nearest),
        "linear" | "bilinear" => Ok(Mode::Linear),
        "cubic" => Ok(Mode::Cubic),
        m => Err(Error::node(node, format!("unknown mode '{m}'"))),
    }
}

/// The configuration of an opset-10 Resize or an Upsample.
fn legacy_cfg(node: &Node) -> Result<Cfg> {
    let mode = parse_mode(node)?;
    if mode == Mode::Cubic {
        return Err(Error::node(node, "cubic mode needs Resize from opset 11"));
    }
    Ok(Cfg {
        mode,
        coord: Coord::Asymmetric,
        nearest: Nearest::Simple,
        cubic_a: -0.75,
        exclude_outside: false,
        extrapolation: 0.0,
        antialias: false,
        axes: None,
        aspect: Aspect::Stretch,
        roi_input: None,
        scales_input: Some(1),
        sizes_input: None,
        attr_scales: None,
    })
}

fn build_resize(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let cfg = if ctx.opset < 11 {
        legacy_cfg(node)?
    } else {
        let coord = match node.attr_string("coordinate_transformation_mode")?.as_deref().unwrap_or("half_pixel") {
            "half_pixel" => Coord::HalfPixel,
            "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
            "pytorch_half_pixel" => Coord::PytorchHalfPixel,
            "align_corners" => Coord::AlignCorners,
            "asymmetric" => Coord::Asymmetric,
            "tf_crop_and_resize" => Coord::TfCropAndResize,
            "tf_half_pixel_for_nn" => {
                return Err(Error::Unsupported(format!(
                    "Resize node '{}': coordinate_transformation_mode tf_half_pixel_for_nn",
                    node.name
                )))
            }
            m => return Err(Error::node(node, format!("unknown coordinate_transformation_mode '{m}'"))),
        };
        let nearest = match node.attr_string("nearest_mode")?.as_deref().unwrap_or("round_prefer_floor") {
            "round_prefer_floor" => Nearest::RoundPreferFloor,
            "round_prefer_ceil" => Nearest::RoundPreferCeil,
            "floor" => Nearest::Floor,
            "ceil" => Nearest::Ceil,
            m => return Err(Error::node(node, format!("unknown nearest_mode '{m}'"))),
        };
        let aspect = match node.attr_string("keep_aspect_ratio_policy")?.as_deref().unwrap_or("stretch") {
            "stretch" => Aspect::Stretch,
            "not_larger" => Aspect::NotLarger,
            "not_smaller" => Aspect::NotSmaller,
            m => return Err(Error::node(node, format!("unknown keep_aspect_ratio_policy '{m}'"))),
        };
        Cfg {
            mode: parse_mode(node)?,
            coord,
            nearest,
            cubic_a: node.attr_float_or("cubic_coeff_a", -0.75)?,
            exclude_outside: node.attr_int_or("exclude_outside", 0)? != 0,
            extrapolation: node.attr_float_or("extrapolation_value", 0.0)? as f64,
            antialias: node.attr_int_or("antialias", 0)? != 0,
            axes: node.attr_ints("axes")?,
            aspect,
            roi_input: Some(1),
            scales_input: Some(2),
            sizes_input: Some(3),
            attr_scales: None,
        }
    };
    let n = slim(node);
    boxed(move |inputs, c| resize(&n, &cfg, inputs, c))
}

fn build_upsample(node: &Node, ctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    if ctx.opset < 7 {
        return Err(Error::Unsupported(format!("Upsample node '{}' from opset {}", node.name, ctx.opset)));
    }
    let mut cfg = legacy_cfg(node)?;
    if ctx.opset < 9 {
        cfg.attr_scales =
            Some(node.attr_floats("scales")?.ok_or_else(|| Error::node(node, "missing attribute 'scales'"))?);
        cfg.scales_input = None;
    }
    let n = slim(node);
    boxed(move |inputs, c| resize(&n, &cfg, inputs, c))
}

/// Per output position of one axis: `n` source indices and weights, and
/// whether the position is extrapolated (tf_crop_and_resize).
struct Taps {
    n: usize,
    idx: Vec<usize>,
    w: Vec<f64>,
    extrap: Vec<bool>,
}

// The cubic coefficients follow the ONNX reference bit for bit: there the
// coefficient `a` is a float32, so the arithmetic happens in f32 with the
// f64 operands rounded first. That keeps integer outputs (rounded from the
// interpolated values) identical on ties.

/// Keys' cubic kernel at distance `x` (the antialiasing form).
fn keys_cubic(x: f64, a: f32) -> f32 {
    let x = x.abs();
    let (x2, x3) = (x * x, x * x * x);
    let (x, x2, x3) = (x as f32, x2 as f32, x3 as f32);
    if x <= 1.0 {
        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
    } else if x < 2.0 {
        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// The four cubic weights for the neighbours x0-1..x0+2 at ratio r = x - x0.
fn cubic_weights(r: f64, a: f32) -> [f64; 4] {
    let (p, q) = ((r + 1.0) as f32, ((1.0 - r) + 1.0) as f32);
    let (rf, s) = (r as f32, (1.0 - r) as f32);
    [
        (((a * p - 5.0 * a) * p + 8.0 * a) * p - 4.0 * a) as f64,
        (((a + 2.0) * rf - (a + 3.0)) * rf * rf + 1.0) as f64,
        (((a + 2.0) * s - (a + 3.0)) * s * s + 1.0) as f64,
        (((a * q - 5.0 * a) * q + 8.0 * a) * q - 4.0 * a) as f64,
    ]
}

fn axis_taps(node: &Node, cfg: &Cfg, nin: usize, nout: usize, scale: f64, roi: (f64, f64)) -> Result<Taps> {
    if nin == 0 && nout > 0 {
        return Err(Error::node(node, "cannot resize an empty axis to a non-empty one"));
    }
    let fin = nin as f64;
    let out_w = scale * fin;
    let (n, start, s_k) = match cfg.mode {
        Mode::Nearest => (1usize, 0i64, 1.0),
        Mode::Linear | Mode::Cubic => {
            let support = if cfg.mode == Mode::Linear { 1.0 } else { 2.0 };
            let s_k = if cfg.antialias { scale.min(1.0) } else { 1.0 };
            let start = (-support / s_k).floor() + 1.0;
            let n = 2.0 - 2.0 * start;
            if !(1.0..=(1u64 << 20) as f64).contains(&n) || n * nout as f64 > limits::MAX_ELEMENTS as f64 / 16.0 {
                return Err(Error::node(node, format!("scale {scale} needs too large an antialiasing filter")));
            }
            (n as usize, start as i64, s_k)
        }
    };
    let mut t =
        Taps { n, idx: Vec::with_capacity(n * nout), w: Vec::with_capacity(n * nout), extrap: vec![false; nout] };
    let last = nin.saturating_sub(1) as i64;
    let mut inside = Vec::with_capacity(n);
    for (y, ex) in t.extrap.iter_mut().enumerate() {
        let yf = y as f64;
        let x = match cfg.coord {
            Coord::AlignCorners => {
                if out_w == 1.0 {
                    0.0
                } else {
                    yf * (fin - 1.0) / (out_w - 1.0)
                }
            }
            Coord::Asymmetric => yf / scale,
            Coord::TfCropAndResize => {
                let (r0, r1) = roi;
                let v = if out_w == 1.0 {
                    (r1 - r0) * (fin - 1.0) / 2.0
                } else {
                    yf * (r1 - r0) * (fin - 1.0) / (out_w - 1.0)
                };
                let v = v + r0 * (fin - 1.0);
                *ex = v < 0.0 || v > fin - 1.0;
                v
            }
            // The spec (and onnxruntime) map a single output position to 0;
            // the numpy reference uses -0.5, which differs only for cubic.
            Coord::PytorchHalfPixel => {
                if nout <= 1 {
                    0.0
                } else {
                    (yf + 0.5) / scale - 0.5
                }
            }
            Coord::HalfPixel => (yf + 0.5) / scale - 0.5,
            Coord::HalfPixelSymmetric => {
                let adj = nout as f64 / out_w;
                let offset = fin / 2.0 * (1.0 - adj);
                offset + (yf + 0.5) / scale - 0.5
            }
        };
        if !x.is_finite() {
            return Err(Error::node(node, format!("invalid source coordinate {x} (scale {scale})")));
        }
        let fl = x.floor();
        let integral = x == fl;
        if cfg.mode == Mode::Nearest {
            let frac = x - fl;
            let up = match cfg.nearest {
                _ if integral => false,
                Nearest::RoundPreferFloor => frac > 0.5,
                Nearest::RoundPreferCeil => frac >= 0.5,
                Nearest::Floor => false,
                Nearest::Ceil => true,
                Nearest::Simple => scale < 1.0,
            };
            let j = (fl as i64).saturating_add(up as i64);
            t.idx.push(j.clamp(0, last) as usize);
            t.w.push(1.0);
            continue;
        }
        // Neighbours j = x0 + start + k, with the ratio x - x0 in (0, 1].
        let x0 = if integral { (fl as i64).saturating_sub(1) } else { fl as i64 };
        let ratio = x - x0 as f64;
        let cubic = cubic_weights(ratio, cfg.cubic_a);
        let base = t.w.len();
        inside.clear();
        for k in 0..n as i64 {
            let i = start + k;
            let j = x0.saturating_add(i);
            let d = (i as f64 - ratio) * s_k;
            let w = match (cfg.mode, cfg.antialias) {
                (Mode::Linear, false) => [1.0 - ratio, ratio][k as usize & 1],
                (Mode::Linear, true) => (1.0 - d.abs()).clamp(0.0, 1.0),
                (_, false) => cubic[k as usize & 3],
                (_, true) => keys_cubic(d, cfg.cubic_a) as f64,
            };
            t.w.push(w);
            t.idx.push(j.clamp(0, last) as usize);
            inside.push((0..=last).contains(&j));
        }
        let normalize = |w: &mut [f64]| {
            let sum: f64 = w.iter().sum();
            if sum != 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
        };
        if cfg.antialias && cfg.mode == Mode::Cubic {
            // In f32, like the reference.
            let sum: f32 = t.w[base..].iter().fold(0.0, |acc, &w| acc + w as f32);
            if sum != 0.0 {
                t.w[base..].iter_mut().for_each(|w| *w = (*w as f32 / sum) as f64);
            }
        } else if cfg.antialias {
            normalize(&mut t.w[base..]);
        }
        if cfg.exclude_outside {
            t.w[base..].iter_mut().zip(&inside).filter(|(_, &ins)| !ins).for_each(|(w, _)| *w = 0.0);
            normalize(&mut t.w[base..]);
        }
    }
    Ok(t)
}

fn resize(node: &Node, cfg: &Cfg, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
    let x = req(node, inputs, 0)?;
    let r = x.rank();
    let axes = match &cfg.axes {
        Some(a) => axes_list(node, a, r)?,
        None => (0..r).collect(),
    };
    let na = axes.len();
    let scales: Option<Vec<f64>> = match (&cfg.attr_scales, cfg.scales_input) {
        (Some(s), _) => Some(s.iter().map(|&v| v as f64).collect()),
        (None, Some(i)) => match opt(inputs, i) {
            Some(t) if t.numel() > 0 => {
                if !t.dtype().is_float() {
                    return Err(Error::node(node, format!("scales must be a float tensor, got {}", t.dtype())));
                }
                Some(t.to_f64_vec())
            }
            _ => None,
        },
        _ => None,
    };
    let sizes = match cfg.sizes_input.and_then(|i| opt(inputs, i)) {
        Some(t) if t.numel() > 0 => Some(ints(node, t, "sizes")?),
        _ => None,
    };
    let in_shape = x.shape();
    let mut scale = vec![1.0f64; r];
    let mut out_shape = in_shape.to_vec();
    match (scales, sizes) {
        (Some(_), Some(_)) => return Err(Error::node(node, "only one of scales and sizes may be given")),
        (None, None) => return Err(Error::node(node, "one of scales and sizes must be given")),
        (Some(s), None) => {
            if s.len() != na {
                return Err(Error::node(node, format!("scales {s:?} must have {na} entries")));
            }
            for (i, &a) in axes.iter().enumerate() {
                if !(s[i] > 0.0 && s[i].is_finite()) {
                    return Err(Error::node(node, format!("scale {} must be positive", s[i])));
                }
                scale[a] = s[i];
                let o = (s[i] * in_shape[a] as f64).floor();
                out_shape[a] = super::dim(node, o.min(i64::MAX as f64) as i64, "output")?;
            }
        }
        (None, Some(z)) => {
            if z.len() != na {
                return Err(Error::node(node, format!("sizes {z:?} must have {na} entries")));
            }
            let z = z.iter().map(|&v| super::dim(node, v, "sizes")).collect::<Result<Vec<_>>>()?;
            let ratio = |i: usize| z[i] as f64 / in_shape[axes[i]] as f64;
            match cfg.aspect {
                Aspect::Stretch => {
                    for (i, &a) in axes.iter().enumerate() {
                        out_shape[a] = z[i];
                        scale[a] = ratio(i);
                    }
                }
                Aspect::NotLarger | Aspect::NotSmaller => {
                    let rs = (0..na).map(ratio);
                    let s = if cfg.aspect == Aspect::NotLarger {
                        rs.fold(f64::INFINITY, f64::min)
                    } else {
                        rs.fold(f64::NEG_INFINITY, f64::max)
                    };
                    for &a in &axes {
                        scale[a] = s;
                        let o = (s * in_shape[a] as f64 + 0.5).floor();
                        if !o.is_finite() {
                            return Err(Error::node(node, "cannot keep the aspect ratio of an empty input"));
                        }
                        out_shape[a] = super::dim(node, o.min(i64::MAX as f64) as i64, "output")?;
                    }
                }
            }
        }
    }
    numel(node, &out_shape)?;
    let mut roi = vec![(0.0f64, 1.0f64); r];
    if cfg.coord == Coord::TfCropAndResize {
        if let Some(t) = cfg.roi_input.and_then(|i| opt(inputs, i)).filter(|t| t.numel() > 0) {
            let v = t.to_f64_vec();
            if v.len() != 2 * na {
                return Err(Error::node(node, format!("roi must have {} entries, got {}", 2 * na, v.len())));
            }
            for (i, &a) in axes.iter().enumerate() {
                roi[a] = (v[i], v[na + i]);
            }
        }
    }
    let mut plan: Vec<Option<Taps>> = Vec::with_capacity(r);
    for a in 0..r {
        let identity = !axes.contains(&a)
            || ((scale[a] - 1.0).abs() <= 1e-9 * scale[a].abs().max(1.0)
                && out_shape[a] == in_shape[a]
                && roi[a] == (0.0, 1.0));
        plan.push(if identity {
            None
        } else {
            Some(axis_taps(node, cfg, in_shape[a], out_shape[a], scale[a], roi[a])?)
        });
    }
    let extrapolates = plan.iter().flatten().any(|t| t.extrap.iter().any(|&e| e));
    if cfg.mode == Mode::Nearest && !extrapolates {
        let st = strides(in_shape);
        let maps = plan
            .iter()
            .enumerate()
            .map(|(a, p)| match p {
                None => Src::step(st[a]),
                Some(t) => Src::Table(t.idx.iter().map(|&i| i * st[a]).collect()),
            })
            .collect();
        let mut out = ctx.alloc(x.dtype(), &out_shape)?;
        gather_copy(out.bytes_mut(), x.bytes(), x.dtype().size(), &out_shape, maps)?;
        return Ok(vec![out]);
    }
    let n_out = numel(node, &out_shape)?;
    match x.dtype() {
        DType::F32 => {
            let mut out = ctx.alloc(DType::F32, &out_shape)?;
            run_passes::<f32>(
                x.as_slice::<f32>()?,
                in_shape,
                &plan,
                cfg.extrapolation,
                true,
                out.as_mut_slice::<f32>()?,
            );
            Ok(vec![out])
        }
        DType::F16 | DType::BF16 => {
            let src: Vec<f32> = x.to_f64_vec().into_iter().map(|v| v as f32).collect();
            let mut buf = vec![0f32; n_out];
            run_passes::<f32>(&src, in_shape, &plan, cfg.extrapolation, true, &mut buf);
            let v: Vec<f64> = buf.into_iter().map(f64::from).collect();
            Ok(vec![Tensor::from_f64(x.dtype(), &out_shape, &v)?])
        }
        dt => {
            let mut buf = vec![0f64; n_out];
            run_passes::<f64>(&x.to_f64_vec(), in_shape, &plan, cfg.extrapolation, false, &mut buf);
            if dt != DType::F64 {
                buf.iter_mut().for_each(|v| *v = v.round_ties_even());
            }
            Ok(vec![Tensor::from_f64(dt, &out_shape, &buf)?])
        }
    }
}

trait Work: Copy + Send + Sync + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    fn of(v: f64) -> Self;
}
impl Work for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl Work for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// Runs the separable passes of `plan` over `src` (shape `in_shape`); the
/// last pass writes into `out`. `reorder` allows running the innermost axis
/// first (integer outputs keep the reference order, so that ties round alike).
fn run_passes<F: Work>(
    src: &[F],
    in_shape: &[usize],
    plan: &[Option<Taps>],
    extrap: f64,
    reorder: bool,
    out: &mut [F],
) {
    let mut active: Vec<(usize, &Taps)> =
        plan.iter().enumerate().filter_map(|(a, p)| p.as_ref().map(|t| (a, t))).collect();
    // The pass over the innermost axis is scalar (the others run over
    // contiguous rows): do it first when that gives it fewer outputs.
    if reorder && active.len() > 1 {
        if let Some(&(a, _)) = active.last().filter(|(a, _)| *a + 1 == in_shape.len()) {
            let before: usize = in_shape[..a].iter().product();
            let after: usize =
                plan[..a].iter().zip(in_shape).map(|(p, &d)| p.as_ref().map_or(d, |t| t.extrap.len())).product();
            if before < after {
                active.rotate_right(1);
            }
        }
    }
    if active.is_empty() {
        out.copy_from_slice(src);
        return;
    }
    let mut shape = in_shape.to_vec();
    let mut cur: Option<Vec<F>> = None;
    for (k, &(a, t)) in active.iter().enumerate() {
        let input: &[F] = cur.as_deref().unwrap_or(src);
        let mut next_shape = shape.clone();
        next_shape[a] = t.extrap.len();
        if k + 1 == active.len() {
            resample_axis(input, &shape, a, t, F::of(extrap), out);
        } else {
            let mut buf = vec![F::default(); next_shape.iter().product()];
            resample_axis(input, &shape, a, t, F::of(extrap), &mut buf);
            cur = Some(buf);
        }
        shape = next_shape;
    }
}

/// One separable pass: `out[o, y, i] = sum_k w[y, k] * src[o, idx[y, k], i]`.
fn resample_axis<F: Work>(src: &[F], shape: &[usize], a: usize, t: &Taps, extrap: F, dst: &mut [F]) {
    let nin = shape[a];
    let inner: usize = shape[a + 1..].iter().product();
    let nout = t.extrap.len();
    if dst.is_empty() || nout * inner == 0 {
        return;
    }
    let w: Vec<F> = t.w.iter().map(|&v| F::of(v)).collect();
    let per_outer = |(o, d): (usize, &mut [F])| {
        let s = &src[o * nin * inner..(o + 1) * nin * inner];
        if inner == 1 {
            for (y, dv) in d.iter_mut().enumerate() {
                *dv = if t.extrap[y] {
                    extrap
                } else {
                    let taps = y * t.n..(y + 1) * t.n;
                    t.idx[taps.clone()].iter().zip(&w[taps]).fold(F::default(), |acc, (&j, &wk)| acc + wk * s[j])
                };
            }
            return;
        }
        for (y, drow) in d.chunks_mut(inner).enumerate() {
            if t.extrap[y] {
                drow.fill(extrap);
                continue;
            }
            drow.fill(F::default());
            for k in 0..t.n {
                let wk = w[y * t.n + k];
                let j = t.idx[y * t.n + k];
                for (dv, &sv) in drow.iter_mut().zip(&s[j * inner..(j + 1) * inner]) {
                    *dv = *dv + wk * sv;
                }
            }
        }
    };
    if dst.len() >= 1 << 16 {
        dst.par_chunks_mut(nout * inner).enumerate().for_each(per_outer);
    } else {
        dst.chunks_mut(nout * inner).enumerate().for_each(per_outer);
    }
}
