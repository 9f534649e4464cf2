//! MatMul epilogue fusion. `MatMul + Add(bias)` becomes
//! `tessera:FusedMatMul(A, B, bias)`; a following activation (ReLU, GELU)
//! and a residual `Add` of the same shape are folded into its epilogue, so
//! the output tile is finished while it is still in cache.

use super::pattern::{is_onnx, other_input, Index};
use crate::{Attr, Dim, Graph, Node};

pub const DOMAIN: &str = "tessera";
pub const FUSED_MATMUL: &str = "FusedMatMul";

fn last_dim_of(g: &Graph, v: &str) -> Option<usize> {
    if let Some(t) = g.initializers.get(v) {
        return t.shape().last().copied();
    }
    g.value_info.get(v)?.shape.as_ref()?.last()?.known()
}

fn is_fused(n: &Node) -> bool {
    n.domain == DOMAIN && n.op_type == FUSED_MATMUL
}

pub fn fuse_matmul_bias(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit = None;
        for (mi, mm) in g.nodes.iter().enumerate() {
            if mm.op_type != "MatMul" || !is_onnx(mm) || mm.inputs.len() != 2 || !ix.single_use(&mm.outputs[0]) {
                continue;
            }
            let Some(n) = last_dim_of(g, &mm.inputs[1]) else { continue };
            // B must be at least 2-D, or the output loses the column axis.
            let b_rank = g
                .initializers
                .get(&mm.inputs[1])
                .map(|t| t.rank())
                .or_else(|| g.value_info.get(&mm.inputs[1]).and_then(|v| v.shape.as_ref()).map(|s| s.len()));
            if b_rank.is_none_or(|r| r < 2) {
                continue;
            }
            let Some(&ai) = ix.consumers(g, &mm.outputs[0]).first() else { continue };
            let add = &g.nodes[ai];
            if add.op_type != "Add" || !is_onnx(add) {
                continue;
            }
            let Some(bias) = other_input(add, &mm.outputs[0]) else { continue };
            let Some(bt) = g.initializers.get(bias) else { continue };
            // Bias must broadcast along rows only: shape [.., 1, N] with N == B's columns.
            let bs = bt.shape();
            if bt.dtype() != crate::DType::F32 {
                continue;
            }
            if bs.is_empty() || bs[bs.len() - 1] != n || bs[..bs.len() - 1].iter().any(|&d| d != 1) {
                continue;
            }
            // ... and must not raise the output's rank.
            let a_rank = g.value_info.get(&mm.inputs[0]).and_then(|v| v.shape.as_ref()).map(|s| s.len());
            let out_rank = a_rank.zip(b_rank).map(|(a, b)| a.max(b));
            if bs.len() > 1 && out_rank.is_none_or(|r| bs.len() > r) {
                continue;
            }
            hit = Some((mi, ai, bias.to_string()));
            break;
        }
        let Some((mi, ai, bias)) = hit else { break };
        let mm = g.nodes[mi].clone();
        let bias_1d = if g.initializers[&bias].rank() == 1 {
            bias
        } else {
            let t = &g.initializers[&bias];
            let flat = t.reshape(&[t.numel()]).expect("same element count");
            let name = g.fresh_name(&format!("{bias}_row"));
            g.initializers.insert(name.clone(), flat);
            name
        };
        let out = g.nodes[ai].outputs[0].clone();
        g.nodes[ai] = Node {
            name: format!("{}_bias", mm.name),
            op_type: FUSED_MATMUL.into(),
            domain: DOMAIN.into(),
            inputs: vec![mm.inputs[0].clone(), mm.inputs[1].clone(), bias_1d],
            outputs: vec![out],
            attrs: [("activation".to_string(), Attr::String(b"none".to_vec()))].into_iter().collect(),
        };
        g.nodes.remove(mi);
        fused += 1;
    }
    fused
}

fn activation_of(n: &Node) -> Option<&'static str> {
    if !is_onnx(n) {
        return None;
    }
    match n.op_type.as_str() {
        "Relu" => Some("relu"),
        "Gelu" => match n.attr_string("approximate").ok().flatten().as_deref() {
            None | Some("none") => Some("gelu_erf"),
            Some("tanh") => Some("gelu_tanh"),
            _ => None,
        },
        _ => None,
    }
}

fn same_known_shape(g: &Graph, a: &str, b: &str) -> bool {
    let s = |v: &str| g.value_info.get(v).and_then(|i| i.shape.clone());
    match (s(a), s(b)) {
        (Some(x), Some(y)) => x == y && x.iter().all(|d| !matches!(d, Dim::Unknown)),
        _ => false,
    }
}

pub fn fuse_epilogues(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit: Option<(usize, usize, Node)> = None;
        for (fi, f) in g.nodes.iter().enumerate() {
            if !is_fused(f) || !ix.single_use(&f.outputs[0]) {
                continue;
            }
            let Some(&ci) = ix.consumers(g, &f.outputs[0]).first() else { continue };
            let c = &g.nodes[ci];
            let act = f.attr_string("activation").ok().flatten().unwrap_or_default();
            let has_residual = f.inputs.len() > 3;
            let mut nf = f.clone();
            if let Some(a) = activation_of(c) {
                if act != "none" || has_residual {
                    continue;
                }
                nf.attrs.insert("activation".into(), Attr::String(a.as_bytes().to_vec()));
            } else if c.op_type == "Add" && is_onnx(c) && !has_residual {
                let Some(r) = other_input(c, &f.outputs[0]) else { continue };
                if g.initializers.contains_key(r) || !same_known_shape(g, r, &f.outputs[0]) {
                    continue;
                }
                while nf.inputs.len() < 3 {
                    nf.inputs.push(String::new());
                }
                nf.inputs.push(r.to_string());
            } else {
                continue;
            }
            nf.outputs = c.outputs.clone();
            hit = Some((fi, ci, nf));
            break;
        }
        let Some((fi, ci, nf)) = hit else { break };
        // The fused node takes the consumer's place so that a residual input
        // produced between the two is defined before it.
        g.nodes[ci] = nf;
        g.nodes.remove(fi);
        fused += 1;
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tensor, ValueInfo};

    fn vi(n: &str, shape: Option<Vec<Dim>>) -> ValueInfo {
        ValueInfo { name: n.into(), dtype: Some(DType::F32), shape }
    }

    fn base() -> Graph {
        let shape = Some(vec![Dim::Sym("b".into()), Dim::Known(4)]);
        let mut g = Graph {
            nodes: vec![
                Node::new("MatMul", "mm", &["x", "w"], &["mm"]),
                Node::new("Add", "add", &["bias", "mm"], &["h"]),
                Node::new("Gelu", "gelu", &["h"], &["a"]),
                Node::new("Add", "res", &["a", "r"], &["y"]),
            ],
            inputs: vec![vi("x", Some(vec![Dim::Sym("b".into()), Dim::Known(3)])), vi("r", shape.clone())],
            outputs: vec![vi("y", None)],
            ..Default::default()
        };
        g.value_info.insert("a".into(), vi("a", shape.clone()));
        g.value_info.insert("r".into(), vi("r", shape));
        g.initializers.insert("w".into(), Tensor::zeros(DType::F32, &[3, 4]).unwrap());
        g.initializers.insert("bias".into(), Tensor::zeros(DType::F32, &[4]).unwrap());
        g
    }

    #[test]
    fn bias_activation_and_residual() {
        let mut g = base();
        assert_eq!(fuse_matmul_bias(&mut g), 1);
        assert_eq!(fuse_epilogues(&mut g), 2);
        assert_eq!(g.nodes.len(), 1);
        let n = &g.nodes[0];
        assert_eq!(n.op_type, FUSED_MATMUL);
        assert_eq!(n.inputs, vec!["x", "w", "bias", "r"]);
        assert_eq!(n.attr_string("activation").unwrap().as_deref(), Some("gelu_erf"));
        assert_eq!(n.outputs, vec!["y"]);
    }

    #[test]
    fn bias_of_wrong_width_is_not_fused() {
        let mut g = base();
        g.initializers.insert("bias".into(), Tensor::zeros(DType::F32, &[2, 4]).unwrap());
        assert_eq!(fuse_matmul_bias(&mut g), 0);
        g.initializers.insert("bias".into(), Tensor::zeros(DType::F32, &[3]).unwrap());
        assert_eq!(fuse_matmul_bias(&mut g), 0);
    }
}
