//! Helpers shared by the CPU operators: input access, broadcasting, axes.

use tessera_core::{Error, Node, Result, Tensor};

/// Input `i`, which the operator requires.
pub fn req<'a>(node: &Node, inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor> {
    inputs.get(i).copied().flatten().ok_or_else(|| Error::node(node, format!("missing required input {i}")))
}

/// Input `i` if present.
pub fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// Resolves a possibly negative axis against `rank`.
pub fn norm_axis(node: &Node, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(Error::node(node, format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Numpy-style broadcast of several shapes.
pub fn broadcast_shapes(node: &Node, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(Error::node(node, format!("shapes {shapes:?} cannot be broadcast together")));
            }
        }
    }
    Ok(out)
}

/// Element strides of `in_shape` laid over `out_shape` (0 where broadcast).
pub fn broadcast_strides(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let rank = out_shape.len();
    let off = rank - in_shape.len();
    let mut strides = vec![0usize; rank];
    let mut acc = 1usize;
    for i in (0..in_shape.len()).rev() {
        if in_shape[i] != 1 {
            strides[off + i] = acc;
        }
        acc *= in_shape[i];
    }
    strides
}

/// Row-major strides of a contiguous shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For each output element (row-major over `out_shape`), the index of the
/// source element in an input with the given broadcast strides.
pub fn broadcast_index(out_shape: &[usize], strides: &[usize]) -> Vec<usize> {
    let n: usize = out_shape.iter().product();
    let mut idx = Vec::with_capacity(n);
    let rank = out_shape.len();
    let mut counter = vec![0usize; rank];
    let mut cur = 0usize;
    for _ in 0..n {
        idx.push(cur);
        for d in (0..rank).rev() {
            counter[d] += 1;
            cur += strides[d];
            if counter[d] < out_shape[d] {
                break;
            }
            cur -= strides[d] * counter[d];
            counter[d] = 0;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_basics() {
        let n = Node::new("Add", "n", &[], &[]);
        assert_eq!(broadcast_shapes(&n, &[&[2, 3], &[3]]).unwrap(), vec![2, 3]);
        assert_eq!(broadcast_shapes(&n, &[&[2, 1], &[1, 4]]).unwrap(), vec![2, 4]);
        assert!(broadcast_shapes(&n, &[&[2, 3], &[4]]).is_err());
        let st = broadcast_strides(&[2, 1], &[2, 3]);
        assert_eq!(broadcast_index(&[2, 3], &st), vec![0, 0, 0, 1, 1, 1]);
        let st = broadcast_strides(&[3], &[2, 3]);
        assert_eq!(broadcast_index(&[2, 3], &st), vec![0, 1, 2, 0, 1, 2]);
    }
}
