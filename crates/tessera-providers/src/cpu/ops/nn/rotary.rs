//! ONNX `RotaryEmbedding` (opset 23): each head's first
//! `rotary_embedding_dim` values (all of the head by default) rotated in
//! pairs by the angle of their position, `(x1, x2) -> (c·x1 - s·x2,
//! s·x1 + c·x2)`, the pairs being the two halves of the rotated part or,
//! `interleaved`, neighbouring values. The cosines and sines come from
//! caches indexed by `position_ids` (`[P, rot/2]`), or given per batch and
//! position (`[B, S, rot/2]`) when there are no position ids.

use tessera_core::{Error, Node, Result, Tensor};

use super::common::{expect_float, to_f32_vec, write_whole_output};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{opt, req};

pub fn register(r: &mut OpRegistry) {
    r.add("RotaryEmbedding", build_rotary);
}

fn build_rotary(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let interleaved = node.attr_int_or("interleaved", 0)? != 0;
    let rot_attr = node.attr_int_or("rotary_embedding_dim", 0)?;
    let heads_attr = node.attr_int("num_heads")?;
    if rot_attr < 0 || heads_attr.is_some_and(|h| h <= 0) {
        return Err(Error::node(&node, "rotary_embedding_dim must be >= 0 and num_heads positive"));
    }
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let x = req(&node, inputs, 0)?;
        let (cos, sin, pos) = (req(&node, inputs, 1)?, req(&node, inputs, 2)?, opt(inputs, 3));
        expect_float(&node, x, "input")?;
        expect_float(&node, cos, "cos_cache")?;
        expect_float(&node, sin, "sin_cache")?;
        // Element (b, s, h, i) at b * batch + s * row + h * head + i.
        let (b_n, s_n, h_n, d, batch, row, head) = match *x.shape() {
            [b, h, s, d] => (b, s, h, d, h * s * d, d, s * d),
            [b, s, c] => {
                let h = heads_attr.ok_or_else(|| Error::node(&node, "3-D input needs num_heads"))? as usize;
                if c % h != 0 {
                    return Err(Error::node(&node, format!("width {c} is not a multiple of {h} heads")));
                }
                (b, s, h, c / h, s * c, c, c / h)
            }
            ref s => return Err(Error::node(&node, format!("input of shape {s:?} is neither 3-D nor 4-D"))),
        };
        let rot = if rot_attr == 0 { d } else { rot_attr as usize };
        if rot > d || rot % 2 != 0 {
            return Err(Error::node(
                &node,
                format!("rotary_embedding_dim {rot} must be even and at most the head size {d}"),
            ));
        }
        let half = rot / 2;
        if x.numel() == 0 {
            // Nothing to rotate (and no cache row to look up).
            return Ok(vec![ctx.alloc(x.dtype(), x.shape())?]);
        }
        if cos.shape() != sin.shape() {
            return Err(Error::node(
                &node,
                format!("cos_cache {:?} and sin_cache {:?} differ", cos.shape(), sin.shape()),
            ));
        }
        // The cache row of each (batch, position).
        let rows: Vec<usize> = match pos {
            Some(p) => {
                let [max, w] = *cos.shape() else {
                    return Err(Error::node(
                        &node,
                        format!("with position_ids the caches are 2-D, got {:?}", cos.shape()),
                    ));
                };
                if w != half {
                    return Err(Error::node(
                        &node,
                        format!("cache width {w} is not rotary_embedding_dim / 2 = {half}"),
                    ));
                }
                let ids = p.to_i64_vec()?;
                if p.shape() != [b_n, s_n] {
                    return Err(Error::node(&node, format!("position_ids {:?} are not [{b_n}, {s_n}]", p.shape())));
                }
                ids.iter()
                    .map(|&id| {
                        usize::try_from(id).ok().filter(|&i| i < max).ok_or_else(|| {
                            Error::node(&node, format!("position id {id} outside the caches' {max} rows"))
                        })
                    })
                    .collect::<Result<_>>()?
            }
            None => {
                if cos.shape() != [b_n, s_n, half] {
                    return Err(Error::node(
                        &node,
                        format!("without position_ids the caches are [{b_n}, {s_n}, {half}], got {:?}", cos.shape()),
                    ));
                }
                (0..b_n * s_n).collect()
            }
        };
        let (cv, sv, xv) = (to_f32_vec(cos), to_f32_vec(sin), to_f32_vec(x));
        let y = write_whole_output::<f32>(ctx, x.dtype(), x.shape(), |y| {
            y.copy_from_slice(&xv);
            for b in 0..b_n {
                for s in 0..s_n {
                    let r = rows[b * s_n + s];
                    let (c, sn) = (&cv[r * half..(r + 1) * half], &sv[r * half..(r + 1) * half]);
                    for h in 0..h_n {
                        let v = &mut y[b * batch + s * row + h * head..][..rot];
                        for i in 0..half {
                            let (i1, i2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                            let (x1, x2) = (v[i1], v[i2]);
                            v[i1] = c[i] * x1 - sn[i] * x2;
                            v[i2] = sn[i] * x1 + c[i] * x2;
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(vec![y])
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{run_node, t_f32};
    use proptest::prelude::*;
    use tessera_core::{Attr, Node, Tensor};

    /// Rotates `(x[a], x[b])` of every head by the position's angle, in f64,
    /// reading the caches through `row(b, s)`.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x4: &[f32],
        dims: [usize; 4],
        rot: usize,
        interleaved: bool,
        cos: &[f32],
        sin: &[f32],
        row: &dyn Fn(usize, usize) -> usize,
    ) -> Vec<f32> {
        let [bn, hn, sn, d] = dims;
        let half = rot / 2;
        let mut y = x4.to_vec();
        for b in 0..bn {
            for h in 0..hn {
                for s in 0..sn {
                    let base = ((b * hn + h) * sn + s) * d;
                    let r = row(b, s);
                    for i in 0..half {
                        let (a, c) = if interleaved { (2 * i, 2 * i + 1) } else { (i, half + i) };
                        // (x1 + i x2) * (cos + i sin)
                        let (x1, x2) = (x4[base + a] as f64, x4[base + c] as f64);
                        let (co, si) = (cos[r * half + i] as f64, sin[r * half + i] as f64);
                        y[base + a] = (x1 * co - x2 * si) as f32;
                        y[base + c] = (x1 * si + x2 * co) as f32;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| ((((i as u64 + 1) * 2654435761) ^ seed) % 2000) as f32 / 500.0 - 2.0).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(120))]
        #[test]
        fn rotary_embedding_matches_its_definition(
            bn in 1usize..3, hn in 1usize..4, sn in 1usize..5, half_d in 1usize..5, part in 0usize..3,
            interleaved in any::<bool>(), with_ids in any::<bool>(), three_d in any::<bool>(), seed in any::<u64>(),
        ) {
            let d = 2 * half_d + 2 * part;
            // rotary_embedding_dim: the whole head (0) or its first 2 * half_d values.
            let (rot, rot_attr) = if part == 0 { (d, 0) } else { (2 * half_d, 2 * half_d as i64) };
            let half = rot / 2;
            let x4 = values(bn * hn * sn * d, seed);
            let max_pos = 7;
            let ids: Vec<i64> = (0..bn * sn).map(|i| ((seed >> (i % 32)) % max_pos as u64) as i64).collect();
            let cache_rows = if with_ids { max_pos } else { bn * sn };
            let (cos, sin) = (values(cache_rows * half, seed ^ 1), values(cache_rows * half, seed ^ 2));
            let row = |b: usize, s: usize| if with_ids { ids[b * sn + s] as usize } else { b * sn + s };
            let want = reference(&x4, [bn, hn, sn, d], rot, interleaved, &cos, &sin, &row);
            let cache_shape = if with_ids { vec![max_pos, half] } else { vec![bn, sn, half] };
            let mut node = Node::new("RotaryEmbedding", "r", &["x", "c", "s", "p"], &["y"])
                .with_attr("interleaved", Attr::Int(interleaved as i64))
                .with_attr("rotary_embedding_dim", Attr::Int(rot_attr));
            // [B, H, S, d] as [B, S, H·d].
            let to3 = |v: &[f32]| {
                let mut o = vec![0f32; v.len()];
                for b in 0..bn { for h in 0..hn { for s in 0..sn { for i in 0..d {
                    o[((b * sn + s) * hn + h) * d + i] = v[((b * hn + h) * sn + s) * d + i];
                }}}}
                o
            };
            let x = if three_d {
                node = node.with_attr("num_heads", Attr::Int(hn as i64));
                t_f32(&[bn, sn, hn * d], &to3(&x4))
            } else {
                t_f32(&[bn, hn, sn, d], &x4)
            };
            let inputs = vec![
                Some(x),
                Some(t_f32(&cache_shape, &cos)),
                Some(t_f32(&cache_shape, &sin)),
                with_ids.then(|| Tensor::from_slice(&[bn, sn], &ids).unwrap()),
            ];
            let y = run_node(&node, 23, &inputs).unwrap();
            let got = y[0].as_slice::<f32>().unwrap();
            let want = if three_d { to3(&want) } else { want };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "y[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn rotary_embedding_rejects_bad_caches_and_ids() {
        let node = Node::new("RotaryEmbedding", "r", &["x", "c", "s", "p"], &["y"]);
        let x = t_f32(&[1, 1, 2, 4], &[1.0; 8]);
        let cache = t_f32(&[3, 2], &[0.5; 6]);
        let run = |ids: &[i64], c: &Tensor| {
            let p = Tensor::from_slice(&[1, 2], ids).unwrap();
            run_node(&node, 23, &[Some(x.clone()), Some(c.clone()), Some(c.clone()), Some(p)])
        };
        assert!(run(&[0, 2], &cache).is_ok());
        assert!(run(&[0, 3], &cache).unwrap_err().to_string().contains("outside"));
        assert!(run(&[-1, 0], &cache).unwrap_err().to_string().contains("outside"));
        // A cache as wide as the head, not half of it.
        assert!(run(&[0, 1], &t_f32(&[3, 4], &[0.5; 12])).unwrap_err().to_string().contains("width"));
        // Position ids of the wrong shape.
        let p = Tensor::from_slice(&[2, 1], &[0i64, 1]).unwrap();
        let e = run_node(&node, 23, &[Some(x.clone()), Some(cache.clone()), Some(cache.clone()), Some(p)]).unwrap_err();
        assert!(e.to_string().contains("position_ids"));
        // An empty input is returned as it is.
        let empty = t_f32(&[1, 1, 0, 4], &[]);
        let p = Tensor::from_slice(&[1, 0], &[0i64; 0]).unwrap();
        let y = run_node(&node, 23, &[Some(empty), Some(cache.clone()), Some(cache.clone()), Some(p)]).unwrap();
        assert_eq!(y[0].shape(), [1, 1, 0, 4]);
        // An odd rotary dimension.
        let odd = node.clone().with_attr("rotary_embedding_dim", Attr::Int(3));
        let p = Tensor::from_slice(&[1, 2], &[0i64, 1]).unwrap();
        let e = run_node(&odd, 23, &[Some(x.clone()), Some(cache.clone()), Some(cache), Some(p)]).unwrap_err();
        assert!(e.to_string().contains("even"));
    }
}
