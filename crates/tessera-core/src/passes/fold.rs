//! Constant folding: a node whose inputs are all constants is evaluated once
//! at load time and replaced by its outputs as initializers.

use super::Evaluator;
use crate::{Attr, Graph, Node, Result, Tensor};

/// Ops never folded: their value is not a function of their inputs.
const NONDETERMINISTIC: &[&str] =
    &["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"];

/// Outputs larger than this stay computed at run time rather than bloating
/// the session's memory (CNN test models build their weights this way, so
/// the bound is generous).
const MAX_FOLDED_BYTES: usize = 512 << 20;

pub fn fold_constants(graph: &mut Graph, eval: &Evaluator) -> Result<usize> {
    fold_constants_except(graph, eval, &|_, _| false)
}

/// [`fold_constants`], leaving the nodes `keep` picks (and so whatever
/// depends on them) for a later pass.
pub fn fold_constants_except(
    graph: &mut Graph,
    eval: &Evaluator,
    keep: &dyn Fn(&Graph, &Node) -> bool,
) -> Result<usize> {
    let mut folded = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let n = &graph.nodes[i];
        let is_const_node = n.op_type == "Constant" && (n.domain.is_empty() || n.domain == "ai.onnx");
        let all_const = n.inputs.iter().all(|s| s.is_empty() || graph.initializers.contains_key(s));
        let foldable = (n.domain.is_empty() || n.domain == "ai.onnx")
            && !NONDETERMINISTIC.contains(&n.op_type.as_str())
            && n.attrs.values().all(|a| !matches!(a, Attr::Graph))
            && all_const
            && (is_const_node || !n.inputs.is_empty());
        if !foldable || keep(graph, n) {
            i += 1;
            continue;
        }
        let inputs: Vec<Option<Tensor>> =
            n.inputs.iter().map(|s| if s.is_empty() { None } else { graph.initializers.get(s).cloned() }).collect();
        // A node that fails to evaluate is left for run time, where the same
        // error is reported with the inputs the user supplied.
        let outs = match eval(graph, n, &inputs) {
            Ok(o) if o.len() >= n.outputs.iter().filter(|s| !s.is_empty()).count() => o,
            _ => {
                i += 1;
                continue;
            }
        };
        if outs.iter().map(|t| t.byte_len()).sum::<usize>() > MAX_FOLDED_BYTES {
            i += 1;
            continue;
        }
        let n = graph.nodes.remove(i);
        for (name, t) in n.outputs.iter().zip(outs) {
            if !name.is_empty() {
                graph.initializers.insert(name.clone(), t);
            }
        }
        folded += 1;
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Node, ValueInfo};

    #[test]
    fn folds_constant_chains_only() {
        let vi = |n: &str| ValueInfo { name: n.into(), dtype: Some(DType::F32), shape: None };
        let mut g = Graph {
            nodes: vec![Node::new("Neg", "c", &["w"], &["nw"]), Node::new("Add", "a", &["x", "nw"], &["y"])],
            inputs: vec![vi("x")],
            outputs: vec![vi("y")],
            ..Default::default()
        };
        g.initializers.insert("w".into(), Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap());
        let eval = |_: &Graph, n: &crate::Node, ins: &[Option<Tensor>]| -> Result<Vec<Tensor>> {
            assert_eq!(n.op_type, "Neg");
            let v: Vec<f32> = ins[0].as_ref().unwrap().as_slice::<f32>()?.iter().map(|x| -x).collect();
            Ok(vec![Tensor::from_vec(&[2], v)?])
        };
        assert_eq!(fold_constants(&mut g, &eval).unwrap(), 1);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.initializers["nw"].as_slice::<f32>().unwrap(), &[-1.0, -2.0]);
    }
}
