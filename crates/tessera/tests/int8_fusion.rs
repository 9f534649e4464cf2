//! ONNX Runtime's dynamic quantization (`DynamicQuantizeLinear ->
//! MatMulInteger -> Cast -> Mul(scale) -> Add(bias)`, then GELU or a
//! residual) against the same graph with `tessera:FusedMatMulInteger`, on
//! random shapes. "auto" runs the fused node on AMX tiles where the machine
//! has them.

use proptest::prelude::*;
use tessera::demo::Rng;
use tessera::{Session, SessionOptions};
use tessera_core::passes::PassReport;
use tessera_core::{Attr, DType, Dim, Graph, Node, Tensor, ValueInfo};

/// `y1 = gelu(x @ W1 + b1)` and `y2 = x @ W2 + b2 + x`, quantized as
/// `quantize_dynamic` writes it (weights int8, per column or per tensor).
fn quantized_graph(k: usize, n: usize, per_column: bool, seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    let mut g = Graph { name: "q".into(), ..Default::default() };
    let dims = |last: usize| Some(vec![Dim::Sym("batch".into()), Dim::Sym("seq".into()), Dim::Known(last)]);
    g.inputs.push(ValueInfo { name: "x".into(), dtype: Some(DType::F32), shape: dims(k) });
    g.opsets.insert(String::new(), 17);
    g.nodes.push(Node::new("DynamicQuantizeLinear", "dql", &["x"], &["xq", "xs", "xz"]));
    for (i, cols, tail) in [(1, n, "gelu"), (2, k, "residual")] {
        let w: Vec<u8> = (0..k * cols).map(|_| (rng.next_u64() >> 56) as u8).collect();
        let per = if per_column { cols } else { 1 };
        let shape: Vec<usize> = if per_column { vec![cols] } else { vec![] };
        let zero: Vec<u8> = (0..per).map(|_| (rng.next_u64() >> 61) as u8).collect();
        let scale: Vec<f32> = (0..per).map(|_| 0.002 + 0.002 * rng.uniform().abs()).collect();
        g.initializers.insert(format!("w{i}"), Tensor::from_bytes(DType::I8, &[k, cols], &w).unwrap());
        g.initializers.insert(format!("wz{i}"), Tensor::from_bytes(DType::I8, &shape, &zero).unwrap());
        g.initializers.insert(format!("ws{i}"), Tensor::from_vec(&shape, scale).unwrap());
        g.initializers.insert(format!("b{i}"), Tensor::from_vec(&[cols], rng.vec(cols, 0.5)).unwrap());
        let v = |s: &str| format!("{s}{i}");
        g.nodes.extend([
            Node::new("Mul", &v("scale"), &["xs", &v("ws")], &[&v("s")]),
            Node::new("MatMulInteger", &v("mi"), &["xq", &v("w"), "xz", &v("wz")], &[&v("acc")]),
            Node::new("Cast", &v("cast"), &[&v("acc")], &[&v("accf")]).with_attr("to", Attr::Int(1)),
            Node::new("Mul", &v("deq"), &[&v("accf"), &v("s")], &[&v("mm")]),
            Node::new("Add", &v("add"), &[&v("b"), &v("mm")], &[&v("h")]),
        ]);
        let out = format!("y{i}");
        g.nodes.push(match tail {
            "gelu" => Node::new("Gelu", &v("gelu"), &[&v("h")], &[&out]),
            _ => Node::new("Add", &v("res"), &[&v("h"), "x"], &[&out]),
        });
        g.outputs.push(ValueInfo { name: out, dtype: Some(DType::F32), shape: None });
    }
    g
}

/// The graph's outputs on `x` (`[batch, seq, ...]`), and what the optimizer did.
fn run(g: Graph, x: &Tensor, optimize: bool, provider: &str) -> (Vec<Vec<f32>>, PassReport) {
    let (b, s) = (x.shape()[0], x.shape()[1]);
    let opts = SessionOptions {
        providers: vec![provider.into()],
        threads: 2,
        optimize,
        dims: [("batch".to_string(), b), ("seq".to_string(), s)].into_iter().collect(),
        ..Default::default()
    };
    let sess = Session::from_graph(g, opts).unwrap();
    let report = sess.pass_report().clone();
    let out = sess.run(vec![("x".into(), x.clone())]).unwrap();
    (out.iter().map(|(_, t)| t.as_slice::<f32>().unwrap().to_vec()).collect(), report)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Same quantized input, same i32 products: only float rounding of the
    /// epilogue may differ.
    #[test]
    fn fused_integer_products_match_the_quantized_graph(
        b in 1usize..3, s in 1usize..40, k in 1usize..80, n in 1usize..70, per_column: bool, seed in 0u64..1000,
    ) {
        let g = quantized_graph(k, n, per_column, seed);
        let x = Tensor::from_vec(&[b, s, k], Rng::new(seed ^ 7).vec(b * s * k, 2.0)).unwrap();
        let (plain, _) = run(g.clone(), &x, false, "cpu");
        for provider in ["cpu", "auto"] {
            let (fused, report) = run(g.clone(), &x, true, provider);
            prop_assert_eq!(report.integer_matmul_fused, 2);
            for (f, p) in fused.iter().zip(&plain) {
                prop_assert_eq!(f.len(), p.len());
                for (u, v) in f.iter().zip(p) {
                    prop_assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "{} vs {} ({})", u, v, provider);
                }
            }
        }
    }
}

/// Static quantization in ONNX Runtime's QDQ format: `x` quantized once
/// (uint8 or int8, one scale and zero point) and dequantized for three
/// products with 8-bit weights (per column or per tensor, dequantized on
/// axis 1): `y1 = gelu(xd @ W1 + b1)`, `y2 = xd @ W2 + b2 + x` and `y3 =
/// DQ(Q(xd @ W3)) + b3` (an output quantized again before its bias, as
/// `quantize_static` leaves a product whose consumer it also quantizes).
fn qdq_graph(k: usize, n: usize, signed_x: bool, per_column: bool, seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    let mut g = Graph { name: "qdq".into(), ..Default::default() };
    let dims = |last: usize| Some(vec![Dim::Sym("batch".into()), Dim::Sym("seq".into()), Dim::Known(last)]);
    g.inputs.push(ValueInfo { name: "x".into(), dtype: Some(DType::F32), shape: dims(k) });
    g.opsets.insert(String::new(), 17);
    let x_type = if signed_x { DType::I8 } else { DType::U8 };
    let zero = (rng.next_u64() >> 60) as u8 + if signed_x { 0 } else { 120 };
    g.initializers.insert("sx".into(), Tensor::scalar(4.0f32 / 255.0));
    g.initializers.insert("zx".into(), Tensor::from_bytes(x_type, &[], &[zero]).unwrap());
    g.nodes.push(Node::new("QuantizeLinear", "qx", &["x", "sx", "zx"], &["xq"]));
    g.nodes.push(Node::new("DequantizeLinear", "dqx", &["xq", "sx", "zx"], &["xd"]));
    for (i, cols) in [(1, n), (2, k), (3, n)] {
        let w: Vec<u8> = (0..k * cols).map(|_| (rng.next_u64() >> 56) as u8).collect();
        let per = if per_column { cols } else { 1 };
        let shape: Vec<usize> = if per_column { vec![cols] } else { vec![] };
        let zero: Vec<u8> = (0..per).map(|_| (rng.next_u64() >> 61) as u8).collect();
        let scale: Vec<f32> = (0..per).map(|_| 0.002 + 0.002 * rng.uniform().abs()).collect();
        let v = |s: &str| format!("{s}{i}");
        g.initializers.insert(v("w"), Tensor::from_bytes(DType::I8, &[k, cols], &w).unwrap());
        g.initializers.insert(v("wz"), Tensor::from_bytes(DType::I8, &shape, &zero).unwrap());
        g.initializers.insert(v("ws"), Tensor::from_vec(&shape, scale).unwrap());
        g.initializers.insert(v("b"), Tensor::from_vec(&[cols], rng.vec(cols, 0.5)).unwrap());
        g.nodes.extend([
            Node::new("DequantizeLinear", &v("dqw"), &[&v("w"), &v("ws"), &v("wz")], &[&v("wd")])
                .with_attr("axis", Attr::Int(1)),
            Node::new("MatMul", &v("mm"), &["xd", &v("wd")], &[&v("mm")]),
        ]);
        let out = format!("y{i}");
        match i {
            1 => g.nodes.extend([
                Node::new("Add", &v("add"), &[&v("mm"), &v("b")], &[&v("h")]),
                Node::new("Gelu", &v("gelu"), &[&v("h")], &[&out]),
            ]),
            2 => g.nodes.extend([
                Node::new("Add", &v("add"), &[&v("b"), &v("mm")], &[&v("h")]),
                Node::new("Add", &v("res"), &[&v("h"), "x"], &[&out]),
            ]),
            _ => {
                g.initializers.insert("sy".into(), Tensor::scalar(0.05f32));
                g.initializers.insert("zy".into(), Tensor::scalar(128u8));
                g.nodes.extend([
                    Node::new("QuantizeLinear", "qy", &[&v("mm"), "sy", "zy"], &["yq"]),
                    Node::new("DequantizeLinear", "dqy", &["yq", "sy", "zy"], &["yd"]),
                    Node::new("Add", &v("add"), &["yd", &v("b")], &[&out]),
                ]);
            }
        }
        g.outputs.push(ValueInfo { name: out, dtype: Some(DType::F32), shape: None });
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The QDQ products on the integer kernels against the same graph run
    /// as written (dequantized operands, fp32 MatMul): the same quantized
    /// values, so only the float graph's rounding differs, except where
    /// that moves `y3`'s requantization across a rounding edge (one step of
    /// its scale, in a few values at most).
    #[test]
    fn qdq_products_match_the_dequantized_graph(
        b in 1usize..3, s in 1usize..40, k in 1usize..80, n in 1usize..70,
        signed_x: bool, per_column: bool, seed in 0u64..1000,
    ) {
        let g = qdq_graph(k, n, signed_x, per_column, seed);
        let x = Tensor::from_vec(&[b, s, k], Rng::new(seed ^ 7).vec(b * s * k, 2.0)).unwrap();
        let (plain, _) = run(g.clone(), &x, false, "cpu");
        for provider in ["cpu", "auto"] {
            let (fused, report) = run(g.clone(), &x, true, provider);
            prop_assert_eq!(report.qdq_matmul_fused, 3);
            prop_assert_eq!(report.requantize_fused, 1);
            for (o, (f, p)) in fused.iter().zip(&plain).enumerate() {
                prop_assert_eq!(f.len(), p.len());
                let mut steps = 0;
                for (u, v) in f.iter().zip(p) {
                    let close = (u - v).abs() <= 2e-5 * (1.0 + v.abs());
                    if o == 2 && !close && ((u - v).abs() - 0.05).abs() <= 1e-5 {
                        steps += 1;
                    } else {
                        prop_assert!(close, "y{}: {} vs {} ({})", o + 1, u, v, provider);
                    }
                }
                prop_assert!(steps * 50 <= f.len().max(50), "y3: {} of {} values a step apart", steps, f.len());
            }
        }
    }
}

/// ONNX Runtime's dynamic chain whose output is quantized again for its
/// consumers, then biased and activated: `gelu(DQ(Q(float(MatMulInteger(
/// DynamicQuantizeLinear(x), W)) * scale)) + b)`.
fn requantized_graph(k: usize, n: usize, signed_y: bool, seed: u64) -> Graph {
    let mut g = quantized_graph(k, n, true, seed);
    // Keep the first product only, its Add(bias) moved after a round trip.
    g.nodes.retain(|nd| !nd.name.ends_with('2') && nd.name != "gelu1");
    g.outputs.truncate(1);
    let add = g.nodes.iter().position(|nd| nd.name == "add1").unwrap();
    g.nodes[add].inputs = vec!["yd".into(), "b1".into()];
    g.nodes.insert(add, Node::new("QuantizeLinear", "qy", &["mm1", "sy", "zy"], &["yq"]));
    g.nodes.insert(add + 1, Node::new("DequantizeLinear", "dqy", &["yq", "sy", "zy"], &["yd"]));
    g.nodes.push(Node::new("Gelu", "gelu1", &["h1"], &["y1"]));
    g.initializers.insert("sy".into(), Tensor::scalar(0.02f32));
    let zy = if signed_y { Tensor::scalar(-3i8) } else { Tensor::scalar(131u8) };
    g.initializers.insert("zy".into(), zy);
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The round trip and the bias in the product's epilogue give the same
    /// bits as the operators one after the other (the same i32 product and
    /// the same f32 steps), on the CPU and on the tile provider.
    #[test]
    fn requantized_output_in_the_epilogue_is_the_operators_bit_for_bit(
        b in 1usize..3, s in 1usize..40, k in 1usize..80, n in 1usize..70, signed_y: bool, seed in 0u64..1000,
    ) {
        let g = requantized_graph(k, n, signed_y, seed);
        let x = Tensor::from_vec(&[b, s, k], Rng::new(seed ^ 7).vec(b * s * k, 2.0)).unwrap();
        let (plain, _) = run(g.clone(), &x, false, "cpu");
        for provider in ["cpu", "auto"] {
            let (fused, report) = run(g.clone(), &x, true, provider);
            prop_assert_eq!(report.requantize_fused, 1);
            prop_assert_eq!(fused[0].len(), plain[0].len());
            for (i, (u, v)) in fused[0].iter().zip(&plain[0]).enumerate() {
                prop_assert_eq!(u.to_bits(), v.to_bits(), "{}: {} vs {} ({})", i, u, v, provider);
            }
        }
    }
}

/// A static QDQ convolution as `quantize_static` writes it: `x` quantized
/// (uint8), an int8 weight per output channel (axis 0), an int32 bias at
/// scale `sx * sw`, the output quantized again (its ReLU folded into the
/// range) and dequantized for the graph's output.
fn qdq_conv_graph(c: usize, m: usize, k: usize, stride: usize, seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    let mut g = Graph { name: "qdq_conv".into(), ..Default::default() };
    let dims = Some(vec![Dim::Sym("batch".into()), Dim::Known(c), Dim::Sym("h".into()), Dim::Sym("w".into())]);
    g.inputs.push(ValueInfo { name: "x".into(), dtype: Some(DType::F32), shape: dims });
    g.opsets.insert(String::new(), 17);
    let sx = 4.0f32 / 255.0;
    let sw: Vec<f32> = (0..m).map(|_| 0.002 + 0.004 * rng.uniform().abs()).collect();
    let w: Vec<u8> = (0..m * c * k * k).map(|_| (rng.next_u64() >> 56) as u8).collect();
    let bias: Vec<i32> = (0..m).map(|_| (rng.next_u64() % 2001) as i32 - 1000).collect();
    g.initializers.insert("sx".into(), Tensor::scalar(sx));
    g.initializers.insert("zx".into(), Tensor::scalar(128u8));
    g.initializers.insert("wq".into(), Tensor::from_bytes(DType::I8, &[m, c, k, k], &w).unwrap());
    g.initializers.insert("ws".into(), Tensor::from_vec(&[m], sw.clone()).unwrap());
    g.initializers.insert("wz".into(), Tensor::from_bytes(DType::I8, &[m], &vec![0u8; m]).unwrap());
    g.initializers.insert("bq".into(), Tensor::from_vec(&[m], bias).unwrap());
    g.initializers.insert("bs".into(), Tensor::from_vec(&[m], sw.iter().map(|s| sx * s).collect()).unwrap());
    g.initializers.insert("sy".into(), Tensor::scalar(0.03f32));
    g.initializers.insert("zy".into(), Tensor::scalar(0u8));
    let pad = (k / 2) as i64;
    g.nodes.extend([
        Node::new("QuantizeLinear", "qx", &["x", "sx", "zx"], &["xq"]),
        Node::new("DequantizeLinear", "dqx", &["xq", "sx", "zx"], &["xd"]),
        Node::new("DequantizeLinear", "dqw", &["wq", "ws", "wz"], &["wd"]).with_attr("axis", Attr::Int(0)),
        Node::new("DequantizeLinear", "dqb", &["bq", "bs"], &["bd"]).with_attr("axis", Attr::Int(0)),
        Node::new("Conv", "conv", &["xd", "wd", "bd"], &["y"])
            .with_attr("pads", Attr::Ints(vec![pad; 4]))
            .with_attr("strides", Attr::Ints(vec![stride as i64; 2])),
        Node::new("QuantizeLinear", "qy", &["y", "sy", "zy"], &["yq"]),
        Node::new("DequantizeLinear", "dqy", &["yq", "sy", "zy"], &["out"]),
    ]);
    g.outputs.push(ValueInfo { name: "out".into(), dtype: Some(DType::F32), shape: None });
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The QDQ convolution as one QLinearConv (integer sums, one f64
    /// rescale) against the graph as written (f32 convolution of the
    /// dequantized operands, then the quantization): the same grid values,
    /// but for the few that the two roundings put on either side of a
    /// step (one step apart at most).
    #[test]
    fn qdq_convolution_matches_the_dequantized_graph(
        b in 1usize..3, c in 1usize..9, m in 1usize..9, k in prop_oneof![Just(1usize), Just(3)], stride in 1usize..3,
        h in 1usize..12, w in 1usize..12, seed in 0u64..1000,
    ) {
        let g = qdq_conv_graph(c, m, k, stride, seed);
        let x = Tensor::from_vec(&[b, c, h, w], Rng::new(seed ^ 7).vec(b * c * h * w, 2.0)).unwrap();
        let opts = |optimize: bool, provider: &str| SessionOptions {
            providers: vec![provider.into()],
            threads: 2,
            optimize,
            dims: [("batch".to_string(), b), ("h".to_string(), h), ("w".to_string(), w)].into_iter().collect(),
            ..Default::default()
        };
        let run = |sess: &Session| sess.run(vec![("x".into(), x.clone())]).unwrap()[0].1.as_slice::<f32>().unwrap().to_vec();
        let plain = run(&Session::from_graph(g.clone(), opts(false, "cpu")).unwrap());
        for provider in ["cpu", "auto"] {
            let sess = Session::from_graph(g.clone(), opts(true, provider)).unwrap();
            prop_assert_eq!(sess.pass_report().qdq_conv_fused, 1);
            let fused = run(&sess);
            prop_assert_eq!(fused.len(), plain.len());
            let mut steps = 0;
            for (u, v) in fused.iter().zip(&plain) {
                let d = ((u - v) / 0.03).abs();
                prop_assert!(d < 1e-3 || (d - 1.0).abs() < 1e-3, "{} vs {} ({})", u, v, provider);
                steps += (d > 0.5) as usize;
            }
            prop_assert!(steps * 50 <= fused.len().max(50), "{} of {} values a step apart", steps, fused.len());
        }
    }
}
