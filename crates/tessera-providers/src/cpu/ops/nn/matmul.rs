//! MatMul and Gemm, plus the batched-matmul core shared with Einsum and
//! FusedMatMul. f32/f64 go through the blocked GEMM (parallel over batches
//! and row blocks); f16/bf16 compute in f32; integer types use a plain
//! wrapping loop.

use std::sync::Arc;

use half::{bf16, f16};
use rayon::prelude::*;
use tessera_core::dtype::Element;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::gemm::{gemm_batched, BatchRef};

use super::common::for_each_strided;
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{broadcast_shapes, broadcast_strides, opt, req};

pub fn register(r: &mut OpRegistry) {
    r.add("MatMul", build_matmul);
    r.add("Gemm", build_gemm);
}

/// Element types the matmul core handles natively.
pub(crate) trait MatElem: Element + Copy + Default + Send + Sync {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `out[i] = a[i] @ b[i]` for every matrix of the batch; `out` is
    /// contiguous `[batch, m, n]`.
    fn bmm(a: BatchRef<Self>, b: BatchRef<Self>, out: &mut [Self]);
}

macro_rules! mat_float {
    ($t:ty) => {
        impl MatElem for $t {
            #[inline]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn bmm(a: BatchRef<Self>, b: BatchRef<Self>, out: &mut [Self]) {
                gemm_batched(a, b, out, 1.0, 0.0, None);
            }
        }
    };
}
mat_float!(f32);
mat_float!(f64);

macro_rules! mat_int {
    ($($t:ty),*) => {$(
        impl MatElem for $t {
            #[inline]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn bmm(a: BatchRef<Self>, b: BatchRef<Self>, out: &mut [Self]) {
                bmm_naive(a, b, out)
            }
        }
    )*};
}
mat_int!(i8, u8, i16, u16, i32, i64, u32, u64);

/// Row-at-a-time batched product for the integer types.
fn bmm_naive<T: MatElem>(a: BatchRef<T>, b: BatchRef<T>, out: &mut [T]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let batch = a.offsets.len();
    if m == 0 || n == 0 || batch == 0 {
        return;
    }
    let out = &mut out[..batch * m * n];
    let row = |r: usize, o: &mut [T]| {
        let (bi, i) = (r / m, r % m);
        let (ao, bo) = (a.offsets[bi] + i * a.row_stride, b.offsets[bi]);
        o.fill(T::default());
        for p in 0..k {
            let av = a.data[ao + p * a.col_stride];
            let brow = bo + p * b.row_stride;
            for (j, ov) in o.iter_mut().enumerate() {
                *ov = ov.add(av.mul(b.data[brow + j * b.col_stride]));
            }
        }
    };
    if out.len() * k < (1 << 16) {
        out.chunks_mut(n).enumerate().for_each(|(r, o)| row(r, o));
    } else {
        out.par_chunks_mut(n).enumerate().for_each(|(r, o)| row(r, o));
    }
}

/// Shapes and batch offsets of one (numpy-semantics) matmul.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MatMulPlan {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Element offset of each batch's A / B matrix.
    pub a_offsets: Vec<usize>,
    pub b_offsets: Vec<usize>,
    pub out_shape: Vec<usize>,
}

impl MatMulPlan {
    pub fn a_ref<'a, T>(&'a self, a: &'a [T]) -> BatchRef<'a, T> {
        BatchRef { data: a, offsets: &self.a_offsets, rows: self.m, cols: self.k, row_stride: self.k, col_stride: 1 }
    }
    pub fn b_ref<'a, T>(&'a self, b: &'a [T]) -> BatchRef<'a, T> {
        BatchRef { data: b, offsets: &self.b_offsets, rows: self.k, cols: self.n, row_stride: self.n, col_stride: 1 }
    }
}

/// Offsets (in matrices) of each batch element of a broadcast operand.
fn batch_offsets(in_batch: &[usize], batch: &[usize]) -> Vec<usize> {
    let strides = broadcast_strides(in_batch, batch);
    let mut v = Vec::with_capacity(batch.iter().product());
    for_each_strided(batch, &strides, |_, s| v.push(s));
    v
}

pub(crate) fn plan_matmul(node: &Node, a: &[usize], b: &[usize]) -> Result<MatMulPlan> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::node(node, "MatMul operands must have rank >= 1"));
    }
    let (a1, b1) = (a.len() == 1, b.len() == 1);
    let (m, ka) = if a1 { (1, a[0]) } else { (a[a.len() - 2], a[a.len() - 1]) };
    let (kb, n) = if b1 { (b[0], 1) } else { (b[b.len() - 2], b[b.len() - 1]) };
    if ka != kb {
        return Err(Error::node(node, format!("MatMul inner dimensions differ: {a:?} @ {b:?}")));
    }
    let a_batch = if a1 { &[][..] } else { &a[..a.len() - 2] };
    let b_batch = if b1 { &[][..] } else { &b[..b.len() - 2] };
    let batch = broadcast_shapes(node, &[a_batch, b_batch])?;
    let k = ka;
    let mut out_shape = batch.clone();
    if !a1 {
        out_shape.push(m);
    }
    if !b1 {
        out_shape.push(n);
    }
    tessera_core::tensor::checked_numel(&out_shape)?;
    let a_offs: Vec<usize> = batch_offsets(a_batch, &batch).into_iter().map(|o| o * m * k).collect();
    let b_offs: Vec<usize> = batch_offsets(b_batch, &batch).into_iter().map(|o| o * k * n).collect();
    let nb = a_offs.len();
    // A stacked batch times one shared B: a single tall GEMM.
    if nb > 1 && b_offs.iter().all(|&o| o == b_offs[0]) && a_offs.iter().enumerate().all(|(i, &o)| o == i * m * k) {
        return Ok(MatMulPlan { m: m * nb, k, n, a_offsets: vec![0], b_offsets: vec![b_offs[0]], out_shape });
    }
    Ok(MatMulPlan { m, k, n, a_offsets: a_offs, b_offsets: b_offs, out_shape })
}

/// Runs `$body` with `$T` bound to the native element type of integer or
/// f32/f64 dtype `$dt`.
macro_rules! with_mat_elem {
    ($dt:expr, $node:expr, $T:ident => $body:expr) => {
        match $dt {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::I8 => {
                type $T = i8;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::I16 => {
                type $T = i16;
                $body
            }
            DType::U16 => {
                type $T = u16;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::U32 => {
                type $T = u32;
                $body
            }
            DType::U64 => {
                type $T = u64;
                $body
            }
            d => Err(Error::node($node, format!("unsupported type {d}"))),
        }
    };
}
pub(crate) use with_mat_elem;

/// f16/bf16 data widened to f32.
pub(crate) fn half_to_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(match t.dtype() {
        DType::F16 => t.as_slice::<f16>()?.iter().map(|v| v.to_f32()).collect(),
        DType::BF16 => t.as_slice::<bf16>()?.iter().map(|v| v.to_f32()).collect(),
        DType::F32 => t.as_slice::<f32>()?.to_vec(),
        d => return Err(Error::Other(format!("expected f16/bf16, got {d}"))),
    })
}

/// Writes f32 values into an f16/bf16/f32 tensor.
pub(crate) fn store_f32(vals: &[f32], out: &mut Tensor) -> Result<()> {
    match out.dtype() {
        DType::F16 => out.as_mut_slice::<f16>()?.iter_mut().zip(vals).for_each(|(o, &v)| *o = f16::from_f32(v)),
        DType::BF16 => out.as_mut_slice::<bf16>()?.iter_mut().zip(vals).for_each(|(o, &v)| *o = bf16::from_f32(v)),
        DType::F32 => out.as_mut_slice::<f32>()?.copy_from_slice(vals),
        d => return Err(Error::Other(format!("expected f16/bf16, got {d}"))),
    }
    Ok(())
}

fn is_half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

fn build_matmul(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    // A constant f16/bf16 B is widened once here rather than on every run.
    let b_wide: Option<Arc<Vec<f32>>> = match bctx.const_input(&node, 1) {
        Some(t) if is_half(t.dtype()) => Some(Arc::new(half_to_f32(&t)?)),
        _ => None,
    };
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let a = req(&node, inputs, 0)?;
        let b = req(&node, inputs, 1)?;
        if a.dtype() != b.dtype() {
            return Err(Error::node(&node, format!("operand types differ: {} and {}", a.dtype(), b.dtype())));
        }
        let plan = plan_matmul(&node, a.shape(), b.shape())?;
        let dt = a.dtype();
        let mut out = ctx.alloc(dt, &plan.out_shape)?;
        if is_half(dt) {
            let aw = half_to_f32(a)?;
            let bw_own;
            let bw: &[f32] = match &b_wide {
                Some(v) if v.len() == b.numel() => v,
                _ => {
                    bw_own = half_to_f32(b)?;
                    &bw_own
                }
            };
            let mut tmp = vec![0f32; out.numel()];
            f32::bmm(plan.a_ref(&aw), plan.b_ref(bw), &mut tmp);
            store_f32(&tmp, &mut out)?;
            return Ok(vec![out]);
        }
        with_mat_elem!(dt, &node, T => {
            T::bmm(plan.a_ref(a.as_slice::<T>()?), plan.b_ref(b.as_slice::<T>()?), out.as_mut_slice::<T>()?);
            Ok(vec![out])
        })
    }))
}

/// Gemm's operands, shapes resolved.
struct GemmDims {
    m: usize,
    k: usize,
    n: usize,
}

fn gemm_dims(node: &Node, a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<GemmDims> {
    if a.len() != 2 || b.len() != 2 {
        return Err(Error::node(node, format!("Gemm needs 2-D operands, got {a:?} and {b:?}")));
    }
    let (m, ka) = if ta { (a[1], a[0]) } else { (a[0], a[1]) };
    let (kb, n) = if tb { (b[1], b[0]) } else { (b[0], b[1]) };
    if ka != kb {
        return Err(Error::node(
            node,
            format!("Gemm inner dimensions differ: {a:?} and {b:?} (transA={ta}, transB={tb})"),
        ));
    }
    Ok(GemmDims { m, k: ka, n })
}

/// A single `rows x cols` matrix stored row-major, or transposed (stored
/// `cols x rows`) when `trans`.
fn operand<T>(data: &[T], rows: usize, cols: usize, trans: bool) -> BatchRef<'_, T> {
    BatchRef {
        data,
        offsets: &[0],
        rows,
        cols,
        row_stride: if trans { 1 } else { cols },
        col_stride: if trans { rows } else { 1 },
    }
}

fn build_gemm(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let ta = node.attr_int_or("transA", 0)? != 0;
    let tb = node.attr_int_or("transB", 0)? != 0;
    let alpha = node.attr_float_or("alpha", 1.0)?;
    let beta = node.attr_float_or("beta", 1.0)?;
    // A constant B (the usual weight matrix) is kept as given; f16/bf16 ones
    // are widened once. (The GEMM packs B itself; a persistent prepacked
    // panel layout is a later optimization.)
    let b_wide: Option<Arc<Vec<f32>>> = match bctx.const_input(&node, 1) {
        Some(t) if is_half(t.dtype()) => Some(Arc::new(half_to_f32(&t)?)),
        _ => None,
    };
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let a = req(&node, inputs, 0)?;
        let b = req(&node, inputs, 1)?;
        let c = opt(inputs, 2);
        let dt = a.dtype();
        if b.dtype() != dt || c.is_some_and(|c| c.dtype() != dt) {
            return Err(Error::node(&node, "Gemm operands must share one type"));
        }
        let d = gemm_dims(&node, a.shape(), b.shape(), ta, tb)?;
        let shape = [d.m, d.n];
        // C broadcasts unidirectionally to [M, N].
        let c_strides = match c {
            Some(c) => {
                let cs = c.shape();
                if cs.len() > 2 || broadcast_shapes(&node, &[cs, &shape])? != shape {
                    return Err(Error::node(&node, format!("C of shape {cs:?} does not broadcast to {shape:?}")));
                }
                Some(broadcast_strides(cs, &shape))
            }
            None => None,
        };
        let mut out = ctx.alloc(dt, &shape)?;
        // Computes alpha * A'B' + beta * C in T.
        fn finish<T: MatElem>(y: &mut [T], c: Option<(&[T], &[usize])>, shape: &[usize], alpha: f32, beta: f32) {
            if alpha != 1.0 {
                y.iter_mut().for_each(|v| *v = T::from_f64(v.to_f64() * alpha as f64));
            }
            if let Some((c, cs)) = c {
                if beta != 0.0 {
                    for_each_strided(shape, cs, |d, s| {
                        let cv = if beta == 1.0 { c[s] } else { T::from_f64(c[s].to_f64() * beta as f64) };
                        y[d] = y[d].add(cv);
                    });
                }
            }
        }
        if is_half(dt) {
            let aw = half_to_f32(a)?;
            let bw_own;
            let bw: &[f32] = match &b_wide {
                Some(v) if v.len() == b.numel() => v,
                _ => {
                    bw_own = half_to_f32(b)?;
                    &bw_own
                }
            };
            let cw = c.map(half_to_f32).transpose()?;
            let mut tmp = vec![0f32; out.numel()];
            f32::bmm(operand(&aw, d.m, d.k, ta), operand(bw, d.k, d.n, tb), &mut tmp);
            finish(&mut tmp, cw.as_deref().zip(c_strides.as_deref()), &shape, alpha, beta);
            store_f32(&tmp, &mut out)?;
            return Ok(vec![out]);
        }
        with_mat_elem!(dt, &node, T => {
            let y = out.as_mut_slice::<T>()?;
            T::bmm(operand(a.as_slice::<T>()?, d.m, d.k, ta), operand(b.as_slice::<T>()?, d.k, d.n, tb), y);
            let cv = c.map(|c| c.as_slice::<T>()).transpose()?;
            finish(y, cv.zip(c_strides.as_deref()), &shape, alpha, beta);
            Ok(vec![out])
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::{run_node, t_f32};
    use tessera_core::Attr;

    #[test]
    fn matmul_shapes() {
        let n = Node::new("MatMul", "m", &[], &[]);
        let p = plan_matmul(&n, &[3], &[3]).unwrap();
        assert_eq!((p.m, p.k, p.n, p.out_shape.clone()), (1, 3, 1, vec![]));
        let p = plan_matmul(&n, &[2, 1, 4, 3], &[5, 3, 2]).unwrap();
        assert_eq!(p.out_shape, vec![2, 5, 4, 2]);
        assert_eq!(p.a_offsets, vec![0, 0, 0, 0, 0, 12, 12, 12, 12, 12]);
        assert_eq!(p.b_offsets, vec![0, 6, 12, 18, 24, 0, 6, 12, 18, 24]);
        // stacked A times a shared B folds into one GEMM
        let p = plan_matmul(&n, &[2, 4, 3], &[3, 5]).unwrap();
        assert_eq!((p.m, p.a_offsets.len(), p.out_shape.clone()), (8, 1, vec![2, 4, 5]));
        let p = plan_matmul(&n, &[3], &[2, 3, 4]).unwrap();
        assert_eq!(p.out_shape, vec![2, 4]);
        assert!(plan_matmul(&n, &[2, 3], &[4, 2]).is_err());
        assert!(plan_matmul(&n, &[2, 2, 3], &[3, 3, 2]).is_err());
    }

    #[test]
    fn matmul_values_f32_i32_f16() {
        let n = Node::new("MatMul", "m", &["a", "b"], &["y"]);
        let a = t_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = t_f32(&[3, 2], &[7., 8., 9., 10., 11., 12.]);
        let y = run_node(&n, 13, &[Some(a.clone()), Some(b.clone())]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[58., 64., 139., 154.]);
        let ai = Tensor::from_vec(&[2, 3], vec![1i32, 2, 3, 4, 5, 6]).unwrap();
        let bi = Tensor::from_vec(&[3], vec![1i32, -1, 2]).unwrap();
        let y = run_node(&n, 13, &[Some(ai), Some(bi)]).unwrap();
        assert_eq!(y[0].shape(), &[2]);
        assert_eq!(y[0].as_slice::<i32>().unwrap(), &[5, 11]);
        let ah = Tensor::from_f64(DType::F16, &[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let bh = Tensor::from_f64(DType::F16, &[3, 2], &[7., 8., 9., 10., 11., 12.]).unwrap();
        let y = run_node(&n, 13, &[Some(ah), Some(bh)]).unwrap();
        assert_eq!(y[0].dtype(), DType::F16);
        assert_eq!(y[0].to_f64_vec(), vec![58., 64., 139., 154.]);
    }

    #[test]
    fn gemm_all_attributes() {
        let n = Node::new("Gemm", "g", &["a", "b", "c"], &["y"])
            .with_attr("transA", Attr::Int(1))
            .with_attr("transB", Attr::Int(1))
            .with_attr("alpha", Attr::Float(0.5))
            .with_attr("beta", Attr::Float(2.0));
        // A is [K=2, M=2], B is [N=3, K=2], C is [N] broadcast over rows.
        let a = t_f32(&[2, 2], &[1., 2., 3., 4.]);
        let b = t_f32(&[3, 2], &[1., 0., 0., 1., 1., 1.]);
        let c = t_f32(&[3], &[1., 2., 3.]);
        let y = run_node(&n, 13, &[Some(a), Some(b), Some(c)]).unwrap();
        // A' = [[1,3],[2,4]], B' = [[1,0,1],[0,1,1]] -> A'B' = [[1,3,4],[2,4,6]]
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[2.5, 5.5, 8., 3., 6., 9.]);
    }
}
