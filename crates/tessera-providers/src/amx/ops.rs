//! The tile provider's ops: weights packed at build time, products on
//! tiles at run time, bias/activation/residual fused into the store.

use std::sync::Arc;

use tessera_core::passes::fuse_mlp::FUSED_MLP;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::gemm::{
    tile_igemm, tile_igemm_gather, tile_mlp, tile_sgemm, tile_sgemm_rows, tile_sgemm_transposed, Activation, Epilogue,
    I8Mat, I8Out, MatRef, PackedA, PackedB, Residual, Split, TileIsa,
};

use rayon::prelude::*;
use tessera_kernels::conv::{bytes_to_channels_last, im2col, im2row, im2row_channels_last, is_pointwise, ConvGeom};

use super::TilePlan;
use crate::cpu::ops::nn::common::Spatial;
use crate::cpu::ops::nn::conv::conv_geom;
use crate::cpu::ops::quant;
use crate::cpu::registry::{BuildCtx, CpuOp, RunCtx};
use crate::cpu::util::{broadcast_strides, opt, req};

type Constant<'a> = &'a dyn Fn(&str) -> Option<Tensor>;

pub(crate) fn build(node: &Node, plan: TilePlan, isa: TileIsa, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let constant = bctx.constant;
    match (plan, node.op_type.as_str()) {
        (TilePlan::Float(split), "Conv" | "FusedConv") => Ok(Box::new(Conv::build(node, split, isa, constant)?)),
        (TilePlan::Float(split), FUSED_MLP) => Ok(Box::new(Mlp::build(node, WeightPlan::Tiles(split), isa, constant)?)),
        (TilePlan::DynamicInt8, FUSED_MLP) => Ok(Box::new(Mlp::build(node, WeightPlan::Int8, isa, constant)?)),
        (TilePlan::Float(split), _) => Ok(Box::new(Linear::build(node, WeightPlan::Tiles(split), isa, constant)?)),
        (TilePlan::DynamicInt8, _) => Ok(Box::new(Linear::build(node, WeightPlan::Int8, isa, constant)?)),
        (TilePlan::Integer, "MatMulInteger" | "FusedMatMulInteger") => {
            Ok(Box::new(MatMulInteger::build(node, isa, constant)?))
        }
        (TilePlan::Integer, "QLinearMatMul") => {
            let b = IntWeight::matmul(node, 3, 5, constant)?;
            quant::qlinear_matmul_op(node, bctx, Some(b.matmul_on(node, isa)))
        }
        (TilePlan::Integer, "ConvInteger") => {
            let w = IntWeight::conv(node, 1, 3, constant)?;
            quant::conv_integer_op(node, bctx, Some(w.conv_on(node, isa)))
        }
        (TilePlan::Integer, "QLinearConv") => {
            let w = IntWeight::conv(node, 3, 5, constant)?;
            quant::qlinear_conv_op(node, bctx, Some(w.conv_on(node, isa)))
        }
        (TilePlan::Integer, op) => Err(Error::node(node, format!("{op} is not an integer product"))),
        (TilePlan::Attention, _) if node.domain == "tessera" => {
            crate::cpu::ops::fused::attention_op(node, tessera_kernels::attention::Products::Tiles(isa))
        }
        (TilePlan::Attention, _) => {
            crate::cpu::ops::nn::attention::attention_op(node, tessera_kernels::attention::Products::Tiles(isa))
        }
    }
}

/// MatMul, Gemm or FusedMatMul on Arm SME (the weight packed once).
pub(super) fn build_sme(node: &Node, bf16: bool, constant: Constant) -> Result<Box<dyn CpuOp>> {
    // The tile ISA is unused by SME weights.
    if node.op_type == FUSED_MLP {
        return crate::cpu::ops::fused::mlp_in_two(node, &|n: &Node| build_sme(n, bf16, constant));
    }
    Ok(Box::new(Linear::build(node, WeightPlan::Sme { bf16 }, TileIsa::Emulated, constant)?))
}

/// A constant 8-bit weight packed for the int8 tiles as the `k x n`
/// right-hand side, its zero point (per tensor or per column) folded in:
/// one per group of a grouped convolution (`k x n` each), else one.
struct IntWeight {
    packed: Arc<Vec<PackedB>>,
    k: usize,
    n: usize,
}

impl IntWeight {
    fn zero_points(node: &Node, zp: usize, w: &Tensor, n: usize, signed: bool, constant: Constant) -> Result<Vec<i32>> {
        match node.input(zp) {
            None => Ok(vec![0]),
            Some(z) => {
                let z = constant(z).ok_or_else(|| Error::node(node, "weight zero point must be a constant"))?;
                if z.dtype() != w.dtype() || !(z.numel() == 1 || z.numel() == n) || z.rank() > 1 {
                    return Err(Error::node(
                        node,
                        format!("weight zero point {:?} must be a scalar or [{n}] of the weight's type", z.shape()),
                    ));
                }
                Ok(z.bytes().iter().map(|&v| if signed { v as i8 as i32 } else { v as i32 }).collect())
            }
        }
    }

    fn signed(node: &Node, w: &Tensor) -> Result<bool> {
        match w.dtype() {
            DType::I8 => Ok(true),
            DType::U8 => Ok(false),
            d => Err(Error::node(node, format!("weight must be int8 or uint8, got {d}"))),
        }
    }

    /// B `[k, n]` of a matrix product.
    fn matmul(node: &Node, w_idx: usize, zp_idx: usize, constant: Constant) -> Result<IntWeight> {
        let b = weight(node, w_idx, constant)?;
        let signed = Self::signed(node, &b)?;
        if b.rank() != 2 {
            return Err(Error::node(node, "B must be 2-D"));
        }
        let (k, n) = (b.shape()[0], b.shape()[1]);
        let zero = Self::zero_points(node, zp_idx, &b, n, signed, constant)?;
        Ok(IntWeight { packed: Arc::new(vec![PackedB::from_i8(b.bytes(), k, n, signed, &zero)]), k, n })
    }

    /// A convolution weight `[M, C / groups, k...]` as one `[k*C/groups,
    /// M/groups]` right-hand side per group, its rows in (tap, channel)
    /// order as [`tessera_kernels::conv::im2row_channels_last`] writes the
    /// left one.
    fn conv(node: &Node, w_idx: usize, zp_idx: usize, constant: Constant) -> Result<IntWeight> {
        let w = weight(node, w_idx, constant)?;
        let signed = Self::signed(node, &w)?;
        if w.rank() < 3 {
            return Err(Error::node(node, format!("convolution weight {:?} needs a spatial axis", w.shape())));
        }
        let groups = node.attr_int_or("group", 1)?;
        let (m, c) = (w.shape()[0], w.shape()[1]);
        if groups < 1 || !m.is_multiple_of(groups as usize) {
            return Err(Error::node(node, format!("group {groups} does not divide the {m} output channels")));
        }
        let (groups, ck) = (groups as usize, w.numel() / m.max(1));
        let (mg, taps) = (m / groups, ck / c.max(1));
        let zero = Self::zero_points(node, zp_idx, &w, m, signed, constant)?;
        let mut packed = Vec::with_capacity(groups);
        for (gi, rows) in w.bytes().chunks((mg * ck).max(1)).enumerate() {
            let mut t = vec![0u8; mg * ck];
            for (o, row) in rows.chunks(ck.max(1)).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    let (ch, tap) = (i / taps.max(1), i % taps.max(1));
                    t[(tap * c + ch) * mg + o] = v;
                }
            }
            let zg = if zero.len() == 1 { &zero[..] } else { &zero[gi * mg..(gi + 1) * mg] };
            packed.push(PackedB::from_i8(&t, ck, mg, signed, zg));
        }
        Ok(IntWeight { packed: Arc::new(packed), k: ck, n: mg })
    }

    fn matmul_on(self, node: &Node, isa: TileIsa) -> quant::TileMatMul {
        let node = node.clone();
        Arc::new(move |a: &Tensor, a_zero: &[i32]| {
            let (k, n) = (self.k, self.n);
            let signed = match a.dtype() {
                DType::I8 => true,
                DType::U8 => false,
                d => return Err(Error::node(&node, format!("A must be int8 or uint8, got {d}"))),
            };
            if a.shape().last() != Some(&k) {
                return Err(Error::node(&node, format!("A of shape {:?} does not match B [{k}, {n}]", a.shape())));
            }
            let rows = a.numel() / k.max(1);
            if a_zero.len() != 1 && a_zero.len() != rows {
                return Err(Error::node(&node, format!("{} A zero points for {rows} rows", a_zero.len())));
            }
            let mut acc = vec![0i32; tessera_core::tensor::checked_numel(&[rows, n])?];
            let am = I8Mat { data: a.bytes(), rows, cols: k, row_stride: k, signed };
            tile_igemm(isa, am, a_zero, &self.packed[0], I8Out::I32 { c: &mut acc, ldc: n });
            Ok(acc)
        })
    }

    fn conv_on(self, node: &Node, isa: TileIsa) -> quant::TileConv {
        let node = node.clone();
        Arc::new(move |g: &ConvGeom, x: &Tensor, x_zero: i32, acc: &mut [i32]| {
            let (ck, mg, groups) = (self.k, self.n, self.packed.len());
            let signed = match x.dtype() {
                DType::I8 => true,
                DType::U8 => false,
                d => return Err(Error::node(&node, format!("X must be int8 or uint8, got {d}"))),
            };
            // One group's channels: each group is a convolution of its own
            // (its input channels are contiguous planes of X, its output
            // channels contiguous planes of the accumulator).
            let c = g.in_channels / groups.max(1);
            let m = mg * groups;
            if g.groups != groups || c * g.kernel_size() != ck || g.out_channels != m {
                return Err(Error::node(&node, format!("convolution geometry does not match the {m}x{ck} weight")));
            }
            let g = &ConvGeom { in_channels: c, out_channels: mg, groups: 1, ..g.clone() };
            let (in_size, out_size) = (g.in_size(), g.out_size());
            if acc.len() != tessera_core::tensor::checked_numel(&[g.batch, m, out_size])? {
                return Err(Error::node(&node, "accumulator does not match the convolution"));
            }
            let pad = if signed { x_zero as i8 as u8 } else { x_zero as u8 };
            let xs = x.bytes();
            let mut image = CHANNELS_LAST_IMAGE.with(|b| b.take());
            let result = (|| -> Result<()> {
                image.resize(tessera_core::tensor::checked_numel(&[c, in_size])?, 0);
                for (ni, gi) in (0..g.batch).flat_map(|ni| (0..groups).map(move |gi| (ni, gi))) {
                    let packed = &self.packed[gi];
                    let xn = &xs[(ni * groups + gi) * c * in_size..][..c * in_size];
                    // Channels last: a tap is then a run of C bytes.
                    bytes_to_channels_last(xn, c, in_size, &mut image);
                    // `[positions, M]` stored transposed: NCHW.
                    let yn = &mut acc[(ni * groups + gi) * mg * out_size..][..mg * out_size];
                    // Blocks of positions, so that the packed A (the im2row
                    // matrix in the tiles' layout, which the driver keeps
                    // per thread) stays bounded whatever the image.
                    let block = (INT8_CONV_BLOCK_BYTES / ck.next_multiple_of(64).max(64)).max(32).next_multiple_of(32);
                    for b0 in (0..out_size).step_by(block) {
                        let nb = block.min(out_size - b0);
                        let out = I8Out::I32Transposed { c: &mut yn[b0..], ld: out_size };
                        if is_pointwise(g) {
                            // The channels-last image is the product's left side.
                            let am = I8Mat { data: &image[b0 * ck..], rows: nb, cols: ck, row_stride: ck, signed };
                            tile_igemm(isa, am, &[x_zero], packed, out);
                            continue;
                        }
                        // Each position's im2row row is made as A is packed.
                        let row = |p: usize, row: &mut [u8]| {
                            im2row_channels_last(g, &image, c, b0 + p, b0 + p + 1, row, pad);
                        };
                        tile_igemm_gather(isa, nb, ck, signed, row, &[x_zero], packed, out);
                    }
                }
                Ok(())
            })();
            CHANNELS_LAST_IMAGE.with(|b| b.set(image));
            result
        })
    }
}

/// Bytes of packed A per block of an integer convolution's positions (most
/// layers of a 224x224 network fit one block).
const INT8_CONV_BLOCK_BYTES: usize = 4 << 20;

thread_local! {
    /// The channels-last image of the last integer convolution on this
    /// thread, reused so that a run of convolutions neither allocates nor
    /// clears it (taken out while in use, as `IM2COL`).
    static CHANNELS_LAST_IMAGE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A convolution's product in blocks of output positions: `fill(p0, p1,
/// rows)` writes the im2row rows of positions `p0..p1` (spread over the
/// pool), and `multiply(b0, positions, rows)` takes each block's rows right
/// after they are written. Blocks of about 4 MiB of rows, so that the product reads
/// them from cache and `buf` stays that size whatever the image.
fn im2row_blocks<T: Copy + Default + Send>(
    buf: &mut Vec<T>,
    ck: usize,
    out_size: usize,
    fill: impl Fn(usize, usize, &mut [T]) + Sync,
    mut multiply: impl FnMut(usize, usize, &[T]),
) -> Result<()> {
    let row_bytes = std::mem::size_of::<T>() * ck.max(1);
    let block = ((4usize << 20) / row_bytes).next_multiple_of(32).min(out_size.next_multiple_of(32)).max(32);
    // Every row is written before it is read: only growth needs filling.
    let need = tessera_core::tensor::checked_numel(&[block, ck])?;
    if buf.len() < need {
        buf.resize(need, T::default());
    }
    let threads = rayon::current_num_threads().max(1);
    for b0 in (0..out_size).step_by(block) {
        let nb = block.min(out_size - b0);
        let rows = &mut buf[..nb * ck];
        let chunk = nb.div_ceil(2 * threads).max(1);
        rows.par_chunks_mut(chunk * ck.max(1)).enumerate().for_each(|(i, part)| {
            let p0 = b0 + i * chunk;
            fill(p0, p0 + part.len() / ck.max(1), part);
        });
        multiply(b0, nb, rows);
    }
    Ok(())
}

fn weight(node: &Node, i: usize, constant: Constant) -> Result<Tensor> {
    node.input(i)
        .and_then(constant)
        .ok_or_else(|| Error::node(node, format!("input {i} must be a constant for the tile provider")))
}

/// How a Linear's fp32 weight is packed and multiplied.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum WeightPlan {
    /// bf16 tiles with this split.
    Tiles(Split),
    /// Symmetric int8 per column, activations quantized per row.
    Int8,
    /// Arm SME outer products: fp32 (`false`) or bf16 pairs (`true`).
    Sme { bf16: bool },
}

enum Weight {
    /// Arm SME, fp32 operands.
    #[cfg(target_arch = "aarch64")]
    SmeF32(tessera_kernels::gemm::PackedRhs<f32>, tessera_kernels::gemm::ukernel::sme::SmeF32),
    /// Arm SME, bf16 operands and fp32 accumulators.
    #[cfg(target_arch = "aarch64")]
    SmeBf16(tessera_kernels::gemm::PackedRhs<half::bf16>, tessera_kernels::gemm::ukernel::sme::SmeBf16),
    /// bf16 tiles (any split).
    Tiles(PackedB),
    /// Symmetric int8 per column, with each column's scale.
    Int8 { packed: PackedB, scales: Vec<f32> },
}

/// Block sizes of the SME kernels: a 256-deep K block keeps a 32-column B
/// panel (32 KiB fp32) in the M4's 128 KiB L1 beside the A panel.
#[cfg(target_arch = "aarch64")]
const SME_BLOCKING: tessera_kernels::gemm::Blocking = tessera_kernels::gemm::Blocking::DEFAULT;

#[cfg(target_arch = "aarch64")]
fn sme_weight(node: &Node, bf16: bool, b: MatRef<f32>) -> Result<Weight> {
    use tessera_kernels::gemm::ukernel::sme::{SmeBf16, SmeF32};
    use tessera_kernels::gemm::PackedRhs;
    let missing = || Error::node(node, "CPU lacks FEAT_SME");
    Ok(if bf16 {
        let kern = SmeBf16::new().ok_or_else(missing)?;
        Weight::SmeBf16(PackedRhs::from_f32(&kern, SME_BLOCKING, b), kern)
    } else {
        let kern = SmeF32::new().ok_or_else(missing)?;
        Weight::SmeF32(PackedRhs::from_f32(&kern, SME_BLOCKING, b), kern)
    })
}

#[cfg(not(target_arch = "aarch64"))]
fn sme_weight(node: &Node, _: bool, _: MatRef<f32>) -> Result<Weight> {
    Err(Error::node(node, "SME kernels exist only on aarch64"))
}

/// Quantizes `b` (`k x n`, row-major) to int8 per column, symmetric.
fn quantize_columns(b: &[f32], k: usize, n: usize) -> (Vec<u8>, Vec<f32>) {
    let mut scales = vec![0f32; n];
    for row in b.chunks(n) {
        for (s, &v) in scales.iter_mut().zip(row) {
            *s = s.max(v.abs());
        }
    }
    scales.iter_mut().for_each(|s| *s = if *s > 0.0 && s.is_finite() { *s / 127.0 } else { 1.0 });
    let mut q = vec![0u8; k * n];
    for (qr, row) in q.chunks_mut(n).zip(b.chunks(n)) {
        for ((d, &v), &s) in qr.iter_mut().zip(row).zip(&scales) {
            *d = quantize_i8(v / s);
        }
    }
    (q, scales)
}

/// `x.round().clamp(-127.0, 127.0) as i8` as a byte (NaN gives 0), in a
/// form that vectorizes: `f32::round` (half away from zero) is a call to
/// `roundf` per value on the x86-64 baseline, which made quantizing
/// BERT-base's 85M weights a large part of an int8 session's creation.
/// Adding the largest float below one half with `x`'s sign and truncating
/// rounds every float as `round` does (a tie reaches the next integer, a
/// value just below a tie does not, as the sum rounds to nearest even);
/// the float-to-integer cast saturates, so the clamp after it sees
/// infinities and huge values at the i32 limits.
#[inline(always)]
fn quantize_i8(x: f32) -> u8 {
    const BELOW_HALF: f32 = 0.499_999_97;
    ((x + BELOW_HALF.copysign(x)) as i32).clamp(-127, 127) as i8 as u8
}

/// MatMul, Gemm and FusedMatMul with a constant weight.
struct Linear {
    node: Node,
    isa: TileIsa,
    weight: Arc<Weight>,
    k: usize,
    n: usize,
    alpha: f32,
    /// Gemm's beta (scales C), 1 otherwise.
    beta: f32,
    /// A constant bias (already scaled by beta): one value or one per column.
    bias: Option<Vec<f32>>,
    /// Input index of a bias (FusedMatMul) or C (Gemm) known only at run time.
    bias_input: Option<usize>,
    residual_input: Option<usize>,
    activation: Activation,
    /// Gemm takes 2-D A only.
    a_2d: bool,
}

impl Linear {
    pub(crate) fn build(node: &Node, plan: WeightPlan, isa: TileIsa, constant: Constant) -> Result<Linear> {
        let gemm = node.op_type == "Gemm";
        let fused = node.op_type == "FusedMatMul";
        let b = weight(node, 1, constant)?;
        if b.dtype() != DType::F32 || b.rank() != 2 {
            return Err(Error::node(node, "tile weights must be 2-D fp32"));
        }
        let trans_b = gemm && node.attr_int_or("transB", 0)? != 0;
        let (k, n) = if trans_b { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
        let bs = b.as_slice::<f32>()?;
        let bview = if trans_b { MatRef::row_major(bs, n, k).t() } else { MatRef::row_major(bs, k, n) };
        let weight = match plan {
            WeightPlan::Tiles(s) => Weight::Tiles(PackedB::from_f32(bview, s)),
            WeightPlan::Sme { bf16 } => sme_weight(node, bf16, bview)?,
            WeightPlan::Int8 => {
                // Row-major, row by row (an index divided per value, as
                // this was first written, was a large part of an int8
                // session's creation).
                let dense = bview.to_vec();
                let (q, scales) = quantize_columns(&dense, k, n);
                Weight::Int8 { packed: PackedB::from_i8(&q, k, n, true, &[0]), scales }
            }
        };
        let (alpha, beta) =
            if gemm { (node.attr_float_or("alpha", 1.0)?, node.attr_float_or("beta", 1.0)?) } else { (1.0, 1.0) };
        let activation = if fused {
            let a = node.attr_string("activation")?.unwrap_or_default();
            Activation::parse(&a).ok_or_else(|| Error::node(node, format!("unknown activation '{a}'")))?
        } else {
            Activation::None
        };
        // Products rounded to bf16 or int8 take the faster GELU; the
        // fp32-accurate splits keep the definition's.
        let activation = match plan {
            WeightPlan::Tiles(Split::Bf16) | WeightPlan::Int8 | WeightPlan::Sme { bf16: true } => {
                activation.for_reduced_precision()
            }
            _ => activation,
        };
        let bias_idx = (gemm || fused).then_some(2).filter(|&i| node.input(i).is_some());
        let mut bias = None;
        let mut bias_input = bias_idx;
        if let Some(c) = bias_idx.and_then(|i| node.input(i)).and_then(constant) {
            if c.dtype() != DType::F32 {
                return Err(Error::node(node, format!("bias must be fp32, got {}", c.dtype())));
            }
            // A row vector (or a scalar) is a per-column bias; other shapes
            // are added by broadcasting at run time.
            let row_like = c.numel() == 1 || (c.numel() == n && c.shape().last() == Some(&n));
            if row_like {
                bias = Some(c.as_slice::<f32>()?.iter().map(|v| v * beta).collect());
                bias_input = None;
            }
        }
        Ok(Linear {
            node: node.clone(),
            isa,
            weight: Arc::new(weight),
            k,
            n,
            alpha,
            beta,
            bias,
            bias_input,
            residual_input: fused.then_some(3).filter(|&i| node.input(i).is_some()),
            activation,
            a_2d: gemm,
        })
    }
}

/// A product's output: the tile GEMMs write every element, so a recycled
/// buffer is not zeroed first, except for an empty K (no block is finished).
fn product_output(ctx: &mut RunCtx, dtype: DType, shape: &[usize], k: usize) -> Result<Tensor> {
    if k > 0 {
        ctx.alloc_for_overwrite(dtype, shape)
    } else {
        ctx.alloc(dtype, shape)
    }
}

/// `y += scale * c`, with `c` broadcast to `y`'s shape.
fn add_broadcast(node: &Node, y: &mut [f32], y_shape: &[usize], c: &Tensor, scale: f32) -> Result<()> {
    if c.rank() > y_shape.len() || c.shape().iter().rev().zip(y_shape.iter().rev()).any(|(&a, &b)| a != 1 && a != b) {
        return Err(Error::node(node, format!("{:?} does not broadcast to {y_shape:?}", c.shape())));
    }
    let cs = c.as_slice::<f32>()?;
    let st = broadcast_strides(c.shape(), y_shape);
    let mut idx = vec![0usize; y_shape.len()];
    for v in y.iter_mut() {
        let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        *v += scale * cs[off];
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < y_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

impl CpuOp for Linear {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        let node = &self.node;
        let a = req(node, inputs, 0)?;
        if a.dtype() != DType::F32 {
            return Err(Error::node(node, format!("A must be fp32, got {}", a.dtype())));
        }
        let (k, n) = (self.k, self.n);
        if a.shape().last() != Some(&k) || (self.a_2d && a.rank() != 2) {
            return Err(Error::node(node, format!("A of shape {:?} does not match a {k}x{n} weight", a.shape())));
        }
        let rows = a.numel() / k.max(1);
        let mut y_shape = a.shape()[..a.rank() - 1].to_vec();
        y_shape.push(n);
        let mut y = product_output(ctx, DType::F32, &y_shape, k)?;
        // Run-time bias: a row vector goes into the epilogue, anything else
        // is broadcast-added afterwards (before the activation only matters
        // for FusedMatMul, whose bias is always a row vector or a scalar).
        let rt_bias = self.bias_input.and_then(|i| opt(inputs, i));
        let mut scaled: Vec<f32> = Vec::new();
        let mut late_bias = None;
        if let Some(c) = rt_bias {
            if c.dtype() != DType::F32 {
                return Err(Error::node(node, "bias must be fp32"));
            }
            if c.numel() == 1 || (c.numel() == n && c.shape().last() == Some(&n)) {
                scaled = c.as_slice::<f32>()?.iter().map(|v| v * self.beta).collect();
            } else if self.activation == Activation::None {
                late_bias = Some(c);
            } else {
                return Err(Error::node(node, format!("bias of shape {:?} is not a row vector", c.shape())));
            }
        }
        let bias = self.bias.as_deref().or((!scaled.is_empty()).then_some(scaled.as_slice()));
        let res = self.residual_input.and_then(|i| opt(inputs, i));
        let res_direct = res.filter(|r| r.shape() == y_shape.as_slice() && r.dtype() == DType::F32);
        let epi = Epilogue {
            alpha: self.alpha,
            requantize: None,
            bias,
            row_bias: None,
            activation: self.activation,
            residual: match res_direct {
                Some(r) => Some(Residual { data: r.as_slice::<f32>()?, row_stride: n }),
                None => None,
            },
            residual_first: false,
        };
        let av = MatRef::row_major(a.as_slice::<f32>()?, rows, k);
        let out = y.as_mut_slice::<f32>()?;
        let t0 = crate::profile::enabled().then(std::time::Instant::now);
        match self.weight.as_ref() {
            Weight::Tiles(pb) => tile_sgemm(self.isa, av, pb, out, n, &epi),
            #[cfg(target_arch = "aarch64")]
            Weight::SmeF32(pb, kern) => {
                tessera_kernels::gemm::vector_sgemm_packed(kern, SME_BLOCKING, av, pb, out, n, &epi)
            }
            #[cfg(target_arch = "aarch64")]
            Weight::SmeBf16(pb, kern) => {
                tessera_kernels::gemm::vector_sgemm_packed(kern, SME_BLOCKING, av, pb, out, n, &epi)
            }
            Weight::Int8 { packed, scales } => {
                tessera_kernels::gemm::tile::tile_igemm_quantizing(self.isa, av, packed, out, n, scales, &epi)
            }
        }
        if let Some(t0) = t0 {
            let kind = match self.weight.as_ref() {
                Weight::Tiles(pb) => pb.split().map_or("?", |s| s.name()),
                Weight::Int8 { .. } => "int8",
                #[cfg(target_arch = "aarch64")]
                Weight::SmeF32(..) => "sme-fp32",
                #[cfg(target_arch = "aarch64")]
                Weight::SmeBf16(..) => "sme-bf16",
            };
            let unit = if kind.starts_with("sme") { "sme" } else { self.isa.name() };
            crate::profile::record(&format!("{unit}:gemm {kind} {rows}x{n}x{k}"), t0.elapsed().as_secs_f64());
        }
        if let Some(c) = late_bias {
            add_broadcast(node, y.as_mut_slice::<f32>()?, &y_shape, c, self.beta)?;
        }
        if let (Some(r), None) = (res, res_direct) {
            if r.dtype() != DType::F32 {
                return Err(Error::node(node, "residual must be fp32"));
            }
            add_broadcast(node, y.as_mut_slice::<f32>()?, &y_shape, r, 1.0)?;
        }
        Ok(vec![y])
    }
}

/// `tessera:FusedMlp` on tiles: its two products as [`Linear`]s. Under
/// bf16 (both weights plain bf16) the hidden layer goes from the first
/// product's epilogue straight into the second one's A panels
/// ([`tile_mlp`]); under the fp32 splits and int8, and for run-time biases
/// or a residual that broadcasts, the two run one after the other.
struct Mlp {
    node: Node,
    isa: TileIsa,
    first: Linear,
    second: Linear,
}

impl Mlp {
    fn build(node: &Node, plan: WeightPlan, isa: TileIsa, constant: Constant) -> Result<Mlp> {
        let (first, second) = tessera_core::passes::fuse_mlp::split_mlp(node);
        let (first, second) =
            (Linear::build(&first, plan, isa, constant)?, Linear::build(&second, plan, isa, constant)?);
        if second.k != first.n {
            return Err(Error::node(node, format!("a {}-wide hidden layer into a {}-row weight", first.n, second.k)));
        }
        Ok(Mlp { node: node.clone(), isa, first, second })
    }

    /// Whether a run on `x` (and `residual`) hands the hidden layer over
    /// in A panels rather than running the two products apart.
    fn hands_over(&self, x: &Tensor, residual: Option<&Tensor>) -> bool {
        let (f, s) = (&self.first, &self.second);
        // Plain bf16 only: with the fp32-accurate splits the handover
        // measured slower than the two products apart (BERT-base's
        // feed-forward blocks at bf16x6, 2 threads: 55.2/56.7 against
        // 51.4/50.7 ms, `benches/results/2026-11-28-mlp-handover/`).
        let plain = |w: &Weight| matches!(w, Weight::Tiles(p) if p.split() == Some(Split::Bf16));
        plain(&f.weight)
            && plain(&s.weight)
            && x.dtype() == DType::F32
            && x.shape().last() == Some(&f.k)
            && f.k > 0
            && f.n > 0
            && f.bias_input.is_none()
            && s.bias_input.is_none()
            && residual.is_none_or(|r| r.dtype() == DType::F32 && r.shape() == self.output_shape(x).as_slice())
    }

    /// The output's shape for A `x`: x's, its last axis the second
    /// product's width.
    fn output_shape(&self, x: &Tensor) -> Vec<usize> {
        let mut y = x.shape().to_vec();
        if let Some(last) = y.last_mut() {
            *last = self.second.n;
        }
        y
    }
}

impl CpuOp for Mlp {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        let input = |i: usize| inputs.get(i).copied().flatten();
        let (f, s) = (&self.first, &self.second);
        let x = req(&self.node, inputs, 0)?;
        let res = input(5);
        let handover = self.hands_over(x, res);
        let (Weight::Tiles(b1), Weight::Tiles(b2), true) = (f.weight.as_ref(), s.weight.as_ref(), handover) else {
            return crate::cpu::ops::fused::run_in_two(&self.node, f, s, inputs, ctx);
        };
        let rows = x.numel() / f.k;
        let mut y = product_output(ctx, DType::F32, &self.output_shape(x), s.k)?;
        let epi1 = Epilogue { alpha: f.alpha, bias: f.bias.as_deref(), activation: f.activation, ..Default::default() };
        let epi2 = Epilogue {
            alpha: s.alpha,
            bias: s.bias.as_deref(),
            activation: s.activation,
            residual: match res {
                Some(r) => Some(Residual { data: r.as_slice::<f32>()?, row_stride: s.n }),
                None => None,
            },
            ..Default::default()
        };
        let t0 = crate::profile::enabled().then(std::time::Instant::now);
        let av = MatRef::row_major(x.as_slice::<f32>()?, rows, f.k);
        tile_mlp(self.isa, av, b1, &epi1, b2, y.as_mut_slice::<f32>()?, s.n, &epi2);
        if let Some(t0) = t0 {
            let split = b1.split().map_or("?", |s| s.name());
            let what = format!("{}:mlp {split} {rows}x{}x{} then x{}", self.isa.name(), f.n, f.k, s.n);
            crate::profile::record(&what, t0.elapsed().as_secs_f64());
        }
        Ok(vec![y])
    }
}

/// MatMulInteger with a constant 8-bit weight: exact i32 output; or, as
/// `tessera:FusedMatMulInteger`, the f32 output of its dequantization and
/// epilogue, finished on each output tile.
struct MatMulInteger {
    node: Node,
    isa: TileIsa,
    /// One matrix (a product has no groups).
    weight: Arc<Vec<PackedB>>,
    k: usize,
    n: usize,
    /// The fused form's activation (None: plain MatMulInteger).
    dequant: Option<Activation>,
}

impl MatMulInteger {
    fn build(node: &Node, isa: TileIsa, constant: Constant) -> Result<MatMulInteger> {
        let IntWeight { packed, k, n } = IntWeight::matmul(node, 1, 3, constant)?;
        let dequant = match node.op_type.as_str() {
            "FusedMatMulInteger" => Some(crate::cpu::ops::fused::parse_activation(node)?),
            _ => None,
        };
        Ok(MatMulInteger { node: node.clone(), isa, weight: packed, k, n, dequant })
    }
}

impl CpuOp for MatMulInteger {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        let node = &self.node;
        let a = req(node, inputs, 0)?;
        let a_signed = match a.dtype() {
            DType::I8 => true,
            DType::U8 => false,
            d => return Err(Error::node(node, format!("A must be int8 or uint8, got {d}"))),
        };
        let (k, n) = (self.k, self.n);
        if a.shape().last() != Some(&k) {
            return Err(Error::node(node, format!("A of shape {:?} does not match B [{k}, {n}]", a.shape())));
        }
        let rows = a.numel() / k.max(1);
        let a_zero: Vec<i32> = match opt(inputs, 2) {
            None => vec![0],
            Some(z) => {
                if z.dtype() != a.dtype() {
                    return Err(Error::node(node, "A zero point must have A's type"));
                }
                // Per tensor, or per row of a 2-D A.
                if !(z.numel() == 1 || (a.rank() == 2 && z.numel() == rows)) {
                    return Err(Error::node(node, format!("A zero point of shape {:?} is not supported", z.shape())));
                }
                z.bytes().iter().map(|&v| if a_signed { v as i8 as i32 } else { v as i32 }).collect()
            }
        };
        let mut y_shape = a.shape()[..a.rank() - 1].to_vec();
        y_shape.push(n);
        let am = I8Mat { data: a.bytes(), rows, cols: k, row_stride: k, signed: a_signed };
        let t0 = crate::profile::enabled().then(std::time::Instant::now);
        let y = match self.dequant {
            None => {
                let mut y = product_output(ctx, DType::I32, &y_shape, k)?;
                tile_igemm(self.isa, am, &a_zero, &self.weight[0], I8Out::I32 { c: y.as_mut_slice::<i32>()?, ldc: n });
                y
            }
            Some(activation) => {
                let d = quant::dequant_operands(node, inputs, &y_shape, n)?;
                let epi = Epilogue {
                    alpha: 1.0,
                    requantize: d.requantize,
                    bias: d.bias,
                    row_bias: None,
                    activation,
                    residual: d.residual.map(|data| Residual { data, row_stride: n }),
                    residual_first: false,
                };
                let mut y = product_output(ctx, DType::F32, &y_shape, k)?;
                let c = y.as_mut_slice::<f32>()?;
                tile_igemm(
                    self.isa,
                    am,
                    &a_zero,
                    &self.weight[0],
                    I8Out::F32 { c, ldc: n, scale_a: &[1.0], scale_b: &d.scale, epi: &epi },
                );
                y
            }
        };
        if let Some(t0) = t0 {
            crate::profile::record(&format!("{}:igemm {rows}x{n}x{k}", self.isa.name()), t0.elapsed().as_secs_f64());
        }
        Ok(vec![y])
    }
}

/// Conv (group 1, 1 to 3 spatial dims) with a constant fp32 weight, lowered
/// onto the tile GEMM, bias, residual and activation in the epilogue.
struct Conv {
    node: Node,
    isa: TileIsa,
    spatial: Spatial,
    weight: ConvWeight,
    w_shape: Vec<usize>,
    bias: Option<Vec<f32>>,
    /// `tessera:FusedConv`'s activation, applied after its residual.
    activation: Activation,
}

impl Conv {
    fn build(node: &Node, split: Split, isa: TileIsa, constant: Constant) -> Result<Conv> {
        let w = weight(node, 1, constant)?;
        if w.dtype() != DType::F32 || w.rank() < 3 || w.rank() > 5 {
            return Err(Error::node(node, "tile convolution takes an fp32 weight of rank 3 to 5"));
        }
        if node.attr_int_or("group", 1)? != 1 {
            return Err(Error::node(node, "tile convolution takes group 1"));
        }
        let m = w.shape()[0];
        let ck = w.numel() / m.max(1);
        let ws = w.as_slice::<f32>()?;
        let wm = MatRef::row_major(ws, m, ck);
        let weight = match split {
            Split::Bf16 => ConvWeight::Rows(Arc::new(PackedA::from_f32(wm))),
            _ => ConvWeight::Columns(Arc::new(PackedB::from_f32(wm.t(), split))),
        };
        let bias = match node.input(2).and_then(constant) {
            Some(b) if b.dtype() == DType::F32 && b.rank() == 1 && b.numel() == m => {
                Some(b.as_slice::<f32>()?.to_vec())
            }
            Some(b) => {
                return Err(Error::node(node, format!("bias of shape {:?} does not match {m} channels", b.shape())))
            }
            None if node.input(2).is_some() => return Err(Error::node(node, "tile convolution needs a constant bias")),
            None => None,
        };
        let activation = crate::cpu::ops::fused::parse_activation(node)?;
        Ok(Conv {
            node: node.clone(),
            isa,
            spatial: Spatial::parse(node)?,
            weight,
            w_shape: w.shape().to_vec(),
            bias,
            activation,
        })
    }
}

/// How a tile convolution holds its weight `[M, C*k]`.
enum ConvWeight {
    /// Plain bf16: the weight is the product's left operand, packed once,
    /// and the activations' im2col rows (for a pointwise convolution, its
    /// input channels as they lie) the right one: `[M, positions]` is NCHW
    /// as it comes out, and im2col copies runs of a whole output row where
    /// im2row copies a few taps at a time.
    Rows(Arc<PackedA>),
    /// Split in parts (the fp32-accurate mode): the weight is the right
    /// operand `[C*k, M]`, one im2row row per output position, and each
    /// `[positions, M]` block is stored transposed into NCHW.
    Columns(Arc<PackedB>),
}

thread_local! {
    /// The im2col block of the last tile convolution on this thread,
    /// reused so that a run of convolutions allocates nothing. Taken out
    /// while in use (not borrowed): a worker waiting inside one convolution
    /// may run another session's convolution, which then allocates its own.
    static IM2COL: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Bytes of fp32 im2col rows per block of positions: the block's packed
/// bf16 panels (half of it) then stay in L2.
const IM2COL_BLOCK_BYTES: usize = 2 << 20;

impl Conv {
    /// The product on a weight packed as the left operand.
    #[allow(clippy::too_many_arguments)]
    fn run_rows(
        &self,
        w: &PackedA,
        g: &ConvGeom,
        xs: &[f32],
        ys: &mut [f32],
        residual: Option<&[f32]>,
        epi: &Epilogue,
    ) -> Result<()> {
        let (c, m) = (g.in_channels, g.out_channels);
        let (in_size, out_size) = (g.in_size(), g.out_size());
        let ksz = g.kernel_size();
        let ck = c * ksz;
        let block =
            (IM2COL_BLOCK_BYTES / (4 * ck.max(1))).max(1).next_multiple_of(32).min(out_size.next_multiple_of(32));
        let threads = rayon::current_num_threads().max(1);
        let mut buf = IM2COL.with(|b| b.take());
        let result = (|| -> Result<()> {
            for ni in 0..g.batch {
                let xn = &xs[ni * c * in_size..(ni + 1) * c * in_size];
                let yn = &mut ys[ni * m * out_size..(ni + 1) * m * out_size];
                let rn = residual.map(|r| &r[ni * m * out_size..(ni + 1) * m * out_size]);
                let epi_at = |b0: usize| Epilogue {
                    residual: rn.map(|r| Residual { data: &r[b0..], row_stride: out_size }),
                    ..*epi
                };
                if is_pointwise(g) {
                    // The input's channels are the rows already.
                    tile_sgemm_rows(self.isa, w, MatRef::row_major(xn, ck, in_size), yn, out_size, &epi_at(0));
                    continue;
                }
                let need = tessera_core::tensor::checked_numel(&[ck, block])?;
                if buf.len() < need {
                    buf.resize(need, 0.0);
                }
                for b0 in (0..out_size).step_by(block) {
                    let nb = block.min(out_size - b0);
                    let cols = &mut buf[..ck * nb];
                    // Whole channels per task (their rows are contiguous).
                    let per = c.div_ceil(2 * threads).max(1);
                    cols.par_chunks_mut(per * ksz * nb).enumerate().for_each(|(t, part)| {
                        let c0 = t * per;
                        let cn = part.len() / (ksz * nb);
                        im2col(g, &xn[c0 * in_size..(c0 + cn) * in_size], cn, b0, b0 + nb, part);
                    });
                    let cols = MatRef::row_major(&buf[..ck * nb], ck, nb);
                    tile_sgemm_rows(self.isa, w, cols, &mut yn[b0..], out_size, &epi_at(b0));
                }
            }
            Ok(())
        })();
        IM2COL.with(|b| b.set(buf));
        result
    }
}

impl CpuOp for Conv {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        let node = &self.node;
        let x = req(node, inputs, 0)?;
        if x.dtype() != DType::F32 {
            return Err(Error::node(node, format!("X must be fp32, got {}", x.dtype())));
        }
        let (g, shape) = conv_geom(node, &self.spatial, 1, x.shape(), &self.w_shape)?;
        let (c, m) = (g.in_channels, g.out_channels);
        let (in_size, out_size) = (g.in_size(), g.out_size());
        let ck = c * g.kernel_size();
        let xs = x.as_slice::<f32>()?;
        let mut y = ctx.alloc_for_overwrite(DType::F32, &shape)?;
        let ys = y.as_mut_slice::<f32>()?;
        // A pointwise convolution's input, read transposed, is its im2col
        // matrix already.
        let pointwise = is_pointwise(&g);
        let mut rows = Vec::new();
        // FusedConv's residual: laid out like the output, as the
        // transposed store reads it.
        let residual = match opt(inputs, 3) {
            Some(r) if r.shape() != shape.as_slice() || r.dtype() != DType::F32 => {
                return Err(Error::node(
                    node,
                    format!("residual {:?} {} does not match the output {shape:?}", r.shape(), r.dtype()),
                ))
            }
            Some(r) => Some(r.as_slice::<f32>()?),
            None => None,
        };
        let weight = match &self.weight {
            ConvWeight::Rows(w) => {
                let epi = Epilogue {
                    row_bias: self.bias.as_deref(),
                    activation: self.activation,
                    residual_first: true,
                    ..Default::default()
                };
                self.run_rows(w, &g, xs, ys, residual, &epi)?;
                return Ok(vec![y]);
            }
            ConvWeight::Columns(w) => w,
        };
        let epi = Epilogue {
            bias: self.bias.as_deref(),
            activation: self.activation,
            residual_first: true,
            ..Default::default()
        };
        for ni in 0..g.batch {
            let xn = &xs[ni * c * in_size..(ni + 1) * c * in_size];
            // `[positions, M]` stored transposed: NCHW.
            let yn = &mut ys[ni * m * out_size..(ni + 1) * m * out_size];
            let rn = residual.map(|r| &r[ni * m * out_size..(ni + 1) * m * out_size]);
            let epi_at =
                |b0: usize| Epilogue { residual: rn.map(|r| Residual { data: &r[b0..], row_stride: out_size }), ..epi };
            if pointwise {
                tile_sgemm_transposed(
                    self.isa,
                    MatRef::row_major(xn, c, in_size).t(),
                    weight,
                    yn,
                    out_size,
                    &epi_at(0),
                );
                continue;
            }
            im2row_blocks(
                &mut rows,
                ck,
                out_size,
                |p0, p1, part| im2row(&g, xn, c, p0, p1, part),
                |b0, nb, r| {
                    let a = MatRef::row_major(r, nb, ck);
                    tile_sgemm_transposed(self.isa, a, weight, &mut yn[b0..], out_size, &epi_at(b0));
                },
            )?;
        }
        Ok(vec![y])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tessera_core::Attr;

    /// The definition `quantize_i8` replaces.
    fn quantize_reference(x: f32) -> u8 {
        x.round().clamp(-127.0, 127.0) as i8 as u8
    }

    #[test]
    fn weight_quantization_rounds_as_round_does_at_every_edge() {
        let below_half = f32::from_bits(0.5f32.to_bits() - 1);
        let mut edges = vec![0.0, -0.0, 0.5, -0.5, below_half, -below_half, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5];
        edges.extend([127.0, 127.49998, 127.5, 128.0, -128.5, 1e9, -1e9, 3e38, f32::INFINITY, f32::NEG_INFINITY]);
        edges.extend([f32::NAN, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 1e-45, 8388607.5, -8388607.5, 8388609.0]);
        // Each value just below and above every half-integer up to 130.
        for h in 0..=260 {
            let t = h as f32 * 0.5;
            for x in [t, f32::from_bits(t.to_bits().saturating_sub(1)), f32::from_bits(t.to_bits() + 1)] {
                edges.extend([x, -x]);
            }
        }
        for x in edges {
            assert_eq!(quantize_i8(x), quantize_reference(x), "{x:e} ({:#x})", x.to_bits());
        }
    }

    proptest! {
        #[test]
        fn weight_quantization_matches_round_on_random_floats(bits in any::<u32>(), small in -200.0f32..200.0) {
            let x = f32::from_bits(bits);
            prop_assert_eq!(quantize_i8(x), quantize_reference(x));
            prop_assert_eq!(quantize_i8(small), quantize_reference(small));
        }

        #[test]
        fn dense_weight_gathers_both_layouts(k in 1usize..20, n in 1usize..20) {
            // A weight and its transpose (Gemm's transB) give the same
            // row-major values.
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
            let bt: Vec<f32> = (0..k * n).map(|i| b[(i % k) * n + i / k]).collect();
            prop_assert_eq!(MatRef::row_major(&b, k, n).to_vec(), b.clone());
            prop_assert_eq!(MatRef::row_major(&bt, n, k).t().to_vec(), b);
        }
    }

    /// The handover runs under plain bf16 with constant biases and a
    /// residual of the output's shape; the fp32 splits, int8, a residual
    /// that broadcasts and an A of another width run the products apart.
    #[test]
    fn mlp_hands_over_only_plain_bf16_with_a_whole_residual() {
        let t = |shape: &[usize]| Tensor::from_vec(shape, vec![0.25f32; shape.iter().product()]).unwrap();
        let consts = [("w1", t(&[8, 40])), ("b1", t(&[40])), ("w2", t(&[40, 6])), ("b2", t(&[6]))];
        let constant = move |name: &str| consts.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        let mut node = Node::new("FusedMlp", "m", &["x", "w1", "b1", "w2", "b2", "r"], &["y"])
            .with_attr("activation", Attr::String(b"gelu_erf".to_vec()));
        node.domain = "tessera".into();
        let (x, whole, row) = (t(&[3, 5, 8]), t(&[3, 5, 6]), t(&[6]));
        let bf16 = Mlp::build(&node, WeightPlan::Tiles(Split::Bf16), TileIsa::Emulated, &constant).unwrap();
        assert!(bf16.hands_over(&x, Some(&whole)));
        assert!(bf16.hands_over(&x, None));
        assert!(!bf16.hands_over(&x, Some(&row)), "a residual that broadcasts");
        assert!(!bf16.hands_over(&t(&[3, 5, 9]), None), "an A of another width");
        for plan in [WeightPlan::Tiles(Split::Bf16x3), WeightPlan::Tiles(Split::Bf16x6), WeightPlan::Int8] {
            let mlp = Mlp::build(&node, plan, TileIsa::Emulated, &constant).unwrap();
            assert!(!mlp.hands_over(&x, Some(&whole)), "{plan:?}");
        }
    }

    /// Products rounded to bf16 or int8 take the GELU by pieces; the
    /// fp32-accurate splits keep the definition's (a dynamic quantization
    /// after it must land on the reference's integers).
    #[test]
    fn reduced_precisions_take_the_gelu_by_pieces() {
        let w = Tensor::from_vec(&[4, 4], vec![0.5f32; 16]).unwrap();
        let constant = move |name: &str| (name == "w").then(|| w.clone());
        for (act, plan, want) in [
            ("gelu_erf", WeightPlan::Tiles(Split::Bf16), Activation::GeluErfPieces),
            ("gelu_erf", WeightPlan::Int8, Activation::GeluErfPieces),
            ("gelu_erf", WeightPlan::Tiles(Split::Bf16x3), Activation::GeluErf),
            ("gelu_erf", WeightPlan::Tiles(Split::Bf16x6), Activation::GeluErf),
            ("relu", WeightPlan::Tiles(Split::Bf16), Activation::Relu),
        ] {
            let mut node = Node::new("FusedMatMul", "f", &["a", "w"], &["y"])
                .with_attr("activation", Attr::String(act.as_bytes().to_vec()));
            node.domain = "tessera".into();
            let linear = Linear::build(&node, plan, TileIsa::Emulated, &constant).unwrap();
            assert_eq!(linear.activation, want, "{act} under {plan:?}");
        }
    }
}
