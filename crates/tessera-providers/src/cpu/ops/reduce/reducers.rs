//! ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1,
//! ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceSumSquare.
//!
//! The input's dimensions are classified as reduced or kept, unit
//! dimensions dropped and neighbours of the same class merged. The last
//! merged group is a contiguous run: when it is reduced each output folds
//! whole runs (8 lanes, so sums vectorize); when it is kept each output row
//! accumulates whole input rows column-wise. Offsets of the other groups are
//! enumerated once, so there is no per-element index arithmetic.

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};

use super::super::elementwise::scalar::{bad_dtype, store_f32, widen_to_f32, with_numeric, Scalar, PAR_MIN};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{norm_axis, opt, req};

#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum RKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

pub(super) fn register(r: &mut OpRegistry) {
    r.add("ReduceSum", |n, c| build(n, c, RKind::Sum));
    r.add("ReduceMean", |n, c| build(n, c, RKind::Mean));
    r.add("ReduceMax", |n, c| build(n, c, RKind::Max));
    r.add("ReduceMin", |n, c| build(n, c, RKind::Min));
    r.add("ReduceProd", |n, c| build(n, c, RKind::Prod));
    r.add("ReduceL1", |n, c| build(n, c, RKind::L1));
    r.add("ReduceL2", |n, c| build(n, c, RKind::L2));
    r.add("ReduceLogSum", |n, c| build(n, c, RKind::LogSum));
    r.add("ReduceLogSumExp", |n, c| build(n, c, RKind::LogSumExp));
    r.add("ReduceSumSquare", |n, c| build(n, c, RKind::SumSquare));
}

fn build(node: &Node, ctx: &BuildCtx, kind: RKind) -> Result<Box<dyn CpuOp>> {
    // Axes moved from an attribute to an optional input: ReduceSum at 13,
    // the others at 18.
    let since = if kind == RKind::Sum { 13 } else { 18 };
    let axes_input = ctx.opset >= since;
    let attr_axes = node.attr_ints("axes")?;
    let keepdims = node.attr_int_or("keepdims", 1)? != 0;
    let noop = node.attr_int_or("noop_with_empty_axes", 0)? != 0;
    let node = node.clone();
    Ok(Box::new(move |inputs: &[Option<&Tensor>], rc: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let axes = match opt(inputs, 1) {
            Some(t) if axes_input => Some(t.to_i64_vec().map_err(|e| Error::node(&node, format!("axes: {e}")))?),
            _ => attr_axes.clone(),
        };
        Ok(vec![reduce(&node, kind, x, axes.as_deref().unwrap_or(&[]), keepdims, noop, rc)?])
    }))
}

/// Reduces `x` over `axes` (all axes when empty, unless `noop_empty`).
pub(crate) fn reduce(
    node: &Node,
    kind: RKind,
    x: &Tensor,
    axes: &[i64],
    keepdims: bool,
    noop_empty: bool,
    ctx: &mut RunCtx,
) -> Result<Tensor> {
    let dt = x.dtype();
    if axes.is_empty() && noop_empty {
        return Ok(x.clone());
    }
    let rank = x.rank();
    let mut red = vec![axes.is_empty(); rank];
    if rank > 0 {
        for &a in axes {
            red[norm_axis(node, a, rank)?] = true;
        }
    } else if let Some(&a) = axes.iter().find(|&&a| a != 0 && a != -1) {
        return Err(Error::node(node, format!("axis {a} out of range for a scalar")));
    }
    let plan = RPlan::new(node, x.shape(), &red, keepdims)?;
    match dt {
        DType::F16 | DType::BF16 => {
            let xf = widen_to_f32(x)?;
            let mut tmp = vec![0f32; plan.out_numel];
            run_kind::<f32>(kind, &plan, xf.as_slice()?, &mut tmp);
            let mut out = ctx.alloc(dt, &plan.out_shape)?;
            store_f32(&mut out, &tmp)?;
            Ok(out)
        }
        DType::Bool => {
            if !matches!(kind, RKind::Max | RKind::Min) {
                return Err(bad_dtype(node, dt));
            }
            let mut out = ctx.alloc(dt, &plan.out_shape)?;
            let o = out.as_mut_slice::<u8>()?;
            run_kind::<u8>(kind, &plan, x.as_slice()?, o);
            for v in o.iter_mut() {
                *v = (*v != 0) as u8;
            }
            Ok(out)
        }
        _ => {
            let mut out = ctx.alloc(dt, &plan.out_shape)?;
            with_numeric!(dt, T, { run_kind::<T>(kind, &plan, x.as_slice()?, out.as_mut_slice()?) }, {
                return Err(bad_dtype(node, dt));
            });
            Ok(out)
        }
    }
}

fn run_kind<T: Scalar>(kind: RKind, p: &RPlan, x: &[T], out: &mut [T]) {
    match kind {
        RKind::Sum => p.execute(x, out, &Sum),
        RKind::Mean => p.execute(x, out, &Mean),
        RKind::Max => p.execute(x, out, &Max),
        RKind::Min => p.execute(x, out, &Min),
        RKind::Prod => p.execute(x, out, &Prod),
        RKind::L1 => p.execute(x, out, &L1),
        RKind::L2 => p.execute(x, out, &L2),
        RKind::LogSum => p.execute(x, out, &LogSum),
        RKind::LogSumExp => p.execute(x, out, &LogSumExp),
        RKind::SumSquare => p.execute(x, out, &SumSquare),
    }
}

/// A fold over the reduced elements of one output.
pub(crate) trait Reducer<T>: Sync {
    type Acc: Copy + Send + Sync;
    fn init(&self) -> Self::Acc;
    fn step(&self, a: Self::Acc, x: T) -> Self::Acc;
    /// Combines two partial folds (used for the lanes of a row).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    /// The output from the fold of `n` elements.
    fn finish(&self, a: Self::Acc, n: usize) -> T;
}

macro_rules! simple_reducer {
    ($name:ident, $init:expr, |$a:ident, $x:ident| $step:expr, |$m1:ident, $m2:ident| $merge:expr, |$f:ident, $n:ident| $finish:expr) => {
        pub(crate) struct $name;
        impl<T: Scalar> Reducer<T> for $name {
            type Acc = T;
            #[inline(always)]
            fn init(&self) -> T {
                $init
            }
            #[inline(always)]
            fn step(&self, $a: T, $x: T) -> T {
                $step
            }
            #[inline(always)]
            fn merge(&self, $m1: T, $m2: T) -> T {
                $merge
            }
            #[inline(always)]
            #[allow(unused_variables)]
            fn finish(&self, $f: T, $n: usize) -> T {
                $finish
            }
        }
    };
}

simple_reducer!(Sum, T::zero(), |a, x| a.add(x), |a, b| a.add(b), |a, n| a);
simple_reducer!(Mean, T::zero(), |a, x| a.add(x), |a, b| a.add(b), |a, n| a.div(T::from_f64(n as f64)));
simple_reducer!(Max, T::lowest(), |a, x| a.max_nan(x), |a, b| a.max_nan(b), |a, n| a);
simple_reducer!(Min, T::highest(), |a, x| a.min_nan(x), |a, b| a.min_nan(b), |a, n| a);
simple_reducer!(Prod, T::one(), |a, x| a.mul(x), |a, b| a.mul(b), |a, n| a);
simple_reducer!(L1, T::zero(), |a, x| a.add(x.abs()), |a, b| a.add(b), |a, n| a);
simple_reducer!(SumSquare, T::zero(), |a, x| a.add(x.mul(x)), |a, b| a.add(b), |a, n| a);
simple_reducer!(L2, T::zero(), |a, x| a.add(x.mul(x)), |a, b| a.add(b), |a, n| T::from_f64(a.to_f64().sqrt()));
simple_reducer!(LogSum, T::zero(), |a, x| a.add(x), |a, b| a.add(b), |a, n| T::from_f64(a.to_f64().ln()));

/// log(sum(exp(x))) as a running (max, sum of exp(x - max)) pair in f64:
/// no overflow for large inputs, -inf for an empty set.
pub(crate) struct LogSumExp;

impl<T: Scalar> Reducer<T> for LogSumExp {
    type Acc = (f64, f64);
    #[inline(always)]
    fn init(&self) -> (f64, f64) {
        (f64::NEG_INFINITY, 0.0)
    }
    #[inline(always)]
    fn step(&self, a: (f64, f64), x: T) -> (f64, f64) {
        <Self as Reducer<T>>::merge(self, a, (x.to_f64(), 1.0))
    }
    #[inline(always)]
    fn merge(&self, (m1, s1): (f64, f64), (m2, s2): (f64, f64)) -> (f64, f64) {
        if m1.is_nan() || m2.is_nan() {
            return (f64::NAN, f64::NAN);
        }
        let m = m1.max(m2);
        if m == f64::NEG_INFINITY {
            return (m, 0.0);
        }
        let scale = |mi: f64, si: f64| if mi == m { si } else { si * (mi - m).exp() };
        (m, scale(m1, s1) + scale(m2, s2))
    }
    #[inline(always)]
    fn finish(&self, (m, s): (f64, f64), _n: usize) -> T {
        if m == f64::INFINITY {
            return T::from_f64(m);
        }
        T::from_f64(m + s.ln())
    }
}

/// Folds a contiguous run with 8 independent lanes.
#[inline(always)]
fn fold_run<T: Scalar, R: Reducer<T>>(r: &R, acc: R::Acc, xs: &[T]) -> R::Acc {
    let mut lanes = [r.init(); 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            lanes[j] = r.step(lanes[j], c[j]);
        }
    }
    let mut a = acc;
    for l in lanes {
        a = r.merge(a, l);
    }
    for &v in chunks.remainder() {
        a = r.step(a, v);
    }
    a
}

/// Where each output's reduced elements are.
#[derive(Debug)]
pub(crate) struct RPlan {
    pub out_shape: Vec<usize>,
    pub out_numel: usize,
    /// Number of elements folded into each output.
    count: usize,
    /// Start offset of each output element (inner reduced) or row (inner kept).
    kept_offs: Vec<usize>,
    /// Offsets, relative to the start, of the reduced runs or rows.
    red_offs: Vec<usize>,
    inner: usize,
    inner_reduced: bool,
}

/// Offsets of every index of `groups` (size, stride), row-major.
fn offsets(groups: &[(usize, usize)]) -> Vec<usize> {
    let mut offs = vec![0usize];
    for &(size, stride) in groups {
        let mut next = Vec::with_capacity(offs.len() * size);
        for &o in &offs {
            for i in 0..size {
                next.push(o + i * stride);
            }
        }
        offs = next;
    }
    offs
}

impl RPlan {
    pub fn new(node: &Node, shape: &[usize], red: &[bool], keepdims: bool) -> Result<RPlan> {
        let mut out_shape = Vec::with_capacity(shape.len());
        for (&d, &r) in shape.iter().zip(red) {
            if !r {
                out_shape.push(d);
            } else if keepdims {
                out_shape.push(1);
            }
        }
        let out_numel =
            tessera_core::tensor::checked_numel(&out_shape).map_err(|e| Error::node(node, e.to_string()))?;
        let count: usize = shape.iter().zip(red).filter(|(_, &r)| r).map(|(&d, _)| d).product();
        let mut plan =
            RPlan { out_shape, out_numel, count, kept_offs: vec![0], red_offs: vec![0], inner: 1, inner_reduced: true };
        if out_numel == 0 || count == 0 {
            return Ok(plan);
        }
        // (size, reduced, stride) of merged non-unit dimensions.
        let mut groups: Vec<(usize, bool, usize)> = Vec::new();
        let mut stride = 1usize;
        for d in (0..shape.len()).rev() {
            let size = shape[d];
            if size != 1 {
                match groups.last_mut() {
                    Some(g) if g.1 == red[d] => g.0 *= size,
                    _ => groups.push((size, red[d], stride)),
                }
            }
            stride *= size;
        }
        groups.reverse();
        if let Some((size, reduced, _)) = groups.pop() {
            plan.inner = size;
            plan.inner_reduced = reduced;
            let pick = |want: bool| -> Vec<(usize, usize)> {
                groups.iter().filter(|g| g.1 == want).map(|g| (g.0, g.2)).collect()
            };
            plan.kept_offs = offsets(&pick(false));
            plan.red_offs = offsets(&pick(true));
        }
        Ok(plan)
    }

    pub fn execute<T: Scalar, R: Reducer<T>>(&self, x: &[T], out: &mut [T], r: &R) {
        let n = self.count;
        if out.is_empty() {
            return;
        }
        if n == 0 {
            out.fill(r.finish(r.init(), 0));
            return;
        }
        let par = x.len() >= PAR_MIN;
        let inner = self.inner;
        if self.inner_reduced {
            let one = |i: usize| -> T {
                let base = self.kept_offs[i];
                let mut acc = r.init();
                for &ro in &self.red_offs {
                    acc = fold_run(r, acc, &x[base + ro..base + ro + inner]);
                }
                r.finish(acc, n)
            };
            if par {
                out.par_iter_mut().enumerate().with_min_len(16).for_each(|(i, o)| *o = one(i));
            } else {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = one(i);
                }
            }
        } else {
            const BLOCK: usize = 128;
            // Columns c0.. of output row i.
            let cols = |i: usize, c0: usize, orow: &mut [T]| {
                for (bi, ob) in orow.chunks_mut(BLOCK).enumerate() {
                    let base = self.kept_offs[i] + c0 + bi * BLOCK;
                    let w = ob.len();
                    let mut acc = [r.init(); BLOCK];
                    for &ro in &self.red_offs {
                        for (a, &v) in acc[..w].iter_mut().zip(&x[base + ro..base + ro + w]) {
                            *a = r.step(*a, v);
                        }
                    }
                    for (o, &a) in ob.iter_mut().zip(&acc[..w]) {
                        *o = r.finish(a, n);
                    }
                }
            };
            if par {
                out.par_chunks_mut(inner).enumerate().for_each(|(i, orow)| {
                    if inner >= 4 * BLOCK {
                        orow.par_chunks_mut(BLOCK).enumerate().for_each(|(j, blk)| cols(i, j * BLOCK, blk));
                    } else {
                        cols(i, 0, orow);
                    }
                });
            } else {
                for (i, orow) in out.chunks_mut(inner).enumerate() {
                    cols(i, 0, orow);
                }
            }
        }
    }
}
