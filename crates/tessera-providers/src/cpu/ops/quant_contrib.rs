//! ONNX Runtime's quantized contrib operators (domain `com.microsoft`), which
//! its QOperator quantizer writes around QLinearConv and QLinearMatMul:
//! QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearAveragePool,
//! QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax and QGemm.
//!
//! Their 8-bit tensors carry one scale and one zero point each (QGemm's B
//! one per column too). Each operator computes what dequantizing, running
//! the float operator in f32 and quantizing again gives, rounding half to
//! even and saturating. ONNX Runtime adds the output zero point before
//! rounding in QLinearAdd, QLinearMul and QLinearAveragePool, and after it
//! in the others; each operator here does as ONNX Runtime does, so that the
//! outputs are the same bytes (`scripts/gen_contrib_tests.py` checks both
//! orders with ties and odd zero points). QLinearSoftmax adds it before
//! rounding too, unchecked: its cases have the even zero points softmax
//! outputs use (0, -128), where both orders agree. It is also the exception
//! to "the same bytes": ONNX Runtime takes its exponentials from a table,
//! and at some output scales (0.003, not 1/256 or 0.01) a value lands one
//! step apart.

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use tessera_core::{Attr, DType, Error, Node, Result, Tensor};

use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{opt, req};

const DOMAIN: &str = "com.microsoft";

pub fn register(r: &mut OpRegistry) {
    r.add_domain(DOMAIN, "QLinearAdd", build_binary);
    r.add_domain(DOMAIN, "QLinearMul", build_binary);
    r.add_domain(DOMAIN, "QLinearGlobalAveragePool", build_global_average);
    r.add_domain(DOMAIN, "QLinearAveragePool", build_average_pool);
    r.add_domain(DOMAIN, "QLinearConcat", build_concat);
    r.add_domain(DOMAIN, "QLinearSigmoid", build_table);
    r.add_domain(DOMAIN, "QLinearLeakyRelu", build_table);
    r.add_domain(DOMAIN, "QLinearSoftmax", build_softmax);
    r.add_domain(DOMAIN, "QGemm", build_qgemm);
}

/// One tensor's quantization grid: its 8-bit type, scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Grid {
    scale: f32,
    zero: i32,
    signed: bool,
}

impl Grid {
    fn range(self) -> (f32, f32) {
        if self.signed {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        }
    }

    /// The real value of stored byte `b`.
    fn value(self, b: u8) -> f32 {
        let v = if self.signed { b as i8 as i32 } else { b as i32 };
        (v - self.zero) as f32 * self.scale
    }

    /// `v` quantized onto the grid, as its stored byte.
    fn quantize(self, v: f32) -> u8 {
        self.store(v / self.scale)
    }

    /// A value already in steps of the grid (`v / scale`), rounded half to
    /// even, moved by the zero point and saturated, as its stored byte
    /// (QuantizeLinear's order).
    fn store(self, steps: f32) -> u8 {
        self.byte(steps.round_ties_even() + self.zero as f32)
    }

    /// [`Grid::store`] with the zero point added before rounding, as ONNX
    /// Runtime's QLinearAdd, QLinearMul and QLinearAveragePool do (and, here,
    /// QLinearSoftmax): with an odd zero point a tie rounds the other way.
    fn store_zero_first(self, steps: f32) -> u8 {
        let (lo, hi) = self.range();
        // Clamped to integers first, so that adding and taking away 1.5 * 2^23
        // rounds half to even in the default rounding mode (and vectorizes,
        // where `round_ties_even` calls into libm without SSE4.1).
        let t = (steps + self.zero as f32).clamp(lo, hi);
        self.byte((t + 12_582_912.0) - 12_582_912.0)
    }

    /// An integral value as the stored byte, saturated; NaN gives 0.
    fn byte(self, q: f32) -> u8 {
        let (lo, hi) = self.range();
        let q = if q.is_nan() { 0.0 } else { q.clamp(lo, hi) };
        if self.signed {
            q as i8 as u8
        } else {
            q as u8
        }
    }
}

fn eight_bit(node: &Node, dtype: DType, what: &str) -> Result<bool> {
    match dtype {
        DType::U8 => Ok(false),
        DType::I8 => Ok(true),
        d => Err(Error::node(node, format!("{what} must be uint8 or int8, got {d}"))),
    }
}

/// The grid of an 8-bit tensor of type `dtype` from its scale (input
/// `scale`) and optional zero point (input `zero`), both scalars.
fn grid(node: &Node, inputs: &[Option<&Tensor>], scale: usize, zero: usize, dtype: DType) -> Result<Grid> {
    let signed = eight_bit(node, dtype, "a quantized tensor")?;
    let s = req(node, inputs, scale)?;
    if s.dtype() != DType::F32 || s.numel() != 1 {
        return Err(Error::node(
            node,
            format!("input {scale} (a scale) must be one f32 value, got {} {:?}", s.dtype(), s.shape()),
        ));
    }
    let scale_v = s.as_slice::<f32>()?[0];
    if !(scale_v.is_finite() && scale_v > 0.0) {
        return Err(Error::node(node, format!("input {scale} (a scale) must be positive and finite, got {scale_v}")));
    }
    let zero_v = match opt(inputs, zero) {
        None => 0,
        Some(z) if z.numel() != 1 || z.dtype() != dtype => {
            return Err(Error::node(
                node,
                format!("input {zero} (a zero point) must be one {dtype} value, got {} {:?}", z.dtype(), z.shape()),
            ))
        }
        Some(z) if signed => z.bytes()[0] as i8 as i32,
        Some(z) => z.bytes()[0] as i32,
    };
    Ok(Grid { scale: scale_v, zero: zero_v, signed })
}

/// An 8-bit tensor's real values, in f32.
fn dequantize(x: &Tensor, g: Grid, ctx: &mut RunCtx) -> Result<Tensor> {
    let mut y = ctx.alloc_for_overwrite(DType::F32, x.shape())?;
    let table: Vec<f32> = (0..=255u8).map(|b| g.value(b)).collect();
    y.as_mut_slice::<f32>()?.par_chunks_mut(1 << 14).zip(x.bytes().par_chunks(1 << 14)).for_each(|(o, i)| {
        for (o, &b) in o.iter_mut().zip(i) {
            *o = table[b as usize];
        }
    });
    Ok(y)
}

/// f32 values quantized onto `g`, as a tensor of `g`'s type, the zero
/// point added before rounding (see [`Grid::store_zero_first`]).
fn quantize_zero_first(x: &Tensor, g: Grid, ctx: &mut RunCtx) -> Result<Tensor> {
    let mut y = ctx.alloc_for_overwrite(if g.signed { DType::I8 } else { DType::U8 }, x.shape())?;
    y.bytes_mut().par_chunks_mut(1 << 14).zip(x.as_slice::<f32>()?.par_chunks(1 << 14)).for_each(|(o, i)| {
        for (o, &v) in o.iter_mut().zip(i) {
            *o = g.store_zero_first(v / g.scale);
        }
    });
    Ok(y)
}

/// The float operators these are defined by.
fn float_ops() -> &'static OpRegistry {
    static OPS: OnceLock<OpRegistry> = OnceLock::new();
    OPS.get_or_init(OpRegistry::with_all_ops)
}

/// `node`'s float counterpart: `op_type` of the default domain at `opset`,
/// with `node`'s attributes less `drop`, taking `inputs` (names only
/// describe it; the caller passes the tensors).
fn float_op(node: &Node, op_type: &str, opset: i64, inputs: usize, drop: &[&str]) -> Result<Box<dyn CpuOp>> {
    let mut n = node.clone();
    n.domain.clear();
    n.op_type = op_type.into();
    n.inputs = (0..inputs).map(|i| format!("x{i}")).collect();
    n.outputs.truncate(1);
    for a in drop {
        n.attrs.remove(*a);
    }
    let build =
        float_ops().get("", op_type).ok_or_else(|| Error::node(node, format!("no float {op_type} to run it by")))?;
    build(&n, &BuildCtx { opset, constant: &|_| None })
}

fn first_output(node: &Node, mut outs: Vec<Tensor>) -> Result<Tensor> {
    if outs.is_empty() {
        return Err(Error::node(node, "the float operator gave no output"));
    }
    Ok(outs.swap_remove(0))
}

/// QLinearAdd and QLinearMul: `(A, A_scale, A_zero_point, B, B_scale,
/// B_zero_point, C_scale, C_zero_point)` with broadcasting.
fn build_binary(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let float = float_op(node, if node.op_type == "QLinearAdd" { "Add" } else { "Mul" }, 14, 2, &[])?;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let (a, b) = (req(&node, inputs, 0)?, req(&node, inputs, 3)?);
        if a.dtype() != b.dtype() {
            return Err(Error::node(&node, format!("A is {} but B is {}", a.dtype(), b.dtype())));
        }
        let (ga, gb, gc) = (
            grid(&node, inputs, 1, 2, a.dtype())?,
            grid(&node, inputs, 4, 5, b.dtype())?,
            grid(&node, inputs, 6, 7, a.dtype())?,
        );
        let (fa, fb) = (dequantize(a, ga, ctx)?, dequantize(b, gb, ctx)?);
        let y = first_output(&node, float.run(&[Some(&fa), Some(&fb)], ctx)?)?;
        let out = quantize_zero_first(&y, gc, ctx)?;
        for t in [fa, fb, y] {
            ctx.release(t);
        }
        Ok(vec![out])
    }))
}

/// The axis permutation that takes a channels-last tensor (`[N, d..., C]`)
/// to channels-first (`[N, C, d...]`), or back when `back`.
fn channels_perm(rank: usize, back: bool) -> Vec<usize> {
    if back {
        let mut p = vec![0];
        p.extend(2..rank);
        p.push(1);
        p
    } else {
        let mut p = vec![0, rank - 1];
        p.extend(1..rank - 1);
        p
    }
}

/// `x` with its axes permuted, by the CPU provider's Transpose.
fn transpose(node: &Node, x: &Tensor, perm: &[usize], ctx: &mut RunCtx) -> Result<Tensor> {
    let perm = Attr::Ints(perm.iter().map(|&p| p as i64).collect());
    let t = Node::new("Transpose", &node.name, &["x"], &["y"]).with_attr("perm", perm);
    let op = float_op(&t, "Transpose", 13, 1, &[])?;
    first_output(node, op.run(&[Some(x)], ctx)?)
}

fn channels_last(node: &Node) -> Result<bool> {
    Ok(node.attr_int_or("channels_last", 0)? != 0)
}

/// QLinearGlobalAveragePool `(X, x_scale, x_zero_point, y_scale,
/// y_zero_point)`: each channel's sum in integers, less the zero point,
/// times `x_scale / (y_scale * count)`.
fn build_global_average(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let last = channels_last(&node)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let (gx, gy) = (grid(&node, inputs, 1, 2, x.dtype())?, grid(&node, inputs, 3, 4, x.dtype())?);
        let shape = x.shape();
        if shape.len() < 3 {
            return Err(Error::node(
                &node,
                format!("X must have a batch, a channel and a spatial axis, got {shape:?}"),
            ));
        }
        let (n, c) = (shape[0], if last { shape[shape.len() - 1] } else { shape[1] });
        let plane: usize = if last { shape[1..shape.len() - 1].iter().product() } else { shape[2..].iter().product() };
        if plane == 0 {
            return Err(Error::node(&node, "X has no spatial positions to average"));
        }
        let mut out_shape = vec![1usize; shape.len()];
        out_shape[0] = n;
        out_shape[if last { shape.len() - 1 } else { 1 }] = c;
        let mut y = ctx.alloc_for_overwrite(x.dtype(), &out_shape)?;
        let xs = x.bytes();
        let mult = gx.scale / (gy.scale * plane as f32);
        let value = |b: u8| if gx.signed { b as i8 as i64 } else { b as i64 };
        let finish = |sum: i64| {
            let acc = (sum - gx.zero as i64 * plane as i64) as f32;
            gy.store(acc * mult)
        };
        let ys = y.bytes_mut();
        ys.par_iter_mut().enumerate().for_each(|(o, out)| {
            let (ni, ci) = (o / c, o % c);
            let sum: i64 = if last {
                (0..plane).map(|p| value(xs[(ni * plane + p) * c + ci])).sum()
            } else {
                xs[(ni * c + ci) * plane..][..plane].iter().map(|&b| value(b)).sum()
            };
            *out = finish(sum);
        });
        Ok(vec![y])
    }))
}

/// QLinearAveragePool `(X, x_scale, x_zero_point, y_scale, y_zero_point)`
/// with AveragePool's attributes, channels first or last.
fn build_average_pool(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let float = float_op(node, "AveragePool", 19, 1, &["channels_last"])?;
    let last = channels_last(node)?;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let (gx, gy) = (grid(&node, inputs, 1, 2, x.dtype())?, grid(&node, inputs, 3, 4, x.dtype())?);
        if x.rank() < 3 {
            return Err(Error::node(
                &node,
                format!("X must have a batch, a channel and a spatial axis, got {:?}", x.shape()),
            ));
        }
        // Channels last: pooled channels first, the bytes moved both ways.
        let first = if last { Some(transpose(&node, x, &channels_perm(x.rank(), false), ctx)?) } else { None };
        let fx = dequantize(first.as_ref().unwrap_or(x), gx, ctx)?;
        let y = first_output(&node, float.run(&[Some(&fx)], ctx)?)?;
        let out = quantize_zero_first(&y, gy, ctx)?;
        for t in [Some(fx), Some(y), first].into_iter().flatten() {
            ctx.release(t);
        }
        if last {
            let back = transpose(&node, &out, &channels_perm(out.rank(), true), ctx)?;
            ctx.release(out);
            return Ok(vec![back]);
        }
        Ok(vec![out])
    }))
}

/// QLinearConcat `(Y_scale, Y_zero_point, X0, X0_scale, X0_zero_point,
/// ...)`: each input requantized onto Y's grid (one 256-entry table per
/// input), then concatenated.
fn build_concat(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    if node.inputs.len() < 5 || !(node.inputs.len() - 2).is_multiple_of(3) {
        return Err(Error::node(
            node,
            format!("takes Y's scale and zero point and then triples, got {} inputs", node.inputs.len()),
        ));
    }
    let parts = (node.inputs.len() - 2) / 3;
    let float = float_op(node, "Concat", 13, parts, &[])?;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let first = req(&node, inputs, 2)?;
        let gy = grid(&node, inputs, 0, 1, first.dtype())?;
        let mut owned = Vec::with_capacity(parts);
        for p in 0..parts {
            let x = req(&node, inputs, 2 + 3 * p)?;
            if x.dtype() != first.dtype() {
                return Err(Error::node(
                    &node,
                    format!("input {} is {} but the first is {}", 2 + 3 * p, x.dtype(), first.dtype()),
                ));
            }
            let gx = grid(&node, inputs, 3 + 3 * p, 4 + 3 * p, x.dtype())?;
            owned.push(if gx == gy { None } else { Some(requantize(x, gx, gy, ctx)?) });
        }
        let refs: Vec<Option<&Tensor>> = (0..parts)
            .map(|p| match &owned[p] {
                Some(t) => Some(t),
                None => inputs[2 + 3 * p],
            })
            .collect();
        let y = first_output(&node, float.run(&refs, ctx)?)?;
        for t in owned.into_iter().flatten() {
            ctx.release(t);
        }
        Ok(vec![y])
    }))
}

/// `x` moved from grid `from` onto grid `to`.
fn requantize(x: &Tensor, from: Grid, to: Grid, ctx: &mut RunCtx) -> Result<Tensor> {
    map_bytes(x, &table(|b| to.quantize(from.value(b))), if to.signed { DType::I8 } else { DType::U8 }, ctx)
}

fn table(f: impl Fn(u8) -> u8) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (b, v) in t.iter_mut().enumerate() {
        *v = f(b as u8);
    }
    t
}

fn map_bytes(x: &Tensor, t: &[u8; 256], dtype: DType, ctx: &mut RunCtx) -> Result<Tensor> {
    let mut y = ctx.alloc_for_overwrite(dtype, x.shape())?;
    y.bytes_mut().par_chunks_mut(1 << 16).zip(x.bytes().par_chunks(1 << 16)).for_each(|(o, i)| {
        for (o, &b) in o.iter_mut().zip(i) {
            *o = t[b as usize];
        }
    });
    Ok(y)
}

/// QLinearSigmoid and QLinearLeakyRelu `(X, X_scale, X_zero_point,
/// Y_scale, Y_zero_point)`: a function of one byte, so one 256-entry table
/// per run.
fn build_table(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let alpha = match node.attrs.get("alpha") {
        Some(Attr::Float(a)) => *a,
        Some(_) => return Err(Error::node(node, "alpha must be a float")),
        None => 0.01,
    };
    let sigmoid = node.op_type == "QLinearSigmoid";
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let (gx, gy) = (grid(&node, inputs, 1, 2, x.dtype())?, grid(&node, inputs, 3, 4, x.dtype())?);
        let f = |v: f32| {
            if sigmoid {
                1.0 / (1.0 + (-v).exp())
            } else if v >= 0.0 {
                v
            } else {
                alpha * v
            }
        };
        let y = map_bytes(x, &table(|b| gy.quantize(f(gx.value(b)))), x.dtype(), ctx)?;
        Ok(vec![y])
    }))
}

/// QLinearSoftmax `(X, X_scale, x_zero_point, y_scale, y_zero_point)` with
/// Softmax's `axis` as of the ONNX opset its `opset` attribute names (before
/// 13, the axes from `axis` on are flattened into one).
fn build_softmax(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let opset = node.attr_int("opset")?.ok_or_else(|| Error::node(node, "QLinearSoftmax needs its opset attribute"))?;
    let float = float_op(node, "Softmax", opset.clamp(1, 13), 1, &["opset"])?;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let (gx, gy) = (grid(&node, inputs, 1, 2, x.dtype())?, grid(&node, inputs, 3, 4, x.dtype())?);
        let fx = dequantize(x, gx, ctx)?;
        let y = first_output(&node, float.run(&[Some(&fx)], ctx)?)?;
        ctx.release(fx);
        let out = quantize_zero_first(&y, gy, ctx)?;
        ctx.release(y);
        Ok(vec![out])
    }))
}

/// QGemm's B' as `[N, K]` i16 values less their zero points (one, or one
/// per column).
struct QGemmB {
    values: Vec<i16>,
    n: usize,
    k: usize,
}

impl QGemmB {
    fn new(node: &Node, b: &Tensor, zero: Option<&Tensor>, trans_b: bool) -> Result<QGemmB> {
        let signed = eight_bit(node, b.dtype(), "B")?;
        if b.rank() != 2 {
            return Err(Error::node(node, format!("B must be a matrix, got {:?}", b.shape())));
        }
        let (k, n) = if trans_b { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
        // |(a - za)(b - zb)| <= 255 * 255: longer sums could wrap an i32.
        if k > 33_025 {
            return Err(Error::node(node, format!("K = {k} is longer than i32 sums of 8-bit products hold exactly")));
        }
        let byte = |v: u8| if signed { v as i8 as i16 } else { v as i16 };
        let zeros: Vec<i16> = match zero {
            None => vec![0],
            Some(z) if z.dtype() != b.dtype() || !(z.numel() == 1 || z.numel() == n) => {
                return Err(Error::node(node, format!("b_zero_point must be one or {n} values of B's type")))
            }
            Some(z) => z.bytes().iter().map(|&v| byte(v)).collect(),
        };
        let bb = b.bytes();
        let mut values = vec![0i16; n * k];
        for (j, row) in values.chunks_mut(k.max(1)).enumerate() {
            let zj = zeros[if zeros.len() == 1 { 0 } else { j }];
            for (p, v) in row.iter_mut().enumerate() {
                *v = byte(if trans_b { bb[j * k + p] } else { bb[p * n + j] }) - zj;
            }
        }
        Ok(QGemmB { values, n, k })
    }
}

/// QGemm `(A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale,
/// y_zero_point)`: `alpha * a_scale * b_scale * (A'B' + C)` with C an i32
/// bias broadcast to `[M, N]`, B's scale and zero point per tensor or per
/// column; quantized onto y's grid when `y_zero_point` is given, else f32
/// (divided by `y_scale` if that alone is given, as ONNX Runtime does).
fn build_qgemm(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let alpha = match node.attrs.get("alpha") {
        Some(Attr::Float(a)) => *a,
        Some(_) => return Err(Error::node(node, "alpha must be a float")),
        None => 1.0,
    };
    let (trans_a, trans_b) = (node.attr_int_or("transA", 0)? != 0, node.attr_int_or("transB", 0)? != 0);
    // A constant B (the usual weight) is converted once, not on every run.
    let prepared = match (bctx.const_input(node, 3), node.input(5).map(|_| bctx.const_input(node, 5))) {
        (Some(b), None) => Some(Arc::new(QGemmB::new(node, &b, None, trans_b)?)),
        (Some(b), Some(Some(z))) => Some(Arc::new(QGemmB::new(node, &b, Some(&z), trans_b)?)),
        _ => None,
    };
    let node = Arc::new(node.clone());
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let node = &*node;
        let a = req(node, inputs, 0)?;
        if a.rank() != 2 {
            return Err(Error::node(node, format!("A must be a matrix, got {:?}", a.shape())));
        }
        let ga = grid(node, inputs, 1, 2, a.dtype())?;
        let own;
        let bp = match &prepared {
            Some(p) => p,
            None => {
                own = QGemmB::new(node, req(node, inputs, 3)?, opt(inputs, 5), trans_b)?;
                &own
            }
        };
        let (n, k) = (bp.n, bp.k);
        let (m, ka) = if trans_a { (a.shape()[1], a.shape()[0]) } else { (a.shape()[0], a.shape()[1]) };
        if ka != k {
            return Err(Error::node(node, format!("A' is {m}x{ka} but B' is {k}x{n}")));
        }
        // Y's size, checked (A and B may hold no values while m * n is huge).
        let y_len = tessera_core::tensor::checked_numel(&[m, n])?;
        let b_scale = req(node, inputs, 4)?;
        if b_scale.dtype() != DType::F32 || (b_scale.numel() != 1 && b_scale.numel() != n) {
            return Err(Error::node(node, format!("b_scale must be f32 with 1 or {n} values")));
        }
        let b_scales = b_scale.as_slice::<f32>()?;
        // A' as [M, K] less its zero point.
        let ab = a.bytes();
        let byte = |v: u8| (if ga.signed { v as i8 as i16 } else { v as i16 }) - ga.zero as i16;
        let mut a16 = vec![0i16; m * k];
        for (r, row) in a16.chunks_mut(k.max(1)).enumerate() {
            for (p, v) in row.iter_mut().enumerate() {
                *v = byte(if trans_a { ab[p * m + r] } else { ab[r * k + p] });
            }
        }
        let bt16 = &bp.values;
        let mut acc = vec![0i32; y_len];
        tessera_kernels::quant::igemm_i16_par(m, n, k, &a16, bt16, &mut acc);
        if let Some(c) = opt(inputs, 6) {
            let cs =
                c.as_slice::<i32>().map_err(|_| Error::node(node, format!("C must be int32, got {}", c.dtype())))?;
            let (cr, cc) = match c.shape() {
                [] => (1, 1),
                [x] => (1, *x),
                [r, x] => (*r, *x),
                s => return Err(Error::node(node, format!("C of shape {s:?} does not broadcast to [{m}, {n}]"))),
            };
            if !(cr == 1 || cr == m) || !(cc == 1 || cc == n) {
                return Err(Error::node(node, format!("C of shape {:?} does not broadcast to [{m}, {n}]", c.shape())));
            }
            for (i, v) in acc.iter_mut().enumerate() {
                let (r, j) = (i / n, i % n);
                *v = v.wrapping_add(cs[(if cr == 1 { 0 } else { r }) * cc + if cc == 1 { 0 } else { j }]);
            }
        }
        let mult: Vec<f32> =
            (0..n).map(|j| alpha * ga.scale * b_scales[if b_scales.len() == 1 { 0 } else { j }]).collect();
        // Without y_zero_point Y is float (as ONNX Runtime's schema has it),
        // divided by y_scale when that is given.
        let Some(y_zero) = opt(inputs, 8) else {
            let per = match opt(inputs, 7) {
                Some(s) if s.dtype() == DType::F32 && s.numel() == 1 => s.as_slice::<f32>()?[0],
                Some(s) => {
                    return Err(Error::node(node, format!("y_scale must be one f32 value, got {:?}", s.shape())))
                }
                None => 1.0,
            };
            let mut y = ctx.alloc_for_overwrite(DType::F32, &[m, n])?;
            for (i, (o, &v)) in y.as_mut_slice::<f32>()?.iter_mut().zip(&acc).enumerate() {
                *o = v as f32 * mult[i % n] / per;
            }
            return Ok(vec![y]);
        };
        let gy = grid(node, inputs, 7, 8, y_zero.dtype())?;
        let y_dtype = y_zero.dtype();
        let mult: Vec<f32> = mult.iter().map(|s| s / gy.scale).collect();
        let mut y = ctx.alloc_for_overwrite(y_dtype, &[m, n])?;
        for (i, (o, &v)) in y.bytes_mut().iter_mut().zip(&acc).enumerate() {
            *o = gy.store(v as f32 * mult[i % n]);
        }
        Ok(vec![y])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::run_node;

    fn ms(op: &str, inputs: &[&str]) -> Node {
        let mut n = Node::new(op, "q", inputs, &["y"]);
        n.domain = DOMAIN.into();
        n
    }

    fn u8t(shape: &[usize], v: &[u8]) -> Option<Tensor> {
        Some(Tensor::from_slice(shape, v).unwrap())
    }

    fn f(v: f32) -> Option<Tensor> {
        Some(Tensor::scalar(v))
    }

    fn z(v: u8) -> Option<Tensor> {
        Some(Tensor::scalar(v))
    }

    #[test]
    fn qlinear_add_by_hand() {
        // (10 - 2) * 0.5 + (7 - 1) * 0.25 = 5.5; 5.5 / 0.5 + 3 = 14.
        // (0 - 2) * 0.5 + (1 - 1) * 0.25 = -1; -2 + 3 = 1. Saturates at 0 and 255.
        let n = ms("QLinearAdd", &["a", "as", "az", "b", "bs", "bz", "cs", "cz"]);
        let y = run_node(
            &n,
            1,
            &[u8t(&[4], &[10, 0, 255, 2]), f(0.5), z(2), u8t(&[4], &[7, 1, 255, 0]), f(0.25), z(1), f(0.5), z(3)],
        )
        .unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[14, 1, 255, 2]);
    }

    #[test]
    fn global_average_by_hand() {
        let n = ms("QLinearGlobalAveragePool", &["x", "xs", "xz", "ys", "yz"]);
        let y =
            run_node(&n, 1, &[u8t(&[1, 2, 2, 2], &[1, 2, 3, 6, 200, 100, 4, 4]), f(0.5), z(4), f(1.0), z(10)]).unwrap();
        assert_eq!(y[0].shape(), &[1, 2, 1, 1]);
        // Channel sums less 4 zero points, times 0.5 / 4 positions, plus 10:
        // (12 - 16) * 0.125 = -0.5 rounds half to even to 0 -> 10;
        // (308 - 16) * 0.125 = 36.5 -> 36 -> 46.
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[10, 46]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let add = ms("QLinearAdd", &["a", "as", "az", "b", "bs", "bz", "cs", "cz"]);
        let i8t = Some(Tensor::from_slice(&[1], &[1i8]).unwrap());
        let ok = [u8t(&[1], &[1]), f(1.0), z(0), u8t(&[1], &[1]), f(1.0), z(0), f(1.0), z(0)];
        assert!(run_node(&add, 1, &ok).is_ok());
        let mut bad = ok.clone();
        bad[3] = i8t.clone();
        let err = run_node(&add, 1, &bad).unwrap_err().to_string();
        assert!(err.contains(&format!("A is {} but B is {}", DType::U8, DType::I8)), "{err}");
        for s in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let mut bad = ok.clone();
            bad[1] = f(s);
            assert!(run_node(&add, 1, &bad).unwrap_err().to_string().contains("positive and finite"), "{s}");
        }
        let mut bad = ok.clone();
        bad[2] = Some(Tensor::scalar(0i8));
        assert!(run_node(&add, 1, &bad).unwrap_err().to_string().contains("zero point"));
        let mut bad = ok.clone();
        bad[0] = Some(Tensor::from_slice(&[1], &[1.0f32]).unwrap());
        bad[3] = bad[0].clone();
        assert!(run_node(&add, 1, &bad).is_err());
        // QGemm: K must agree; QLinearConcat: triples; QLinearSoftmax: its opset.
        let gemm = ms("QGemm", &["a", "as", "az", "b", "bs", "bz"]);
        let a = Some(Tensor::from_slice(&[2, 3], &[1u8; 6]).unwrap());
        let b = Some(Tensor::from_slice(&[4, 5], &[1i8; 20]).unwrap());
        let err = run_node(&gemm, 1, &[a, f(1.0), z(0), b, f(1.0), None]).unwrap_err().to_string();
        assert!(err.contains("2x3 but B' is 4x5"), "{err}");
        // No values, but a 2^20 x 2^20 output: an error, not an allocation.
        let a = Some(Tensor::from_slice(&[1 << 20, 0], &[] as &[u8]).unwrap());
        let b = Some(Tensor::from_slice(&[0, 1 << 20], &[] as &[i8]).unwrap());
        assert!(run_node(&gemm, 1, &[a, f(1.0), z(0), b, f(1.0), None]).is_err());
        let cat = ms("QLinearConcat", &["ys", "yz", "x", "xs"]);
        assert!(run_node(&cat, 1, &[f(1.0), z(0), u8t(&[1], &[1]), f(1.0)]).is_err());
        let sm = ms("QLinearSoftmax", &["x", "xs", "xz", "ys", "yz"]);
        assert!(run_node(&sm, 1, &[u8t(&[1], &[1]), f(1.0), z(0), f(1.0), z(0)])
            .unwrap_err()
            .to_string()
            .contains("opset"));
    }
}
