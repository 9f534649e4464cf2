//! Shape, layout and indexing operators: everything that moves elements
//! around without doing arithmetic on them (plus Resize, Range, OneHot and
//! friends). Data movement is dtype-agnostic: elements are moved by their
//! size, so every dtype (bool, f16, bf16, f64, integers) works.
//!
//! Submodules:
//! - `copy`: the strided/gather copy engine shared by the layout ops;
//! - `basic`: Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout, Shape,
//!   Size, Constant, ConstantOfShape, EyeLike, Range;
//! - `layout`: Transpose, DepthToSpace, SpaceToDepth, Expand, Tile, Slice,
//!   Pad, CenterCropPad, Concat, Split;
//! - `index`: Gather, GatherElements, GatherND, ScatterND, ScatterElements,
//!   Scatter, OneHot, NonZero, Compress, ReverseSequence, Trilu;
//! - `resize`: Resize and Upsample.

mod basic;
pub(crate) use basic::reshape_target;
mod copy;
mod index;
mod layout;
mod resize;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

use tessera_core::{limits, Error, Node, Result, Tensor};

use crate::cpu::registry::{CpuOp, OpRegistry, RunCtx};

pub fn register(r: &mut OpRegistry) {
    basic::register(r);
    layout::register(r);
    index::register(r);
    resize::register(r);
}

/// A copy of `node` without its attributes and value names, kept by the run
/// closures to name the node in error messages.
fn slim(node: &Node) -> Node {
    Node {
        name: node.name.clone(),
        op_type: node.op_type.clone(),
        domain: node.domain.clone(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        attrs: Default::default(),
    }
}

/// Boxes a run closure as a [`CpuOp`].
fn boxed<F>(f: F) -> Result<Box<dyn CpuOp>>
where
    F: Fn(&[Option<&Tensor>], &mut RunCtx) -> Result<Vec<Tensor>> + Send + Sync + 'static,
{
    Ok(Box::new(f))
}

/// Reads an integer tensor (shape, axes, indices, pads...) as i64 values.
fn ints(node: &Node, t: &Tensor, what: &str) -> Result<Vec<i64>> {
    t.to_i64_vec().map_err(|_| Error::node(node, format!("{what} must be an integer tensor, got {}", t.dtype())))
}

/// Reads a one-element tensor as i64 (floats are truncated).
fn scalar_i64(node: &Node, t: &Tensor, what: &str) -> Result<i64> {
    if t.numel() != 1 {
        return Err(Error::node(node, format!("{what} must have exactly one element, got shape {:?}", t.shape())));
    }
    if t.dtype().is_float() {
        let v = t.to_f64_vec()[0];
        if !v.is_finite() || v.abs() > 9.0e18 {
            return Err(Error::node(node, format!("{what} must be a finite integer value, got {v}")));
        }
        return Ok(v as i64);
    }
    Ok(ints(node, t, what)?[0])
}

/// Resolves a possibly negative axis against `rank` (valid range `[-rank, rank)`).
fn axis(node: &Node, a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r {
        return Err(Error::node(node, format!("axis {a} is out of range for a tensor of rank {rank}")));
    }
    Ok(v as usize)
}

/// Normalizes a list of axes, rejecting duplicates.
fn axes_list(node: &Node, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let v = axis(node, a, rank)?;
        if out.contains(&v) {
            return Err(Error::node(node, format!("axis {a} appears more than once in {axes:?}")));
        }
        out.push(v);
    }
    Ok(out)
}

/// Converts a (non-negative) dimension read from a tensor or attribute.
fn dim(node: &Node, d: i64, what: &str) -> Result<usize> {
    if d < 0 || d as u64 > limits::MAX_DIM {
        return Err(Error::node(node, format!("{what} has invalid dimension {d}")));
    }
    Ok(d as usize)
}

/// Element count of a shape, as a node error when it is too large.
fn numel(node: &Node, shape: &[usize]) -> Result<usize> {
    tessera_core::tensor::checked_numel(shape).map_err(|e| Error::node(node, e.to_string()))
}

/// Normalizes an index against a dimension of size `n` (negative counts from
/// the end), failing when it is out of range.
fn index(node: &Node, i: i64, n: usize, what: &str) -> Result<usize> {
    let v = if i < 0 { i + n as i64 } else { i };
    if v < 0 || v >= n as i64 {
        return Err(Error::node(node, format!("{what} {i} is out of range for a dimension of size {n}")));
    }
    Ok(v as usize)
}

/// Row-major strides in elements.
fn strides(shape: &[usize]) -> Vec<usize> {
    crate::cpu::util::contiguous_strides(shape)
}

/// Whether an element (stored as `bytes`, little endian, of a tensor of the
/// given dtype) is non-zero. Negative zero counts as zero, NaN as non-zero.
fn nonzero_elem(dtype: tessera_core::DType, bytes: &[u8]) -> bool {
    let n = bytes.len();
    if dtype.is_float() && n > 0 {
        // Ignore the sign bit (the top bit of the last byte).
        bytes[..n - 1].iter().any(|&b| b != 0) || bytes[n - 1] & 0x7f != 0
    } else {
        bytes.iter().any(|&b| b != 0)
    }
}
