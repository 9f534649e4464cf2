//! Two linear layers in a row: a `tessera:FusedMatMul` whose output feeds
//! only the A input of a second one, both weights constant 2-D fp32 (a
//! transformer's feed-forward block, an MLP head), becomes
//! `tessera:FusedMlp(x, W1, b1, W2, b2, residual)`, with attributes
//! `activation` (the first product's) and `activation_out` (the second's).
//!
//! The point is the hidden layer between them: a provider that can hand it
//! over in its own layout runs the pair in one go (the tile provider under
//! bf16 writes it straight into the second product's A panels, at half the
//! bytes and without a packing pass). Every other provider runs the two
//! products one after the other ([`split_mlp`]), as before the fusion.

use super::fuse_matmul::{DOMAIN, FUSED_MATMUL};
use super::pattern::{replace_with_fused, Index};
use crate::{Attr, DType, Graph, Node};

pub const FUSED_MLP: &str = "FusedMlp";
/// The second product's activation.
pub const ACTIVATION_OUT: &str = "activation_out";

/// A constant 2-D fp32 weight's `[rows, cols]`.
fn weight_dims(g: &Graph, name: &str) -> Option<(usize, usize)> {
    let t = g.initializers.get(name)?;
    match (t.dtype(), t.shape()) {
        (DType::F32, &[r, c]) => Some((r, c)),
        _ => None,
    }
}

/// The product's activation, if its attributes are exactly what the fused
/// node carries over (an activation and nothing else).
fn activation_of(n: &Node) -> Option<Vec<u8>> {
    if n.attrs.keys().any(|k| k != "activation") {
        return None;
    }
    match n.attrs.get("activation") {
        None => Some(b"none".to_vec()),
        Some(Attr::String(s)) => Some(s.clone()),
        Some(_) => None,
    }
}

/// A bias slot that is empty or names a constant.
fn constant_or_absent(g: &Graph, n: &Node, i: usize) -> bool {
    n.input(i).is_none_or(|b| g.initializers.contains_key(b))
}

pub fn fuse_mlp(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit = None;
        for (pi, p) in g.nodes.iter().enumerate() {
            if p.domain != DOMAIN || p.op_type != FUSED_MATMUL || !(2..=3).contains(&p.inputs.len()) {
                continue;
            }
            let [hidden] = p.outputs.as_slice() else { continue };
            // `single_use` counts a graph output as a use.
            if !ix.single_use(hidden) {
                continue;
            }
            let Some((_, width)) = weight_dims(g, &p.inputs[1]) else { continue };
            if p.inputs[0].is_empty() || !constant_or_absent(g, p, 2) {
                continue;
            }
            let Some(&qi) = ix.consumers(g, hidden).first() else { continue };
            let q = &g.nodes[qi];
            if q.domain != DOMAIN
                || q.op_type != FUSED_MATMUL
                || !(2..=4).contains(&q.inputs.len())
                || q.inputs[0] != *hidden
            {
                continue;
            }
            if weight_dims(g, &q.inputs[1]).is_none_or(|(rows, _)| rows != width) || !constant_or_absent(g, q, 2) {
                continue;
            }
            let (Some(act), Some(act_out)) = (activation_of(p), activation_of(q)) else { continue };
            let slot = |n: &Node, i: usize| n.inputs.get(i).cloned().unwrap_or_default();
            let node = Node {
                name: format!("{}_mlp", p.name),
                op_type: FUSED_MLP.into(),
                domain: DOMAIN.into(),
                inputs: vec![
                    p.inputs[0].clone(),
                    p.inputs[1].clone(),
                    slot(p, 2),
                    q.inputs[1].clone(),
                    slot(q, 2),
                    slot(q, 3),
                ],
                outputs: q.outputs.clone(),
                attrs: [
                    ("activation".to_string(), Attr::String(act)),
                    (ACTIVATION_OUT.to_string(), Attr::String(act_out)),
                ]
                .into_iter()
                .collect(),
            };
            hit = Some((vec![pi, qi], node));
            break;
        }
        let Some((matched, node)) = hit else { break };
        replace_with_fused(g, matched, node);
        fused += 1;
    }
    fused
}

/// A `tessera:FusedMlp` as its two `tessera:FusedMatMul`s, the first
/// writing the hidden layer (named after the output) that the second reads.
pub fn split_mlp(n: &Node) -> (Node, Node) {
    let input = |i: usize| n.inputs.get(i).cloned().unwrap_or_default();
    let attr = |key: &str| n.attrs.get(key).cloned().unwrap_or(Attr::String(b"none".to_vec()));
    let output = n.outputs.first().cloned().unwrap_or_default();
    let hidden = format!("{output}:hidden");
    let trimmed = |mut v: Vec<String>| {
        while v.len() > 2 && v.last().is_some_and(|s| s.is_empty()) {
            v.pop();
        }
        v
    };
    let product = |name: String, inputs: Vec<String>, out: String, act: Attr| Node {
        name,
        op_type: FUSED_MATMUL.into(),
        domain: DOMAIN.into(),
        inputs: trimmed(inputs),
        outputs: vec![out],
        attrs: [("activation".to_string(), act)].into_iter().collect(),
    };
    let first =
        product(format!("{}:first", n.name), vec![input(0), input(1), input(2)], hidden.clone(), attr("activation"));
    let second =
        product(format!("{}:second", n.name), vec![hidden, input(3), input(4), input(5)], output, attr(ACTIVATION_OUT));
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tensor, ValueInfo};

    fn product(name: &str, inputs: &[&str], act: &str) -> Node {
        let mut n = Node::new(FUSED_MATMUL, name, inputs, &[name])
            .with_attr("activation", Attr::String(act.as_bytes().to_vec()));
        n.domain = DOMAIN.into();
        n
    }

    /// x -> up (weight [4, 6], bias, GELU) -> down (weight [6, 4], bias,
    /// residual x) -> y.
    fn ffn(down_inputs: &[&str]) -> Graph {
        let vi = |n: &str| ValueInfo { name: n.into(), dtype: Some(DType::F32), shape: None };
        let mut g = Graph {
            nodes: vec![product("up", &["x", "w1", "b1"], "gelu_erf"), product("y", down_inputs, "none")],
            inputs: vec![vi("x")],
            outputs: vec![vi("y")],
            ..Default::default()
        };
        let t = |shape: &[usize]| Tensor::from_vec(shape, vec![0.5f32; shape.iter().product()]).unwrap();
        g.initializers.insert("w1".into(), t(&[4, 6]));
        g.initializers.insert("b1".into(), t(&[6]));
        g.initializers.insert("w2".into(), t(&[6, 4]));
        g.initializers.insert("w2_wide".into(), t(&[7, 4]));
        g.initializers.insert("b2".into(), t(&[4]));
        g
    }

    #[test]
    fn a_feed_forward_block_becomes_one_node_and_splits_back() {
        let mut g = ffn(&["up", "w2", "b2", "x"]);
        assert_eq!(fuse_mlp(&mut g), 1);
        assert_eq!(g.nodes.len(), 1);
        let n = &g.nodes[0];
        assert_eq!((n.domain.as_str(), n.op_type.as_str()), (DOMAIN, FUSED_MLP));
        assert_eq!(n.inputs, ["x", "w1", "b1", "w2", "b2", "x"]);
        assert_eq!(n.outputs, ["y"]);
        assert_eq!(n.attr_string("activation").unwrap().as_deref(), Some("gelu_erf"));
        assert_eq!(n.attr_string(ACTIVATION_OUT).unwrap().as_deref(), Some("none"));
        let (first, second) = split_mlp(n);
        assert_eq!(first.inputs, ["x", "w1", "b1"]);
        assert_eq!(second.inputs, [first.outputs[0].as_str(), "w2", "b2", "x"]);
        assert_eq!(second.outputs, ["y"]);
        assert_eq!(first.attr_string("activation").unwrap().as_deref(), Some("gelu_erf"));
        assert_eq!(second.attr_string("activation").unwrap().as_deref(), Some("none"));
    }

    #[test]
    fn absent_biases_stay_absent_when_split() {
        let mut g = ffn(&["up", "w2"]);
        g.nodes[0].inputs.truncate(2);
        assert_eq!(fuse_mlp(&mut g), 1);
        assert_eq!(g.nodes[0].inputs, ["x", "w1", "", "w2", "", ""]);
        let (first, second) = split_mlp(&g.nodes[0]);
        assert_eq!(first.inputs, ["x", "w1"]);
        assert_eq!(second.inputs.len(), 2);
    }

    #[test]
    fn pairs_that_cannot_hand_over_stay_apart() {
        // The hidden layer read twice, or a graph output.
        let mut g = ffn(&["up", "w2", "b2", "up"]);
        assert_eq!(fuse_mlp(&mut g), 0, "hidden layer also the residual");
        let mut g = ffn(&["up", "w2", "b2"]);
        g.outputs.push(ValueInfo { name: "up".into(), dtype: Some(DType::F32), shape: None });
        assert_eq!(fuse_mlp(&mut g), 0, "hidden layer a graph output");
        // The hidden layer as the second product's residual, not its A
        // (every other condition holds).
        let mut g = ffn(&["x", "w2", "b2", "up"]);
        assert_eq!(fuse_mlp(&mut g), 0, "hidden layer as the residual");
        // A weight of another width, or not constant.
        let mut g = ffn(&["up", "w2_wide", "b2"]);
        assert_eq!(fuse_mlp(&mut g), 0, "widths differ");
        let mut g = ffn(&["up", "w2", "b2"]);
        g.initializers.remove("w1");
        assert_eq!(fuse_mlp(&mut g), 0, "first weight not constant");
        // A first product with a residual of its own.
        let mut g = ffn(&["up", "w2", "b2"]);
        g.nodes[0].inputs.push("x".into());
        assert_eq!(fuse_mlp(&mut g), 0, "first product with a residual");
    }
}
