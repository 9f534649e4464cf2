//! GELU from its erf form, `0.5 * x * (1 + erf(x / sqrt(2)))`, in the three
//! association orders exporters produce, becomes one `Gelu` node.

use super::pattern::{close, const_scalar, is_onnx, other_input, Index};
use crate::{Attr, Graph, Node};

const SQRT2: f64 = std::f64::consts::SQRT_2;

pub fn fuse_gelu(g: &mut Graph) -> usize {
    let mut fused = 0;
    loop {
        let Some((at, node)) = find_one(g) else { break };
        g.nodes[at] = node;
        // The replaced chain is dead now; drop it before matching again.
        super::dce::eliminate_dead_nodes(g);
        fused += 1;
    }
    fused
}

fn find_one(g: &Graph) -> Option<(usize, Node)> {
    let ix = Index::new(g);
    for erf in g.nodes.iter().filter(|n| n.op_type == "Erf" && is_onnx(n)) {
        // erf(x / sqrt2) or erf(x * 1/sqrt2)
        let t = erf.inputs.first()?;
        let x = if let Some((_, d)) = ix.producer_of(g, t, "Div") {
            (const_scalar(g, &d.inputs[1]).is_some_and(|c| close(c, SQRT2))).then(|| d.inputs[0].clone())
        } else if let Some((_, m)) = ix.producer_of(g, t, "Mul") {
            let c = m.inputs.iter().position(|i| const_scalar(g, i).is_some_and(|c| close(c, 1.0 / SQRT2)));
            c.map(|c| m.inputs[1 - c].clone())
        } else {
            None
        };
        let Some(x) = x else { continue };
        if !ix.single_use(t) || !ix.single_use(&erf.outputs[0]) {
            continue;
        }
        // 1 + erf(..)
        let adds = ix.consumers(g, &erf.outputs[0]);
        let Some(&ai) = adds.first() else { continue };
        let add = &g.nodes[ai];
        if add.op_type != "Add" || !is_onnx(add) {
            continue;
        }
        if !other_input(add, &erf.outputs[0]).and_then(|o| const_scalar(g, o)).is_some_and(|c| close(c, 1.0)) {
            continue;
        }
        let a = &add.outputs[0];
        if !ix.single_use(a) {
            continue;
        }
        let Some(&m1i) = ix.consumers(g, a).first() else { continue };
        let m1 = &g.nodes[m1i];
        if m1.op_type != "Mul" || !is_onnx(m1) {
            continue;
        }
        let Some(o1) = other_input(m1, a) else { continue };
        let is_half = |v: &str| const_scalar(g, v).is_some_and(|c| close(c, 0.5));
        let out = if o1 == x {
            // (x * (1+erf)) * 0.5
            let m = &m1.outputs[0];
            if !ix.single_use(m) {
                continue;
            }
            let Some(&m2i) = ix.consumers(g, m).first() else { continue };
            let m2 = &g.nodes[m2i];
            (m2.op_type == "Mul" && other_input(m2, m).is_some_and(is_half)).then_some((m2i, m2.outputs[0].clone()))
        } else if is_half(o1) {
            // ((1+erf) * 0.5) * x
            let m = &m1.outputs[0];
            if !ix.single_use(m) {
                continue;
            }
            let Some(&m2i) = ix.consumers(g, m).first() else { continue };
            let m2 = &g.nodes[m2i];
            (m2.op_type == "Mul" && other_input(m2, m) == Some(x.as_str())).then_some((m2i, m2.outputs[0].clone()))
        } else if let Some((_, h)) = ix.producer_of(g, o1, "Mul") {
            // (x * 0.5) * (1+erf)
            let ok = ix.single_use(o1) && other_input(h, &x).is_some_and(is_half);
            ok.then_some((m1i, m1.outputs[0].clone()))
        } else {
            None
        };
        let Some((at, y)) = out else { continue };
        let node = Node {
            name: format!("{}_gelu", erf.name),
            op_type: "Gelu".into(),
            domain: String::new(),
            inputs: vec![x],
            outputs: vec![y],
            attrs: [("approximate".to_string(), Attr::String(b"none".to_vec()))].into_iter().collect(),
        };
        return Some((at, node));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Tensor, ValueInfo};

    fn graph(order: u8) -> Graph {
        let vi = |n: &str| ValueInfo { name: n.into(), dtype: Some(DType::F32), shape: None };
        let nodes = match order {
            0 => vec![
                Node::new("Div", "d", &["x", "sqrt2"], &["t"]),
                Node::new("Erf", "e", &["t"], &["e"]),
                Node::new("Add", "a", &["e", "one"], &["a"]),
                Node::new("Mul", "m1", &["x", "a"], &["m"]),
                Node::new("Mul", "m2", &["m", "half"], &["y"]),
            ],
            1 => vec![
                Node::new("Mul", "h", &["x", "half"], &["h"]),
                Node::new("Div", "d", &["x", "sqrt2"], &["t"]),
                Node::new("Erf", "e", &["t"], &["e"]),
                Node::new("Add", "a", &["one", "e"], &["a"]),
                Node::new("Mul", "m1", &["h", "a"], &["y"]),
            ],
            _ => vec![
                Node::new("Mul", "d", &["x", "rsqrt2"], &["t"]),
                Node::new("Erf", "e", &["t"], &["e"]),
                Node::new("Add", "a", &["e", "one"], &["a"]),
                Node::new("Mul", "m1", &["a", "half"], &["m"]),
                Node::new("Mul", "m2", &["m", "x"], &["y"]),
            ],
        };
        let mut g = Graph { nodes, inputs: vec![vi("x")], outputs: vec![vi("y")], ..Default::default() };
        for (k, v) in [("sqrt2", SQRT2 as f32), ("rsqrt2", (1.0 / SQRT2) as f32), ("one", 1.0), ("half", 0.5)] {
            g.initializers.insert(k.into(), Tensor::scalar(v));
        }
        g
    }

    #[test]
    fn fuses_all_three_orders() {
        for order in 0..3 {
            let mut g = graph(order);
            assert_eq!(fuse_gelu(&mut g), 1, "order {order}");
            assert_eq!(g.nodes.len(), 1);
            assert_eq!(g.nodes[0].op_type, "Gelu");
            assert_eq!(g.nodes[0].inputs, vec!["x"]);
            assert_eq!(g.nodes[0].outputs, vec!["y"]);
        }
    }

    #[test]
    fn leaves_wrong_constants_alone() {
        let mut g = graph(0);
        g.initializers.insert("half".into(), Tensor::scalar(0.6f32));
        assert_eq!(fuse_gelu(&mut g), 0);
        assert_eq!(g.nodes.len(), 5);
    }
}
