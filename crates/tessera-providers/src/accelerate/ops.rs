//! The provider's ops: each lowers its node onto row-major sgemm calls.
//! Additive terms (Gemm's C, FusedMatMul's bias, Conv's bias) are written
//! into the output first and taken in by the product's `beta = 1`, as BLAS
//! intends; activation and residual follow over the finished output.

use std::sync::Arc;

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::conv::{im2col, ConvGeom};
use tessera_kernels::gemm::epilogue::activate;
use tessera_kernels::gemm::Activation;

use super::blas::{Sgemm, Transpose};
use crate::cpu::ops::nn::common::{for_each_strided, Spatial};
use crate::cpu::ops::nn::conv_geom;
use crate::cpu::ops::nn::matmul::plan_matmul;
use crate::cpu::registry::{CpuOp, RunCtx};
use crate::cpu::util::{broadcast_shapes, broadcast_strides, opt, req};

/// Elements of the im2col buffer of one block of output positions (4 MiB):
/// large enough for full-speed products, small enough to stay in the last
/// level cache beside the weights.
const IM2COL_BLOCK_ELEMS: usize = 1 << 20;
/// Fewest output positions per block, so that a very deep kernel still gives
/// the product some width.
const MIN_BLOCK_POSITIONS: usize = 64;

pub(crate) fn build(node: &Node, blas: Arc<dyn Sgemm>) -> Result<Box<dyn CpuOp>> {
    match node.op_type.as_str() {
        "MatMul" => Ok(Box::new(MatMul::build(node, blas, false)?)),
        "FusedMatMul" => Ok(Box::new(MatMul::build(node, blas, true)?)),
        tessera_core::passes::fuse_mlp::FUSED_MLP => {
            crate::cpu::ops::fused::mlp_in_two(node, &|n: &Node| build(n, blas.clone()))
        }
        "Gemm" => Ok(Box::new(Gemm::build(node, blas)?)),
        "Conv" => Ok(Box::new(Conv::build(node, blas)?)),
        op => Err(Error::node(node, format!("{op} is not an op of the accelerate provider"))),
    }
}

/// Input `i`, required, and fp32.
fn f32_input<'a>(node: &Node, inputs: &[Option<&'a Tensor>], i: usize, what: &str) -> Result<&'a Tensor> {
    let t = req(node, inputs, i)?;
    check_f32(node, t, what)?;
    Ok(t)
}

fn check_f32(node: &Node, t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::node(node, format!("{what} must be fp32, got {}", t.dtype())));
    }
    Ok(())
}

/// Runs one product, turning a rejected call into an error on the node.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    node: &Node,
    blas: &dyn Sgemm,
    (trans_a, trans_b): (Transpose, Transpose),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) -> Result<()> {
    blas.sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        .map_err(|e| Error::node(node, format!("{} sgemm: {e}", blas.name())))
}

/// `y += r`, with `r` broadcast (numpy rules) to `y_shape`.
fn add_broadcast(node: &Node, y: &mut [f32], y_shape: &[usize], r: &Tensor, what: &str) -> Result<()> {
    check_f32(node, r, what)?;
    let rs = r.as_slice::<f32>()?;
    if r.shape() == y_shape {
        y.iter_mut().zip(rs).for_each(|(v, &s)| *v += s);
        return Ok(());
    }
    if r.rank() > y_shape.len() || broadcast_shapes(node, &[r.shape(), y_shape])? != y_shape {
        return Err(Error::node(node, format!("{what} of shape {:?} does not broadcast to {y_shape:?}", r.shape())));
    }
    let strides = broadcast_strides(r.shape(), y_shape);
    for_each_strided(y_shape, &strides, |d, s| y[d] += rs[s]);
    Ok(())
}

/// MatMul and `tessera:FusedMatMul`: `y = act(A @ B + bias) + residual`,
/// batched with ONNX MatMul's broadcasting, one sgemm per output matrix (a
/// stack of A against one shared B is a single tall product).
struct MatMul {
    node: Node,
    blas: Arc<dyn Sgemm>,
    /// FusedMatMul's bias (input 2) and residual (input 3) apply.
    fused: bool,
    activation: Activation,
}

impl MatMul {
    fn build(node: &Node, blas: Arc<dyn Sgemm>, fused: bool) -> Result<MatMul> {
        let activation = if fused {
            let a = node.attr_string("activation")?.unwrap_or_default();
            Activation::parse(&a).ok_or_else(|| Error::node(node, format!("unknown activation '{a}'")))?
        } else {
            Activation::None
        };
        Ok(MatMul { node: node.clone(), blas, fused, activation })
    }
}

impl CpuOp for MatMul {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        let node = &self.node;
        let a = f32_input(node, inputs, 0, "A")?;
        let b = f32_input(node, inputs, 1, "B")?;
        let plan = plan_matmul(node, a.shape(), b.shape())?;
        let (m, k, n) = (plan.m, plan.k, plan.n);
        let bias = if self.fused { opt(inputs, 2) } else { None };
        let residual = if self.fused { opt(inputs, 3) } else { None };
        if let Some(bt) = bias {
            check_f32(node, bt, "bias")?;
            if bt.numel() != n && bt.numel() != 1 {
                return Err(Error::node(node, format!("bias of shape {:?} does not match {n} columns", bt.shape())));
            }
        }
        let mut y = ctx.alloc(DType::F32, &plan.out_shape)?;
        let ys = y.as_mut_slice::<f32>()?;
        let (av, bv) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
        let beta = match bias {
            Some(bt) => {
                fill_rows(ys, n, bt.as_slice::<f32>()?);
                1.0
            }
            None => 0.0,
        };
        // One output matrix per batch entry; `chunks_mut` of a zero-sized
        // output yields nothing, which is right (there is nothing to compute).
        let out_len = m * n;
        for (yi, (&ao, &bo)) in ys.chunks_mut(out_len.max(1)).zip(plan.a_offsets.iter().zip(&plan.b_offsets)) {
            let ai = av.get(ao..).unwrap_or(&[]);
            let bi = bv.get(bo..).unwrap_or(&[]);
            sgemm(
                node,
                self.blas.as_ref(),
                (Transpose::No, Transpose::No),
                (m, n, k),
                1.0,
                (ai, k.max(1)),
                (bi, n.max(1)),
                beta,
                (yi, n.max(1)),
            )?;
        }
        if self.activation != Activation::None {
            activate(self.activation, ys);
        }
        if let Some(r) = residual {
            add_broadcast(node, ys, &plan.out_shape, r, "residual")?;
        }
        Ok(vec![y])
    }
}

/// Writes `row` (one value per column, or one value for all) into every
/// row of the `[rows, n]` block `y`.
fn fill_rows(y: &mut [f32], n: usize, row: &[f32]) {
    for dst in y.chunks_mut(n.max(1)) {
        if row.len() == dst.len() {
            dst.copy_from_slice(row);
        } else {
            dst.fill(row.first().copied().unwrap_or(0.0));
        }
    }
}

/// Gemm: `y = alpha * op(A) @ op(B) + beta * C`, C broadcast to `[M, N]`;
/// the transposes are passed to BLAS rather than copied.
struct Gemm {
    node: Node,
    blas: Arc<dyn Sgemm>,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
}

impl Gemm {
    fn build(node: &Node, blas: Arc<dyn Sgemm>) -> Result<Gemm> {
        Ok(Gemm {
            node: node.clone(),
            blas,
            trans_a: node.attr_int_or("transA", 0)? != 0,
            trans_b: node.attr_int_or("transB", 0)? != 0,
            alpha: node.attr_float_or("alpha", 1.0)?,
            beta: node.attr_float_or("beta", 1.0)?,
        })
    }
}

impl CpuOp for Gemm {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        let node = &self.node;
        let a = f32_input(node, inputs, 0, "A")?;
        let b = f32_input(node, inputs, 1, "B")?;
        let c = opt(inputs, 2);
        let (asz, bsz) = (a.shape(), b.shape());
        if asz.len() != 2 || bsz.len() != 2 {
            return Err(Error::node(node, format!("Gemm needs 2-D operands, got {asz:?} and {bsz:?}")));
        }
        let (m, ka) = if self.trans_a { (asz[1], asz[0]) } else { (asz[0], asz[1]) };
        let (kb, n) = if self.trans_b { (bsz[1], bsz[0]) } else { (bsz[0], bsz[1]) };
        if ka != kb {
            return Err(Error::node(
                node,
                format!(
                    "Gemm inner dimensions differ: {asz:?} and {bsz:?} (transA={}, transB={})",
                    self.trans_a, self.trans_b
                ),
            ));
        }
        let k = ka;
        let shape = [m, n];
        let mut y = ctx.alloc(DType::F32, &shape)?;
        let ys = y.as_mut_slice::<f32>()?;
        let mut beta = 0.0;
        if let Some(c) = c {
            check_f32(node, c, "C")?;
            let cs = c.shape();
            if cs.len() > 2 || broadcast_shapes(node, &[cs, &shape])? != shape {
                return Err(Error::node(node, format!("C of shape {cs:?} does not broadcast to {shape:?}")));
            }
            // beta = 0 ignores C entirely (its NaNs included), as the CPU
            // provider does.
            if self.beta != 0.0 {
                let cv = c.as_slice::<f32>()?;
                let strides = broadcast_strides(cs, &shape);
                for_each_strided(&shape, &strides, |d, s| ys[d] = cv[s]);
                beta = self.beta;
            }
        }
        // Leading dimensions are the stored row lengths: A is [M, K] or,
        // transposed, [K, M]; B is [K, N] or [N, K].
        let lda = if self.trans_a { m } else { k };
        let ldb = if self.trans_b { k } else { n };
        let flag = |t: bool| if t { Transpose::Yes } else { Transpose::No };
        sgemm(
            node,
            self.blas.as_ref(),
            (flag(self.trans_a), flag(self.trans_b)),
            (m, n, k),
            self.alpha,
            (a.as_slice::<f32>()?, lda.max(1)),
            (b.as_slice::<f32>()?, ldb.max(1)),
            beta,
            (ys, n.max(1)),
        )?;
        Ok(vec![y])
    }
}

/// Conv of group 1 (1 to 3 spatial dims): per image, `Y[M, P] = W[M, C*k] @
/// col[C*k, P]` over blocks of output positions P, where `col` is the
/// im2col of the input block; the bias is the product's initial C. A 1x1,
/// stride-1, unpadded convolution multiplies the input directly.
struct Conv {
    node: Node,
    blas: Arc<dyn Sgemm>,
    spatial: Spatial,
}

impl Conv {
    fn build(node: &Node, blas: Arc<dyn Sgemm>) -> Result<Conv> {
        let group = node.attr_int_or("group", 1)?;
        if group != 1 {
            return Err(Error::node(node, format!("the accelerate provider takes group 1, got {group}")));
        }
        Ok(Conv { node: node.clone(), blas, spatial: Spatial::parse(node)? })
    }

    /// Output positions per im2col block.
    fn block_positions(ck: usize, out_size: usize) -> usize {
        (IM2COL_BLOCK_ELEMS / ck.max(1)).max(MIN_BLOCK_POSITIONS).min(out_size).max(1)
    }

    /// im2col of positions `p0..p1` of image `xn` into `col`, split over
    /// channels across threads when the block is large.
    fn fill_columns(g: &ConvGeom, xn: &[f32], p0: usize, p1: usize, col: &mut [f32]) {
        let (c, in_size) = (g.in_channels, g.in_size());
        let rows_per_channel = g.kernel_size() * (p1 - p0);
        if c <= 1 || col.len() < (1 << 15) {
            im2col(g, xn, c, p0, p1, col);
            return;
        }
        let per_task = c.div_ceil(2 * rayon::current_num_threads().max(1)).max(1);
        col.par_chunks_mut(per_task * rows_per_channel.max(1)).enumerate().for_each(|(i, part)| {
            let c0 = i * per_task;
            let channels = part.len() / rows_per_channel.max(1);
            im2col(g, &xn[c0 * in_size..], channels, p0, p1, part);
        });
    }
}

impl CpuOp for Conv {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        let node = &self.node;
        let x = f32_input(node, inputs, 0, "X")?;
        let w = f32_input(node, inputs, 1, "W")?;
        let bias = opt(inputs, 2);
        let (g, shape) = conv_geom(node, &self.spatial, 1, x.shape(), w.shape())?;
        let (c, m) = (g.in_channels, g.out_channels);
        if let Some(bt) = bias {
            check_f32(node, bt, "bias")?;
            if bt.rank() != 1 || bt.numel() != m {
                return Err(Error::node(
                    node,
                    format!("bias of shape {:?} does not match {m} output channels", bt.shape()),
                ));
            }
        }
        let (in_size, out_size) = (g.in_size(), g.out_size());
        let ck = c * g.kernel_size();
        let mut y = ctx.alloc(DType::F32, &shape)?;
        if y.numel() == 0 {
            return Ok(vec![y]);
        }
        let ys = y.as_mut_slice::<f32>()?;
        let (xs, ws) = (x.as_slice::<f32>()?, w.as_slice::<f32>()?);
        let bias = bias.map(|b| b.as_slice::<f32>()).transpose()?;
        let direct = g.kernel == [1, 1, 1] && g.stride == [1, 1, 1] && g.pad == [0, 0, 0] && g.output == g.input;
        let block = Self::block_positions(ck, out_size);
        let mut col = if direct { Vec::new() } else { vec![0f32; ck * block] };
        let beta = if bias.is_some() { 1.0 } else { 0.0 };
        for (ni, yn) in ys.chunks_mut(m * out_size).enumerate() {
            let xn = xs.get(ni * c * in_size..).unwrap_or(&[]);
            let xn = &xn[..(c * in_size).min(xn.len())];
            if let Some(bv) = bias {
                for (row, &bias_m) in yn.chunks_mut(out_size).zip(bv) {
                    row.fill(bias_m);
                }
            }
            if direct {
                // The input image is already col: [C, P] with P = the input size.
                sgemm(
                    node,
                    self.blas.as_ref(),
                    (Transpose::No, Transpose::No),
                    (m, out_size, c),
                    1.0,
                    (ws, c.max(1)),
                    (xn, out_size),
                    beta,
                    (yn, out_size),
                )?;
                continue;
            }
            let mut p0 = 0;
            while p0 < out_size {
                let p1 = (p0 + block).min(out_size);
                let np = p1 - p0;
                let col = &mut col[..ck * np];
                Self::fill_columns(&g, xn, p0, p1, col);
                sgemm(
                    node,
                    self.blas.as_ref(),
                    (Transpose::No, Transpose::No),
                    (m, np, ck),
                    1.0,
                    (ws, ck.max(1)),
                    (col, np),
                    beta,
                    (&mut yn[p0..], out_size),
                )?;
                p0 = p1;
            }
        }
        Ok(vec![y])
    }
}
