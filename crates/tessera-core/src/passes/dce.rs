//! Dead-node elimination: drops nodes none of whose outputs reach a graph
//! output, and initializers nobody reads.

use std::collections::HashSet;

use crate::Graph;

pub fn eliminate_dead_nodes(graph: &mut Graph) -> usize {
    let mut live: HashSet<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.nodes.len()];
    // Nodes are topologically ordered, so one backward sweep suffices.
    for (i, n) in graph.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            for inp in n.inputs.iter().filter(|s| !s.is_empty()) {
                live.insert(inp.clone());
            }
        }
    }
    let before = graph.nodes.len();
    let mut it = keep.into_iter();
    graph.nodes.retain(|_| it.next().unwrap_or(false));
    graph.initializers.retain(|k, _| live.contains(k));
    before - graph.nodes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Node, Tensor, ValueInfo};

    #[test]
    fn removes_unreachable_nodes_and_weights() {
        let vi = |n: &str| ValueInfo { name: n.into(), dtype: Some(DType::F32), shape: None };
        let mut g = Graph {
            nodes: vec![
                Node::new("Relu", "a", &["x"], &["y"]),
                Node::new("Add", "dead", &["x", "w"], &["z"]),
                Node::new("Neg", "dead2", &["z"], &["z2"]),
            ],
            inputs: vec![vi("x")],
            outputs: vec![vi("y")],
            ..Default::default()
        };
        g.initializers.insert("w".into(), Tensor::scalar(1.0f32));
        assert_eq!(eliminate_dead_nodes(&mut g), 2);
        assert_eq!(g.nodes.len(), 1);
        assert!(g.initializers.is_empty());
    }
}
