//! Internal fused operators (domain "tessera") produced by the optimizer.
//!
//! `FusedMatMul(A, B, [bias], [residual])`, attribute `activation` in
//! {"none", "relu", "gelu_erf", "gelu_tanh", "silu"}:
//! `y = act(A @ B + bias) + residual`, with MatMul's broadcasting for A and
//! B, `bias` over the last dimension (the GEMM's columns) and `residual`
//! broadcast (numpy rules) to y's shape. The epilogue runs on each block of
//! output rows right after the GEMM wrote it, while it is still in cache.

use std::sync::Arc;

use tessera_core::{Error, Node, Result, Tensor};
use tessera_kernels::gemm::{gemm_batched, GemmScalar};

use super::nn::common::{read_or_pre, widen_const, with_float, write_output, Float};
use super::nn::matmul::plan_matmul;
use super::shape::reshape_target;
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{broadcast_index, broadcast_shapes, broadcast_strides, opt, req};

use tessera_kernels::attention::Rows;

pub fn register(r: &mut OpRegistry) {
    r.add_domain("tessera", "FusedMatMul", build_fused_matmul);
    r.add_domain("tessera", "Attention", build_attention);
    r.add_domain("tessera", tessera_core::passes::fuse_mlp::FUSED_MLP, build_fused_mlp);
}

/// `tessera:FusedMlp(x, W1, b1, W2, b2, residual)` as its two FusedMatMuls
/// one after the other.
fn build_fused_mlp(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    mlp_in_two(node, &|n: &Node| build_fused_matmul(n, bctx))
}

/// A `tessera:FusedMlp` run as its two products one after the other, each
/// built by `build` (a provider's own FusedMatMul): the hidden layer is an
/// ordinary fp32 tensor between them.
pub(crate) fn mlp_in_two(node: &Node, build: &dyn Fn(&Node) -> Result<Box<dyn CpuOp>>) -> Result<Box<dyn CpuOp>> {
    let (first, second) = tessera_core::passes::fuse_mlp::split_mlp(node);
    Ok(Box::new(MlpInTwo { first: build(&first)?, second: build(&second)?, node: node.clone() }))
}

struct MlpInTwo {
    node: Node,
    first: Box<dyn CpuOp>,
    second: Box<dyn CpuOp>,
}

impl CpuOp for MlpInTwo {
    fn run(&self, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
        run_in_two(&self.node, self.first.as_ref(), self.second.as_ref(), inputs, ctx)
    }
}

/// Runs a `tessera:FusedMlp`'s inputs through its two products, `first`
/// and `second`, the hidden layer going back to `ctx` afterwards.
pub(crate) fn run_in_two(
    node: &Node,
    first: &dyn CpuOp,
    second: &dyn CpuOp,
    inputs: &[Option<&Tensor>],
    ctx: &mut RunCtx,
) -> Result<Vec<Tensor>> {
    let input = |i: usize| inputs.get(i).copied().flatten();
    let hidden = first.run(&[input(0), input(1), input(2)], ctx)?;
    let h = hidden.first().ok_or_else(|| Error::node(node, "the first product gave no output"))?;
    let out = second.run(&[Some(h), input(3), input(4), input(5)], ctx);
    hidden.into_iter().for_each(|t| ctx.release(t));
    out
}

/// `tessera:Attention(Q, K, V, q_shape, k_shape, v_shape, out_shape, [mask])`,
/// attribute `scale`: the exporters' attention block (Reshape to
/// `[B, S, H, d]`, Transposes, `MatMul`, scale, `Add` mask, `Softmax`,
/// `MatMul`, Transpose back, Reshape to `[B, S, H·d]`) on `[B, S, H·d]`
/// inputs, with the Reshape shapes checked at run time.
fn build_attention(node: &Node, _bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    attention_op(node, tessera_kernels::attention::Products::Vector)
}

/// The attention op with its two per-head products on `products` (the
/// tile provider passes its tiles under the bf16 and int8 precisions).
pub(crate) fn attention_op(node: &Node, products: tessera_kernels::attention::Products) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let scale = node.attr_float_or("scale", 1.0)?;
    let packed = node.attr_int_or(tessera_core::passes::merge_qkv::QKV_PACKED, 0)? != 0;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let (q, k, v) = (req(&node, inputs, 0)?, req(&node, inputs, 1)?, req(&node, inputs, 2)?);
        // Packed: one [B, S, 3C] tensor read as three column ranges.
        let width = |t: &Tensor| -> Result<usize> {
            let last = t.shape().last().copied().unwrap_or(0);
            match packed {
                false => Ok(last),
                true if last % 3 == 0 => Ok(last / 3),
                true => Err(Error::node(&node, format!("packed Q/K/V of shape {:?}: last axis not 3C", t.shape()))),
            }
        };
        let logical = |t: &Tensor| -> Result<Vec<usize>> {
            let mut s = t.shape().to_vec();
            if let Some(last) = s.last_mut() {
                *last = width(t)?;
            }
            Ok(s)
        };
        let shape_of = |i: usize| -> Result<Vec<i64>> { req(&node, inputs, i)?.to_i64_vec() };
        let mask = opt(inputs, 7);
        for t in [q, k, v].into_iter().chain(mask) {
            if t.dtype() != tessera_core::DType::F32 {
                return Err(Error::node(&node, format!("fused attention runs f32, got {}", t.dtype())));
            }
        }
        let (qs, ks, vs) = (logical(q)?, logical(k)?, logical(v)?);
        let [b, sq, c] = qs[..] else {
            return Err(Error::node(&node, format!("fused attention: Q of shape {qs:?} is not [B, S, C]")));
        };
        // The exporters' Reshapes, resolved as Reshape does (checked sizes).
        let reshaped = |shape: &[usize], i: usize| reshape_target(&node, shape, &shape_of(i)?, false);
        let split = reshaped(&qs, 3)?;
        if split.len() != 4 || split[0] != b || split[1] != sq || split[2].checked_mul(split[3]) != Some(c) {
            return Err(Error::node(&node, "fused attention: the Q reshape does not split [B, S, C] into heads"));
        }
        let (heads, d) = (split[2], split[3]);
        let [kb, sk, kc] = ks[..] else {
            return Err(Error::node(&node, format!("fused attention: K of shape {ks:?} is not [B, S, C]")));
        };
        let heads_of = |shape: &[usize], i: usize| -> Result<bool> { Ok(reshaped(shape, i)? == [kb, sk, heads, d]) };
        if kb != b || kc != c || vs != ks || !heads_of(&ks, 4)? || !heads_of(&vs, 5)? {
            return Err(Error::node(
                &node,
                format!("fused attention: K {ks:?} / V {vs:?} do not match Q {qs:?} in {heads} heads"),
            ));
        }
        if reshape_target(&node, &[b, sq, heads, d], &shape_of(6)?, false)? != [b, sq, c] {
            return Err(Error::node(&node, "fused attention: the output reshape does not merge the heads"));
        }
        let full = [b, heads, sq, sk];
        let mask_view = match mask {
            Some(m) => {
                if m.rank() > 4 || broadcast_shapes(&node, &[m.shape(), &full])? != full {
                    return Err(Error::node(&node, format!("mask {:?} does not broadcast to {full:?}", m.shape())));
                }
                let st = broadcast_strides(m.shape(), &full);
                Some((m.as_slice::<f32>()?, [st[0], st[1], st[2], st[3]]))
            }
            None => None,
        };
        let dims = tessera_kernels::attention::AttentionDims { batch: b, q_len: sq, kv_len: sk, heads, head_dim: d };
        // The kernel writes every element (zeros when there are no keys).
        let mut out = ctx.alloc_for_overwrite(tessera_core::DType::F32, &[b, sq, c])?;
        // Where each of Q, K and V starts in its tensor, and its row stride.
        fn rows(t: &Tensor, start: usize) -> Result<Rows<'_>> {
            let data = t.as_slice::<f32>()?;
            let row_stride = t.shape().last().copied().unwrap_or(0);
            Ok(Rows { data: data.get(start..).unwrap_or(&[]), row_stride })
        }
        let start = |part: usize| if packed { part * c } else { 0 };
        tessera_kernels::attention::attention_on(
            products,
            rows(q, start(0))?,
            rows(k, start(1))?,
            rows(v, start(2))?,
            mask_view.map(|(data, strides)| tessera_kernels::attention::MaskView { data, strides }),
            scale,
            dims,
            out.as_mut_slice::<f32>()?,
        );
        Ok(vec![out])
    }))
}

/// The epilogue's activation: the kernels' definition, parsed from the
/// node's `activation` attribute.
pub(crate) use tessera_kernels::gemm::Activation;

pub(crate) fn parse_activation(node: &Node) -> Result<Activation> {
    let a = node.attr_string("activation")?.unwrap_or_default();
    Activation::parse(&a).ok_or_else(|| Error::node(node, format!("unknown activation '{a}'")))
}

/// Applies the activation to a row: the vectorized f32 kernels for f32,
/// the f64 definitions for other types.
pub(crate) fn apply_row<T: Float>(act: Activation, row: &mut [T]) {
    if T::DTYPE == tessera_core::DType::F32 {
        if let Ok(r) = bytemuck::try_cast_slice_mut::<T, f32>(row) {
            return tessera_kernels::gemm::epilogue::activate(act, r);
        }
    }
    row.iter_mut().for_each(|v| *v = apply_f64(act, *v));
}

fn apply_f64<T: Float>(act: Activation, x: T) -> T {
    match act {
        Activation::None => x,
        Activation::Relu => {
            if x > T::ZERO {
                x
            } else {
                T::ZERO
            }
        }
        Activation::GeluErf | Activation::GeluErfPieces => {
            let v = x.to_f64();
            T::from_f64(0.5 * v * (1.0 + erf(v * std::f64::consts::FRAC_1_SQRT_2)))
        }
        Activation::GeluTanh => {
            let v = x.to_f64();
            let c = (2.0 / std::f64::consts::PI).sqrt();
            T::from_f64(0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh()))
        }
        Activation::Silu => {
            let v = x.to_f64();
            T::from_f64(v / (1.0 + (-v).exp()))
        }
        Activation::Relu6 => {
            let six = T::from_f64(6.0);
            if x < T::ZERO {
                T::ZERO
            } else if x > six {
                six
            } else {
                x
            }
        }
    }
}

/// The error function, to about 1e-15 relative (Abramowitz & Stegun 7.1.26
/// is too coarse for f64, so use the series for small |x| and a continued
/// fraction for erfc beyond).
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series: erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = ax * ax;
        let mut term = ax;
        let mut sum = ax;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() <= 1e-17 * sum.abs() || n > 200.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax > 6.0 {
        1.0
    } else {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let mut f = ax;
        for k in (1..60).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        1.0 - (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt())
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

fn build_fused_matmul(node: &Node, bctx: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let act = parse_activation(&node)?;
    let b_pre: Option<Arc<Vec<f32>>> = widen_const(bctx.const_input(&node, 1));
    let bias_pre: Option<Arc<Vec<f32>>> = widen_const(bctx.const_input(&node, 2));
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| {
        let a = req(&node, inputs, 0)?;
        let b = req(&node, inputs, 1)?;
        let bias = opt(inputs, 2);
        let res = opt(inputs, 3);
        let dt = a.dtype();
        if !dt.is_float() {
            return Err(Error::node(&node, format!("FusedMatMul needs float inputs, got {dt}")));
        }
        if b.dtype() != dt || bias.is_some_and(|t| t.dtype() != dt) || res.is_some_and(|t| t.dtype() != dt) {
            return Err(Error::node(&node, "FusedMatMul inputs must share one type"));
        }
        let plan = plan_matmul(&node, a.shape(), b.shape())?;
        let y_shape = plan.out_shape.clone();
        let n = plan.n;
        // Rows of the GEMM output map onto y as [rows, n] whenever B has
        // rank >= 2 (y's last dimension is n); a 1-D B gives n == 1.
        if let Some(bt) = bias {
            if bt.numel() != n && bt.numel() != 1 {
                return Err(Error::node(&node, format!("bias of shape {:?} does not match {n} columns", bt.shape())));
            }
        }
        if let Some(r) = res {
            if broadcast_shapes(&node, &[r.shape(), &y_shape])? != y_shape {
                return Err(Error::node(&node, format!("residual {:?} does not broadcast to {y_shape:?}", r.shape())));
            }
        }
        // Residual offsets: per row a base and a column stride when y's last
        // dimension is the GEMM's columns, else one index per element.
        let rank = y_shape.len();
        let row_mode = b.rank() >= 2 && rank >= 1;
        let res_strides = res.map(|r| broadcast_strides(r.shape(), &y_shape));
        let res_full: Option<Vec<usize>> = match (&res_strides, row_mode) {
            (Some(st), false) => Some(broadcast_index(&y_shape, st)),
            _ => None,
        };
        let out = with_float!(dt, &node, T => {
            let av = T::read(a)?;
            let bv = read_or_pre::<T>(b_pre.as_deref().map(|v| v.as_slice()), b)?;
            let biasv = match bias {
                Some(t) => Some(read_or_pre::<T>(bias_pre.as_deref().map(|v| v.as_slice()), t)?),
                None => None,
            };
            let resv = res.map(T::read).transpose()?;
            let m = plan.m;
            let epi = |bi: usize, r0: usize, rows: &mut [T]| {
                for (i, row) in rows.chunks_mut(n.max(1)).enumerate() {
                    let g = bi * m + r0 + i; // global row of the [rows, n] output
                    if let Some(bs) = biasv.as_deref() {
                        if bs.len() == 1 {
                            row.iter_mut().for_each(|v| *v += bs[0]);
                        } else {
                            row.iter_mut().zip(bs).for_each(|(v, &b)| *v += b);
                        }
                    }
                    if act != Activation::None {
                        apply_row(act, row);
                    }
                    if let Some(rs) = resv.as_deref() {
                        match (&res_full, &res_strides) {
                            (Some(idx), _) => {
                                for (j, v) in row.iter_mut().enumerate() {
                                    *v += rs[idx[g * n + j]];
                                }
                            }
                            (None, Some(st)) => {
                                // Decompose the row index over y's leading dims.
                                let mut rem = g;
                                let mut base = 0;
                                for d in (0..rank - 1).rev() {
                                    base += (rem % y_shape[d]) * st[d];
                                    rem /= y_shape[d];
                                }
                                let cs = st[rank - 1];
                                for (j, v) in row.iter_mut().enumerate() {
                                    *v += rs[base + j * cs];
                                }
                            }
                            _ => {}
                        }
                    }
                }
            };
            write_output::<T>(ctx, dt, &y_shape, |y| {
                gemm_batched(plan.a_ref(&av), plan.b_ref(&bv), y, T::ONE, T::ZERO, Some(&epi));
                Ok(())
            })
        })?;
        Ok(vec![out])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::nn::testutil::{run_node, run_node_const, t_f32};
    use tessera_core::Attr;

    fn fused(act: &str, n_inputs: usize) -> Node {
        let ins = ["a", "b", "bias", "res"];
        let mut n = Node::new("FusedMatMul", "f", &ins[..n_inputs], &["y"])
            .with_attr("activation", Attr::String(act.as_bytes().to_vec()));
        n.domain = "tessera".into();
        n
    }

    #[test]
    fn erf_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (-1.5, -0.9661051464753108),
        ] {
            assert!((erf(x) - want).abs() < 1e-13, "erf({x}) = {} vs {want}", erf(x));
        }
    }

    #[test]
    fn fused_matmul_bias_relu_residual() {
        // A [2, 2] @ B [2, 3] = [[1, -2, 3], [-4, 5, -6]] (B = [[1,0,1],[0,-1,1]] scaled)
        let a = t_f32(&[2, 2], &[1., 2., 3., 4.]);
        let b = t_f32(&[2, 3], &[1., 0., -1., 0., -1., 2.]);
        // A@B = [[1, -2, 3], [3, -4, 5]]
        let bias = t_f32(&[3], &[0.5, 0.5, -10.]);
        let res = t_f32(&[2, 1], &[100., 200.]);
        let y =
            run_node(&fused("relu", 4), 1, &[Some(a.clone()), Some(b.clone()), Some(bias.clone()), Some(res.clone())])
                .unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[101.5, 100., 100., 203.5, 200., 200.]);
        // no activation, no residual, B constant
        let y =
            run_node_const(&fused("none", 3), 1, &[Some(a.clone()), Some(b.clone()), Some(bias)], &[false, true, true])
                .unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), &[1.5, -1.5, -7., 3.5, -3.5, -5.]);
        // silu and gelu on a batched A with a broadcast residual row
        let a3 = t_f32(&[2, 1, 2], &[1., 2., 3., 4.]);
        let res_row = t_f32(&[3], &[1., 1., 1.]);
        let y = run_node(&fused("silu", 4), 1, &[Some(a3.clone()), Some(b.clone()), None, Some(res_row)]).unwrap();
        let s = |v: f32| v / (1.0 + (-v).exp()) + 1.0;
        let got = y[0].as_slice::<f32>().unwrap();
        for (g, w) in got.iter().zip([s(1.), s(-2.), s(3.), s(3.), s(-4.), s(5.)]) {
            assert!((g - w).abs() < 1e-6);
        }
        let y = run_node(&fused("gelu_erf", 2), 1, &[Some(a3.clone()), Some(b.clone())]).unwrap();
        let g1 = y[0].as_slice::<f32>().unwrap()[0];
        assert!((g1 - 0.841_344_7).abs() < 1e-6, "{g1}");
        let y = run_node(&fused("gelu_tanh", 2), 1, &[Some(a3), Some(b)]).unwrap();
        let g1 = y[0].as_slice::<f32>().unwrap()[0];
        assert!((g1 - 0.841_192).abs() < 1e-5, "{g1}");
    }

    #[test]
    fn fused_matmul_large_matches_unfused() {
        let (m, k, n) = (150usize, 37usize, 70usize);
        let av: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
        let bv: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.1).collect();
        let biasv: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let resv: Vec<f32> = (0..m * n).map(|i| (i % 17) as f32).collect();
        let y = run_node(
            &fused("relu", 4),
            1,
            &[
                Some(t_f32(&[m, k], &av)),
                Some(t_f32(&[k, n], &bv)),
                Some(t_f32(&[n], &biasv)),
                Some(t_f32(&[m, n], &resv)),
            ],
        )
        .unwrap();
        let got = y[0].as_slice::<f32>().unwrap();
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    acc += av[i * k + p] * bv[p * n + j];
                }
                let want = (acc + biasv[j]).max(0.0) + resv[i * n + j];
                assert!((got[i * n + j] - want).abs() < 1e-4, "{i},{j}: {} vs {want}", got[i * n + j]);
            }
        }
    }

    #[test]
    fn fused_matmul_rejects_bad_bias() {
        let a = t_f32(&[2, 2], &[1., 2., 3., 4.]);
        let b = t_f32(&[2, 3], &[1., 0., -1., 0., -1., 2.]);
        let bias = t_f32(&[2], &[0.5, 0.5]);
        assert!(run_node(&fused("none", 3), 1, &[Some(a.clone()), Some(b.clone()), Some(bias)]).is_err());
        let n = fused("swish", 2);
        assert!(run_node(&n, 1, &[Some(a), Some(b)]).is_err());
    }
}
