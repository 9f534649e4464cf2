//! A small transformer encoder layer built in code: the model `tessera
//! demo` runs, so that the first command works with no file and no
//! download. It is written the way exporters write it (decomposed
//! LayerNorm, erf GELU, MatMul + Add) so the optimizer has work to do.

use tessera_core::{Attr, DType, Dim, Graph, Node, Result, Tensor, ValueInfo};

pub const HIDDEN: usize = 128;
pub const HEADS: usize = 4;
pub const FFN: usize = 512;

/// Deterministic pseudo-random numbers (SplitMix64), uniform in [-1, 1).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

struct Builder {
    g: Graph,
    rng: Rng,
    k: usize,
}

impl Builder {
    fn name(&mut self, base: &str) -> String {
        self.k += 1;
        format!("{base}_{}", self.k)
    }
    fn weight(&mut self, base: &str, shape: &[usize], scale: f32) -> String {
        let n = self.name(base);
        let data = self.rng.vec(shape.iter().product(), scale);
        self.g.initializers.insert(n.clone(), Tensor::from_vec(shape, data).expect("shape matches data"));
        n
    }
    fn scalar(&mut self, v: f32) -> String {
        let n = self.name("c");
        self.g.initializers.insert(n.clone(), Tensor::scalar(v));
        n
    }
    fn ints(&mut self, v: &[i64]) -> String {
        let n = self.name("shape");
        self.g.initializers.insert(n.clone(), Tensor::from_vec(&[v.len()], v.to_vec()).expect("1-D"));
        n
    }
    fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.name(&op.to_lowercase());
        let mut n = Node::new(op, &out, inputs, &[&out]);
        for (k, a) in attrs {
            n.attrs.insert(k.to_string(), a.clone());
        }
        self.g.nodes.push(n);
        out
    }
    fn linear(&mut self, x: &str, i: usize, o: usize) -> String {
        let w = self.weight("w", &[i, o], 1.0 / (i as f32).sqrt());
        let b = self.weight("b", &[o], 0.1);
        let m = self.op("MatMul", &[x, &w], &[]);
        self.op("Add", &[&m, &b], &[])
    }
    fn layer_norm(&mut self, x: &str) -> String {
        let axes = [("axes", Attr::Ints(vec![-1]))];
        let mean = self.op("ReduceMean", &[x], &axes);
        let d = self.op("Sub", &[x, &mean], &[]);
        let two = self.scalar(2.0);
        let sq = self.op("Pow", &[&d, &two], &[]);
        let var = self.op("ReduceMean", &[&sq], &axes);
        let eps = self.scalar(1e-5);
        let ve = self.op("Add", &[&var, &eps], &[]);
        let sd = self.op("Sqrt", &[&ve], &[]);
        let nrm = self.op("Div", &[&d, &sd], &[]);
        let gamma = self.weight("gamma", &[HIDDEN], 0.1);
        let beta = self.weight("beta", &[HIDDEN], 0.1);
        let gm = self.op("Mul", &[&nrm, &gamma], &[]);
        self.op("Add", &[&gm, &beta], &[])
    }
    fn gelu(&mut self, x: &str) -> String {
        let s2 = self.scalar(std::f32::consts::SQRT_2);
        let t = self.op("Div", &[x, &s2], &[]);
        let e = self.op("Erf", &[&t], &[]);
        let one = self.scalar(1.0);
        let a = self.op("Add", &[&e, &one], &[]);
        let m = self.op("Mul", &[x, &a], &[]);
        let half = self.scalar(0.5);
        self.op("Mul", &[&m, &half], &[])
    }
}

/// One encoder layer (pre-norm attention + GELU MLP) over input `x` of shape
/// `[batch, seq, HIDDEN]` with symbolic `batch` and `seq`.
pub fn encoder_layer(seed: u64) -> Result<Graph> {
    let mut b = Builder { g: Graph::default(), rng: Rng::new(seed), k: 0 };
    b.g.name = "tessera-demo-encoder".into();
    b.g.opsets.insert(String::new(), 17);
    let sym = |s: &str| Dim::Sym(s.into());
    b.g.inputs.push(ValueInfo {
        name: "x".into(),
        dtype: Some(DType::F32),
        shape: Some(vec![sym("batch"), sym("seq"), Dim::Known(HIDDEN)]),
    });
    let dh = HIDDEN / HEADS;
    let h = b.layer_norm("x");
    let split_heads = |b: &mut Builder, t: &str| {
        let shape = b.ints(&[0, 0, HEADS as i64, dh as i64]);
        let r = b.op("Reshape", &[t, &shape], &[]);
        b.op("Transpose", &[&r], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))])
    };
    let q = b.linear(&h, HIDDEN, HIDDEN);
    let q = split_heads(&mut b, &q);
    let k = b.linear(&h, HIDDEN, HIDDEN);
    let k = split_heads(&mut b, &k);
    let v = b.linear(&h, HIDDEN, HIDDEN);
    let v = split_heads(&mut b, &v);
    let kt = b.op("Transpose", &[&k], &[("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
    let s = b.op("MatMul", &[&q, &kt], &[]);
    let scale = b.scalar(1.0 / (dh as f32).sqrt());
    let s = b.op("Mul", &[&s, &scale], &[]);
    let p = b.op("Softmax", &[&s], &[("axis", Attr::Int(-1))]);
    let ctx = b.op("MatMul", &[&p, &v], &[]);
    let ctx = b.op("Transpose", &[&ctx], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
    let merged = b.ints(&[0, 0, HIDDEN as i64]);
    let ctx = b.op("Reshape", &[&ctx, &merged], &[]);
    let o = b.linear(&ctx, HIDDEN, HIDDEN);
    let x1 = b.op("Add", &["x", &o], &[]);
    let h2 = b.layer_norm(&x1);
    let f = b.linear(&h2, HIDDEN, FFN);
    let f = b.gelu(&f);
    let f = b.linear(&f, FFN, HIDDEN);
    let y = b.op("Add", &[&x1, &f], &[]);
    let out =
        ValueInfo { name: y, dtype: Some(DType::F32), shape: Some(vec![sym("batch"), sym("seq"), Dim::Known(HIDDEN)]) };
    b.g.outputs.push(out);
    b.g.toposort()?;
    Ok(b.g)
}

/// A post-LN encoder layer as exporters write it: Q/K/V linears with
/// biases, heads split by Reshape [0, 0, H, d] and Transpose (K straight to
/// [0, 2, 3, 1]), scaled scores, an additive mask, Softmax, PV, heads merged
/// back, output linear, residual, LayerNorm, GELU MLP, residual.
pub fn exported_encoder_layer(b: usize, s: usize, heads: usize, d: usize, seed: u64) -> Graph {
    let c = heads * d;
    let mut g = Graph::default();
    g.opsets.insert("".into(), 20);
    g.inputs.push(ValueInfo {
        name: "x".into(),
        dtype: Some(DType::F32),
        shape: Some(vec![Dim::Known(b), Dim::Known(s), Dim::Known(c)]),
    });
    let mut k = seed;
    let mut init = |g: &mut Graph, name: &str, shape: &[usize]| {
        k += 1;
        let mut rng = Rng::new(k);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        g.initializers.insert(name.into(), Tensor::from_vec(shape, v).expect("sized"));
    };
    for w in ["wq", "wk", "wv", "wo"] {
        init(&mut g, w, &[c, c]);
        init(&mut g, &format!("{w}_b"), &[c]);
    }
    init(&mut g, "w1", &[c, 2 * c]);
    init(&mut g, "w2", &[2 * c, c]);
    init(&mut g, "ln_g", &[c]);
    init(&mut g, "ln_b", &[c]);
    init(&mut g, "mask", &[1, 1, 1, s]);
    g.initializers
        .insert("split".into(), Tensor::from_vec(&[4], vec![0i64, 0, heads as i64, d as i64]).expect("sized"));
    g.initializers.insert("merge".into(), Tensor::from_vec(&[3], vec![0i64, 0, c as i64]).expect("sized"));
    g.initializers.insert("scale".into(), Tensor::scalar((d as f32).sqrt()));
    let perm = |v: &[i64]| Attr::Ints(v.to_vec());
    // `x · w{p} + w{p}_b`, split into heads and transposed by `order`.
    let heads_of = |p: &str, out: &str, order: &[i64]| {
        let (w, b) = (format!("w{p}"), format!("w{p}_b"));
        let t = |i: usize| format!("{p}{i}");
        [
            Node::new("MatMul", &t(0), &["x", &w], &[&t(0)]),
            Node::new("Add", &t(1), &[&t(0), &b], &[&t(1)]),
            Node::new("Reshape", &t(2), &[&t(1), "split"], &[&t(2)]),
            Node::new("Transpose", out, &[&t(2)], &[out]).with_attr("perm", perm(order)),
        ]
    };
    g.nodes =
        [heads_of("q", "q", &[0, 2, 1, 3]), heads_of("k", "kt", &[0, 2, 3, 1]), heads_of("v", "v", &[0, 2, 1, 3])]
            .concat();
    g.nodes.extend([
        Node::new("MatMul", "s0", &["q", "kt"], &["s0"]),
        Node::new("Div", "s1", &["s0", "scale"], &["s1"]),
        Node::new("Add", "s2", &["s1", "mask"], &["s2"]),
        Node::new("Softmax", "p", &["s2"], &["p"]).with_attr("axis", Attr::Int(-1)),
        Node::new("MatMul", "o0", &["p", "v"], &["o0"]),
        Node::new("Transpose", "o1", &["o0"], &["o1"]).with_attr("perm", perm(&[0, 2, 1, 3])),
        Node::new("Reshape", "o2", &["o1", "merge"], &["o2"]),
        Node::new("MatMul", "o3", &["o2", "wo"], &["o3"]),
        Node::new("Add", "o4", &["o3", "wo_b"], &["o4"]),
        Node::new("Add", "r1", &["o4", "x"], &["r1"]),
        Node::new("LayerNormalization", "ln", &["r1", "ln_g", "ln_b"], &["h"]).with_attr("axis", Attr::Int(-1)),
        Node::new("MatMul", "f1", &["h", "w1"], &["f1"]),
        Node::new("Gelu", "ge", &["f1"], &["f2"]),
        Node::new("MatMul", "f3", &["f2", "w2"], &["f3"]),
        Node::new("Add", "y", &["f3", "h"], &["y"]),
    ]);
    g.outputs.push(ValueInfo { name: "y".into(), dtype: Some(DType::F32), shape: None });
    g
}
