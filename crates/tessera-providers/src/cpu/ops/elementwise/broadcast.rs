//! Numpy broadcasting without per-element index vectors.
//!
//! A [`Plan`] drops the output's unit dimensions and merges neighbouring
//! dimensions that every input walks contiguously (or not at all), leaving
//! an "inner" run whose input strides are each 0 or 1 and a few "outer"
//! dimensions. Same-shape inputs become one contiguous run, a scalar input
//! a run with stride 0, `[B,S,H] + [H]` rows of `H` against a fixed vector.
//! Kernels then receive one run at a time (output slice plus each input's
//! start offset) and specialize on the inner strides.

use rayon::prelude::*;
use tessera_core::dtype::Element;
use tessera_core::tensor::checked_numel;
use tessera_core::{DType, Error, Node, Result, Tensor};

use super::scalar::{par_chunk, PAR_MIN};
use crate::cpu::util::{broadcast_shapes, broadcast_strides};
use crate::cpu::RunCtx;

/// How to walk `N` broadcast inputs in output order.
#[derive(Debug)]
pub(crate) struct Plan<const N: usize> {
    pub out_shape: Vec<usize>,
    outer: Vec<usize>,
    outer_strides: Vec<[usize; N]>,
    inner: usize,
    /// Stride (0 or 1) of each input along the inner run.
    pub inner_strides: [usize; N],
}

impl<const N: usize> Plan<N> {
    pub fn new(node: &Node, shapes: [&[usize]; N]) -> Result<Self> {
        let out_shape = broadcast_shapes(node, &shapes)?;
        Self::with_out_shape(node, shapes, out_shape)
    }

    /// A plan for an output shape known to be the broadcast of `shapes`
    /// (or one the inputs broadcast to).
    pub fn with_out_shape(node: &Node, shapes: [&[usize]; N], out_shape: Vec<usize>) -> Result<Self> {
        checked_numel(&out_shape).map_err(|e| Error::node(node, e.to_string()))?;
        for s in shapes {
            let ok = s.len() <= out_shape.len()
                && s.iter().zip(&out_shape[out_shape.len() - s.len()..]).all(|(&d, &o)| d == o || d == 1);
            if !ok {
                return Err(Error::node(node, format!("shape {s:?} cannot be broadcast to {out_shape:?}")));
            }
        }
        let strides: Vec<Vec<usize>> = shapes.iter().map(|s| broadcast_strides(s, &out_shape)).collect();
        let mut dims: Vec<(usize, [usize; N])> = Vec::new();
        for (d, &size) in out_shape.iter().enumerate() {
            if size == 1 {
                continue;
            }
            let st: [usize; N] = std::array::from_fn(|k| strides[k][d]);
            if let Some(last) = dims.last_mut() {
                if (0..N).all(|k| last.1[k] == st[k] * size) {
                    last.0 *= size;
                    last.1 = st;
                    continue;
                }
            }
            dims.push((size, st));
        }
        let (inner, inner_strides) = dims.pop().unwrap_or((1, [0; N]));
        Ok(Plan {
            out_shape,
            outer: dims.iter().map(|d| d.0).collect(),
            outer_strides: dims.iter().map(|d| d.1).collect(),
            inner,
            inner_strides,
        })
    }

    /// Calls `f(out_run, input_offsets)` for every inner run of `out`, which
    /// covers output elements `start..start + out.len()`.
    fn run_range<O>(&self, start: usize, out: &mut [O], f: &(impl Fn(&mut [O], [usize; N]) + Sync)) {
        let inner = self.inner;
        let mut col = start % inner;
        let mut rest = start / inner;
        let nd = self.outer.len();
        let mut idx = vec![0usize; nd];
        let mut offs = [0usize; N];
        for d in (0..nd).rev() {
            idx[d] = rest % self.outer[d];
            rest /= self.outer[d];
            for (o, s) in offs.iter_mut().zip(&self.outer_strides[d]) {
                *o += idx[d] * s;
            }
        }
        let mut pos = 0;
        while pos < out.len() {
            let n = (inner - col).min(out.len() - pos);
            let o: [usize; N] = std::array::from_fn(|k| offs[k] + col * self.inner_strides[k]);
            f(&mut out[pos..pos + n], o);
            pos += n;
            col = 0;
            for d in (0..nd).rev() {
                idx[d] += 1;
                for (o, s) in offs.iter_mut().zip(&self.outer_strides[d]) {
                    *o += s;
                }
                if idx[d] < self.outer[d] {
                    break;
                }
                for (o, s) in offs.iter_mut().zip(&self.outer_strides[d]) {
                    *o -= s * self.outer[d];
                }
                idx[d] = 0;
            }
        }
    }

    /// Runs `f` over all of `out` (the whole output), in
    /// parallel when it is large.
    pub fn run<O: Send>(&self, out: &mut [O], f: impl Fn(&mut [O], [usize; N]) + Sync) {
        if out.len() >= PAR_MIN {
            let ch = par_chunk(out.len());
            out.par_chunks_mut(ch).enumerate().for_each(|(i, c)| self.run_range(i * ch, c, &f));
        } else if !out.is_empty() {
            self.run_range(0, out, &f);
        }
    }
}

/// `out = f(a, b)` elementwise with broadcasting, specialized on whether
/// each input is contiguous or fixed along the inner run.
pub(crate) fn binary_into<A: Copy + Sync, B: Copy + Sync, O: Copy + Send>(
    plan: &Plan<2>,
    a: &[A],
    b: &[B],
    out: &mut [O],
    f: impl Fn(A, B) -> O + Sync,
) {
    let [sa, sb] = plan.inner_strides;
    plan.run(out, |o, [oa, ob]| {
        let n = o.len();
        match (sa, sb) {
            (1, 1) => {
                for ((y, &x1), &x2) in o.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                    *y = f(x1, x2);
                }
            }
            (1, _) => {
                let x2 = b[ob];
                for (y, &x1) in o.iter_mut().zip(&a[oa..oa + n]) {
                    *y = f(x1, x2);
                }
            }
            (_, 1) => {
                let x1 = a[oa];
                for (y, &x2) in o.iter_mut().zip(&b[ob..ob + n]) {
                    *y = f(x1, x2);
                }
            }
            _ => o.fill(f(a[oa], b[ob])),
        }
    });
}

/// Allocates the broadcast output and fills it with `f(a, b)`.
pub(crate) fn binary<A: Element, B: Element, O: Element>(
    node: &Node,
    a: &Tensor,
    b: &Tensor,
    b_shape: &[usize],
    out_dtype: DType,
    ctx: &mut RunCtx,
    f: impl Fn(A, B) -> O + Sync,
) -> Result<Tensor> {
    let plan = Plan::new(node, [a.shape(), b_shape])?;
    let mut out = ctx.alloc_for_overwrite(out_dtype, &plan.out_shape)?;
    binary_into(&plan, a.as_slice::<A>()?, b.as_slice::<B>()?, out.as_mut_slice::<O>()?, f);
    Ok(out)
}

/// Reference broadcasting through per-element index vectors (for tests).
#[cfg(test)]
pub(crate) fn binary_reference<A: Copy, B: Copy, O: Copy + Default>(
    node: &Node,
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    f: impl Fn(A, B) -> O,
) -> Result<(Vec<usize>, Vec<O>)> {
    use crate::cpu::util::broadcast_index;
    let out_shape = broadcast_shapes(node, &[a_shape, b_shape])?;
    let ia = broadcast_index(&out_shape, &broadcast_strides(a_shape, &out_shape));
    let ib = broadcast_index(&out_shape, &broadcast_strides(b_shape, &out_shape));
    let out = ia.iter().zip(&ib).map(|(&i, &j)| f(a[i], b[j])).collect();
    Ok((out_shape, out))
}
