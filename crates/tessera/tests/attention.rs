//! The attention fusion (`tessera:Attention`) against the unfused graph on
//! random shapes, in both forms exporters write: the demo encoder (scale by
//! Mul, Kᵀ by a second Transpose, symbolic dims) and the exported layer
//! (scale by Div, Kᵀ by one Transpose [0, 2, 3, 1], additive mask).

use proptest::prelude::*;
use tessera::{Session, SessionOptions};
use tessera_core::Tensor;

/// Output, attention blocks fused, and of those, how many read one merged
/// Q/K/V projection.
fn run(g: tessera_core::Graph, x: &Tensor, optimize: bool, dims: &[(&str, usize)]) -> (Vec<f32>, usize, usize) {
    let opts = SessionOptions {
        providers: vec!["cpu".into()],
        threads: 2,
        optimize,
        dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    };
    let s = Session::from_graph(g, opts).unwrap();
    let (fused, merged) = (s.pass_report().attention_fused, s.pass_report().qkv_merged);
    let out = s.run(vec![("x".into(), x.clone())]).unwrap();
    (out[0].1.as_slice::<f32>().unwrap().to_vec(), fused, merged)
}

fn close(a: &[f32], b: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (p, q) in a.iter().zip(b) {
        prop_assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{} vs {}", p, q);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn fused_attention_matches_the_exported_graph(
        b in 1usize..3, s in 1usize..40, heads in 1usize..5, d in 1usize..9, seed in 0u64..1000,
    ) {
        let g = tessera::demo::exported_encoder_layer(b, s, heads, d, seed);
        let x = Tensor::from_vec(&[b, s, heads * d], tessera::demo::Rng::new(seed).vec(b * s * heads * d, 1.0)).unwrap();
        let (fused, n, merged) = run(g.clone(), &x, true, &[]);
        prop_assert_eq!(n, 1);
        prop_assert_eq!(merged, 1, "Q, K and V are projections of one input: one GEMM");
        let (plain, _, _) = run(g, &x, false, &[]);
        close(&fused, &plain)?;
    }

    #[test]
    fn fused_attention_matches_the_demo_encoder(batch in 1usize..3, seq in 1usize..70, seed in 0u64..1000) {
        let g = tessera::demo::encoder_layer(seed).unwrap();
        let hidden = tessera::demo::HIDDEN;
        let x = Tensor::from_vec(&[batch, seq, hidden], tessera::demo::Rng::new(seed).vec(batch * seq * hidden, 1.0)).unwrap();
        let dims = [("batch", batch), ("seq", seq)];
        let (fused, n, _) = run(g.clone(), &x, true, &dims);
        prop_assert_eq!(n, 1);
        let (plain, _, _) = run(g, &x, false, &dims);
        close(&fused, &plain)?;
    }
}

/// Position ids from `Range(0, seq, 1)` (how the exporters and
/// `scripts/make_bert.py` add position embeddings) must not hide the
/// shapes the fusion checks: the layer after them still fuses.
#[test]
fn attention_after_range_position_ids_still_fuses() {
    use tessera_core::{Attr, Node};
    let mut g = tessera::demo::encoder_layer(7).unwrap();
    let hidden = tessera::demo::HIDDEN;
    for n in g.nodes.iter_mut() {
        for i in n.inputs.iter_mut().filter(|i| i.as_str() == "x") {
            *i = "x_pos".into();
        }
    }
    let pre = [
        Node::new("Shape", "pos_shape", &["x"], &["pos_shape"]),
        Node::new("Gather", "pos_seq", &["pos_shape", "pos_one"], &["pos_seq"]).with_attr("axis", Attr::Int(0)),
        Node::new("Range", "pos_range", &["pos_zero", "pos_seq", "pos_one"], &["pos_ids"]),
        Node::new("Gather", "pos_gather", &["pos_table", "pos_ids"], &["pos_emb"]).with_attr("axis", Attr::Int(0)),
        Node::new("Add", "pos_add", &["x", "pos_emb"], &["x_pos"]),
    ];
    g.nodes.splice(0..0, pre);
    g.initializers.insert("pos_zero".into(), Tensor::scalar(0i64));
    g.initializers.insert("pos_one".into(), Tensor::scalar(1i64));
    let table = tessera::demo::Rng::new(3).vec(64 * hidden, 0.1);
    g.initializers.insert("pos_table".into(), Tensor::from_vec(&[64, hidden], table).unwrap());
    let (batch, seq) = (2, 33);
    let x = Tensor::from_vec(&[batch, seq, hidden], tessera::demo::Rng::new(9).vec(batch * seq * hidden, 1.0)).unwrap();
    let dims = [("batch", batch), ("seq", seq)];
    let (fused, n, _) = run(g.clone(), &x, true, &dims);
    assert_eq!(n, 1, "the attention block after Range position ids did not fuse");
    let (plain, _, _) = run(g, &x, false, &dims);
    close(&fused, &plain).unwrap();
}
