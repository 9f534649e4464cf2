//! The exporters' multi-head attention block becomes one
//! `tessera:Attention` node:
//!
//! ```text
//! q  = Transpose[0,2,1,3](Reshape(Q, qs))
//! kT = Transpose[0,2,3,1](Reshape(K, ks))        (or Transpose[0,1,3,2] of the [0,2,1,3] form)
//! v  = Transpose[0,2,1,3](Reshape(V, vs))
//! s  = MatMul(q, kT)  [Div(s, c) | Mul(s, c)]  [Add(s, mask)]
//! y  = Reshape(Transpose[0,2,1,3](MatMul(Softmax[-1](s), v)), os)
//! ```
//!
//! `Attention(Q, K, V, qs, ks, vs, os, [mask])` with attribute `scale`
//! checks at run time that the reshapes split `[B, S, C]` into heads and
//! merge them back. Only blocks that fit the kernel fuse: f32, Q/K/V of
//! rank 3 with one batch and channel count (no heads shared by broadcasting,
//! as in grouped-query attention), a mask of rank 4 at most that does not
//! broadcast the scores up, and intermediates with no other reader.

use super::pattern::{const_scalar, is_onnx, other_input, Index};
use crate::{Attr, DType, Dim, Graph, Node};

/// Needs the element types and shapes [`super::optimize_with`] infers
/// first: blocks whose types or shapes are unknown stay unfused.
pub fn fuse_attention(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let Some((at, node, shape_readers, same_shape)) = find_one(g) else { break };
        g.nodes[at] = node;
        for i in shape_readers {
            g.nodes[i].inputs[0] = same_shape.clone();
        }
        super::dce::eliminate_dead_nodes(g);
        fused += 1;
    }
    fused
}

/// Q/K/V of rank 3 agreeing on batch and channels where known, and a mask
/// of rank 4 at most that leaves the scores' shape as it is.
fn fits_the_kernel(g: &Graph, qkv: [&str; 3], mask: Option<&str>, scores: &str, masked: &str) -> bool {
    let shapes: Vec<Vec<Dim>> = match qkv.iter().map(|x| g.shape_of(x)).collect::<Option<Vec<_>>>() {
        Some(s) if s.iter().all(|s| s.len() == 3) => s,
        _ => return false,
    };
    let differ = |a: &Dim, b: &Dim| matches!((a, b), (Dim::Known(x), Dim::Known(y)) if x != y);
    for s in &shapes[1..] {
        if differ(&shapes[0][0], &s[0]) || differ(&shapes[0][2], &s[2]) {
            return false;
        }
    }
    if differ(&shapes[1][1], &shapes[2][1]) {
        return false;
    }
    match mask {
        None => true,
        Some(m) => {
            let rank_ok = g.shape_of(m).is_some_and(|s| s.len() <= 4);
            let same = match (g.shape_of(scores), g.shape_of(masked)) {
                (Some(a), Some(b)) => a.len() == b.len() && !a.iter().zip(&b).any(|(x, y)| differ(x, y)),
                _ => false,
            };
            rank_ok && same
        }
    }
}

fn perm_of(n: &Node) -> Option<Vec<i64>> {
    n.attr_ints("perm").ok().flatten()
}

/// `Transpose[perm](Reshape(x, shape))` with a single-use middle: (x, shape,
/// the reshaped value).
fn split_heads(g: &Graph, ix: &Index, v: &str, perm: &[i64]) -> Option<(String, String, String)> {
    let (_, t) = ix.producer_of(g, v, "Transpose")?;
    if perm_of(t)?.as_slice() != perm || !ix.single_use(v) {
        return None;
    }
    let (_, r) = ix.producer_of(g, t.inputs.first()?, "Reshape")?;
    if !ix.single_use(&t.inputs[0]) || r.inputs.len() < 2 || r.attr_int_or("allowzero", 0).ok()? != 0 {
        return None;
    }
    Some((r.inputs[0].clone(), r.inputs[1].clone(), t.inputs[0].clone()))
}

/// The node to replace, its replacement, and the `Shape` nodes reading the
/// merged-heads value (exporters compute the final reshape's target from
/// it) with the value of that same shape they read instead.
fn find_one(g: &Graph) -> Option<(usize, Node, Vec<usize>, String)> {
    let ix = Index::new(g);
    for sm in g.nodes.iter().filter(|n| n.op_type == "Softmax" && is_onnx(n)) {
        // Softmax over the last of 4 axes (before opset 13 the default axis
        // is 1, so only an explicit last axis counts there).
        let axis = match sm.attr_int_or("axis", if g.opset() >= 13 { -1 } else { 1 }) {
            Ok(a) => a,
            Err(_) => continue,
        };
        if axis != -1 && axis != 3 {
            continue;
        }
        let Some(mut s) = sm.inputs.first().cloned() else { continue };
        if !ix.single_use(&s) {
            continue;
        }
        let mut mask = None;
        if let Some((_, add)) = ix.producer_of(g, &s, "Add") {
            // Which operand is the scores: the one made by Div/Mul/MatMul.
            let scores_side = add
                .inputs
                .iter()
                .position(|i| ["Div", "Mul", "MatMul"].iter().any(|op| ix.producer_of(g, i, op).is_some()));
            let Some(si) = scores_side else { continue };
            let Some(other) = other_input(add, &add.inputs[si]) else { continue };
            mask = Some(other.to_string());
            s = add.inputs[si].clone();
            if !ix.single_use(&s) {
                continue;
            }
        }
        let mut scale = 1.0f64;
        if let Some((_, d)) = ix.producer_of(g, &s, "Div") {
            let (Some(x), Some(c)) = (d.inputs.first(), d.inputs.get(1).and_then(|c| const_scalar(g, c))) else {
                continue;
            };
            if c == 0.0 || d.inputs.len() != 2 {
                continue;
            }
            scale = 1.0 / c;
            s = x.clone();
        } else if let Some((_, m)) = ix.producer_of(g, &s, "Mul") {
            if m.inputs.len() != 2 {
                continue;
            }
            let Some((ci, c)) = m.inputs.iter().enumerate().find_map(|(i, x)| const_scalar(g, x).map(|c| (i, c)))
            else {
                continue;
            };
            scale = c;
            s = m.inputs[1 - ci].clone();
        }
        if !ix.single_use(&s) {
            continue;
        }
        let Some((_, qk)) = ix.producer_of(g, &s, "MatMul").filter(|(_, n)| n.inputs.len() == 2) else { continue };
        let Some((q_in, q_shape, q_split)) = split_heads(g, &ix, &qk.inputs[0], &[0, 2, 1, 3]) else { continue };
        let kt = &qk.inputs[1];
        let k = split_heads(g, &ix, kt, &[0, 2, 3, 1]).or_else(|| {
            let (_, t) = ix.producer_of(g, kt, "Transpose")?;
            if perm_of(t)?.as_slice() != [0, 1, 3, 2] || !ix.single_use(kt) {
                return None;
            }
            split_heads(g, &ix, &t.inputs[0], &[0, 2, 1, 3])
        });
        let Some((k_in, k_shape, _)) = k else { continue };
        // Softmax → MatMul(p, v) → Transpose[0,2,1,3] → Reshape.
        let Some(p) = sm.outputs.first() else { continue };
        let users = ix.consumers(g, p);
        let [pv_i] = users.as_slice() else { continue };
        let pv = &g.nodes[*pv_i];
        if pv.op_type != "MatMul" || !is_onnx(pv) || pv.inputs.len() != 2 || pv.inputs[0] != *p || !ix.single_use(p) {
            continue;
        }
        let Some((v_in, v_shape, _)) = split_heads(g, &ix, &pv.inputs[1], &[0, 2, 1, 3]) else { continue };
        let o = &pv.outputs[0];
        let users = ix.consumers(g, o);
        let [t_i] = users.as_slice() else { continue };
        let t = &g.nodes[*t_i];
        if t.op_type != "Transpose" || !is_onnx(t) || perm_of(t).as_deref() != Some(&[0, 2, 1, 3]) {
            continue;
        }
        // [B, S, H, d] is read by the final Reshape, and maybe by Shape
        // nodes: those read the Q split (the same shape) instead.
        let (shape_readers, users): (Vec<usize>, Vec<usize>) = ix
            .consumers(g, &t.outputs[0])
            .into_iter()
            .partition(|&i| g.nodes[i].op_type == "Shape" && is_onnx(&g.nodes[i]));
        let [r_i] = users.as_slice() else { continue };
        let r = &g.nodes[*r_i];
        if r.op_type != "Reshape"
            || !is_onnx(r)
            || r.inputs.len() < 2
            || r.inputs[0] != t.outputs[0]
            || r.attr_int_or("allowzero", 0).ok() != Some(0)
        {
            continue;
        }
        let f32_only =
            [&q_in, &k_in, &v_in].into_iter().chain(mask.as_ref()).all(|x| g.dtype_of(x) == Some(DType::F32));
        if !f32_only || g.outputs.iter().any(|go| [p, o, &t.outputs[0]].contains(&&go.name)) {
            continue;
        }
        if !fits_the_kernel(g, [&q_in, &k_in, &v_in], mask.as_deref(), &s, &sm.inputs[0]) {
            continue;
        }
        let mut inputs = vec![q_in, k_in, v_in, q_shape, k_shape, v_shape, r.inputs[1].clone()];
        inputs.extend(mask);
        let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let mut node = Node::new("Attention", &format!("{}_attention", sm.name), &refs, &[&r.outputs[0]])
            .with_attr("scale", Attr::Float(scale as f32));
        node.domain = "tessera".into();
        return Some((*r_i, node, shape_readers, q_split));
    }
    None
}
