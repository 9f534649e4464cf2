//! The accelerate provider, on the portable sgemm, against the CPU provider
//! on one-node graphs: everything but the BLAS call itself is exercised
//! here (on macOS the same logic runs over Accelerate).

use std::collections::HashMap;
use std::sync::Arc;

use tessera_core::{Attr, DType, Graph, Node, Tensor, ValueInfo};

use super::*;
use crate::cpu::CpuProvider;
use crate::provider::{RunOptions, Value};

/// The tolerance the brief sets: both sides are fp32 GEMMs, so the only
/// differences are summation order and where bias is added.
const TOL: f64 = 1e-5;

/// xorshift64: deterministic inputs and shapes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).collect()
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let v = self.vec(shape.iter().product());
        Tensor::from_vec(shape, v).unwrap()
    }
}

fn portable() -> AccelerateProvider {
    AccelerateProvider::with_blas(Arc::new(PortableSgemm))
}

/// A graph of one node: `runtime` inputs (declared fp32, as a loaded model
/// declares them) fed at run time, `consts` as initializers.
fn graph(node: Node, runtime: &[&str], consts: Vec<(&str, Tensor)>) -> Graph {
    let mut g = Graph { name: "t".into(), ..Default::default() };
    for r in runtime {
        g.inputs.push(ValueInfo { name: r.to_string(), dtype: Some(DType::F32), shape: None });
    }
    for o in &node.outputs {
        g.outputs.push(ValueInfo { name: o.clone(), dtype: None, shape: None });
    }
    g.initializers = consts.into_iter().map(|(n, t)| (n.to_string(), t)).collect::<HashMap<_, _>>();
    g.opsets.insert(String::new(), 17);
    g.opsets.insert("tessera".into(), 1);
    g.nodes.push(node);
    g
}

fn fused(inputs: &[&str], activation: &str) -> Node {
    let mut node = Node::new("FusedMatMul", "f", inputs, &["y"])
        .with_attr("activation", Attr::String(activation.as_bytes().to_vec()));
    node.domain = "tessera".into();
    node
}

/// Runs the graph's single node on `p`, which must claim it.
fn try_run_on(p: &dyn ExecutionProvider, g: &Graph, inputs: &[Tensor]) -> tessera_core::Result<Tensor> {
    let v = p.claim(g, &[false]);
    assert!(matches!(v[0], NodeVerdict::Claim { .. }), "{} declined: {:?}", p.name(), v[0]);
    let sub = Subgraph {
        nodes: vec![0],
        inputs: g.inputs.iter().map(|i| i.name.clone()).collect(),
        outputs: vec![g.nodes[0].outputs[0].clone()],
    };
    let part = p.compile(g, &sub)?;
    let out = part.run(inputs.iter().cloned().map(Value::Host).collect(), &RunOptions { pool: None })?;
    out.into_iter().next().unwrap().into_host()
}

fn run_on(p: &dyn ExecutionProvider, g: &Graph, inputs: &[Tensor]) -> Tensor {
    try_run_on(p, g, inputs).unwrap()
}

fn max_rel_err(x: &Tensor, y: &Tensor) -> f64 {
    assert_eq!(x.shape(), y.shape());
    let (a, b) = (x.to_f64_vec(), y.to_f64_vec());
    let scale = b.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale
}

/// Runs `g` on the CPU provider and on the accelerate provider (portable
/// sgemm) and checks they agree.
fn check_against_cpu(g: &Graph, inputs: &[Tensor], what: &str) {
    let want = run_on(&CpuProvider::new(), g, inputs);
    let got = run_on(&portable(), g, inputs);
    let e = max_rel_err(&got, &want);
    assert!(e <= TOL, "{what}: relative error {e:e} > {TOL:e}");
}

fn declined(p: &AccelerateProvider, g: &Graph) -> String {
    match &p.claim(g, &[false])[0] {
        NodeVerdict::Decline { reason } => reason.clone(),
        v => panic!("claimed {v:?} for {}", g.nodes[0].op_type),
    }
}

#[test]
fn matmul_random_shapes_with_batch_broadcasting_match_cpu() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..40 {
        // Ragged matrix sizes; batch dims up to rank 2, each side keeping,
        // dropping or broadcasting (size 1) each one; 1-D operands sometimes.
        let (m, k, n) = (rng.range(1, 37), rng.range(1, 70), rng.range(1, 45));
        let batch: Vec<usize> = (0..rng.range(0, 2)).map(|_| rng.range(2, 4)).collect();
        let side = |rng: &mut Rng| -> Vec<usize> {
            let keep = rng.range(0, batch.len());
            batch[batch.len() - keep..].iter().map(|&d| if rng.coin() { d } else { 1 }).collect()
        };
        let mut a_shape = side(&mut rng);
        let mut b_shape = side(&mut rng);
        let a_vec = case % 9 == 4;
        let b_vec = case % 11 == 7;
        if a_vec {
            a_shape = vec![k];
        } else {
            a_shape.extend([m, k]);
        }
        if b_vec {
            b_shape = vec![k];
        } else {
            b_shape.extend([k, n]);
        }
        let a = rng.tensor(&a_shape);
        let b = rng.tensor(&b_shape);
        let node = Node::new("MatMul", "mm", &["a", "b"], &["y"]);
        // Both operands computed, or B a constant weight.
        let (g, ins) = if rng.coin() {
            (graph(node, &["a", "b"], vec![]), vec![a, b])
        } else {
            (graph(node, &["a"], vec![("b", b)]), vec![a])
        };
        check_against_cpu(&g, &ins, &format!("MatMul {a_shape:?} @ {b_shape:?}"));
    }
}

#[test]
fn gemm_transposes_scales_and_c_shapes_match_cpu() {
    let mut rng = Rng(17);
    let (m, k, n) = (21, 33, 19);
    for (trans_a, trans_b) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let a_shape = if trans_a == 1 { [k, m] } else { [m, k] };
        let b_shape = if trans_b == 1 { [n, k] } else { [k, n] };
        let a = rng.tensor(&a_shape);
        let b = rng.tensor(&b_shape);
        let c_shapes: [Option<Vec<usize>>; 6] =
            [None, Some(vec![n]), Some(vec![1, n]), Some(vec![m, n]), Some(vec![m, 1]), Some(vec![])];
        for c_shape in c_shapes {
            for (alpha, beta) in [(1.0, 1.0), (0.5, 2.0), (-1.5, 0.0)] {
                let attrs = |node: Node| {
                    node.with_attr("transA", Attr::Int(trans_a))
                        .with_attr("transB", Attr::Int(trans_b))
                        .with_attr("alpha", Attr::Float(alpha))
                        .with_attr("beta", Attr::Float(beta))
                };
                let what = format!("Gemm transA={trans_a} transB={trans_b} alpha={alpha} beta={beta} C {c_shape:?}");
                match &c_shape {
                    None => {
                        let g = graph(attrs(Node::new("Gemm", "g", &["a", "b"], &["y"])), &["a", "b"], vec![]);
                        check_against_cpu(&g, &[a.clone(), b.clone()], &what);
                    }
                    Some(cs) => {
                        let c = rng.tensor(cs);
                        let node = attrs(Node::new("Gemm", "g", &["a", "b", "c"], &["y"]));
                        let g = graph(node.clone(), &["a", "b", "c"], vec![]);
                        check_against_cpu(&g, &[a.clone(), b.clone(), c.clone()], &what);
                        // A constant weight and a constant C, as in a Linear layer.
                        let g = graph(node, &["a"], vec![("b", b.clone()), ("c", c)]);
                        check_against_cpu(&g, std::slice::from_ref(&a), &format!("{what} (constants)"));
                    }
                }
            }
        }
    }
}

#[test]
fn fused_matmul_bias_activation_residual_match_cpu() {
    let mut rng = Rng(99);
    let (m, k, n) = (50, 64, 96);
    let a = rng.tensor(&[2, m, k]);
    let w = rng.tensor(&[k, n]);
    // (activation, bias shape, residual shape); None leaves the input out.
    type Case = (&'static str, Option<Vec<usize>>, Option<Vec<usize>>);
    let cases: [Case; 7] = [
        ("gelu_erf", Some(vec![n]), Some(vec![2, m, n])),
        ("relu", Some(vec![n]), Some(vec![n])),
        ("silu", Some(vec![]), Some(vec![2, m, n])),
        ("gelu_tanh", Some(vec![n]), Some(vec![m, n])),
        ("none", Some(vec![n]), Some(vec![2, 1, n])),
        ("relu", None, Some(vec![m, 1])),
        ("gelu_erf", Some(vec![1]), None),
    ];
    for (act, bias_shape, res_shape) in cases {
        let mut consts = vec![("w", w.clone())];
        let mut runtime = vec!["a"];
        let mut ins = vec![a.clone()];
        if let Some(bs) = &bias_shape {
            consts.push(("bias", rng.tensor(bs)));
        }
        if let Some(rs) = &res_shape {
            runtime.push("res");
            ins.push(rng.tensor(rs));
        }
        let bias_name = if bias_shape.is_some() { "bias" } else { "" };
        let node = match res_shape {
            Some(_) => fused(&["a", "w", bias_name, "res"], act),
            None => fused(&["a", "w", bias_name], act),
        };
        let g = graph(node, &runtime, consts);
        check_against_cpu(&g, &ins, &format!("FusedMatMul {act} bias {bias_shape:?} residual {res_shape:?}"));
    }
}

#[test]
fn conv_pads_strides_dilations_match_cpu() {
    // (input shape, weight shape, attributes): 2-D with pads, strides and
    // dilations, asymmetric pads, auto_pad, 1-D, 3-D, the direct 1x1 path,
    // and a deep kernel whose image spans several im2col blocks.
    type Case = (Vec<usize>, Vec<usize>, Vec<(&'static str, Attr)>);
    let cases: Vec<Case> = vec![
        (vec![2, 3, 11, 13], vec![5, 3, 3, 3], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]),
        (
            vec![1, 7, 12, 9],
            vec![33, 7, 3, 2],
            vec![("strides", Attr::Ints(vec![2, 1])), ("dilations", Attr::Ints(vec![1, 2]))],
        ),
        (vec![1, 4, 10, 10], vec![6, 4, 3, 3], vec![("pads", Attr::Ints(vec![0, 2, 1, 0]))]),
        (vec![1, 4, 20], vec![6, 4, 5], vec![("auto_pad", Attr::String(b"SAME_UPPER".to_vec()))]),
        (vec![1, 2, 5, 6, 7], vec![3, 2, 2, 3, 3], vec![("strides", Attr::Ints(vec![1, 2, 2]))]),
        (vec![2, 16, 9, 7], vec![10, 16, 1, 1], vec![]),
        (vec![1, 130, 48, 48], vec![8, 130, 3, 3], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]),
    ];
    let mut rng = Rng(5);
    for (xs, ws, attrs) in cases {
        let x = rng.tensor(&xs);
        let w = rng.tensor(&ws);
        let b = rng.tensor(&[ws[0]]);
        let with_attrs = |mut node: Node| {
            for (k, v) in &attrs {
                node = node.with_attr(k, v.clone());
            }
            node
        };
        // Constant weight and bias.
        let g = graph(
            with_attrs(Node::new("Conv", "c", &["x", "w", "b"], &["y"])),
            &["x"],
            vec![("w", w.clone()), ("b", b.clone())],
        );
        check_against_cpu(&g, std::slice::from_ref(&x), &format!("Conv {xs:?} * {ws:?}"));
        // No bias; weight computed at run time.
        let g = graph(with_attrs(Node::new("Conv", "c", &["x", "w"], &["y"])), &["x", "w"], vec![]);
        check_against_cpu(&g, &[x.clone(), w.clone()], &format!("Conv {xs:?} * {ws:?}, no bias"));
    }
}

#[test]
fn declines_with_reasons() {
    let p = portable();
    // Another op.
    let g = graph(Node::new("Relu", "r", &["x"], &["y"]), &["x"], vec![]);
    assert!(declined(&p, &g).contains("not a matrix product"));
    // A non-fp32 operand.
    let w = Tensor::from_vec(&[2, 2], vec![0f64; 4]).unwrap();
    let g = graph(Node::new("MatMul", "mm", &["a", "w"], &["y"]), &["a"], vec![("w", w)]);
    let r = declined(&p, &g);
    assert!(r.contains("'w'") && r.contains("fp32"), "{r}");
    // An operand whose type the graph does not state.
    let mut g = graph(Node::new("MatMul", "mm", &["a", "b"], &["y"]), &["a", "b"], vec![]);
    g.inputs[1].dtype = None;
    assert!(declined(&p, &g).contains("not known"));
    // Grouped and depthwise convolutions.
    let w = Tensor::from_vec(&[4, 1, 3, 3], vec![0f32; 36]).unwrap();
    let node = Node::new("Conv", "c", &["x", "w"], &["y"]).with_attr("group", Attr::Int(4));
    let g = graph(node, &["x"], vec![("w", w)]);
    assert!(declined(&p, &g).contains("group 4"));
    // An activation FusedMatMul does not define.
    let g = graph(fused(&["a", "b"], "swish"), &["a", "b"], vec![]);
    assert!(declined(&p, &g).contains("unknown activation"));
    // A node another provider took.
    let g = graph(Node::new("MatMul", "mm", &["a", "b"], &["y"]), &["a", "b"], vec![]);
    assert!(matches!(&p.claim(&g, &[true])[0], NodeVerdict::Decline { reason } if reason.contains("taken")));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let p = portable();
    let g = graph(Node::new("MatMul", "mm", &["a", "b"], &["y"]), &["a", "b"], vec![]);
    let e = try_run_on(&p, &g, &[Tensor::from_vec(&[2, 3], vec![0f32; 6]).unwrap(), Rng(1).tensor(&[4, 5])]);
    assert!(e.unwrap_err().to_string().contains("inner dimensions"));
    // A model that declared fp32 but is fed f64.
    let e = try_run_on(&p, &g, &[Tensor::from_vec(&[1, 1], vec![0f64]).unwrap(), Rng(2).tensor(&[1, 1])]);
    assert!(e.unwrap_err().to_string().contains("fp32"));
    let node = Node::new("Gemm", "g", &["a", "b", "c"], &["y"]);
    let g = graph(node, &["a", "b", "c"], vec![]);
    let mut rng = Rng(3);
    let e = try_run_on(&p, &g, &[rng.tensor(&[2, 3]), rng.tensor(&[3, 4]), rng.tensor(&[3, 4])]);
    let msg = e.unwrap_err().to_string();
    assert!(msg.contains("broadcast"), "{msg}");
    let g = graph(Node::new("Conv", "c", &["x", "w", "b"], &["y"]), &["x", "w", "b"], vec![]);
    let e = try_run_on(&p, &g, &[rng.tensor(&[1, 2, 5, 5]), rng.tensor(&[3, 2, 3, 3]), rng.tensor(&[4])]);
    assert!(e.unwrap_err().to_string().contains("bias"));
}

#[cfg(not(target_os = "macos"))]
#[test]
fn new_says_accelerate_is_macos_only() {
    assert_eq!(AccelerateProvider::new().err().as_deref(), Some("Accelerate is macOS-only"));
}

#[cfg(target_os = "macos")]
#[test]
fn new_uses_accelerate_on_macos() {
    if let Ok(p) = AccelerateProvider::new() {
        assert_eq!(p.blas_name(), "accelerate");
    }
}
