//! The tile provider against the CPU provider on one-node graphs, run on
//! the emulated tile kernel here and on AMX where the machine has it.

use std::collections::HashMap;

use tessera_core::{Attr, DType, Graph, Node, Tensor, ValueInfo};
use tessera_kernels::gemm::{Activation, TileIsa};

use super::*;
use crate::cpu::CpuProvider;
use crate::provider::{RunOptions, Value};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn isa() -> TileIsa {
    TileIsa::best()
}

/// The bound for a convolution of up to 2700 taps: the emulation rounds its
/// accumulator after each of a split k-step's six products, where the tile
/// unit (which holds 1e-5 there) rounds less; measured 1.7e-5 on the
/// emulation. The kernel-level bound of split products (within 4x of an
/// fp32 GEMM's error) is tested on every ISA in the kernels crate.
fn split_tolerance(isa: TileIsa, prec: Precision, tol: f64) -> f64 {
    if prec == Precision::Fp32Tiles && isa != TileIsa::Amx {
        tol.max(3e-5)
    } else {
        tol
    }
}

/// The ISA for the split (fp32-accurate) products: the best one, unless
/// that is the AVX-512 dot products, which decline them (see
/// `avx512dot_provider_takes_bf16_and_int8_only`).
fn split_isa() -> TileIsa {
    match TileIsa::best() {
        TileIsa::Avx512Dot => TileIsa::Emulated,
        isa => isa,
    }
}

/// A graph of one node whose inputs are `runtime` (fed) and `consts`.
fn graph(node: Node, runtime: &[&str], consts: Vec<(&str, Tensor)>) -> Graph {
    let mut g = Graph { name: "t".into(), ..Default::default() };
    for r in runtime {
        g.inputs.push(ValueInfo { name: r.to_string(), dtype: None, shape: None });
    }
    for o in &node.outputs {
        g.outputs.push(ValueInfo { name: o.clone(), dtype: None, shape: None });
    }
    g.initializers = consts.into_iter().map(|(n, t)| (n.to_string(), t)).collect::<HashMap<_, _>>();
    g.opsets.insert(String::new(), 17);
    g.nodes.push(node);
    g
}

/// Runs the graph's single node on `p` (which must claim it).
fn run_on(p: &dyn ExecutionProvider, g: &Graph, inputs: &[Tensor]) -> Tensor {
    let v = p.claim(g, &[false]);
    assert!(matches!(v[0], NodeVerdict::Claim { .. }), "{} declined: {:?}", p.name(), v[0]);
    let sub = Subgraph {
        nodes: vec![0],
        inputs: g.inputs.iter().map(|i| i.name.clone()).collect(),
        outputs: vec![g.nodes[0].outputs[0].clone()],
    };
    let part = p.compile(g, &sub).unwrap();
    let out = part.run(inputs.iter().cloned().map(Value::Host).collect(), &RunOptions { pool: None }).unwrap();
    out.into_iter().next().unwrap().into_host().unwrap()
}

fn max_rel_err(x: &Tensor, y: &Tensor) -> f64 {
    assert_eq!(x.shape(), y.shape());
    let (a, b) = (x.to_f64_vec(), y.to_f64_vec());
    let scale = b.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn matmul_every_precision_matches_cpu() {
    let (m, k, n) = (37, 70, 45);
    let w = Tensor::from_vec(&[k, n], rand_vec(k * n, 1)).unwrap();
    let a = Tensor::from_vec(&[1, m, k], rand_vec(m * k, 2)).unwrap();
    let g = graph(Node::new("MatMul", "mm", &["a", "w"], &["y"]), &["a"], vec![("w", w)]);
    let want = run_on(&CpuProvider::new(), &g, std::slice::from_ref(&a));
    for (prec, tol) in
        [(Precision::Fp32Tiles, 1e-6), (Precision::Bf16, 2e-2), (Precision::Auto, 2e-2), (Precision::Int8, 3e-2)]
    {
        let isa = if prec == Precision::Fp32Tiles { split_isa() } else { isa() };
        let got = run_on(&AmxProvider::with_isa(prec, isa), &g, std::slice::from_ref(&a));
        let e = max_rel_err(&got, &want);
        assert!(e <= tol, "{prec}: relative error {e:e} > {tol:e}");
    }
}

#[test]
fn gemm_attributes_and_bias_shapes() {
    let (m, k, n) = (20, 33, 40);
    let a = Tensor::from_vec(&[m, k], rand_vec(m * k, 3)).unwrap();
    let wt = Tensor::from_vec(&[n, k], rand_vec(k * n, 4)).unwrap();
    for c_shape in [vec![n], vec![1, n], vec![m, n], vec![m, 1], vec![]] {
        let numel = c_shape.iter().product::<usize>();
        let c = Tensor::from_vec(&c_shape, rand_vec(numel, 5)).unwrap();
        for c_const in [true, false] {
            let node = Node::new("Gemm", "g", &["a", "w", "c"], &["y"])
                .with_attr("transB", Attr::Int(1))
                .with_attr("alpha", Attr::Float(0.5))
                .with_attr("beta", Attr::Float(2.0));
            let (g, ins) = if c_const {
                (graph(node, &["a"], vec![("w", wt.clone()), ("c", c.clone())]), vec![a.clone()])
            } else {
                (graph(node, &["a", "c"], vec![("w", wt.clone())]), vec![a.clone(), c.clone()])
            };
            let want = run_on(&CpuProvider::new(), &g, &ins);
            let got = run_on(&AmxProvider::with_isa(Precision::Fp32Tiles, split_isa()), &g, &ins);
            let e = max_rel_err(&got, &want);
            assert!(e <= 1e-6, "C {c_shape:?} const={c_const}: {e:e}");
        }
    }
}

#[test]
fn fused_matmul_epilogue_matches_cpu() {
    let (m, k, n) = (50, 64, 96);
    let a = Tensor::from_vec(&[2, m, k], rand_vec(2 * m * k, 6)).unwrap();
    let w = Tensor::from_vec(&[k, n], rand_vec(k * n, 7)).unwrap();
    let bias = Tensor::from_vec(&[n], rand_vec(n, 8)).unwrap();
    for (act, res_shape) in
        [("gelu_erf", vec![2, m, n]), ("relu", vec![n]), ("silu", vec![2, m, n]), ("gelu_tanh", vec![m, n])]
    {
        let numel = res_shape.iter().product::<usize>();
        let res = Tensor::from_vec(&res_shape, rand_vec(numel, 9)).unwrap();
        let mut node = Node::new("FusedMatMul", "f", &["a", "w", "bias", "res"], &["y"])
            .with_attr("activation", Attr::String(act.as_bytes().to_vec()));
        node.domain = "tessera".into();
        let g = graph(node, &["a", "res"], vec![("w", w.clone()), ("bias", bias.clone())]);
        let ins = [a.clone(), res];
        let want = run_on(&CpuProvider::new(), &g, &ins);
        let got = run_on(&AmxProvider::with_isa(Precision::Fp32Tiles, split_isa()), &g, &ins);
        let e = max_rel_err(&got, &want);
        assert!(e <= 1e-6, "{act} residual {res_shape:?}: {e:e}");
    }
}

#[test]
fn matmul_integer_exact_for_all_signedness_and_zero_points() {
    let (m, k, n) = (33, 130, 40);
    let bytes = |len: usize, s: u64| rand_vec(len, s).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect::<Vec<u8>>();
    for (adt, bdt) in [(DType::U8, DType::I8), (DType::U8, DType::U8), (DType::I8, DType::I8), (DType::I8, DType::U8)] {
        for per_col in [false, true] {
            let a = Tensor::from_bytes(adt, &[m, k], &bytes(m * k, 10)).unwrap();
            let b = Tensor::from_bytes(bdt, &[k, n], &bytes(k * n, 11)).unwrap();
            let za = Tensor::from_bytes(adt, &[], &[7]).unwrap();
            let zb_len = if per_col { n } else { 1 };
            let zb_shape: Vec<usize> = if per_col { vec![n] } else { vec![] };
            let zb = Tensor::from_bytes(bdt, &zb_shape, &bytes(zb_len, 12)).unwrap();
            let node = Node::new("MatMulInteger", "mi", &["a", "b", "za", "zb"], &["y"]);
            let g = graph(node, &["a", "za"], vec![("b", b), ("zb", zb)]);
            let ins = [a, za];
            let want = run_on(&CpuProvider::new(), &g, &ins);
            let got = run_on(&AmxProvider::with_isa(Precision::Fp32, isa()), &g, &ins);
            assert_eq!(got.dtype(), DType::I32);
            assert_eq!(got.to_i64_vec().unwrap(), want.to_i64_vec().unwrap(), "{adt}x{bdt} per_col={per_col}");
        }
    }
}

#[test]
fn declines_with_reasons() {
    let p = AmxProvider::with_isa(Precision::Bf16, TileIsa::Emulated);
    let g = graph(Node::new("MatMul", "mm", &["a", "b"], &["y"]), &["a", "b"], vec![]);
    match &p.claim(&g, &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("not a constant"), "{reason}"),
        v => panic!("claimed {v:?}"),
    }
    let w = Tensor::from_vec(&[2, 2], vec![0f64; 4]).unwrap();
    let g = graph(Node::new("MatMul", "mm", &["a", "w"], &["y"]), &["a"], vec![("w", w)]);
    match &p.claim(&g, &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("f64") || reason.contains("double"), "{reason}"),
        v => panic!("claimed {v:?}"),
    }
}

/// The default fp32 precision takes a product with a constant weight onto
/// bf16x6 tiles unless it is known to have fewer than FP32_TILE_MIN_ROWS
/// rows (all dimensions of A but the last), and leaves convolutions alone.
#[test]
fn fp32_default_takes_products_of_enough_rows() {
    use tessera_core::Dim;
    let p = AmxProvider::with_isa(Precision::Fp32, TileIsa::Emulated);
    let w = Tensor::from_vec(&[4, 2], vec![0f32; 8]).unwrap();
    let with_a = |shape: Option<Vec<Dim>>| {
        let mut g = graph(Node::new("MatMul", "mm", &["a", "w"], &["y"]), &["a"], vec![("w", w.clone())]);
        g.inputs[0].shape = shape;
        g
    };
    let known = |d: &[usize]| Some(d.iter().map(|&v| Dim::Known(v)).collect());
    // 2 x 2 = 4 rows, 128, or unknown: claimed; 3 or 1 known rows: declined.
    for shape in [known(&[2, 2, 4]), known(&[128, 4]), None, Some(vec![Dim::Sym("seq".into()), Dim::Known(4)])] {
        let v = p.claim(&with_a(shape.clone()), &[false]);
        assert!(matches!(v[0], NodeVerdict::Claim { .. }), "{shape:?}: {:?}", v[0]);
        assert_eq!(
            p.plan(&with_a(shape), &Node::new("MatMul", "mm", &["a", "w"], &["y"])),
            Ok(TilePlan::Float(Split::Bf16x6))
        );
    }
    for shape in [known(&[3, 4]), known(&[1, 1, 4]), known(&[4])] {
        match &p.claim(&with_a(shape.clone()), &[false])[0] {
            NodeVerdict::Decline { reason } => assert!(reason.contains("fewer than 4"), "{reason}"),
            v => panic!("{shape:?}: claimed {v:?}"),
        }
    }
    let conv = Node::new("Conv", "c", &["x", "k"], &["y"]);
    let k = Tensor::from_vec(&[2, 1, 1, 1], vec![1f32; 2]).unwrap();
    match &p.claim(&graph(conv.clone(), &["x"], vec![("k", k.clone())]), &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("convolutions stay"), "{reason}"),
        v => panic!("conv claimed under fp32: {v:?}"),
    }
    let tiles = AmxProvider::with_isa(Precision::Fp32Tiles, TileIsa::Emulated);
    assert!(matches!(tiles.claim(&graph(conv, &["x"], vec![("k", k)]), &[false])[0], NodeVerdict::Claim { .. }));
}

#[test]
fn conv_on_tiles_matches_cpu() {
    // (input shape, weight shape, attributes): 2-D with pads, strides and
    // dilations, a 1-D case and a 3-D case, ragged channel counts, and
    // pointwise (1x1) cases, which read the input in place, with a batch
    // of 2 and more than 32 positions and channels, and one whose im2row
    // takes several blocks of positions.
    type Case = (Vec<usize>, Vec<usize>, Vec<(&'static str, Attr)>);
    let cases: Vec<Case> = vec![
        (vec![2, 3, 11, 13], vec![5, 3, 3, 3], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]),
        (
            vec![1, 7, 12, 9],
            vec![33, 7, 3, 2],
            vec![("strides", Attr::Ints(vec![2, 1])), ("dilations", Attr::Ints(vec![1, 2]))],
        ),
        (vec![1, 4, 20], vec![6, 4, 5], vec![("auto_pad", Attr::String(b"SAME_UPPER".to_vec()))]),
        (vec![1, 2, 5, 6, 7], vec![3, 2, 2, 3, 3], vec![]),
        (vec![2, 37, 5, 9], vec![45, 37, 1, 1], vec![]),
        (vec![1, 3, 7], vec![2, 3, 1], vec![]),
        (vec![1, 8, 6, 6], vec![5, 8, 1, 1], vec![("strides", Attr::Ints(vec![2, 2]))]),
        // 625 positions of 2700 taps: more than one im2row block.
        (vec![1, 300, 25, 25], vec![8, 300, 3, 3], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]),
    ];
    for (xs, ws, attrs) in cases {
        let x = Tensor::from_vec(&xs, rand_vec(xs.iter().product(), 21)).unwrap();
        let w = Tensor::from_vec(&ws, rand_vec(ws.iter().product(), 22)).unwrap();
        let b = Tensor::from_vec(&[ws[0]], rand_vec(ws[0], 23)).unwrap();
        let mut node = Node::new("Conv", "c", &["x", "w", "b"], &["y"]);
        for (k, v) in attrs {
            node = node.with_attr(k, v);
        }
        let g = graph(node.clone(), &["x"], vec![("w", w.clone()), ("b", b.clone())]);
        let want = run_on(&CpuProvider::new(), &g, std::slice::from_ref(&x));
        for (prec, tol) in [(Precision::Fp32Tiles, 1e-5), (Precision::Bf16, 2e-2)] {
            let isa = if prec == Precision::Fp32Tiles { split_isa() } else { isa() };
            let tol = split_tolerance(isa, prec, tol);
            let got = run_on(&AmxProvider::with_isa(prec, isa), &g, std::slice::from_ref(&x));
            let e = max_rel_err(&got, &want);
            assert!(e <= tol, "{prec} conv {xs:?} * {ws:?}: {e:e}");
        }
        // The optimizer's FusedConv: `act(conv + residual)`, on the CPU
        // provider against the plain Conv's output finished by hand, and
        // on the tiles against the CPU provider.
        let r = Tensor::from_vec(want.shape(), rand_vec(want.numel(), 24)).unwrap();
        for act in [Activation::Relu, Activation::Silu, Activation::GeluErf, Activation::Relu6] {
            let mut fused = node.clone();
            fused.domain = "tessera".into();
            fused.op_type = "FusedConv".into();
            fused.inputs.push("r".into());
            let fused = fused.with_attr("activation", Attr::String(act.name().as_bytes().to_vec()));
            let g = graph(fused, &["x", "r"], vec![("w", w.clone()), ("b", b.clone())]);
            let inputs = [x.clone(), r.clone()];
            let cpu = run_on(&CpuProvider::new(), &g, &inputs);
            let by_hand: Vec<f32> = want
                .as_slice::<f32>()
                .unwrap()
                .iter()
                .zip(r.as_slice::<f32>().unwrap())
                .map(|(&y, &r)| act.apply(y + r))
                .collect();
            let by_hand = Tensor::from_vec(want.shape(), by_hand).unwrap();
            let e = max_rel_err(&cpu, &by_hand);
            assert!(e <= 1e-6, "cpu FusedConv {act:?} {xs:?} * {ws:?}: {e:e}");
            for (prec, tol) in [(Precision::Fp32Tiles, 1e-5), (Precision::Bf16, 2e-2)] {
                let isa = if prec == Precision::Fp32Tiles { split_isa() } else { isa() };
                let tol = split_tolerance(isa, prec, tol);
                let got = run_on(&AmxProvider::with_isa(prec, isa), &g, &inputs);
                let e = max_rel_err(&got, &cpu);
                assert!(e <= tol, "{prec} FusedConv {act:?} {xs:?} * {ws:?}: {e:e}");
            }
        }
    }
    // Under `auto` convolutions stay on the vector path (measured faster).
    let w = Tensor::from_vec(&[4, 2, 3, 3], vec![0f32; 72]).unwrap();
    let g = graph(Node::new("Conv", "c", &["x", "w"], &["y"]), &["x"], vec![("w", w)]);
    match &AmxProvider::with_isa(Precision::Auto, isa()).claim(&g, &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("auto"), "{reason}"),
        v => panic!("claimed {v:?}"),
    }
    assert!(matches!(AmxProvider::with_isa(Precision::Bf16, isa()).claim(&g, &[false])[0], NodeVerdict::Claim { .. }));
    // Depthwise stays on the vector units.
    let w = Tensor::from_vec(&[4, 1, 3, 3], vec![0f32; 36]).unwrap();
    let node = Node::new("Conv", "c", &["x", "w"], &["y"]).with_attr("group", Attr::Int(4));
    let g = graph(node, &["x"], vec![("w", w)]);
    assert!(matches!(
        AmxProvider::with_isa(Precision::Bf16, isa()).claim(&g, &[false])[0],
        NodeVerdict::Decline { .. }
    ));
}

fn rand_bytes(len: usize, seed: u64) -> Vec<u8> {
    rand_vec(len, seed).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect()
}

fn scalar_f32(v: f32) -> Tensor {
    Tensor::from_vec(&[], vec![v]).unwrap()
}

#[test]
fn qlinear_matmul_on_int8_tiles_matches_cpu_exactly() {
    // A batched [2, m, k]; B per column (scale and zero point) and per tensor.
    let (m, k, n) = (19, 70, 37);
    for (adt, bdt) in [(DType::U8, DType::I8), (DType::I8, DType::I8), (DType::U8, DType::U8)] {
        for per_col in [false, true] {
            let a = Tensor::from_bytes(adt, &[2, m, k], &rand_bytes(2 * m * k, 30)).unwrap();
            let b = Tensor::from_bytes(bdt, &[k, n], &rand_bytes(k * n, 31)).unwrap();
            let cols = if per_col { n } else { 1 };
            let shape: Vec<usize> = if per_col { vec![n] } else { vec![] };
            let bs =
                Tensor::from_vec(&shape, rand_vec(cols, 32).iter().map(|v| 0.01 + v.abs() * 0.02).collect()).unwrap();
            let bz = Tensor::from_bytes(bdt, &shape, &rand_bytes(cols, 33)).unwrap();
            let az = Tensor::from_bytes(adt, &[], &[3]).unwrap();
            let yz = Tensor::from_bytes(DType::U8, &[], &[120]).unwrap();
            let node = Node::new("QLinearMatMul", "q", &["a", "as", "az", "b", "bs", "bz", "ys", "yz"], &["y"]);
            let consts = vec![("b", b), ("bs", bs), ("bz", bz), ("ys", scalar_f32(0.7)), ("yz", yz)];
            let g = graph(node, &["a", "as", "az"], consts);
            let ins = [a, scalar_f32(0.05), az];
            let want = run_on(&CpuProvider::new(), &g, &ins);
            let got = run_on(&AmxProvider::with_isa(Precision::Fp32, isa()), &g, &ins);
            assert_eq!(got.shape(), &[2, m, n]);
            assert_eq!(got.dtype(), DType::U8);
            assert_eq!(got.bytes(), want.bytes(), "{adt}x{bdt} per_col={per_col}");
        }
    }
}

#[test]
fn integer_convolutions_on_int8_tiles_match_cpu_exactly() {
    // Padding must read as X's zero point (a nonzero one here), strides and
    // dilations, per-channel weight zero points, 1-D and 2-D, pointwise.
    type Case = (Vec<usize>, Vec<usize>, Vec<(&'static str, Attr)>);
    let cases: Vec<Case> = vec![
        (vec![2, 3, 9, 11], vec![5, 3, 3, 3], vec![("pads", Attr::Ints(vec![1, 2, 1, 0]))]),
        (
            vec![1, 6, 10, 8],
            vec![33, 6, 3, 2],
            vec![("strides", Attr::Ints(vec![2, 1])), ("dilations", Attr::Ints(vec![1, 2]))],
        ),
        (vec![1, 4, 17], vec![7, 4, 5], vec![("auto_pad", Attr::String(b"SAME_UPPER".to_vec()))]),
        // Pointwise: the channels-last image is the product's left side.
        (vec![2, 40, 5, 7], vec![9, 40, 1, 1], vec![]),
        (vec![1, 8, 9, 9], vec![4, 8, 1, 1], vec![("strides", Attr::Ints(vec![2, 2]))]),
        // Grouped: each group's channels on their own, pointwise and 3x3.
        (vec![2, 64, 6, 7], vec![48, 32, 1, 1], vec![("group", Attr::Int(2))]),
        (vec![1, 12, 7, 8], vec![48, 4, 3, 3], vec![("group", Attr::Int(3)), ("pads", Attr::Ints(vec![1, 1, 1, 1]))]),
    ];
    for (xdt, wdt) in [(DType::U8, DType::I8), (DType::U8, DType::U8), (DType::I8, DType::I8)] {
        for (ci, (xs, ws, attrs)) in cases.iter().enumerate() {
            let m = ws[0];
            let x = Tensor::from_bytes(xdt, xs, &rand_bytes(xs.iter().product(), 40 + ci as u64)).unwrap();
            let w = Tensor::from_bytes(wdt, ws, &rand_bytes(ws.iter().product(), 50 + ci as u64)).unwrap();
            let wz = Tensor::from_bytes(wdt, &[m], &rand_bytes(m, 60)).unwrap();
            let xz = Tensor::from_bytes(xdt, &[], &[9]).unwrap();
            let with_attrs = |mut node: Node| {
                for (k, v) in attrs {
                    node = node.with_attr(k, v.clone());
                }
                node
            };
            // ConvInteger: exact i32.
            let node = with_attrs(Node::new("ConvInteger", "c", &["x", "w", "xz", "wz"], &["y"]));
            let g = graph(node, &["x", "xz"], vec![("w", w.clone()), ("wz", wz.clone())]);
            let ins = [x.clone(), xz.clone()];
            let want = run_on(&CpuProvider::new(), &g, &ins);
            let got = run_on(&AmxProvider::with_isa(Precision::Fp32, isa()), &g, &ins);
            assert_eq!(got.to_i64_vec().unwrap(), want.to_i64_vec().unwrap(), "ConvInteger {xdt}x{wdt} {xs:?}");
            // QLinearConv with per-channel weight scales and an i32 bias.
            let wsc =
                Tensor::from_vec(&[m], rand_vec(m, 61).iter().map(|v| 0.002 + v.abs() * 0.004).collect()).unwrap();
            let bias = Tensor::from_vec(&[m], (0..m as i32).map(|i| i * 37 - 200).collect()).unwrap();
            let yz = Tensor::from_bytes(DType::U8, &[], &[128]).unwrap();
            let node = with_attrs(Node::new(
                "QLinearConv",
                "qc",
                &["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                &["y"],
            ));
            let consts = vec![("w", w), ("ws", wsc), ("wz", wz), ("ys", scalar_f32(0.3)), ("yz", yz), ("b", bias)];
            let g = graph(node, &["x", "xs", "xz"], consts);
            let ins = [x, scalar_f32(0.02), xz];
            let want = run_on(&CpuProvider::new(), &g, &ins);
            let got = run_on(&AmxProvider::with_isa(Precision::Fp32, isa()), &g, &ins);
            assert_eq!(got.bytes(), want.bytes(), "QLinearConv {xdt}x{wdt} {xs:?}");
            assert!(
                matches!(
                    AmxProvider::with_isa(Precision::Fp32, isa()).claim(&g, &[false])[0],
                    NodeVerdict::Claim { .. }
                ),
                "QLinearConv {xs:?} stays on the CPU"
            );
        }
    }
    // A depthwise integer convolution stays on the vector units, and so do
    // small groups: 8 outputs each, or 1024 groups of 2 channels whose
    // packed panels would be 64x the weight's bytes; so does a group-1
    // weight of one product per output (64x too), and an empty one.
    for (ws, group, why) in [
        ([4, 1, 3, 3], 4, "depthwise"),
        ([32, 8, 1, 1], 4, "groups of 8"),
        ([16384, 2, 1, 1], 1024, "by 2 products"),
        ([1 << 16, 1, 1, 1], 1, "by 1 products"),
        ([0, 4, 3, 3], 1, "empty"),
    ] {
        let w = Tensor::from_bytes(DType::I8, &ws, &vec![1; ws.iter().product()]).unwrap();
        let node = Node::new("ConvInteger", "c", &["x", "w"], &["y"]).with_attr("group", Attr::Int(group));
        let g = graph(node, &["x"], vec![("w", w)]);
        match &AmxProvider::with_isa(Precision::Fp32, isa()).claim(&g, &[false])[0] {
            NodeVerdict::Decline { reason } => assert!(reason.contains(why), "{reason}"),
            v => panic!("claimed {v:?}"),
        }
    }
}

#[test]
fn sme_provider_claims_products_with_constant_weights() {
    use super::sme::SmeProvider;
    let w = Tensor::from_vec(&[8, 4], vec![0f32; 32]).unwrap();
    let g = graph(Node::new("MatMul", "mm", &["a", "w"], &["y"]), &["a"], vec![("w", w)]);
    for prec in [Precision::Fp32, Precision::Bf16, Precision::Auto] {
        assert!(matches!(SmeProvider::unchecked(prec).claim(&g, &[false])[0], NodeVerdict::Claim { .. }), "{prec}");
    }
    match &SmeProvider::unchecked(Precision::Int8).claim(&g, &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("int8"), "{reason}"),
        v => panic!("claimed {v:?}"),
    }
    let g = graph(Node::new("MatMul", "mm", &["a", "b"], &["y"]), &["a", "b"], vec![]);
    match &SmeProvider::unchecked(Precision::Fp32).claim(&g, &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("not a constant"), "{reason}"),
        v => panic!("claimed {v:?}"),
    }
    #[cfg(not(target_arch = "aarch64"))]
    assert!(SmeProvider::new(Precision::Fp32).err().unwrap().contains("not an Arm CPU"));
}

/// Under qemu-aarch64 with SME (scripts/test's arm stage builds this crate's
/// tests only for the kernels; run by hand with
/// `cargo test -p tessera-providers --target aarch64-unknown-linux-gnu sme`).
#[cfg(target_arch = "aarch64")]
#[test]
fn sme_provider_matches_cpu() {
    use super::sme::SmeProvider;
    if !tessera_kernels::gemm::ukernel::sme::has_sme() {
        assert!(std::env::var("TESSERA_REQUIRE_SME").ok().as_deref() != Some("1"), "SME required but absent");
        eprintln!("SKIPPED: CPU lacks FEAT_SME");
        return;
    }
    let (m, k, n) = (37, 70, 45);
    let w = Tensor::from_vec(&[n, k], rand_vec(k * n, 41)).unwrap();
    let c = Tensor::from_vec(&[n], rand_vec(n, 42)).unwrap();
    let a = Tensor::from_vec(&[m, k], rand_vec(m * k, 43)).unwrap();
    let node = Node::new("Gemm", "g", &["a", "w", "c"], &["y"])
        .with_attr("transB", Attr::Int(1))
        .with_attr("alpha", Attr::Float(0.5));
    let g = graph(node, &["a"], vec![("w", w), ("c", c)]);
    let want = run_on(&CpuProvider::new(), &g, std::slice::from_ref(&a));
    for (prec, tol) in [(Precision::Fp32, 1e-5), (Precision::Bf16, 2e-2)] {
        let got = run_on(&SmeProvider::new(prec).unwrap(), &g, std::slice::from_ref(&a));
        let e = max_rel_err(&got, &want);
        assert!(e <= tol, "{prec}: relative error {e:e} > {tol:e}");
    }
}

/// `tessera:FusedMatMulInteger` on the CPU provider and on int8 tiles
/// against the chain it replaces, computed here from the exact i32 product:
/// `act(float(acc) * scale + bias) + residual`.
#[test]
fn fused_matmul_integer_matches_the_dequantization_chain() {
    use tessera_kernels::gemm::Activation;
    let (m, k, n) = (21, 75, 38);
    for (per_col, act) in [(false, "none"), (true, "gelu_erf"), (false, "relu"), (true, "none")] {
        let a = Tensor::from_bytes(DType::U8, &[2, m, k], &rand_bytes(2 * m * k, 40)).unwrap();
        let b = Tensor::from_bytes(DType::I8, &[k, n], &rand_bytes(k * n, 41)).unwrap();
        let za = Tensor::from_bytes(DType::U8, &[], &[131]).unwrap();
        let zb_shape: Vec<usize> = if per_col { vec![n] } else { vec![] };
        let zb = Tensor::from_bytes(DType::I8, &zb_shape, &rand_bytes(if per_col { n } else { 1 }, 42)).unwrap();
        let cols = if per_col { n } else { 1 };
        let scale_v: Vec<f32> = rand_vec(cols, 43).iter().map(|v| 1e-4 + v.abs() * 1e-3).collect();
        let scale = Tensor::from_vec(&zb_shape, scale_v.clone()).unwrap();
        let bias_v = rand_vec(n, 44);
        let res_v = rand_vec(2 * m * n, 45);
        // The exact i32 product, from the CPU's MatMulInteger.
        let plain = graph(Node::new("MatMulInteger", "mi", &["a", "b", "za", "zb"], &["y"]), &["a", "za"], {
            vec![("b", b.clone()), ("zb", zb.clone())]
        });
        let acc = run_on(&CpuProvider::new(), &plain, &[a.clone(), za.clone()]).to_i64_vec().unwrap();
        let activation = Activation::parse(act).unwrap();
        let want: Vec<f32> = acc
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let j = i % n;
                activation.apply(v as f32 * scale_v[if per_col { j } else { 0 }] + bias_v[j]) + res_v[i]
            })
            .collect();
        let mut node = Node::new("FusedMatMulInteger", "f", &["a", "b", "za", "zb", "s", "bias", "res"], &["y"])
            .with_attr("activation", Attr::String(act.as_bytes().to_vec()));
        node.domain = "tessera".into();
        let bias = Tensor::from_vec(&[n], bias_v).unwrap();
        let g = graph(node, &["a", "za", "s", "res"], vec![("b", b), ("zb", zb), ("bias", bias)]);
        let ins = [a, za, scale, Tensor::from_vec(&[2, m, n], res_v).unwrap()];
        let want = Tensor::from_vec(&[2, m, n], want).unwrap();
        for p in [&CpuProvider::new() as &dyn ExecutionProvider, &AmxProvider::with_isa(Precision::Fp32, isa())] {
            let got = run_on(p, &g, &ins);
            assert_eq!(got.dtype(), DType::F32);
            let e = max_rel_err(&got, &want);
            assert!(e <= 1e-6, "{} per_col={per_col} {act}: relative error {e:e}", p.name());
        }
    }
}

/// `tessera:Attention` under bf16 runs its products on the tiles (within
/// bf16 error of the CPU provider's fp32 result); under fp32 it is declined.
#[test]
fn attention_on_tiles_under_bf16_matches_cpu() {
    let (b, s, h, d) = (2usize, 37usize, 3usize, 24usize);
    let c = h * d;
    let t = |seed: u64| Tensor::from_vec(&[b, s, c], rand_vec(b * s * c, seed)).unwrap();
    let shape = |v: &[i64]| Tensor::from_vec(&[v.len()], v.to_vec()).unwrap();
    let split = [b as i64, s as i64, h as i64, d as i64];
    let mask: Vec<f32> = (0..b * s).map(|i| if i % 7 == 6 { -1e4 } else { 0.0 }).collect();
    let mut node = Node::new("Attention", "att", &["q", "k", "v", "qs", "ks", "vs", "os", "mask"], &["y"])
        .with_attr("scale", Attr::Float(1.0 / (d as f32).sqrt()));
    node.domain = "tessera".into();
    let g = graph(
        node,
        &["q", "k", "v", "mask"],
        vec![
            ("qs", shape(&split)),
            ("ks", shape(&split)),
            ("vs", shape(&split)),
            ("os", shape(&[b as i64, s as i64, c as i64])),
        ],
    );
    let ins = [t(21), t(22), t(23), Tensor::from_vec(&[b, 1, 1, s], mask).unwrap()];
    let want = run_on(&CpuProvider::new(), &g, &ins);
    for precision in [Precision::Bf16, Precision::Int8] {
        let got = run_on(&AmxProvider::with_isa(precision, isa()), &g, &ins);
        let (x, y) = (got.to_f64_vec(), want.to_f64_vec());
        let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        // Values are within [-1, 1]: bf16 operands keep the output within
        // about 1%; a wrong element would be off by the order of 1.
        assert!(err <= 0.03, "{precision:?}: max error {err}");
        assert!(err > 0.0, "{precision:?}: bit-identical to fp32, so the tiles did not run");
    }
    match &AmxProvider::with_isa(Precision::Fp32, isa()).claim(&g, &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("attention"), "{reason}"),
        v => panic!("claimed under fp32: {v:?}"),
    }
}

/// ONNX `Attention` (grouped-query heads, 3-D, causal, with a boolean
/// padding mask) under bf16 and int8 runs its products on the tiles, within
/// bf16 error of the CPU provider's fp32 result; a soft cap, a score output
/// and the fp32 precisions are declined with their reasons.
#[test]
fn onnx_attention_on_tiles_under_bf16_matches_cpu() {
    let (b, s, hq, hkv, d) = (2usize, 45usize, 4usize, 2usize, 40usize);
    let t = |seed: u64, heads: usize| Tensor::from_vec(&[b, s, heads * d], rand_vec(b * s * heads * d, seed)).unwrap();
    let pad: Vec<u8> = (0..b * s).map(|i| (i % 9 != 8) as u8).collect();
    let mask = Tensor::from_vec(&[b, 1, 1, s], pad).unwrap().with_dtype(DType::Bool).unwrap();
    let node = |outputs: &[&str]| {
        Node::new("Attention", "att", &["q", "k", "v", "mask"], outputs)
            .with_attr("q_num_heads", Attr::Int(hq as i64))
            .with_attr("kv_num_heads", Attr::Int(hkv as i64))
            .with_attr("is_causal", Attr::Int(1))
    };
    let mut g = graph(node(&["y"]), &["q", "k", "v", "mask"], vec![]);
    g.opsets.insert(String::new(), 23);
    let ins = [t(31, hq), t(32, hkv), t(33, hkv), mask];
    let want = run_on(&CpuProvider::new(), &g, &ins);
    for precision in [Precision::Bf16, Precision::Auto, Precision::Int8] {
        let got = run_on(&AmxProvider::with_isa(precision, isa()), &g, &ins);
        assert_eq!(got.shape(), [b, s, hq * d]);
        let (x, y) = (got.to_f64_vec(), want.to_f64_vec());
        let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        // V within [-1, 1]: bf16 operands keep the output within about 1%;
        // a wrong element would be off by the order of 1.
        assert!(err <= 0.03, "{precision:?}: max error {err}");
        assert!(err > 0.0, "{precision:?}: bit-identical to fp32, so the tiles did not run");
    }
    let declined =
        |g: &Graph, precision: Precision| match &AmxProvider::with_isa(precision, isa()).claim(g, &[false])[0] {
            NodeVerdict::Decline { reason } => reason.clone(),
            v => panic!("claimed: {v:?}"),
        };
    assert!(declined(&g, Precision::Fp32).contains("fp32"));
    assert!(declined(&g, Precision::Fp32Tiles).contains("fp32"));
    let mut capped = g.clone();
    capped.nodes[0] = node(&["y"]).with_attr("softcap", Attr::Float(2.0));
    assert!(declined(&capped, Precision::Bf16).contains("soft cap"));
    let mut scores = g.clone();
    scores.nodes[0] = node(&["y", "", "", "qk"]);
    assert!(declined(&scores, Precision::Bf16).contains("score output"));
}

/// `tessera:FusedMlp` on tiles against the CPU provider under each
/// precision, with a residual of the output's shape (under bf16 the hidden
/// layer goes straight into the second product's A panels) and one that
/// broadcasts (the two products run one after the other); the result is
/// also the very one the two products give apart.
#[test]
fn fused_mlp_matches_cpu_and_its_two_products() {
    let (b, m, k, hidden, n) = (2, 37, 40, 70, 45);
    let x = Tensor::from_vec(&[b, m, k], rand_vec(b * m * k, 11)).unwrap();
    let consts = || {
        vec![
            ("w1", Tensor::from_vec(&[k, hidden], rand_vec(k * hidden, 12)).unwrap()),
            ("b1", Tensor::from_vec(&[hidden], rand_vec(hidden, 13)).unwrap()),
            ("w2", Tensor::from_vec(&[hidden, n], rand_vec(hidden * n, 14)).unwrap()),
            ("b2", Tensor::from_vec(&[n], rand_vec(n, 15)).unwrap()),
        ]
    };
    for (act, act_out, res_shape) in
        [("gelu_erf", "none", vec![b, m, n]), ("relu", "silu", vec![b, m, n]), ("relu", "relu", vec![n])]
    {
        let res = Tensor::from_vec(&res_shape, rand_vec(res_shape.iter().product(), 16)).unwrap();
        let mut node = Node::new("FusedMlp", "mlp", &["x", "w1", "b1", "w2", "b2", "res"], &["y"])
            .with_attr("activation", Attr::String(act.as_bytes().to_vec()))
            .with_attr("activation_out", Attr::String(act_out.as_bytes().to_vec()));
        node.domain = "tessera".into();
        let g = graph(node.clone(), &["x", "res"], consts());
        let ins = [x.clone(), res.clone()];
        let want = run_on(&CpuProvider::new(), &g, &ins);
        for (prec, tol) in [(Precision::Fp32Tiles, 1e-6), (Precision::Bf16, 2e-2), (Precision::Int8, 4e-2)] {
            let isa = if prec == Precision::Fp32Tiles { split_isa() } else { isa() };
            let got = run_on(&AmxProvider::with_isa(prec, isa), &g, &ins);
            let e = max_rel_err(&got, &want);
            assert!(e <= tol, "{prec} {act} residual {res_shape:?}: relative error {e:e} > {tol:e}");
            if prec != Precision::Int8 {
                let p = AmxProvider::with_isa(prec, isa);
                let (first, second) = tessera_core::passes::fuse_mlp::split_mlp(&node);
                let h = run_on(&p, &graph(first.clone(), &["x"], consts()), std::slice::from_ref(&x));
                let g2 = graph(second.clone(), &[&first.outputs[0], "res"], consts());
                let apart = run_on(&p, &g2, &[h, res.clone()]);
                let (got, apart) = (got.as_slice::<f32>().unwrap(), apart.as_slice::<f32>().unwrap());
                let same = got.iter().zip(apart).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same, "{prec} {act} residual {res_shape:?}: the fused MLP differs from its two products");
            }
        }
    }
}

/// The AVX-512 dot-product ISA (named for scripts/test's check of CPUs with
/// avx512_bf16 and avx512_vnni): it claims bf16 and int8 products and both
/// attention forms, declines the fp32 precisions' float products with the
/// reason, and its results match the CPU provider: bf16 within bf16's
/// error, an integer model's product bit for bit.
#[test]
fn avx512dot_provider_takes_bf16_and_int8_only() {
    if !tessera_kernels::gemm::ukernel::isas_under_test().contains(&TileIsa::Avx512Dot) {
        return;
    }
    let dot = |prec| AmxProvider::with_isa(prec, TileIsa::Avx512Dot);
    assert_eq!(dot(Precision::Bf16).name(), "avx512-dot");
    let (m, k, n) = (37, 70, 45);
    let w = Tensor::from_vec(&[k, n], rand_vec(k * n, 51)).unwrap();
    let a = Tensor::from_vec(&[1, m, k], rand_vec(m * k, 52)).unwrap();
    let g = graph(Node::new("MatMul", "mm", &["a", "w"], &["y"]), &["a"], vec![("w", w)]);
    for prec in [Precision::Fp32, Precision::Fp32Tiles] {
        match &dot(prec).claim(&g, &[false])[0] {
            NodeVerdict::Decline { reason } => assert!(reason.contains("AVX-512 dot products"), "{reason}"),
            v => panic!("{prec}: claimed {v:?}"),
        }
    }
    let want = run_on(&CpuProvider::new(), &g, std::slice::from_ref(&a));
    for (prec, tol) in [(Precision::Bf16, 2e-2), (Precision::Auto, 2e-2), (Precision::Int8, 3e-2)] {
        let got = run_on(&dot(prec), &g, std::slice::from_ref(&a));
        let e = max_rel_err(&got, &want);
        assert!(e <= tol && e > 0.0, "{prec}: relative error {e:e} (0 would mean no bf16/int8 product ran)");
    }
    // An integer model's product, every signedness: exact.
    for (a_dt, b_dt) in [(DType::U8, DType::I8), (DType::I8, DType::I8), (DType::I8, DType::U8), (DType::U8, DType::U8)]
    {
        let qa = Tensor::from_bytes(a_dt, &[m, k], &rand_bytes(m * k, 53)).unwrap();
        let qb = Tensor::from_bytes(b_dt, &[k, n], &rand_bytes(k * n, 54)).unwrap();
        let za = Tensor::from_bytes(a_dt, &[], &[3]).unwrap();
        let zb = Tensor::from_bytes(b_dt, &[], &[250]).unwrap();
        let node = Node::new("MatMulInteger", "mi", &["a", "b", "za", "zb"], &["y"]);
        let g = graph(node, &["a", "za"], vec![("b", qb), ("zb", zb)]);
        let ins = [qa, za];
        let want = run_on(&CpuProvider::new(), &g, &ins);
        let got = run_on(&dot(Precision::Fp32), &g, &ins);
        assert_eq!(got.to_i64_vec().unwrap(), want.to_i64_vec().unwrap(), "{a_dt} x {b_dt}");
    }
}

/// A core whose bf16 dot products do not beat its fp32 FMAs (Sapphire and
/// Emerald Rapids without AMX): the provider keeps the integer and int8
/// products and declines bf16 ones, attention included, with the measured
/// reason; `new` sets that reason from the probe on the dot-product ISA.
#[test]
fn bf16_refused_where_it_does_not_pay() {
    let why = "bf16 dot products measured 86 GFLOP/s on this core against 157 for fp32 FMAs".to_string();
    let w = Tensor::from_vec(&[4, 2], vec![0f32; 8]).unwrap();
    let g = graph(Node::new("MatMul", "mm", &["a", "w"], &["y"]), &["a"], vec![("w", w)]);
    for prec in [Precision::Bf16, Precision::Auto] {
        match &AmxProvider::with_bf16_refused(prec, TileIsa::Emulated, why.clone()).claim(&g, &[false])[0] {
            NodeVerdict::Decline { reason } => assert!(reason.contains("86 GFLOP/s"), "{reason}"),
            v => panic!("{prec}: claimed {v:?}"),
        }
    }
    let int8 = AmxProvider::with_bf16_refused(Precision::Int8, TileIsa::Emulated, why.clone());
    assert!(matches!(int8.claim(&g, &[false])[0], NodeVerdict::Claim { .. }));
    let mut att = Node::new("Attention", "att", &["q", "k", "v"], &["y"]);
    att.domain = "tessera".into();
    let g = graph(att, &["q", "k", "v"], vec![]);
    match &AmxProvider::with_bf16_refused(Precision::Bf16, TileIsa::Emulated, why).claim(&g, &[false])[0] {
        NodeVerdict::Decline { reason } => assert!(reason.contains("86 GFLOP/s"), "{reason}"),
        v => panic!("attention claimed {v:?}"),
    }
    if let Ok(p) = AmxProvider::new(Precision::Bf16) {
        if p.isa() == TileIsa::Avx512Dot {
            assert_eq!(p.bf16_refusal, tessera_kernels::gemm::ukernel::avx512::bf16_refusal());
        } else {
            assert_eq!(p.bf16_refusal, None);
        }
    }
}
