//! The Core ML path end to end off Apple hardware: sessions that place
//! regions with the `coreml-interpreter` provider against the CPU provider,
//! and random operator geometries through convert → package bytes → MIL
//! interpreter against the CPU provider's ONNX semantics.

use std::collections::HashMap;

use proptest::prelude::*;
use tessera::{Session, SessionOptions};
use tessera_core::{Attr, DType, Dim, Graph, Node, Tensor, ValueInfo};
use tessera_coreml::interp::{Arr, Data};
use tessera_coreml::spec::DataType;
use tessera_coreml::{Compute, ConvertOptions};
use tessera_providers::cpu::CpuProvider;

fn vi(name: &str, dt: DType, shape: Vec<Dim>) -> ValueInfo {
    ValueInfo { name: name.into(), dtype: Some(dt), shape: Some(shape) }
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// An attention-free transformer block with a symbolic batch: LayerNorm,
/// MatMul+Add, Gelu, MatMul+Add, residual, plus an ArgMax head (CPU only).
fn block() -> Graph {
    let (d, h) = (16, 32);
    let mut g = Graph::default();
    g.opsets.insert("".into(), 20);
    g.inputs.push(vi("x", DType::F32, vec![Dim::Sym("batch".into()), Dim::Known(8), Dim::Known(d)]));
    let mut init = |name: &str, shape: &[usize], seed: u64| {
        let n = shape.iter().product();
        g.initializers.insert(name.into(), Tensor::from_vec(shape, randn(n, seed)).unwrap());
    };
    init("g", &[d], 1);
    init("b", &[d], 2);
    init("w1", &[d, h], 3);
    init("b1", &[h], 4);
    init("w2", &[h, d], 5);
    init("b2", &[d], 6);
    g.nodes = vec![
        Node::new("LayerNormalization", "ln", &["x", "g", "b"], &["n"]).with_attr("axis", Attr::Int(-1)),
        Node::new("MatMul", "m1", &["n", "w1"], &["h0"]),
        Node::new("Add", "a1", &["h0", "b1"], &["h1"]),
        Node::new("Gelu", "ge", &["h1"], &["h2"]),
        Node::new("MatMul", "m2", &["h2", "w2"], &["o0"]),
        Node::new("Add", "a2", &["o0", "b2"], &["o1"]),
        Node::new("Add", "res", &["o1", "x"], &["y"]),
        Node::new("ArgMax", "am", &["y"], &["cls"]).with_attr("axis", Attr::Int(-1)),
    ];
    g.outputs = vec![vi("y", DType::F32, vec![]), vi("cls", DType::I64, vec![])];
    for o in &mut g.outputs {
        o.shape = None;
    }
    g
}

fn session(providers: &str, dims: &[(&str, usize)]) -> Session {
    let opts = SessionOptions {
        providers: vec![providers.into()],
        dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        threads: 1,
        ..Default::default()
    };
    Session::from_graph(block(), opts).unwrap()
}

#[test]
fn coreml_regions_match_the_cpu_within_fp16() {
    let x = Tensor::from_vec(&[2, 8, 16], randn(256, 9)).unwrap();
    let cpu = session("cpu", &[("batch", 2)]).run(vec![("x".into(), x.clone())]).unwrap();
    let s = session("coreml-interpreter", &[("batch", 2)]);
    let placed: HashMap<String, String> =
        s.assignments().into_iter().map(|a| (a.op_type.clone() + ":" + &a.node, a.provider)).collect();
    assert_eq!(placed["MatMul:m1"], "coreml");
    assert_eq!(placed["Gelu:ge"], "coreml");
    assert_eq!(placed["ArgMax:am"], "cpu");
    let why = s.assignments().into_iter().find(|a| a.node == "am").unwrap().reason;
    assert!(why.contains("coreml declines") && why.contains("CPU"), "{why}");
    let got = s.run(vec![("x".into(), x)]).unwrap();
    let (a, b) = (cpu[0].1.as_slice::<f32>().unwrap(), got[0].1.as_slice::<f32>().unwrap());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(err <= 1e-2 * scale, "max error {err} vs scale {scale}");
    assert_eq!(got[1].1.dtype(), DType::I64);
}

#[test]
fn without_static_dims_nothing_goes_to_coreml_and_the_reason_says_so() {
    let s = session("coreml-interpreter", &[]);
    for a in s.assignments() {
        assert_eq!(a.provider, "cpu", "{}", a.node);
    }
    let why = s.assignments().into_iter().find(|a| a.node == "m1").unwrap().reason;
    assert!(why.contains("static shape"), "{why}");
}

/// Converts `g` (fp32 compute), writes and re-reads the package bytes,
/// interprets it and compares with the CPU provider.
fn roundtrip(g: Graph, inputs: Vec<(String, Tensor)>) -> Result<(), TestCaseError> {
    let cpu = CpuProvider::new();
    let eval = |gr: &Graph, n: &Node, ins: &[Option<Tensor>]| cpu.eval_node(gr, n, ins);
    let opts = ConvertOptions { compute: Compute::F32, ..Default::default() };
    let (pkg, _) = tessera_coreml::convert_graph(&g, &opts, &eval).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!(
        "tessera-rt-{}-{:?}.mlpackage",
        std::process::id(),
        std::thread::current().id()
    ));
    tessera_coreml::write_package(&pkg, &dir).unwrap();
    let pkg = tessera_coreml::read_package(&dir).unwrap();
    let feeds: Vec<(String, Arr)> = inputs
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                Arr {
                    dtype: DataType::Float32,
                    shape: t.shape().to_vec(),
                    data: Data::F(t.as_slice::<f32>().unwrap().to_vec()),
                },
            )
        })
        .collect();
    let got = tessera_coreml::interp::run(&pkg, "main", &feeds).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want =
        Session::from_graph(g, SessionOptions { providers: vec!["cpu".into()], threads: 1, ..Default::default() })
            .unwrap()
            .run(inputs)
            .unwrap();
    for ((_, w), (_, a)) in want.iter().zip(&got) {
        prop_assert_eq!(w.shape(), &a.shape[..]);
        let wv = w.as_slice::<f32>().unwrap();
        let av = a.floats().unwrap();
        for (p, q) in wv.iter().zip(&av) {
            prop_assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "{} vs {}", p, q);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn conv_geometries_match(
        n in 1usize..3, cg in 1usize..4, mg in 1usize..4, groups in 1usize..3,
        h in 3usize..10, w in 3usize..10, kh in 1usize..4, kw in 1usize..4,
        sh in 1usize..3, sw in 1usize..3, dh in 1usize..3, pads in prop::array::uniform4(0usize..3),
        bias in any::<bool>(), seed in 0u64..1000,
    ) {
        let (c, m) = (cg * groups, mg * groups);
        prop_assume!(h + pads[0] + pads[2] > dh * (kh - 1) && w + pads[1] + pads[3] >= kw);
        let mut g = Graph::default();
        g.opsets.insert("".into(), 17);
        g.inputs.push(vi("x", DType::F32, vec![Dim::Known(n), Dim::Known(c), Dim::Known(h), Dim::Known(w)]));
        g.initializers.insert("wt".into(), Tensor::from_vec(&[m, cg, kh, kw], randn(m * cg * kh * kw, seed)).unwrap());
        let mut ins = vec!["x", "wt"];
        if bias {
            g.initializers.insert("bs".into(), Tensor::from_vec(&[m], randn(m, seed + 1)).unwrap());
            ins.push("bs");
        }
        g.nodes.push(Node::new("Conv", "c", &ins, &["y"])
            .with_attr("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64]))
            .with_attr("strides", Attr::Ints(vec![sh as i64, sw as i64]))
            .with_attr("dilations", Attr::Ints(vec![dh as i64, 1]))
            .with_attr("pads", Attr::Ints(pads.iter().map(|&p| p as i64).collect()))
            .with_attr("group", Attr::Int(groups as i64)));
        g.outputs.push(ValueInfo { name: "y".into(), dtype: Some(DType::F32), shape: None });
        let x = Tensor::from_vec(&[n, c, h, w], randn(n * c * h * w, seed + 2)).unwrap();
        roundtrip(g, vec![("x".into(), x)])?;
    }

    #[test]
    fn pool_geometries_match(
        c in 1usize..4, h in 2usize..10, w in 2usize..10, k in 1usize..4, s in 1usize..3,
        pad in 0usize..2, ceil in any::<bool>(), max in any::<bool>(), count_pad in any::<bool>(), seed in 0u64..1000,
    ) {
        prop_assume!(pad < k && h + 2 * pad >= k && w + 2 * pad >= k);
        // The converter refuses this one combination (it says why).
        prop_assume!(!(ceil && !max && count_pad));
        let mut g = Graph::default();
        g.opsets.insert("".into(), 17);
        g.inputs.push(vi("x", DType::F32, vec![Dim::Known(1), Dim::Known(c), Dim::Known(h), Dim::Known(w)]));
        let mut node = Node::new(if max { "MaxPool" } else { "AveragePool" }, "p", &["x"], &["y"])
            .with_attr("kernel_shape", Attr::Ints(vec![k as i64, k as i64]))
            .with_attr("strides", Attr::Ints(vec![s as i64, s as i64]))
            .with_attr("pads", Attr::Ints(vec![pad as i64; 4]))
            .with_attr("ceil_mode", Attr::Int(ceil as i64));
        if !max {
            node = node.with_attr("count_include_pad", Attr::Int(count_pad as i64));
        }
        g.nodes.push(node);
        g.outputs.push(ValueInfo { name: "y".into(), dtype: Some(DType::F32), shape: None });
        let x = Tensor::from_vec(&[1, c, h, w], randn(c * h * w, seed)).unwrap();
        roundtrip(g, vec![("x".into(), x)])?;
    }

    #[test]
    fn gemm_slice_and_softmax_match(
        m in 1usize..6, k in 1usize..7, n in 1usize..7, ta in any::<bool>(), tb in any::<bool>(),
        alpha in prop::sample::select(vec![1.0f32, 0.5]), beta in prop::sample::select(vec![1.0f32, 2.0]),
        start in -4i64..4, end in -4i64..8, step in 1i64..3, seed in 0u64..1000,
    ) {
        let mut g = Graph::default();
        g.opsets.insert("".into(), 17);
        let a_shape = if ta { [k, m] } else { [m, k] };
        let b_shape = if tb { [n, k] } else { [k, n] };
        g.inputs.push(vi("a", DType::F32, a_shape.iter().map(|&d| Dim::Known(d)).collect()));
        g.initializers.insert("b".into(), Tensor::from_vec(&b_shape, randn(k * n, seed)).unwrap());
        g.initializers.insert("c".into(), Tensor::from_vec(&[n], randn(n, seed + 1)).unwrap());
        g.initializers.insert("st".into(), Tensor::from_vec(&[1], vec![start]).unwrap());
        g.initializers.insert("en".into(), Tensor::from_vec(&[1], vec![end]).unwrap());
        g.initializers.insert("ax".into(), Tensor::from_vec(&[1], vec![1i64]).unwrap());
        g.initializers.insert("sp".into(), Tensor::from_vec(&[1], vec![step]).unwrap());
        g.nodes.push(Node::new("Gemm", "g", &["a", "b", "c"], &["y"])
            .with_attr("alpha", Attr::Float(alpha)).with_attr("beta", Attr::Float(beta))
            .with_attr("transA", Attr::Int(ta as i64)).with_attr("transB", Attr::Int(tb as i64)));
        g.nodes.push(Node::new("Slice", "s", &["y", "st", "en", "ax", "sp"], &["z"]));
        g.nodes.push(Node::new("Softmax", "sm", &["y"], &["p"]).with_attr("axis", Attr::Int(0)));
        g.outputs.push(ValueInfo { name: "p".into(), dtype: Some(DType::F32), shape: None });
        // An empty slice has no MIL type; keep it only when non-empty.
        let norm = |v: i64| (if v < 0 { v + n as i64 } else { v }).clamp(0, n as i64);
        if norm(end) > norm(start) {
            g.outputs.push(ValueInfo { name: "z".into(), dtype: Some(DType::F32), shape: None });
        }
        let a = Tensor::from_vec(&a_shape, randn(m * k, seed + 2)).unwrap();
        roundtrip(g, vec![("a".into(), a)])?;
    }
}
