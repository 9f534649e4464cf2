use tessera_core::{DType, Dim, Graph, Node, Tensor, ValueInfo};

use super::*;

fn vi(name: &str, dt: DType, shape: &[usize]) -> ValueInfo {
    ValueInfo { name: name.into(), dtype: Some(dt), shape: Some(shape.iter().map(|&d| Dim::Known(d)).collect()) }
}

/// x -> Relu -> MatMul -> ArgMax (CPU-only) -> ...; Relu -> Sigmoid (a
/// region without a product).
fn graph() -> Graph {
    let mut g = Graph::default();
    g.inputs.push(vi("x", DType::F32, &[4, 8]));
    g.initializers.insert("w".into(), Tensor::zeros(DType::F32, &[8, 8]).unwrap());
    g.nodes = vec![
        Node::new("Relu", "r", &["x"], &["a"]),
        Node::new("MatMul", "m", &["a", "w"], &["b"]),
        Node::new("ArgMax", "am", &["b"], &["i"]),
        Node::new("Sigmoid", "s", &["b"], &["c"]),
    ];
    for (n, dt, s) in [
        ("a", DType::F32, &[4, 8][..]),
        ("b", DType::F32, &[4, 8]),
        ("i", DType::I64, &[1, 8]),
        ("c", DType::F32, &[4, 8]),
    ] {
        g.value_info.insert(n.into(), vi(n, dt, s));
    }
    g.outputs = vec![vi("i", DType::I64, &[1, 8]), vi("c", DType::F32, &[4, 8])];
    g
}

#[test]
fn regions_need_a_product_and_declines_say_why() {
    let g = graph();
    let v = CoreMlProvider::interpreter().claim(&g, &[false; 4]);
    assert!(matches!(v[0], NodeVerdict::Claim { group: 0 }));
    assert!(matches!(v[1], NodeVerdict::Claim { group: 0 }));
    match &v[2] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("CPU"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match &v[3] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("no MatMul/Gemm/Conv"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let taken = CoreMlProvider::interpreter().claim(&g, &[false, true, false, false]);
    assert!(matches!(&taken[1], NodeVerdict::Decline { reason } if reason.contains("taken")));
    assert!(matches!(&taken[0], NodeVerdict::Decline { .. }), "Relu alone is not worth a region");
}

#[test]
fn region_graph_carries_its_border_and_constants() {
    let g = graph();
    let sub = Subgraph { nodes: vec![0, 1], inputs: vec!["x".into()], outputs: vec!["b".into()] };
    let r = region_graph(&g, &sub).unwrap();
    assert_eq!(r.nodes.len(), 2);
    assert_eq!(r.inputs[0].concrete_shape(), Some(vec![4, 8]));
    assert_eq!(r.outputs[0].name, "b");
    assert!(r.initializers.contains_key("w"));
    let bad = Subgraph { nodes: vec![0], inputs: vec!["nowhere".into()], outputs: vec!["a".into()] };
    assert!(region_graph(&g, &bad).is_err());
}

#[test]
fn native_backend_is_unavailable_off_macos_with_a_reason() {
    if cfg!(target_os = "macos") {
        assert!(CoreMlProvider::new().is_ok());
    } else {
        assert!(CoreMlProvider::new().unwrap_err().contains("macOS"));
    }
}

#[test]
fn compute_plan_labels_map_to_operation_types() {
    // A compute plan as Core ML reports it (labels = first output names),
    // for a region converted here: each label must find its MIL type.
    let g = graph();
    let sub = crate::Subgraph { nodes: vec![0, 1], inputs: vec!["x".into()], outputs: vec!["b".into()] };
    let region = region_graph(&g, &sub).unwrap();
    let cpu = CpuProvider::new();
    let eval = |gr: &Graph, n: &Node, ins: &[Option<Tensor>]| cpu.eval_node(gr, n, ins);
    let (pkg, _) = tessera_coreml::convert_graph(&region, &ConvertOptions::default(), &eval).unwrap();
    let labels = op_labels(&pkg);
    assert!(labels.iter().any(|(_, t)| t == "relu") && labels.iter().any(|(_, t)| t == "linear"), "{labels:?}");
    let placed: Vec<(String, String)> = labels
        .iter()
        .map(|(l, t)| (l.clone(), if t == "linear" || t == "relu" { "ane" } else { "cpu" }.to_string()))
        .collect();
    let plan = label_plan(&pkg, &placed, "fixture");
    assert!(plan.ops.iter().all(|o| o.op_type != "?"), "{:?}", plan.ops);
    assert_eq!(plan.by_device()["ane"], 2);
    assert_eq!(plan.op_types_on("ane"), vec![("linear".to_string(), 1), ("relu".to_string(), 1)]);
    let compiled = CoreMlProvider::interpreter().compile(&g, &sub).unwrap();
    let p = compiled.device_plan().unwrap();
    assert_eq!(p.ops.len(), labels.len());
    assert!(p.source.contains("interpreter"), "{}", p.source);
}
