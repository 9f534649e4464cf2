//! Quantization operators: QuantizeLinear, DequantizeLinear (per tensor,
//! per axis and blocked), DynamicQuantizeLinear, and the integer products
//! MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv, and the
//! optimizer's `tessera:FusedMatMulInteger` (MatMulInteger with its
//! dequantization and epilogue).
//!
//! Integer products subtract zero points into i16 (u8/i8 minus a zero point
//! always fits), accumulate in i32 and, for the QLinear forms, requantize
//! with round-half-to-even and saturation.

use std::borrow::Cow;
use std::sync::Arc;

use half::{bf16, f16};
use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::conv::ConvGeom;
use tessera_kernels::depthwise::{depthwise_planes, int8_sums_exact_in_f32, DepthwisePlan, PlaneSource};
use tessera_kernels::gemm::{Epilogue, Requantize, Residual};
use tessera_kernels::quant::{conv_i16, igemm_i16, requantize_plane_f32};

use super::nn::common::{to_f32_vec, Spatial};
use super::nn::conv_geom;
use super::nn::matmul::{plan_matmul, MatMulPlan};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{norm_axis, opt, req};

pub fn register(r: &mut OpRegistry) {
    r.add("QuantizeLinear", build_quantize);
    r.add("DequantizeLinear", build_dequantize);
    r.add("DynamicQuantizeLinear", build_dynamic_quantize);
    r.add("MatMulInteger", build_matmul_integer);
    r.add("ConvInteger", build_conv_integer);
    r.add("QLinearMatMul", build_qlinear_matmul);
    r.add("QLinearConv", build_qlinear_conv);
    r.add_domain("tessera", "FusedMatMulInteger", build_fused_matmul_integer);
}

/// Range of an integer quantized type.
fn qrange(node: &Node, d: DType) -> Result<(f64, f64)> {
    Ok(match d {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::I32 => (i32::MIN as f64, i32::MAX as f64),
        d => return Err(tessera_core::unsupported!("node '{}': quantized type {d}", node.name)),
    })
}

/// Integer tensor values as i32.
fn int_vals(node: &Node, t: &Tensor) -> Result<Vec<i32>> {
    Ok(match t.dtype() {
        DType::U8 => t.as_slice::<u8>()?.iter().map(|&v| v as i32).collect(),
        DType::I8 => t.as_slice::<i8>()?.iter().map(|&v| v as i32).collect(),
        DType::U16 => t.as_slice::<u16>()?.iter().map(|&v| v as i32).collect(),
        DType::I16 => t.as_slice::<i16>()?.iter().map(|&v| v as i32).collect(),
        DType::I32 => t.as_slice::<i32>()?.to_vec(),
        d => return Err(Error::node(node, format!("expected a quantized integer tensor, got {d}"))),
    })
}

/// Writes f64 values (already rounded and clamped) into an integer tensor.
fn store_ints(out: &mut Tensor, vals: impl IndexedParallelIterator<Item = f64>) -> Result<()> {
    macro_rules! st {
        ($t:ty) => {
            out.as_mut_slice::<$t>()?.par_iter_mut().zip(vals).for_each(|(o, v)| *o = v as $t)
        };
    }
    match out.dtype() {
        DType::U8 => st!(u8),
        DType::I8 => st!(i8),
        DType::U16 => st!(u16),
        DType::I16 => st!(i16),
        DType::I32 => st!(i32),
        d => return Err(Error::Other(format!("cannot store quantized values as {d}"))),
    }
    Ok(())
}

/// How a scale / zero-point tensor maps onto the elements of `x`.
#[derive(Clone, Debug)]
struct ParamMap {
    /// Elements after the quantization axis.
    inner: usize,
    /// Size of the axis in x.
    dim: usize,
    /// Size of the axis in the parameter (dim for per-axis, blocks for blocked).
    pdim: usize,
    /// Block length along the axis; 0 for per-axis parameters.
    block: usize,
    per_tensor: bool,
}

impl ParamMap {
    fn new(node: &Node, x: &[usize], p: &[usize], axis: i64, block_size: i64) -> Result<ParamMap> {
        let n: usize = p.iter().product();
        if n == 1 && block_size <= 0 {
            return Ok(ParamMap { inner: 1, dim: 1, pdim: 1, block: 0, per_tensor: true });
        }
        let a = norm_axis(node, axis, x.len())?;
        let inner: usize = x[a + 1..].iter().product();
        let dim = x[a];
        if block_size > 0 {
            let b = block_size as usize;
            let ok = p.len() == x.len()
                && p.iter()
                    .zip(x)
                    .enumerate()
                    .all(|(i, (&pd, &xd))| if i == a { pd == xd.div_ceil(b) } else { pd == xd });
            if !ok {
                return Err(Error::node(
                    node,
                    format!("blocked parameters {p:?} do not fit input {x:?} with block_size {b} on axis {a}"),
                ));
            }
            return Ok(ParamMap { inner, dim, pdim: p[a], block: b, per_tensor: false });
        }
        if p.len() != 1 || p[0] != dim {
            return Err(Error::node(node, format!("parameters of shape {p:?} do not match axis {a} of input {x:?}")));
        }
        Ok(ParamMap { inner, dim, pdim: dim, block: 0, per_tensor: false })
    }

    #[inline]
    fn index(&self, i: usize) -> usize {
        if self.per_tensor {
            return 0;
        }
        let a = (i / self.inner) % self.dim;
        if self.block == 0 {
            return a;
        }
        let outer = i / (self.inner * self.dim);
        (outer * self.pdim + a / self.block) * self.inner + i % self.inner
    }
}

fn build_quantize(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let axis = node.attr_int_or("axis", 1)?;
    let block_size = node.attr_int_or("block_size", 0)?;
    let out_attr = node.attr_int_or("output_dtype", 0)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let scale = req(&node, inputs, 1)?;
        let zp = opt(inputs, 2);
        let out_dt = match (zp, out_attr) {
            (Some(z), _) => z.dtype(),
            (None, 0) => DType::U8,
            (None, c) => DType::from_onnx(c as i32)?,
        };
        let (lo, hi) = qrange(&node, out_dt)?;
        let map = ParamMap::new(&node, x.shape(), scale.shape(), axis, block_size)?;
        if let Some(z) = zp {
            if z.numel() != scale.numel() {
                return Err(Error::node(&node, "zero point and scale shapes differ"));
            }
        }
        let ss = to_f32_vec(scale);
        let zs: Vec<f32> = match zp {
            Some(z) => int_vals(&node, z)?.into_iter().map(|v| v as f32).collect(),
            None => vec![0.0; ss.len()],
        };
        // The common case (an activation of a QDQ model) in chunks that
        // vectorize; the general path below converts and indexes per value.
        let signed = out_dt == DType::I8;
        if map.per_tensor && x.dtype() == DType::F32 && (signed || out_dt == DType::U8) {
            let mut out = ctx.alloc_for_overwrite(out_dt, x.shape())?;
            // int8 values are written as their bit patterns.
            let y = out.bytes_mut();
            tessera_kernels::quant::quantize_linear_8bit(x.as_slice::<f32>()?, y, ss[0], zs[0] as i32, signed);
            return Ok(vec![out]);
        }
        let xs = to_f32_vec(x);
        let mut out = ctx.alloc(out_dt, x.shape())?;
        let vals = xs.par_iter().enumerate().map(|(i, &v)| {
            let p = map.index(i);
            let q = (v / ss[p]).round_ties_even() as f64 + zs[p] as f64;
            if q.is_nan() {
                0.0
            } else {
                q.clamp(lo, hi)
            }
        });
        store_ints(&mut out, vals)?;
        Ok(vec![out])
    }))
}

/// DequantizeLinear's common case, 8-bit values with one scale to fp32, in
/// chunks that vectorize (the general path indexes the parameters per
/// element); the same arithmetic, `(v - zero) * scale`. None when the case
/// does not apply.
fn dequantize_per_tensor_8bit(
    node: &Node,
    x: &Tensor,
    map: &ParamMap,
    ss: &[f32],
    zp: Option<&Tensor>,
    out_dt: DType,
    ctx: &mut RunCtx,
) -> Result<Option<Tensor>> {
    if !map.per_tensor || out_dt != DType::F32 || !matches!(x.dtype(), DType::U8 | DType::I8) || ss.len() != 1 {
        return Ok(None);
    }
    let z = match zp {
        Some(z) if z.dtype() != x.dtype() || z.numel() != 1 => return Ok(None),
        Some(z) => int_vals(node, z)?[0] as f32,
        None => 0.0,
    };
    let s = ss[0];
    let mut out = ctx.alloc_for_overwrite(DType::F32, x.shape())?;
    let o = out.as_mut_slice::<f32>()?;
    const CHUNK: usize = 1 << 14;
    fn run<V: Copy + Into<i32> + Sync>(xs: &[V], o: &mut [f32], z: f32, s: f32) {
        o.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(oc, xc)| {
            for (d, &v) in oc.iter_mut().zip(xc) {
                *d = (v.into() as f32 - z) * s;
            }
        });
    }
    match x.dtype() {
        DType::U8 => run(x.as_slice::<u8>()?, o, z, s),
        _ => run(x.as_slice::<i8>()?, o, z, s),
    }
    Ok(Some(out))
}

fn build_dequantize(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let axis = node.attr_int_or("axis", 1)?;
    let block_size = node.attr_int_or("block_size", 0)?;
    let out_attr = node.attr_int_or("output_dtype", 0)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let scale = req(&node, inputs, 1)?;
        let zp = opt(inputs, 2);
        if !scale.dtype().is_float() {
            return Err(Error::node(&node, format!("scale must be a float tensor, got {}", scale.dtype())));
        }
        let out_dt = if out_attr != 0 { DType::from_onnx(out_attr as i32)? } else { scale.dtype() };
        if !out_dt.is_float() {
            return Err(Error::node(&node, format!("output type must be float, got {out_dt}")));
        }
        let map = ParamMap::new(&node, x.shape(), scale.shape(), axis, block_size)?;
        let ss = to_f32_vec(scale);
        if let Some(out) = dequantize_per_tensor_8bit(&node, x, &map, &ss, zp, out_dt, ctx)? {
            return Ok(vec![out]);
        }
        let xs = int_vals(&node, x)?;
        let zs: Vec<f32> = match zp {
            Some(z) if z.dtype() != x.dtype() => {
                return Err(Error::node(&node, "zero point type differs from the input's"))
            }
            Some(z) if z.numel() != scale.numel() => {
                return Err(Error::node(&node, "zero point and scale shapes differ"))
            }
            Some(z) => int_vals(&node, z)?.into_iter().map(|v| v as f32).collect(),
            None => vec![0.0; ss.len()],
        };
        let f = |i: usize, v: i32| {
            let p = map.index(i);
            (v as f32 - zs[p]) * ss[p]
        };
        let mut out = ctx.alloc(out_dt, x.shape())?;
        match out_dt {
            DType::F32 => {
                out.as_mut_slice::<f32>()?.par_iter_mut().zip(&xs).enumerate().for_each(|(i, (o, &v))| *o = f(i, v))
            }
            DType::F64 => out
                .as_mut_slice::<f64>()?
                .par_iter_mut()
                .zip(&xs)
                .enumerate()
                .for_each(|(i, (o, &v))| *o = f(i, v) as f64),
            DType::F16 => out
                .as_mut_slice::<f16>()?
                .par_iter_mut()
                .zip(&xs)
                .enumerate()
                .for_each(|(i, (o, &v))| *o = f16::from_f32(f(i, v))),
            DType::BF16 => out
                .as_mut_slice::<bf16>()?
                .par_iter_mut()
                .zip(&xs)
                .enumerate()
                .for_each(|(i, (o, &v))| *o = bf16::from_f32(f(i, v))),
            d => return Err(Error::node(&node, format!("unsupported output type {d}"))),
        }
        Ok(vec![out])
    }))
}

fn build_dynamic_quantize(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        if !x.dtype().is_float() {
            return Err(Error::node(&node, format!("input must be float, got {}", x.dtype())));
        }
        if x.dtype() == DType::F32 {
            let mut y = ctx.alloc_for_overwrite(DType::U8, x.shape())?;
            let (scale, zero) = tessera_kernels::quant::dynamic_quantize_u8(x.as_slice::<f32>()?, y.as_mut_slice()?);
            return Ok(vec![y, Tensor::scalar(scale), Tensor::scalar(zero)]);
        }
        let xs = to_f32_vec(x);
        let (mut mn, mut mx) = (0.0f32, 0.0f32);
        for &v in &xs {
            if v < mn {
                mn = v;
            }
            if v > mx {
                mx = v;
            }
        }
        let scale = (if mx == mn { 1.0 } else { mx - mn }) / 255.0f32;
        let zp = (0.0 - mn / scale).clamp(0.0, 255.0).round_ties_even();
        let mut y = ctx.alloc(DType::U8, x.shape())?;
        y.as_mut_slice::<u8>()?
            .par_iter_mut()
            .zip(&xs)
            .for_each(|(o, &v)| *o = ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as u8);
        let s = Tensor::from_f64(x.dtype(), &[], &[scale as f64])?;
        let z = Tensor::scalar(zp as u8);
        Ok(vec![y, s, z])
    }))
}

/// A zero point of an integer matmul operand: one value, one per row of A
/// (or column of B), or one per row (column) of every batch matrix.
fn zp_values(node: &Node, zp: Option<&Tensor>, lines: usize, all_lines: usize, what: &str) -> Result<Vec<i32>> {
    match zp {
        None => Ok(vec![0]),
        Some(z) => {
            let n = z.numel();
            if n != 1 && n != lines && n != all_lines {
                return Err(Error::node(
                    node,
                    format!("{what} of shape {:?} matches neither a scalar nor {lines} lines", z.shape()),
                ));
            }
            int_vals(node, z)
        }
    }
}

/// `x - zp` as i16, the zero point indexed by `line(i)`.
fn sub_zp(node: &Node, t: &Tensor, zp: &[i32], line: impl Fn(usize) -> usize + Sync) -> Result<Vec<i16>> {
    if !matches!(t.dtype(), DType::U8 | DType::I8) {
        return Err(Error::node(node, format!("expected u8 or i8, got {}", t.dtype())));
    }
    if let [z] = *zp {
        // One zero point (an activation's): bytes straight to i16, in
        // chunks that vectorize, without the i32 copy and per-value index.
        let signed = t.dtype() == DType::I8;
        let z = z.clamp(-255, 255) as i16;
        let mut out = vec![0i16; t.numel()];
        out.par_chunks_mut(1 << 14).zip(t.bytes().par_chunks(1 << 14)).for_each(|(o, b)| {
            for (o, &v) in o.iter_mut().zip(b) {
                *o = if signed { v as i8 as i16 } else { v as i16 } - z;
            }
        });
        return Ok(out);
    }
    let v = int_vals(node, t)?;
    let zl = zp.len();
    Ok(v.par_iter()
        .enumerate()
        .map(|(i, &x)| {
            let z = if zl == 1 { zp[0] } else { zp[line(i) % zl] };
            (x - z).clamp(i16::MIN as i32, i16::MAX as i32) as i16
        })
        .collect())
}

/// B (`[..., K, N]`) minus its zero points, each matrix transposed to `[N, K]`.
fn pack_b(node: &Node, b: &Tensor, zp: Option<&Tensor>) -> Result<Vec<i16>> {
    let s = b.shape();
    let (k, n) = match s.len() {
        0 => return Err(Error::node(node, "B must have rank >= 1")),
        1 => (s[0], 1),
        r => (s[r - 2], s[r - 1]),
    };
    let mats = b.numel() / (k * n).max(1);
    let zpv = zp_values(node, zp, n, mats * n, "b_zero_point")?;
    let v = int_vals(node, b)?;
    if !matches!(b.dtype(), DType::U8 | DType::I8) {
        return Err(Error::node(node, format!("B must be u8 or i8, got {}", b.dtype())));
    }
    let zl = zpv.len();
    let mut out = vec![0i16; b.numel()];
    if k * n == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(k * n).enumerate().for_each(|(mi, o)| {
        let src = &v[mi * k * n..(mi + 1) * k * n];
        for j in 0..n {
            let z = if zl == 1 { zpv[0] } else { zpv[(mi * n + j) % zl] };
            for p in 0..k {
                o[j * k + p] = (src[p * n + j] - z) as i16;
            }
        }
    });
    Ok(out)
}

/// Integer batched matmul over a plan: `a` is A minus zero points
/// (row-major as A), `bt` is [`pack_b`]'s output.
fn imatmul(plan: &MatMulPlan, a: &[i16], bt: &[i16], out: &mut [i32]) {
    let (m, k, n) = (plan.m, plan.k, plan.n);
    let batch = plan.a_offsets.len();
    if m * n == 0 || batch == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let rb = m.div_ceil((2 * threads).div_ceil(batch)).clamp(8, 256);
    out[..batch * m * n].par_chunks_mut(m * n).enumerate().for_each(|(bi, ob)| {
        let (ao, bo) = (plan.a_offsets[bi], plan.b_offsets[bi]);
        ob.par_chunks_mut(rb * n).enumerate().for_each(|(ri, oc)| {
            let rows = oc.len() / n;
            let a0 = (ao + ri * rb * k).min(a.len());
            igemm_i16(rows, n, k, &a[a0..], k, &bt[bo.min(bt.len())..], k, oc, n);
        });
    });
}

/// A constant B packed once at build time (with its constant zero point).
type PackedB = Option<Arc<Vec<i16>>>;

fn prepack_b(node: &Node, bctx: &BuildCtx, b_idx: usize, zp_idx: usize) -> PackedB {
    let b = bctx.const_input(node, b_idx)?;
    let zp = match node.input(zp_idx) {
        None => None,
        Some(_) => Some(bctx.const_input(node, zp_idx)?),
    };
    pack_b(node, &b, zp.as_ref()).ok().map(Arc::new)
}

/// An integer product on a matrix unit (the tile provider): A as
/// `[rows, k]` 8-bit values and its zero points (one, or one per row) give
/// the exact i32 product with the constant 2-D B the closure was built from.
pub(crate) type TileMatMul = Arc<dyn Fn(&Tensor, &[i32]) -> Result<Vec<i32>> + Send + Sync>;

/// An integer convolution on a matrix unit: the geometry, X and its
/// (scalar) zero point give the i32 accumulations `[N, M, out...]` with the
/// constant weight the closure was built from, written over the last
/// argument (every value).
pub(crate) type TileConv = Arc<dyn Fn(&ConvGeom, &Tensor, i32, &mut [i32]) -> Result<()> + Send + Sync>;

/// Shared by MatMulInteger and QLinearMatMul: i32 accumulations and the plan.
fn int_matmul(
    node: &Node,
    a: &Tensor,
    a_zp: Option<&Tensor>,
    b: &Tensor,
    b_zp: Option<&Tensor>,
    packed: &PackedB,
    tiles: Option<&TileMatMul>,
) -> Result<(MatMulPlan, Vec<i32>, usize)> {
    let plan = plan_matmul(node, a.shape(), b.shape())?;
    let k = plan.k;
    let a_rows = a.numel() / k.max(1);
    let m_rows = if a.rank() == 1 { 1 } else { a.shape()[a.rank() - 2] };
    let azp = zp_values(node, a_zp, m_rows, a_rows, "a_zero_point")?;
    if let (Some(tiles), 2) = (tiles, b.rank()) {
        // Zero points per row of each matrix repeat over the batch.
        let per_row: Vec<i32> =
            if azp.len() == 1 || azp.len() == a_rows { azp } else { (0..a_rows).map(|r| azp[r % m_rows]).collect() };
        let acc = tiles(a, &per_row)?;
        return Ok((plan, acc, m_rows));
    }
    let a16 = sub_zp(node, a, &azp, |i| if azp.len() == m_rows { (i / k.max(1)) % m_rows } else { i / k.max(1) })?;
    let own;
    let bt: &[i16] = match packed {
        Some(p) if p.len() == b.numel() => p,
        _ => {
            own = pack_b(node, b, b_zp)?;
            &own
        }
    };
    let total: usize = plan.out_shape.iter().product();
    let mut acc = vec![0i32; total];
    imatmul(&plan, &a16, bt, &mut acc);
    Ok((plan, acc, m_rows))
}

fn build_matmul_integer(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let packed = prepack_b(&node, bctx, 1, 3);
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let a = req(&node, inputs, 0)?;
        let b = req(&node, inputs, 1)?;
        let (plan, acc, _) = int_matmul(&node, a, opt(inputs, 2), b, opt(inputs, 3), &packed, None)?;
        let mut out = ctx.alloc(DType::I32, &plan.out_shape)?;
        out.as_mut_slice::<i32>()?.copy_from_slice(&acc);
        Ok(vec![out])
    }))
}

/// The dequantization operands of `tessera:FusedMatMulInteger(A, B, a_zero,
/// b_zero, scale, [bias], [residual])`, checked against an output of shape
/// `out_shape` with `n` columns: the scale (one value or one per column),
/// the bias (likewise) and the residual (the output's shape); and the
/// output's round trip through a quantization grid, from the node's
/// attributes (see `tessera_core::passes::fuse_qdq`).
pub(crate) struct Dequant<'a> {
    pub scale: Vec<f32>,
    pub requantize: Option<Requantize>,
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
}

pub(crate) fn dequant_operands<'a>(
    node: &Node,
    inputs: &[Option<&'a Tensor>],
    out_shape: &[usize],
    n: usize,
) -> Result<Dequant<'a>> {
    let scale = scale_vals(node, req(node, inputs, 4)?, &[1, n], "scale")?;
    let bias = match opt(inputs, 5) {
        Some(b) if b.dtype() == DType::F32 && (b.numel() == 1 || b.numel() == n) => Some(b.as_slice::<f32>()?),
        Some(b) => {
            return Err(Error::node(
                node,
                format!("bias must be f32 of 1 or {n} values, got {} {:?}", b.dtype(), b.shape()),
            ))
        }
        None => None,
    };
    let residual = match opt(inputs, 6) {
        Some(r) if r.dtype() == DType::F32 && r.shape() == out_shape => Some(r.as_slice::<f32>()?),
        Some(r) => {
            return Err(Error::node(
                node,
                format!("residual must be f32 of the output's shape {out_shape:?}, got {} {:?}", r.dtype(), r.shape()),
            ))
        }
        None => None,
    };
    Ok(Dequant { scale, requantize: requantize_of(node)?, bias, residual })
}

/// The requantization a fused integer product's attributes ask for: a
/// positive finite scale and a zero point of the 8-bit type they name.
pub(crate) fn requantize_of(node: &Node) -> Result<Option<Requantize>> {
    use tessera_core::passes::fuse_qdq::{REQUANTIZE_SCALE, REQUANTIZE_SIGNED, REQUANTIZE_ZERO_POINT};
    let Some(scale) = node.attr_float(REQUANTIZE_SCALE)? else { return Ok(None) };
    let zero = node.attr_int_or(REQUANTIZE_ZERO_POINT, 0)?;
    let signed = node.attr_int_or(REQUANTIZE_SIGNED, 0)? != 0;
    let zero =
        i32::try_from(zero).map_err(|_| Error::node(node, format!("requantize zero point {zero} is out of range")))?;
    Requantize::new(scale, zero, signed).map(Some).ok_or_else(|| {
        Error::node(
            node,
            format!("requantize grid (scale {scale}, zero point {zero}, signed {signed}) is not an 8-bit grid"),
        )
    })
}

/// `act(float(MatMulInteger(A, B, a_zero, b_zero)) * scale + bias) + residual`
/// (ONNX Runtime's dynamic quantization chain, fused by the optimizer).
fn build_fused_matmul_integer(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let packed = prepack_b(&node, bctx, 1, 3);
    let activation = super::fused::parse_activation(&node)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let a = req(&node, inputs, 0)?;
        let b = req(&node, inputs, 1)?;
        let (plan, acc, _) = int_matmul(&node, a, opt(inputs, 2), b, opt(inputs, 3), &packed, None)?;
        let n = plan.n;
        let d = dequant_operands(&node, inputs, &plan.out_shape, n)?;
        let epi = Epilogue {
            alpha: 1.0,
            requantize: d.requantize,
            bias: d.bias,
            row_bias: None,
            activation,
            residual: d.residual.map(|data| Residual { data, row_stride: n }),
            residual_first: false,
        };
        let mut out = ctx.alloc_for_overwrite(DType::F32, &plan.out_shape)?;
        if n > 0 {
            let scale = &d.scale;
            let o = out.as_mut_slice::<f32>()?;
            o.par_chunks_mut(n).zip(acc.par_chunks(n)).enumerate().for_each_init(
                || vec![0f32; n],
                |tmp, (row, (dst, acc))| {
                    for (j, (t, &v)) in tmp.iter_mut().zip(acc).enumerate() {
                        *t = v as f32 * scale[if scale.len() == 1 { 0 } else { j }];
                    }
                    epi.apply_f32(tmp, row, 0, dst);
                },
            );
        }
        Ok(vec![out])
    }))
}

/// `a * b / c` rounded to the scales' own precision at each step, as the
/// reference computes it (f16 scales in f16, f32 in f32).
fn scale_ratio(dt: DType, a: f32, b: f32, c: f32) -> f64 {
    match dt {
        DType::F16 => {
            let ab = f16::from_f32(a * b).to_f32();
            f16::from_f32(ab / c).to_f64()
        }
        DType::BF16 => {
            let ab = bf16::from_f32(a * b).to_f32();
            bf16::from_f32(ab / c).to_f64()
        }
        DType::F64 => a as f64 * b as f64 / c as f64,
        _ => (a * b / c) as f64,
    }
}

/// Scale values checked against the allowed counts.
fn scale_vals(node: &Node, t: &Tensor, allowed: &[usize], what: &str) -> Result<Vec<f32>> {
    if !t.dtype().is_float() {
        return Err(Error::node(node, format!("{what} must be float, got {}", t.dtype())));
    }
    if !allowed.contains(&t.numel()) {
        return Err(Error::node(node, format!("{what} of shape {:?} is neither per-tensor nor per-line", t.shape())));
    }
    Ok(to_f32_vec(t))
}

fn build_qlinear_matmul(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    qlinear_matmul_op(node, bctx, None)
}

/// QLinearMatMul, its accumulations from `tiles` when given.
pub(crate) fn qlinear_matmul_op(node: &Node, bctx: &BuildCtx, tiles: Option<TileMatMul>) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let packed = prepack_b(&node, bctx, 3, 5);
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let a = req(&node, inputs, 0)?;
        let b = req(&node, inputs, 3)?;
        let (a_s, b_s, y_s) = (req(&node, inputs, 1)?, req(&node, inputs, 4)?, req(&node, inputs, 6)?);
        let y_zp = opt(inputs, 7);
        let (plan, acc, m_rows) = int_matmul(&node, a, opt(inputs, 2), b, opt(inputs, 5), &packed, tiles.as_ref())?;
        let n = plan.n;
        let asv = scale_vals(&node, a_s, &[1, m_rows], "a_scale")?;
        let bsv = scale_vals(&node, b_s, &[1, n], "b_scale")?;
        let ysv = scale_vals(&node, y_s, &[1, m_rows], "y_scale")?;
        let out_dt = y_zp.map_or(a.dtype(), |z| z.dtype());
        let (lo, hi) = qrange(&node, out_dt)?;
        let yz = match y_zp {
            Some(z) if z.numel() == 1 || z.numel() == ysv.len() => int_vals(&node, z)?,
            Some(_) => return Err(Error::node(&node, "y_zero_point does not match y_scale")),
            None => vec![0],
        };
        let sdt = a_s.dtype();
        let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let pick_i = |v: &[i32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let row_len = if b.rank() == 1 { 1 } else { n };
        let vals = acc.par_iter().enumerate().map(|(i, &c)| {
            let col = if b.rank() == 1 { 0 } else { i % n };
            let row = (i / row_len) % m_rows;
            let mult = scale_ratio(sdt, pick(&asv, row), pick(&bsv, col), pick(&ysv, row));
            (c as f64 * mult + pick_i(&yz, row) as f64).round_ties_even().clamp(lo, hi)
        });
        let mut out = ctx.alloc(out_dt, &plan.out_shape)?;
        store_ints(&mut out, vals)?;
        Ok(vec![out])
    }))
}

fn conv_weights(node: &Node, w: &Tensor, w_zp: Option<&Tensor>) -> Result<Vec<i16>> {
    let m = w.shape().first().copied().unwrap_or(0);
    let per = w.numel() / m.max(1);
    let wz = zp_values(node, w_zp, m, m, "w_zero_point")?;
    sub_zp(node, w, &wz, |i| i / per.max(1))
}

struct IntConv {
    sp: Spatial,
    group: usize,
    /// Weights minus zero points, prepared when both are constant.
    w_pre: Option<Arc<Vec<i16>>>,
    /// Accumulations on a matrix unit (group 1, or groups of 16 outputs or
    /// more; not depthwise).
    tiles: Option<TileConv>,
}

impl IntConv {
    fn new(node: &Node, bctx: &BuildCtx, w_idx: usize, wzp_idx: usize, tiles: Option<TileConv>) -> Result<IntConv> {
        let g = node.attr_int_or("group", 1)?;
        if !(1..=(1 << 32)).contains(&g) {
            return Err(Error::node(node, format!("group must be positive, got {g}")));
        }
        // The tile path holds its own packed weight.
        let w_pre = if tiles.is_some() {
            None
        } else {
            (|| {
                let w = bctx.const_input(node, w_idx)?;
                let zp = match node.input(wzp_idx) {
                    None => None,
                    Some(_) => Some(bctx.const_input(node, wzp_idx)?),
                };
                conv_weights(node, &w, zp.as_ref()).ok().map(Arc::new)
            })()
        };
        Ok(IntConv { sp: Spatial::parse(node)?, group: g as usize, w_pre, tiles })
    }

    /// i32 accumulations `[N, M, out...]` (a tensor from `ctx`), the
    /// geometry and output shape.
    fn run(
        &self,
        node: &Node,
        x: &Tensor,
        x_zp: Option<&Tensor>,
        w: &Tensor,
        w_zp: Option<&Tensor>,
        ctx: &mut RunCtx,
    ) -> Result<(Tensor, ConvGeom, Vec<usize>)> {
        let (g, shape) = self.geometry(node, x, x_zp, w)?;
        if let Some(tiles) = &self.tiles {
            let xz = zp_values(node, x_zp, 1, 1, "x_zero_point")?[0];
            let mut acc = ctx.alloc_for_overwrite(DType::I32, &shape)?;
            tiles(&g, x, xz, acc.as_mut_slice::<i32>()?)?;
            return Ok((acc, g, shape));
        }
        let w16 = self.weights(node, w, w_zp)?;
        let xz = zp_values(node, x_zp, 1, 1, "x_zero_point")?;
        let x16 = sub_zp(node, x, &xz, |_| 0)?;
        let mut acc = ctx.alloc(DType::I32, &shape)?;
        conv_i16(&g, &x16, &w16, acc.as_mut_slice::<i32>()?);
        Ok((acc, g, shape))
    }

    /// The geometry and output shape, X's zero point checked to have X's
    /// type (the padding value would otherwise depend on how it is cast).
    fn geometry(&self, node: &Node, x: &Tensor, x_zp: Option<&Tensor>, w: &Tensor) -> Result<(ConvGeom, Vec<usize>)> {
        let geometry = conv_geom(node, &self.sp, self.group, x.shape(), w.shape())?;
        if let Some(z) = x_zp.filter(|z| z.dtype() != x.dtype()) {
            return Err(Error::node(node, format!("x_zero_point is {} but X is {}", z.dtype(), x.dtype())));
        }
        Ok(geometry)
    }

    /// The weights minus their zero points: prepared at build when both
    /// were constant, else converted now.
    fn weights<'a>(&'a self, node: &Node, w: &Tensor, w_zp: Option<&Tensor>) -> Result<Cow<'a, [i16]>> {
        match &self.w_pre {
            Some(p) if p.len() == w.numel() => Ok(Cow::Borrowed(&p[..])),
            _ => Ok(Cow::Owned(conv_weights(node, w, w_zp)?)),
        }
    }

    /// A depthwise convolution through the padded-plane loop: its sums,
    /// exact integers in f32, one output plane at a time to `emit(channel,
    /// sums, out)`, into a new tensor of `out_dt` (`None` where that loop
    /// does not apply: not depthwise, a padded plane too large, or weights
    /// whose sums could leave f32's exact integers).
    #[allow(clippy::too_many_arguments)]
    fn depthwise<O: Copy + Send>(
        &self,
        node: &Node,
        x: &Tensor,
        x_zp: Option<&Tensor>,
        w: &Tensor,
        w_zp: Option<&Tensor>,
        out_dt: DType,
        ctx: &mut RunCtx,
        values: impl FnOnce(&mut Tensor) -> Result<&mut [O]>,
        emit: impl Fn(usize, &[f32], &mut [O]) + Sync,
    ) -> Result<Option<Tensor>> {
        if self.group < 2 || !matches!(x.dtype(), DType::U8 | DType::I8) {
            return Ok(None);
        }
        let (g, shape) = self.geometry(node, x, x_zp, w)?;
        let Some(plan) = DepthwisePlan::new(&g) else { return Ok(None) };
        let w16 = self.weights(node, w, w_zp)?;
        if !int8_sums_exact_in_f32(&w16, g.kernel_size()) {
            return Ok(None);
        }
        let wf: Vec<f32> = w16.iter().map(|&v| v as f32).collect();
        let zero = zp_values(node, x_zp, 1, 1, "x_zero_point")?[0];
        let mut out = ctx.alloc_for_overwrite(out_dt, &shape)?;
        let y = values(&mut out)?;
        let m = g.out_channels;
        let emit = |plane: usize, sums: &[f32], o: &mut [O]| emit(plane % m, sums, o);
        let bytes = x.bytes();
        let src =
            if x.dtype() == DType::I8 { PlaneSource::I8 { bytes, zero } } else { PlaneSource::U8 { bytes, zero } };
        depthwise_planes(&plan, src, &wf, |_| 0.0, y, emit);
        Ok(Some(out))
    }
}

fn build_conv_integer(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    conv_integer_op(node, bctx, None)
}

/// ConvInteger, its accumulations from `tiles` when given.
pub(crate) fn conv_integer_op(node: &Node, bctx: &BuildCtx, tiles: Option<TileConv>) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let conv = IntConv::new(&node, bctx, 1, 3, tiles)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let w = req(&node, inputs, 1)?;
        let (x_zp, w_zp) = (opt(inputs, 2), opt(inputs, 3));
        let exact = |_: usize, sums: &[f32], o: &mut [i32]| o.iter_mut().zip(sums).for_each(|(o, &v)| *o = v as i32);
        if let Some(acc) =
            conv.depthwise(&node, x, x_zp, w, w_zp, DType::I32, ctx, |t| t.as_mut_slice::<i32>(), exact)?
        {
            return Ok(vec![acc]);
        }
        let (acc, _, _) = conv.run(&node, x, x_zp, w, w_zp, ctx)?;
        Ok(vec![acc])
    }))
}

fn build_qlinear_conv(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    qlinear_conv_op(node, bctx, None)
}

/// QLinearConv, its accumulations from `tiles` when given.
pub(crate) fn qlinear_conv_op(node: &Node, bctx: &BuildCtx, tiles: Option<TileConv>) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let conv = IntConv::new(&node, bctx, 3, 5, tiles)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let w = req(&node, inputs, 3)?;
        let (x_s, w_s, y_s) = (req(&node, inputs, 1)?, req(&node, inputs, 4)?, req(&node, inputs, 6)?);
        let (x_zp, w_zp) = (opt(inputs, 2), opt(inputs, 5));
        // W's shape is checked against X's by the convolution below.
        let m = w.shape().first().copied().unwrap_or(0);
        let bias = match opt(inputs, 8) {
            Some(b) if b.numel() != m || b.dtype() != DType::I32 => {
                return Err(Error::node(&node, format!("bias must be i32 with {m} values")));
            }
            Some(b) => Some(b.as_slice::<i32>()?),
            None => None,
        };
        let xsv = scale_vals(&node, x_s, &[1], "x_scale")?;
        let wsv = scale_vals(&node, w_s, &[1, m], "w_scale")?;
        let ysv = scale_vals(&node, y_s, &[1], "y_scale")?;
        let y_zp = opt(inputs, 7);
        let out_dt = y_zp.map_or(x.dtype(), |z| z.dtype());
        let (lo, hi) = qrange(&node, out_dt)?;
        let yz = match y_zp {
            Some(z) if z.numel() == 1 => int_vals(&node, z)?[0],
            Some(_) => return Err(Error::node(&node, "y_zero_point must be a scalar")),
            None => 0,
        };
        let sdt = x_s.dtype();
        let mults: Vec<f64> =
            (0..m).map(|c| scale_ratio(sdt, xsv[0], if wsv.len() == 1 { wsv[0] } else { wsv[c] }, ysv[0])).collect();
        if matches!(out_dt, DType::U8 | DType::I8) {
            let signed = out_dt == DType::I8;
            let requantize = |ch: usize, sums: &[f32], o: &mut [u8]| {
                requantize_plane_f32(sums, o, bias.map_or(0, |b| b[ch]), mults[ch], yz, signed)
            };
            if let Some(out) =
                conv.depthwise(&node, x, x_zp, w, w_zp, out_dt, ctx, |t| Ok(t.bytes_mut()), requantize)?
            {
                return Ok(vec![out]);
            }
        }
        let (acc_t, g, shape) = conv.run(&node, x, x_zp, w, w_zp, ctx)?;
        let acc = acc_t.as_slice::<i32>()?;
        let plane = g.out_size();
        let mut out = ctx.alloc_for_overwrite(out_dt, &shape)?;
        match out_dt {
            DType::U8 | DType::I8 if m > 0 && plane > 0 => tessera_kernels::quant::requantize_planes(
                acc,
                plane,
                bias,
                &mults,
                yz,
                out_dt == DType::I8,
                out.bytes_mut(),
            ),
            _ => {
                let vals = acc.par_iter().enumerate().map(|(i, &c)| {
                    let ch = (i / plane.max(1)) % m.max(1);
                    let c = c.wrapping_add(bias.map_or(0, |b| b[ch]));
                    (c as f64 * mults[ch] + yz as f64).clamp(lo, hi).round_ties_even()
                });
                store_ints(&mut out, vals)?;
            }
        }
        ctx.release(acc_t);
        Ok(vec![out])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::{run_node, run_node_const, t_f32};
    use proptest::prelude::*;
    use tessera_core::Attr;

    #[test]
    fn quantize_dequantize_round_trip() {
        let x = t_f32(&[6], &[0., 2., 3., 1000., -254., -1000.]);
        let s = t_f32(&[], &[2.0]);
        let z = Tensor::scalar(128u8);
        let n = Node::new("QuantizeLinear", "q", &["x", "s", "z"], &["y"]);
        let y = run_node(&n, 13, &[Some(x), Some(s.clone()), Some(z.clone())]).unwrap();
        // 1.0 -> 1, 1.5 -> 2 (ties to even), saturation at both ends
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[128, 129, 130, 255, 1, 0]);
        let d = Node::new("DequantizeLinear", "d", &["y", "s", "z"], &["x"]);
        let x = run_node(&d, 13, &[Some(y[0].clone()), Some(s), Some(z)]).unwrap();
        assert_eq!(x[0].as_slice::<f32>().unwrap(), &[0., 2., 4., 254., -254., -256.]);
    }

    #[test]
    fn quantize_per_axis_and_blocked() {
        let x = t_f32(&[2, 4], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let s = t_f32(&[2], &[1., 2.]);
        let n = Node::new("QuantizeLinear", "q", &["x", "s"], &["y"]).with_attr("axis", Attr::Int(0));
        let y = run_node(&n, 13, &[Some(x.clone()), Some(s)]).unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[1, 2, 3, 4, 2, 3, 4, 4]);
        // blocks of 3 along axis 1: scales [[1, 10], [2, 20]] (last block ragged)
        let s = t_f32(&[2, 2], &[1., 10., 2., 20.]);
        let z = Tensor::from_vec(&[2, 2], vec![0i8, 1, 0, -1]).unwrap();
        let n = Node::new("QuantizeLinear", "q", &["x", "s", "z"], &["y"])
            .with_attr("axis", Attr::Int(1))
            .with_attr("block_size", Attr::Int(3));
        let y = run_node(&n, 21, &[Some(x), Some(s), Some(z)]).unwrap();
        assert_eq!(y[0].as_slice::<i8>().unwrap(), &[1, 2, 3, 1, 2, 3, 4, -1]);
    }

    #[test]
    fn dynamic_quantize_by_hand() {
        // ONNX test_dynamicquantizelinear: x = [0, 2, -3, -2.5, 1.34, 0.5]
        let x = t_f32(&[6], &[0., 2., -3., -2.5, 1.34, 0.5]);
        let n = Node::new("DynamicQuantizeLinear", "d", &["x"], &["y", "s", "z"]);
        let y = run_node(&n, 11, &[Some(x)]).unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[153, 255, 0, 26, 221, 179]);
        assert!((y[1].as_slice::<f32>().unwrap()[0] - 0.019_607_844).abs() < 1e-8);
        assert_eq!(y[2].as_slice::<u8>().unwrap(), &[153]);
    }

    #[test]
    fn matmul_integer_by_hand() {
        // ONNX test_matmulinteger
        let a = Tensor::from_vec(&[4, 3], vec![11u8, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0]).unwrap();
        let b = Tensor::from_vec(&[3, 2], vec![1u8, 4, 2, 5, 3, 6]).unwrap();
        let az = Tensor::scalar(12u8);
        let bz = Tensor::scalar(0u8);
        let n = Node::new("MatMulInteger", "m", &["a", "b", "az", "bz"], &["y"]);
        let want = [-38, -83, -44, -98, -50, -113, -56, -128];
        for consts in [vec![], vec![false, true, false, true]] {
            let y = run_node_const(
                &n,
                10,
                &[Some(a.clone()), Some(b.clone()), Some(az.clone()), Some(bz.clone())],
                &consts,
            )
            .unwrap();
            assert_eq!(y[0].as_slice::<i32>().unwrap(), &want);
        }
    }

    #[test]
    fn qlinear_matmul_by_hand() {
        // ONNX test_qlinearmatmul_2D_uint8_float32
        let a = Tensor::from_vec(&[2, 4], vec![208u8, 236, 0, 238, 3, 214, 255, 29]).unwrap();
        let b = Tensor::from_vec(&[4, 3], vec![152u8, 51, 244, 60, 26, 255, 0, 127, 246, 127, 254, 247]).unwrap();
        let n = Node::new("QLinearMatMul", "q", &["a", "as", "az", "b", "bs", "bz", "ys", "yz"], &["y"]);
        let y = run_node(
            &n,
            10,
            &[
                Some(a),
                Some(t_f32(&[1], &[0.0066])),
                Some(Tensor::from_vec(&[1], vec![113u8]).unwrap()),
                Some(b),
                Some(t_f32(&[1], &[0.00705])),
                Some(Tensor::from_vec(&[1], vec![114u8]).unwrap()),
                Some(t_f32(&[1], &[0.0107])),
                Some(Tensor::from_vec(&[1], vec![118u8]).unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[168, 115, 255, 1, 66, 151]);
    }

    #[test]
    fn conv_integer_by_hand() {
        // ONNX test_convinteger_without_padding: x = 2..11 (3x3), w = ones (2x2), x_zp = 1
        let x = Tensor::from_vec(&[1, 1, 3, 3], (2u8..11).collect::<Vec<_>>()).unwrap();
        let w = Tensor::from_vec(&[1, 1, 2, 2], vec![1u8; 4]).unwrap();
        let n = Node::new("ConvInteger", "c", &["x", "w", "xz"], &["y"]);
        let y = run_node(&n, 10, &[Some(x.clone()), Some(w.clone()), Some(Tensor::scalar(1u8))]).unwrap();
        assert_eq!(y[0].as_slice::<i32>().unwrap(), &[12, 16, 24, 28]);
        let n = n.with_attr("pads", Attr::Ints(vec![1, 1, 1, 1]));
        let y = run_node_const(&n, 10, &[Some(x.clone()), Some(w.clone()), Some(Tensor::scalar(1u8))], &[false, true])
            .unwrap();
        assert_eq!(y[0].as_slice::<i32>().unwrap(), &[1, 3, 5, 3, 5, 12, 16, 9, 11, 24, 28, 15, 7, 15, 17, 9]);
        // A zero point of another type than X's is an error (the padding
        // value would depend on how it is cast).
        let err = run_node(&n, 10, &[Some(x), Some(w), Some(Tensor::scalar(-1i8))]).unwrap_err().to_string();
        assert!(err.contains("x_zero_point is"), "{err}");
        // A depthwise convolution without output channels: an empty result.
        let x = Tensor::from_vec(&[1, 2, 4, 4], vec![3u8; 32]).unwrap();
        let w = Tensor::from_vec(&[0, 1, 3, 3], Vec::<u8>::new()).unwrap();
        let n = Node::new("ConvInteger", "c", &["x", "w"], &["y"]).with_attr("group", Attr::Int(2));
        let y = run_node(&n, 10, &[Some(x), Some(w)]).unwrap();
        assert_eq!(y[0].shape(), &[1, 0, 2, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matmul_integer_matches_naive(
            batch in 1usize..3, m in 1usize..9, k in 0usize..20, n in 1usize..9,
            signed_a in any::<bool>(), signed_b in any::<bool>(), per_line in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 256) as i32 };
            let mk = |signed: bool, vals: &[i32], shape: &[usize]| -> Tensor {
                if signed {
                    Tensor::from_vec(shape, vals.iter().map(|&v| (v - 128) as i8).collect()).unwrap()
                } else {
                    Tensor::from_vec(shape, vals.iter().map(|&v| v as u8).collect()).unwrap()
                }
            };
            let av: Vec<i32> = (0..batch * m * k).map(|_| next()).collect();
            let bv: Vec<i32> = (0..k * n).map(|_| next()).collect();
            let azv: Vec<i32> = (0..if per_line { m } else { 1 }).map(|_| next()).collect();
            let bzv: Vec<i32> = (0..if per_line { n } else { 1 }).map(|_| next()).collect();
            let a = mk(signed_a, &av, &[batch, m, k]);
            let b = mk(signed_b, &bv, &[k, n]);
            let zs = |v: &Vec<i32>| if per_line { vec![v.len()] } else { vec![] };
            let az = mk(signed_a, &azv, &zs(&azv));
            let bz = mk(signed_b, &bzv, &zs(&bzv));
            let off = |signed: bool, v: i32| if signed { v - 128 } else { v };
            let node = Node::new("MatMulInteger", "m", &["a", "b", "az", "bz"], &["y"]);
            let y = run_node(&node, 10, &[Some(a), Some(b), Some(az), Some(bz)]).unwrap();
            prop_assert_eq!(y[0].shape(), &[batch, m, n]);
            let got = y[0].as_slice::<i32>().unwrap();
            for x in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0i32;
                        for p in 0..k {
                            let a = off(signed_a, av[(x * m + i) * k + p]) - off(signed_a, azv[if per_line { i } else { 0 }]);
                            let b = off(signed_b, bv[p * n + j]) - off(signed_b, bzv[if per_line { j } else { 0 }]);
                            acc += a * b;
                        }
                        prop_assert_eq!(got[(x * m + i) * n + j], acc);
                    }
                }
            }
        }

        /// Depthwise ConvInteger and QLinearConv (the padded-plane loop in
        /// f32, or the i16 loop for a 17x17 kernel of large weights, whose
        /// sums could leave f32's exact integers) against plain integer
        /// sums and the QLinearConv definition: both 8-bit types, channel
        /// multipliers, strides, padding, per-channel weight zero points
        /// and scales, constant or run-time weights.
        #[test]
        fn depthwise_integer_convs_match_the_definition(
            n in 1usize..3, c in 1usize..5, mult in 1usize..3, h in 1usize..9, w_ in 1usize..40,
            big in any::<bool>(), stride in 1usize..3, pad in 0usize..2, signed in any::<bool>(),
            const_w in any::<bool>(), seed in any::<u64>(),
        ) {
            let k = if big { 17 } else { 3 };
            let (h, w_, pad) = if big { (h + 16, w_ + 16, pad + 4) } else { (h, w_, pad) };
            if h + 2 * pad < k || w_ + 2 * pad < k {
                return Ok(());
            }
            let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w_ + 2 * pad - k) / stride + 1);
            let m = c * mult;
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 256) as i32 };
            let off = |v: i32| if signed { v - 128 } else { v };
            let mk = |vals: &[i32], shape: &[usize]| -> Tensor {
                if signed {
                    Tensor::from_vec(shape, vals.iter().map(|&v| (v - 128) as i8).collect()).unwrap()
                } else {
                    Tensor::from_vec(shape, vals.iter().map(|&v| v as u8).collect()).unwrap()
                }
            };
            // The 17x17 kernels take every value 255 steps from its zero
            // point: their sums pass 2^24, where f32 would round them.
            let xv: Vec<i32> = (0..n * c * h * w_).map(|_| if big { 255 } else { next() }).collect();
            let wv: Vec<i32> = (0..m * k * k).map(|_| match (big, signed) { (true, true) => 0, (true, false) => 255, _ => next() }).collect();
            let xz = if big { 0 } else { next() };
            let wz: Vec<i32> = (0..m).map(|_| match (big, signed) { (true, true) => 255, (true, false) => 0, _ => next() }).collect();
            let (x, w) = (mk(&xv, &[n, c, h, w_]), mk(&wv, &[m, 1, k, k]));
            let (xzt, wzt) = (mk(&[xz], &[]), mk(&wz, &[m]));
            let mut sums = vec![0i64; n * m * oh * ow];
            for b in 0..n {
                for o in 0..m {
                    let ci = o / mult;
                    for y in 0..oh {
                        for xo in 0..ow {
                            let mut acc = 0i64;
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = ((y * stride + ky) as isize - pad as isize, (xo * stride + kx) as isize - pad as isize);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w_ as isize {
                                        continue;
                                    }
                                    let xq = off(xv[((b * c + ci) * h + iy as usize) * w_ + ix as usize]) - off(xz);
                                    acc += (xq * (off(wv[(o * k + ky) * k + kx]) - off(wz[o]))) as i64;
                                }
                            }
                            sums[((b * m + o) * oh + y) * ow + xo] = acc;
                        }
                    }
                }
            }
            let attrs = |nd: Node| nd.with_attr("group", Attr::Int(c as i64))
                .with_attr("strides", Attr::Ints(vec![stride as i64; 2]))
                .with_attr("pads", Attr::Ints(vec![pad as i64; 4]));
            let consts = [false, true, false, true];
            let ci = attrs(Node::new("ConvInteger", "c", &["x", "w", "xz", "wz"], &["y"]));
            let y = run_node_const(&ci, 10, &[Some(x.clone()), Some(w.clone()), Some(xzt.clone()), Some(wzt.clone())],
                if const_w { &consts } else { &[] }).unwrap();
            prop_assert_eq!(y[0].shape(), &[n, m, oh, ow]);
            let got: Vec<i64> = y[0].as_slice::<i32>().unwrap().iter().map(|&v| v as i64).collect();
            prop_assert_eq!(&got, &sums);
            // QLinearConv: per-channel weight scales, a bias, an odd output
            // zero point.
            let (xs, ys) = (0.02f32, 0.37f32 * (k * k) as f32);
            let ws: Vec<f32> = (0..m).map(|o| 0.01 + 0.003 * o as f32).collect();
            let bias: Vec<i32> = (0..m).map(|_| next() * 40 - 5000).collect();
            let yz = if signed { -3 } else { 131 };
            let ql = attrs(Node::new("QLinearConv", "q", &["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], &["y"]));
            let inputs = [Some(x), Some(Tensor::scalar(xs)), Some(xzt), Some(w), Some(Tensor::from_vec(&[m], ws.clone()).unwrap()),
                Some(wzt), Some(Tensor::scalar(ys)), Some(mk(&[if signed { yz + 128 } else { yz }], &[])),
                Some(Tensor::from_vec(&[m], bias.clone()).unwrap())];
            let qconsts = [false, false, false, true, true, true, false, false, true];
            let y = run_node_const(&ql, 10, &inputs, if const_w { &qconsts } else { &[] }).unwrap();
            let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
            for (i, &sum) in sums.iter().enumerate() {
                let o = (i / (oh * ow)) % m;
                // The multiplier in f32, as the operator computes it for f32 scales.
                let mult = (xs * ws[o] / ys) as f64;
                let want = ((sum + bias[o] as i64) as f64 * mult + yz as f64).clamp(lo, hi).round_ties_even();
                let byte = y[0].bytes()[i];
                let got = if signed { byte as i8 as f64 } else { byte as f64 };
                prop_assert_eq!(got, want, "value {}", i);
            }
        }
    }
}
