//! MatMul epilogue fusion. `MatMul + Add(bias)` becomes
//! `tessera:FusedMatMul(A, B, bias)`; a following activation (ReLU, GELU)
//! and a residual `Add` of the same shape are folded into its epilogue, so
//! the output tile is finished while it is still in cache.
//!
//! Dynamic quantization (ONNX Runtime's `quantize_dynamic`) writes each
//! product as `MatMulInteger -> Cast(float) -> Mul(scale) [-> Add(bias)]`;
//! that chain becomes `tessera:FusedMatMulInteger(A, B, a_zero, b_zero,
//! scale, [bias], [residual])`, whose epilogue takes the same activation and
//! residual steps. Without it, the i32 product and two float copies of it
//! make a round trip through memory for every weight.

use super::pattern::{is_onnx, other_input, replace_with_fused, Index};
use crate::{Attr, Dim, Graph, Node};

pub const DOMAIN: &str = "tessera";
pub const FUSED_MATMUL: &str = "FusedMatMul";
pub const FUSED_MATMUL_INTEGER: &str = "FusedMatMulInteger";

fn last_dim_of(g: &Graph, v: &str) -> Option<usize> {
    if let Some(t) = g.initializers.get(v) {
        return t.shape().last().copied();
    }
    g.value_info.get(v)?.shape.as_ref()?.last()?.known()
}

/// For a fused product, the input slot its residual takes (the slots before
/// it may be empty strings).
pub fn residual_slot(n: &Node) -> Option<usize> {
    match (n.domain.as_str(), n.op_type.as_str()) {
        (DOMAIN, FUSED_MATMUL) => Some(3),
        (DOMAIN, FUSED_MATMUL_INTEGER) => Some(6),
        _ => None,
    }
}

fn rank_of(g: &Graph, v: &str) -> Option<usize> {
    g.shape_of(v).map(|s| s.len())
}

/// `bias` is a constant f32 that broadcasts along rows only (shape
/// `[.., 1, n]`) and does not raise the rank of an output of `out_rank`.
fn is_row_bias(g: &Graph, bias: &str, n: usize, out_rank: Option<usize>) -> bool {
    let Some(bt) = g.initializers.get(bias) else { return false };
    let bs = bt.shape();
    if bt.dtype() != crate::DType::F32 || bs.is_empty() || bs[bs.len() - 1] != n {
        return false;
    }
    bs[..bs.len() - 1].iter().all(|&d| d == 1) && (bs.len() == 1 || out_rank.is_some_and(|r| bs.len() <= r))
}

/// A 1-D copy of a row bias (added to the graph when it is not 1-D already).
fn bias_as_row(g: &mut Graph, bias: String) -> String {
    if g.initializers[&bias].rank() == 1 {
        return bias;
    }
    let t = &g.initializers[&bias];
    let flat = t.reshape(&[t.numel()]).expect("same element count");
    let name = g.fresh_name(&format!("{bias}_row"));
    g.initializers.insert(name.clone(), flat);
    name
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
            let b_rank = rank_of(g, &mm.inputs[1]);
            if b_rank.is_none_or(|r| r < 2) {
                continue;
            }
            let Some(&ai) = ix.consumers(g, &mm.outputs[0]).first() else { continue };
            let add = &g.nodes[ai];
            if add.op_type != "Add" || !is_onnx(add) {
                continue;
            }
            let Some(bias) = other_input(add, &mm.outputs[0]) else { continue };
            let a_rank = rank_of(g, &mm.inputs[0]);
            let out_rank = a_rank.zip(b_rank).map(|(a, b)| a.max(b));
            if !is_row_bias(g, bias, n, out_rank) {
                continue;
            }
            hit = Some((mi, ai, bias.to_string()));
            break;
        }
        let Some((mi, ai, bias)) = hit else { break };
        let mm = g.nodes[mi].clone();
        let bias_1d = bias_as_row(g, bias);
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

/// `MatMulInteger(A, B, a_zero, b_zero) -> Cast(to float) -> Mul(scale)`,
/// then an `Add` of a constant row bias if one follows, become one
/// `tessera:FusedMatMulInteger`. `scale` (ONNX Runtime's `a_scale * b_scale`
/// product, computed at run time) must be f32 and one value or one per
/// column; B must be 2-D, so that the product's columns are B's.
pub fn fuse_matmul_integer(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let ix = Index::new(g);
        let mut hit: Option<(Vec<usize>, Node)> = None;
        for (mi, mm) in g.nodes.iter().enumerate() {
            if mm.op_type != "MatMulInteger" || !is_onnx(mm) || !(2..=4).contains(&mm.inputs.len()) {
                continue;
            }
            if mm.inputs[..2].iter().any(|i| i.is_empty()) || !ix.single_use(&mm.outputs[0]) {
                continue;
            }
            let Some(&[_, n]) = g.concrete_shape_of(&mm.inputs[1]).as_deref() else { continue };
            // B is 2-D: the product has A's rank.
            let out_rank = rank_of(g, &mm.inputs[0]);
            let only_consumer = |v: &str| ix.single_use(v).then(|| ix.consumers(g, v).first().copied()).flatten();
            let Some(ci) = only_consumer(&mm.outputs[0]) else { continue };
            let cast = &g.nodes[ci];
            if cast.op_type != "Cast" || !is_onnx(cast) || cast.attr_int("to").ok().flatten() != Some(1) {
                continue;
            }
            let Some(ui) = only_consumer(&cast.outputs[0]) else { continue };
            let mul = &g.nodes[ui];
            if mul.op_type != "Mul" || !is_onnx(mul) {
                continue;
            }
            let Some(scale) = other_input(mul, &cast.outputs[0]) else { continue };
            if scale == cast.outputs[0] || g.dtype_of(scale) != Some(crate::DType::F32) {
                continue;
            }
            let Some(ss) = g.concrete_shape_of(scale) else { continue };
            let per_column = ss.last() == Some(&n) && ss[..ss.len() - 1].iter().all(|&d| d == 1);
            let numel: usize = ss.iter().product();
            if !(numel == 1 || per_column) || out_rank.is_none_or(|r| ss.len() > r) {
                continue;
            }
            let mut inputs = mm.inputs.clone();
            inputs.resize(4, String::new());
            inputs.push(scale.to_string());
            let mut matched = vec![mi, ci, ui];
            let mut outputs = mul.outputs.clone();
            if let Some((ai, bias)) = following_bias(g, &ix, &mul.outputs[0], n, out_rank) {
                inputs.push(bias);
                matched.push(ai);
                outputs = g.nodes[ai].outputs.clone();
            }
            let node = Node {
                name: format!("{}_dequant", mm.name),
                op_type: FUSED_MATMUL_INTEGER.into(),
                domain: DOMAIN.into(),
                inputs,
                outputs,
                attrs: [("activation".to_string(), Attr::String(b"none".to_vec()))].into_iter().collect(),
            };
            hit = Some((matched, node));
            break;
        }
        let Some((matched, node)) = hit else { break };
        place_integer_product(g, matched, node);
        fused += 1;
    }
    fused
}

/// The `Add` of a constant row bias (`n` values) that alone consumes
/// `value`, an output of rank `out_rank`: (its index, the bias).
pub(super) fn following_bias(
    g: &Graph,
    ix: &Index,
    value: &str,
    n: usize,
    out_rank: Option<usize>,
) -> Option<(usize, String)> {
    if !ix.single_use(value) {
        return None;
    }
    let &ai = ix.consumers(g, value).first()?;
    let add = &g.nodes[ai];
    let b = other_input(add, value).filter(|_| add.op_type == "Add" && is_onnx(add))?;
    is_row_bias(g, b, n, out_rank).then(|| (ai, b.to_string()))
}

/// Puts a fused integer product in the place of the nodes it matched, its
/// bias (input 5, if any) made 1-D.
pub(super) fn place_integer_product(g: &mut Graph, matched: Vec<usize>, mut node: Node) {
    if node.inputs.len() > 5 {
        node.inputs[5] = bias_as_row(g, std::mem::take(&mut node.inputs[5]));
    }
    replace_with_fused(g, matched, node);
}

pub(super) fn activation_of(n: &Node) -> Option<&'static str> {
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
    match (g.shape_of(a), g.shape_of(b)) {
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
            let Some(slot) = residual_slot(f) else { continue };
            if !ix.single_use(&f.outputs[0]) {
                continue;
            }
            let Some(&ci) = ix.consumers(g, &f.outputs[0]).first() else { continue };
            let c = &g.nodes[ci];
            let act = f.attr_string("activation").ok().flatten().unwrap_or_default();
            let has_residual = f.inputs.len() > slot;
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
                nf.inputs.resize(slot, String::new());
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

    /// ONNX Runtime's dynamic quantization of `gelu(x @ W + b) + r`, with
    /// `x_scale`, `x_zero` and `xq` as DynamicQuantizeLinear leaves them.
    fn dequant_chain(w_scale_shape: &[usize], cast_to: i64) -> Graph {
        let shape = Some(vec![Dim::Sym("b".into()), Dim::Known(4)]);
        let mut g = Graph {
            nodes: vec![
                Node::new("Mul", "scale", &["x_scale", "w_scale"], &["s"]),
                Node::new("MatMulInteger", "mi", &["xq", "wq", "x_zero", "w_zero"], &["acc"]),
                Node::new("Cast", "cast", &["acc"], &["accf"]).with_attr("to", Attr::Int(1)),
                Node::new("Mul", "deq", &["accf", "s"], &["mm"]),
                Node::new("Add", "add", &["bias", "mm"], &["h"]),
                Node::new("Gelu", "gelu", &["h"], &["a"]),
                Node::new("Add", "res", &["r", "a"], &["y"]),
            ],
            inputs: vec![
                ValueInfo {
                    name: "xq".into(),
                    dtype: Some(DType::U8),
                    shape: Some(vec![Dim::Sym("b".into()), Dim::Known(3)]),
                },
                ValueInfo { name: "x_scale".into(), dtype: Some(DType::F32), shape: Some(vec![]) },
                ValueInfo { name: "x_zero".into(), dtype: Some(DType::U8), shape: Some(vec![]) },
                vi("r", shape.clone()),
            ],
            outputs: vec![vi("y", None)],
            ..Default::default()
        };
        g.initializers.insert("wq".into(), Tensor::zeros(DType::I8, &[3, 4]).unwrap());
        g.initializers.insert("w_zero".into(), Tensor::zeros(DType::I8, &[]).unwrap());
        g.initializers.insert("w_scale".into(), Tensor::zeros(DType::F32, w_scale_shape).unwrap());
        g.initializers.insert("bias".into(), Tensor::zeros(DType::F32, &[4]).unwrap());
        crate::shape_inference::infer(&mut g).unwrap();
        // Set after inference, which would reject a Mul of mixed types.
        g.nodes[2].attrs.insert("to".into(), Attr::Int(cast_to));
        g
    }

    #[test]
    fn dequantized_integer_product_becomes_one_node() {
        for w_scale in [vec![], vec![4], vec![1, 4]] {
            let mut g = dequant_chain(&w_scale, 1);
            assert_eq!(fuse_matmul_integer(&mut g), 1, "w_scale {w_scale:?}");
            assert_eq!(fuse_epilogues(&mut g), 2);
            assert_eq!(g.nodes.len(), 2, "the scale product stays; the chain is one node");
            let n = g.nodes.iter().find(|n| n.op_type == FUSED_MATMUL_INTEGER).unwrap();
            assert_eq!(n.domain, DOMAIN);
            assert_eq!(n.inputs, vec!["xq", "wq", "x_zero", "w_zero", "s", "bias", "r"]);
            assert_eq!(n.attr_string("activation").unwrap().as_deref(), Some("gelu_erf"));
            assert_eq!(n.outputs, vec!["y"]);
            assert_eq!(residual_slot(n), Some(6));
        }
    }

    #[test]
    fn integer_chains_that_differ_stay_apart() {
        // Cast to int64, not float.
        let mut g = dequant_chain(&[], 7);
        assert_eq!(fuse_matmul_integer(&mut g), 0);
        // A scale that is neither one value nor one per column.
        let mut g = dequant_chain(&[3, 4], 1);
        assert_eq!(fuse_matmul_integer(&mut g), 0);
        // The i32 product is read twice.
        let mut g = dequant_chain(&[], 1);
        g.outputs.push(vi("acc", None));
        assert_eq!(fuse_matmul_integer(&mut g), 0);
        // The product of the scaled value with itself.
        let mut g = dequant_chain(&[], 1);
        g.nodes[3].inputs[1] = "accf".into();
        assert_eq!(fuse_matmul_integer(&mut g), 0);
    }

    #[test]
    fn integer_chain_without_bias_keeps_its_add_as_residual() {
        // A non-constant Add after the Mul is a residual, not a bias.
        let mut g = dequant_chain(&[], 1);
        g.nodes.retain(|n| n.name != "gelu" && n.name != "add");
        g.nodes.last_mut().unwrap().inputs = vec!["r".into(), "mm".into()];
        crate::shape_inference::infer(&mut g).unwrap();
        assert_eq!(fuse_matmul_integer(&mut g), 1);
        assert_eq!(fuse_epilogues(&mut g), 1);
        let n = g.nodes.iter().find(|n| n.op_type == FUSED_MATMUL_INTEGER).unwrap();
        assert_eq!(n.inputs, vec!["xq", "wq", "x_zero", "w_zero", "s", "", "r"]);
    }
}
