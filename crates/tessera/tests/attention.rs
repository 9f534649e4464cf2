//! The attention fusion (`tessera:Attention`) against the unfused graph on
//! random shapes, in both forms exporters write: the demo encoder (scale by
//! Mul, Kᵀ by a second Transpose, symbolic dims) and the exported layer
//! (scale by Div, Kᵀ by one Transpose [0, 2, 3, 1], additive mask).

use proptest::prelude::*;
use tessera::{Session, SessionOptions};
use tessera_core::Tensor;

fn run(g: tessera_core::Graph, x: &Tensor, optimize: bool, dims: &[(&str, usize)]) -> (Vec<f32>, usize) {
    let opts = SessionOptions {
        providers: vec!["cpu".into()],
        threads: 2,
        optimize,
        dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    };
    let s = Session::from_graph(g, opts).unwrap();
    let fused = s.pass_report().attention_fused;
    let out = s.run(vec![("x".into(), x.clone())]).unwrap();
    (out[0].1.as_slice::<f32>().unwrap().to_vec(), fused)
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
        let (fused, n) = run(g.clone(), &x, true, &[]);
        prop_assert_eq!(n, 1);
        let (plain, _) = run(g, &x, false, &[]);
        close(&fused, &plain)?;
    }

    #[test]
    fn fused_attention_matches_the_demo_encoder(batch in 1usize..3, seq in 1usize..70, seed in 0u64..1000) {
        let g = tessera::demo::encoder_layer(seed).unwrap();
        let hidden = tessera::demo::HIDDEN;
        let x = Tensor::from_vec(&[batch, seq, hidden], tessera::demo::Rng::new(seed).vec(batch * seq * hidden, 1.0)).unwrap();
        let dims = [("batch", batch), ("seq", seq)];
        let (fused, n) = run(g.clone(), &x, true, &dims);
        prop_assert_eq!(n, 1);
        let (plain, _) = run(g, &x, false, &dims);
        close(&fused, &plain)?;
    }
}
