//! LayerNormalization from its decomposed form:
//! `mean = ReduceMean(x); d = x - mean; var = ReduceMean(d^2);`
//! `y = d / sqrt(var + eps) * gamma + beta` over the last axis.

use super::pattern::{const_scalar, is_onnx, other_input, Index};
use crate::{Attr, Graph, Node};

pub fn fuse_layer_norm(g: &mut Graph) -> usize {
    let mut fused = 0;
    while let Some((at, node)) = find_one(g) {
        g.nodes[at] = node;
        // The replaced chain is dead now; drop it before matching again.
        super::dce::eliminate_dead_nodes(g);
        fused += 1;
    }
    fused
}

/// True if `n` is a ReduceMean over only the last axis, keeping dims.
fn reduces_last_axis(g: &Graph, n: &Node, rank: Option<usize>) -> bool {
    if n.attr_int_or("keepdims", 1).ok() != Some(1) {
        return false;
    }
    let axes = match n.attr_ints("axes").ok().flatten() {
        Some(a) => a,
        None => match n.input(1).and_then(|a| g.initializers.get(a)).and_then(|t| t.to_i64_vec().ok()) {
            Some(a) => a,
            None => return false,
        },
    };
    match axes.as_slice() {
        [-1] => true,
        [a] => rank.is_some_and(|r| *a >= 0 && *a as usize + 1 == r),
        _ => false,
    }
}

fn find_one(g: &Graph) -> Option<(usize, Node)> {
    let ix = Index::new(g);
    for div in g.nodes.iter() {
        if div.op_type != "Div" || !is_onnx(div) || div.inputs.len() != 2 {
            continue;
        }
        let (d, s) = (&div.inputs[0], &div.inputs[1]);
        let Some((_, sub)) = ix.producer_of(g, d, "Sub") else { continue };
        let x = &sub.inputs[0];
        let rank = g.value_info.get(x).and_then(|v| v.shape.as_ref()).map(|s| s.len());
        let Some((_, mean)) = ix.producer_of(g, &sub.inputs[1], "ReduceMean") else { continue };
        if &mean.inputs[0] != x || !reduces_last_axis(g, mean, rank) || !ix.single_use(&sub.inputs[1]) {
            continue;
        }
        let Some((_, sqrt)) = ix.producer_of(g, s, "Sqrt") else { continue };
        let Some((_, add_eps)) = ix.producer_of(g, &sqrt.inputs[0], "Add") else { continue };
        let Some((var_name, eps)) = add_eps
            .inputs
            .iter()
            .position(|i| const_scalar(g, i).is_some())
            .map(|p| (add_eps.inputs[1 - p].clone(), const_scalar(g, &add_eps.inputs[p]).unwrap_or(0.0)))
        else {
            continue;
        };
        let Some((_, var)) = ix.producer_of(g, &var_name, "ReduceMean") else { continue };
        if !reduces_last_axis(g, var, rank) {
            continue;
        }
        let sq = &var.inputs[0];
        let squares_d = if let Some((_, p)) = ix.producer_of(g, sq, "Pow") {
            &p.inputs[0] == d && const_scalar(g, &p.inputs[1]).is_some_and(|e| e == 2.0)
        } else if let Some((_, m)) = ix.producer_of(g, sq, "Mul") {
            m.inputs[0] == *d && m.inputs[1] == *d
        } else {
            false
        };
        // d feeds exactly the square and the division.
        let d_uses = ix.uses.get(d.as_str()).copied().unwrap_or(0);
        let d_expected = if ix.producer_of(g, sq, "Mul").is_some() { 3 } else { 2 };
        if !squares_d || d_uses != d_expected || ![s, &sqrt.inputs[0], &var_name, sq].iter().all(|v| ix.single_use(v)) {
            continue;
        }
        // Scale (required by LayerNormalization) and optional bias: 1-D constants.
        let n_out = &div.outputs[0];
        if !ix.single_use(n_out) {
            continue;
        }
        let Some(&mi) = ix.consumers(g, n_out).first() else { continue };
        let mul = &g.nodes[mi];
        if mul.op_type != "Mul" || !is_onnx(mul) {
            continue;
        }
        let Some(gamma) = other_input(mul, n_out).filter(|v| g.initializers.get(*v).is_some_and(|t| t.rank() == 1))
        else {
            continue;
        };
        let mut at = mi;
        let mut y = mul.outputs[0].clone();
        let mut inputs = vec![x.clone(), gamma.to_string()];
        if ix.single_use(&y) {
            if let Some(&ai) = ix.consumers(g, &y).first() {
                let add = &g.nodes[ai];
                if add.op_type == "Add" && is_onnx(add) {
                    if let Some(beta) =
                        other_input(add, &y).filter(|v| g.initializers.get(*v).is_some_and(|t| t.rank() == 1))
                    {
                        inputs.push(beta.to_string());
                        at = ai;
                        y = add.outputs[0].clone();
                    }
                }
            }
        }
        let node = Node {
            name: format!("{}_layernorm", div.name),
            op_type: "LayerNormalization".into(),
            domain: String::new(),
            inputs,
            outputs: vec![y],
            attrs: [("axis".to_string(), Attr::Int(-1)), ("epsilon".to_string(), Attr::Float(eps as f32))]
                .into_iter()
                .collect(),
        };
        return Some((at, node));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tensor, ValueInfo};

    fn decomposed(use_pow: bool) -> Graph {
        let vi = |n: &str| ValueInfo { name: n.into(), dtype: Some(DType::F32), shape: None };
        let rm = |name: &str, i: &str, o: &str| {
            Node::new("ReduceMean", name, &[i], &[o]).with_attr("axes", Attr::Ints(vec![-1]))
        };
        let square = if use_pow {
            Node::new("Pow", "p", &["d", "two"], &["sq"])
        } else {
            Node::new("Mul", "p", &["d", "d"], &["sq"])
        };
        let nodes = vec![
            rm("m", "x", "mean"),
            Node::new("Sub", "s", &["x", "mean"], &["d"]),
            square,
            rm("v", "sq", "var"),
            Node::new("Add", "ae", &["var", "eps"], &["ve"]),
            Node::new("Sqrt", "sq", &["ve"], &["sd"]),
            Node::new("Div", "dv", &["d", "sd"], &["n"]),
            Node::new("Mul", "g", &["n", "gamma"], &["ng"]),
            Node::new("Add", "b", &["ng", "beta"], &["y"]),
        ];
        let mut g = Graph { nodes, inputs: vec![vi("x")], outputs: vec![vi("y")], ..Default::default() };
        g.initializers.insert("two".into(), Tensor::scalar(2.0f32));
        g.initializers.insert("eps".into(), Tensor::scalar(1e-5f32));
        g.initializers.insert("gamma".into(), Tensor::from_vec(&[4], vec![1.0f32; 4]).unwrap());
        g.initializers.insert("beta".into(), Tensor::from_vec(&[4], vec![0.0f32; 4]).unwrap());
        g
    }

    #[test]
    fn fuses_pow_and_mul_forms() {
        for pow in [true, false] {
            let mut g = decomposed(pow);
            assert_eq!(fuse_layer_norm(&mut g), 1);
            assert_eq!(g.nodes.len(), 1, "{:?}", g.nodes);
            let n = &g.nodes[0];
            assert_eq!(n.op_type, "LayerNormalization");
            assert_eq!(n.inputs, vec!["x", "gamma", "beta"]);
            assert!((n.attr_float("epsilon").unwrap().unwrap() - 1e-5).abs() < 1e-12);
        }
    }

    #[test]
    fn shared_intermediate_blocks_fusion() {
        let mut g = decomposed(true);
        g.outputs.push(ValueInfo { name: "var".into(), dtype: Some(DType::F32), shape: None });
        assert_eq!(fuse_layer_norm(&mut g), 0);
    }
}
