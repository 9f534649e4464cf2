//! One projection for Q, K and V: when an attention block's three inputs
//! come from `tessera:FusedMatMul`s of the same activation with constant
//! weights of one shape `[K, C]` (and constant biases, or none), the three
//! become one `FusedMatMul` with the weights side by side (`[K, 3C]`), and
//! the attention reads Q, K and V as column ranges of its `[B, S, 3C]`
//! output (attribute `qkv_packed = 1`, the packed value passed three times).
//! The attention is `tessera:Attention`, or the ONNX `Attention` operator
//! in its 3-D layout (Q known to be `[B, S, C]`, head counts as attributes).
//! Every provider that claims either (the CPU and tile providers) builds
//! the one kernel op that reads the attribute; the pass runs only for
//! sessions whose graph stays with those providers (`optimize_with`).
//!
//! Why: at batch 1 the projections are short, wide GEMMs (M = sequence
//! length) whose cost is dominated by fixed per-call work (packing the
//! activation, starting threads, streaming a weight panel before reuse);
//! one call with three times the columns packs the activation once and
//! splits into more parallel tasks.

use super::fuse_matmul::{DOMAIN, FUSED_MATMUL};
use super::pattern::Index;
use crate::{Attr, DType, Dim, Graph, Node, Tensor};

/// The attribute of a `tessera:Attention` or ONNX `Attention` whose Q, K
/// and V are one packed `[B, S, 3C]` value.
pub const QKV_PACKED: &str = "qkv_packed";

pub fn merge_qkv_projections(g: &mut Graph) -> usize {
    let mut merged = 0;
    while let Some(m) = find_one(g) {
        apply(g, m);
        super::dce::eliminate_dead_nodes(g);
        merged += 1;
    }
    merged
}

struct Merge {
    attention: usize,
    /// The producers of Q, K and V.
    projections: [usize; 3],
    weight: Tensor,
    bias: Option<Tensor>,
}

/// A FusedMatMul `x @ W (+ b)` with nothing else fused: (x, W, b).
fn plain_projection<'g>(g: &'g Graph, n: &'g Node) -> Option<(&'g str, &'g Tensor, Option<&'g Tensor>)> {
    if n.domain != DOMAIN || n.op_type != FUSED_MATMUL || n.inputs.len() > 3 || n.inputs.len() < 2 {
        return None;
    }
    // Only the activation attribute, and it is none (an alpha, activation
    // or residual would have to be merged as well).
    if n.attrs.keys().any(|k| k != "activation") || n.attr_string("activation").ok()?.is_some_and(|a| a != "none") {
        return None;
    }
    let w = g.initializers.get(&n.inputs[1])?;
    if w.dtype() != DType::F32 || w.rank() != 2 {
        return None;
    }
    let bias = match n.inputs.get(2).filter(|b| !b.is_empty()) {
        None => None,
        Some(b) => {
            let t = g.initializers.get(b)?;
            if t.dtype() != DType::F32 || t.shape() != [w.shape()[1]] {
                return None;
            }
            Some(t)
        }
    };
    Some((n.inputs[0].as_str(), w, bias))
}

/// An ONNX Attention node in the 3-D layout: both head counts given and
/// Q's rank known to be 3.
fn onnx_3d(g: &Graph, at: &Node) -> bool {
    let heads = |a: &str| at.attr_int(a).ok().flatten().is_some_and(|h| h > 0);
    let q_rank = g.value_info.get(&at.inputs[0]).and_then(|v| v.shape.as_ref()).map(|s| s.len());
    heads("q_num_heads") && heads("kv_num_heads") && q_rank == Some(3)
}

fn find_one(g: &Graph) -> Option<Merge> {
    let ix = Index::new(g);
    for (ai, at) in g.nodes.iter().enumerate() {
        if at.op_type != "Attention" || at.attrs.contains_key(QKV_PACKED) || at.inputs.len() < 3 {
            continue;
        }
        let onnx = at.domain.is_empty() || at.domain == "ai.onnx";
        if !(at.domain == DOMAIN || onnx && onnx_3d(g, at)) {
            continue;
        }
        let qkv = [&at.inputs[0], &at.inputs[1], &at.inputs[2]];
        if qkv[0] == qkv[1] || qkv[1] == qkv[2] || qkv[0] == qkv[2] || !qkv.iter().all(|v| ix.single_use(v)) {
            continue;
        }
        let Some(producers) = qkv.iter().map(|v| ix.producer.get(*v).copied()).collect::<Option<Vec<usize>>>() else {
            continue;
        };
        let Some(parts) = producers.iter().map(|&p| plain_projection(g, &g.nodes[p])).collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let (x, w0, b0) = parts[0];
        let same =
            parts.iter().all(|(xi, wi, bi)| *xi == x && wi.shape() == w0.shape() && bi.is_some() == b0.is_some());
        if !same {
            continue;
        }
        let (k, c) = (w0.shape()[0], w0.shape()[1]);
        let ws: Vec<&[f32]> = parts.iter().map(|(_, w, _)| w.as_slice::<f32>().expect("f32 checked")).collect();
        let mut weight = Vec::with_capacity(k * 3 * c);
        for row in 0..k {
            for w in &ws {
                weight.extend_from_slice(&w[row * c..(row + 1) * c]);
            }
        }
        let bias = b0.map(|_| {
            let b: Vec<f32> = parts
                .iter()
                .flat_map(|(_, _, b)| b.expect("all or none").as_slice::<f32>().expect("f32").to_vec())
                .collect();
            Tensor::from_vec(&[3 * c], b).expect("3C values")
        });
        return Some(Merge {
            attention: ai,
            projections: [producers[0], producers[1], producers[2]],
            weight: Tensor::from_vec(&[k, 3 * c], weight).expect("K x 3C values"),
            bias,
        });
    }
    None
}

fn apply(g: &mut Graph, m: Merge) {
    let first = g.nodes[m.projections[0]].clone();
    let packed = g.fresh_name(&format!("{}_qkv", first.outputs[0]));
    let w_name = g.fresh_name(&format!("{}_qkv", first.inputs[1]));
    g.initializers.insert(w_name.clone(), m.weight);
    let mut inputs = vec![first.inputs[0].clone(), w_name];
    if let Some(b) = m.bias {
        let b_name = g.fresh_name(&format!("{}_qkv", first.inputs[2]));
        g.initializers.insert(b_name.clone(), b);
        inputs.push(b_name);
    }
    // The packed value's type and shape: Q's, with three times the columns.
    if let Some(vi) = g.value_info.get(&first.outputs[0]).cloned() {
        let shape = vi.shape.map(|mut s| {
            if let Some(last) = s.last_mut() {
                *last = match *last {
                    Dim::Known(c) => Dim::Known(3 * c),
                    _ => Dim::Unknown,
                };
            }
            s
        });
        g.value_info.insert(packed.clone(), crate::ValueInfo { name: packed.clone(), shape, ..vi });
    }
    // The merged projection takes the place of Q's, which comes before the
    // attention in the node order like the other two.
    g.nodes[m.projections[0]] = Node {
        name: format!("{}_qkv", first.name),
        op_type: FUSED_MATMUL.into(),
        domain: DOMAIN.into(),
        inputs,
        outputs: vec![packed.clone()],
        attrs: [("activation".to_string(), Attr::String(b"none".to_vec()))].into_iter().collect(),
    };
    let at = &mut g.nodes[m.attention];
    for i in 0..3 {
        at.inputs[i] = packed.clone();
    }
    at.attrs.insert(QKV_PACKED.into(), Attr::Int(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValueInfo;

    fn in_tessera(mut n: Node) -> Node {
        n.domain = DOMAIN.into();
        n
    }

    /// x → three FusedMatMuls (weights [2, 3], biases [3]) → Attention.
    fn graph(v_input: &str, v_activation: &str) -> Graph {
        let vi = |n: &str| ValueInfo { name: n.into(), dtype: Some(DType::F32), shape: None };
        let proj = |name: &str, x: &str, act: &str| {
            in_tessera(Node::new(FUSED_MATMUL, name, &[x, &format!("w{name}"), &format!("b{name}")], &[name]))
                .with_attr("activation", Attr::String(act.as_bytes().to_vec()))
        };
        let mut g = Graph {
            nodes: vec![
                proj("q", "x", "none"),
                proj("k", "x", "none"),
                proj("v", v_input, v_activation),
                in_tessera(Node::new("Attention", "att", &["q", "k", "v"], &["y"])),
            ],
            inputs: vec![vi("x"), vi("x2")],
            outputs: vec![vi("y")],
            ..Default::default()
        };
        for (i, p) in ["q", "k", "v"].iter().enumerate() {
            let base = 10.0 * i as f32;
            let w: Vec<f32> = (0..6).map(|j| base + j as f32).collect();
            g.initializers.insert(format!("w{p}"), Tensor::from_vec(&[2, 3], w).unwrap());
            g.initializers.insert(format!("b{p}"), Tensor::from_vec(&[3], vec![base; 3]).unwrap());
        }
        g
    }

    #[test]
    fn three_projections_of_one_input_become_one() {
        let mut g = graph("x", "none");
        assert_eq!(merge_qkv_projections(&mut g), 1);
        assert_eq!(g.nodes.len(), 2, "{:?}", g.nodes);
        let (mm, at) = (&g.nodes[0], &g.nodes[1]);
        assert_eq!(at.inputs[..3], [mm.outputs[0].clone(), mm.outputs[0].clone(), mm.outputs[0].clone()]);
        assert_eq!(at.attr_int_or(QKV_PACKED, 0).unwrap(), 1);
        // Row r of the merged weight is row r of Wq, Wk, Wv side by side.
        let w = g.initializers[&mm.inputs[1]].as_slice::<f32>().unwrap().to_vec();
        assert_eq!(w, [0., 1., 2., 10., 11., 12., 20., 21., 22., 3., 4., 5., 13., 14., 15., 23., 24., 25.]);
        let b = g.initializers[&mm.inputs[2]].as_slice::<f32>().unwrap().to_vec();
        assert_eq!(b, [0., 0., 0., 10., 10., 10., 20., 20., 20.]);
        // The three old weights and biases are gone.
        assert_eq!(g.initializers.len(), 2);
    }

    /// The ONNX operator merges in its 3-D layout only: head counts given
    /// and Q known to be rank 3.
    #[test]
    fn onnx_attention_merges_in_its_3d_layout() {
        let onnx = |heads: bool, q_rank: Option<usize>| {
            let mut g = graph("x", "none");
            let mut at = Node::new("Attention", "att", &["q", "k", "v", "m"], &["y"]);
            if heads {
                at = at.with_attr("q_num_heads", Attr::Int(1)).with_attr("kv_num_heads", Attr::Int(1));
            }
            g.nodes[3] = at;
            if let Some(r) = q_rank {
                let shape = Some(vec![Dim::Known(2); r]);
                g.value_info.insert("q".into(), ValueInfo { name: "q".into(), dtype: Some(DType::F32), shape });
            }
            g
        };
        let mut g = onnx(true, Some(3));
        assert_eq!(merge_qkv_projections(&mut g), 1);
        let (mm, at) = (&g.nodes[0], &g.nodes[1]);
        assert_eq!((at.domain.as_str(), at.op_type.as_str()), ("", "Attention"));
        assert_eq!(at.inputs, [&mm.outputs[0], &mm.outputs[0], &mm.outputs[0], "m"]);
        assert_eq!(at.attr_int_or(QKV_PACKED, 0).unwrap(), 1);
        assert_eq!(g.initializers[&mm.inputs[1]].shape(), [2, 9]);
        for (heads, rank) in [(false, Some(3)), (true, Some(4)), (true, None)] {
            let mut g = onnx(heads, rank);
            assert_eq!(merge_qkv_projections(&mut g), 0, "heads {heads}, Q rank {rank:?}");
        }
    }

    #[test]
    fn projections_that_differ_stay_apart() {
        for (input, act) in [("x2", "none"), ("x", "relu")] {
            let mut g = graph(input, act);
            assert_eq!(merge_qkv_projections(&mut g), 0, "V from {input} with {act}");
            assert_eq!(g.nodes.len(), 4);
        }
    }
}
