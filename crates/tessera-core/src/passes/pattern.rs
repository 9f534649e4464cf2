//! Small helpers for pattern-matching passes.

use std::collections::HashMap;

use crate::{Graph, Node};

/// Index of producers and consumer counts for one matching sweep.
pub struct Index {
    pub producer: HashMap<String, usize>,
    pub uses: HashMap<String, usize>,
}

impl Index {
    pub fn new(g: &Graph) -> Self {
        Index { producer: g.producers(), uses: g.use_counts() }
    }

    /// The node producing `value`, if it has op type `op` (default domain).
    pub fn producer_of<'g>(&self, g: &'g Graph, value: &str, op: &str) -> Option<(usize, &'g Node)> {
        let &i = self.producer.get(value)?;
        let n = &g.nodes[i];
        (n.op_type == op && is_onnx(n)).then_some((i, n))
    }

    /// Consumers of `value` (indices).
    pub fn consumers(&self, g: &Graph, value: &str) -> Vec<usize> {
        g.nodes.iter().enumerate().filter(|(_, n)| n.inputs.iter().any(|i| i == value)).map(|(i, _)| i).collect()
    }

    pub fn single_use(&self, value: &str) -> bool {
        self.uses.get(value).copied().unwrap_or(0) == 1
    }
}

/// Replaces the matched nodes by `fused`, which takes the place of the last
/// of them (every value it reads is defined before that node: a residual
/// computed between the matched nodes, for one); the others are removed.
pub fn replace_with_fused(g: &mut Graph, mut matched: Vec<usize>, fused: Node) {
    let last = *matched.iter().max().expect("a matched node at least");
    g.nodes[last] = fused;
    matched.retain(|&i| i != last);
    matched.sort_unstable_by(|a, b| b.cmp(a));
    for i in matched {
        g.nodes.remove(i);
    }
}

pub fn is_onnx(n: &Node) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

/// The value of a constant scalar (or one-element) float tensor.
pub fn const_scalar(g: &Graph, name: &str) -> Option<f64> {
    let t = g.initializers.get(name)?;
    if t.numel() != 1 || !t.dtype().is_float() {
        return None;
    }
    t.to_f64_vec().first().copied()
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1.0)
}

/// For a binary node, the input that is not `known`, if `known` is one of them.
pub fn other_input<'n>(n: &'n Node, known: &str) -> Option<&'n str> {
    if n.inputs.len() != 2 {
        return None;
    }
    if n.inputs[0] == known {
        Some(&n.inputs[1])
    } else if n.inputs[1] == known {
        Some(&n.inputs[0])
    } else {
        None
    }
}
