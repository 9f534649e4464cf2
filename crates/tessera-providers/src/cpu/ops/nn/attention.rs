//! ONNX `Attention` (opsets 23 to 25): `softmax(scale · Q Kᵀ + bias) V` per
//! query head, where the bias gathers the attention mask (boolean or
//! additive, its key axis padded as masked up to the total length), the
//! causal and sliding-window frontiers and the per-batch key padding
//! (`nonpad_kv_seqlen`); with grouped-query heads, the key/value cache
//! (`past_*` in, `present_*` out), the score soft cap and the optional
//! score output (`qk_matmul_output_mode`).
//!
//! Semantics follow the operator's definition in the ONNX specification
//! and its reference implementation (`onnx.reference`), including the
//! cases the spec pins down: the causal frontier is aligned to the bottom
//! right (a query at block index `i` attends key `j` when `j <= i + offset`,
//! `offset` being the past length, or `nonpad_kv_seqlen[b] - Sq`), the soft
//! cap applies before the bias, and a query row whose bias masks every key
//! gives zeros (probabilities and output), not NaN.
//!
//! Everything computes in f32 (f16 and bf16 inputs are widened, outputs
//! rounded back). Work runs per (batch, query head, block of query rows):
//! scores exist for one block at a time unless the score output is asked
//! for.

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::gemm::{sgemm, MatRef, Parallel};

use super::common::{to_f32_vec, write_whole_output};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{opt, req};

pub fn register(r: &mut OpRegistry) {
    r.add("Attention", build_attention);
}

/// Query rows per block of scores.
const QUERY_BLOCK: usize = 64;

/// The node's attributes, checked once at build time.
#[derive(Clone, Debug)]
struct Attrs {
    scale: Option<f32>,
    causal: bool,
    q_heads: Option<usize>,
    kv_heads: Option<usize>,
    softcap: f32,
    qk_mode: i64,
    /// Sliding window (opset 25), -1 for unbounded.
    left: i64,
    right: i64,
}

fn positive_attr(node: &Node, name: &str) -> Result<Option<usize>> {
    match node.attr_int(name)? {
        None => Ok(None),
        Some(v) if v > 0 => Ok(Some(v as usize)),
        Some(v) => Err(Error::node(node, format!("{name} = {v} must be positive"))),
    }
}

impl Attrs {
    fn parse(node: &Node) -> Result<Attrs> {
        let qk_mode = node.attr_int_or("qk_matmul_output_mode", 0)?;
        if !(0..=3).contains(&qk_mode) {
            return Err(Error::node(node, format!("qk_matmul_output_mode {qk_mode} is not 0, 1, 2 or 3")));
        }
        let (left, right) = (node.attr_int_or("left_window_size", -1)?, node.attr_int_or("right_window_size", -1)?);
        if left < -1 || right < -1 {
            return Err(Error::node(node, "window sizes must be -1 or non-negative"));
        }
        let scale = node.attr_float("scale")?;
        if scale.is_some_and(|s| !s.is_finite()) {
            return Err(Error::node(node, "scale must be finite"));
        }
        Ok(Attrs {
            scale,
            causal: node.attr_int_or("is_causal", 0)? != 0,
            q_heads: positive_attr(node, "q_num_heads")?,
            kv_heads: positive_attr(node, "kv_num_heads")?,
            softcap: node.attr_float_or("softcap", 0.0)?,
            qk_mode,
            left,
            right,
        })
    }
}

/// One operand (Q, K or V) as heads of rows: element `(b, h, s, x)` is at
/// `b * batch + h * head + s * row + x`.
#[derive(Clone, Copy)]
struct Heads<'a> {
    data: &'a [f32],
    batch: usize,
    head: usize,
    row: usize,
    heads: usize,
    len: usize,
    dim: usize,
}

impl<'a> Heads<'a> {
    /// `[B, H, S, d]` (4-D) or `[B, S, H·d]` (3-D, `heads` given).
    fn of(node: &Node, what: &str, data: &'a [f32], shape: &[usize], heads: Option<usize>) -> Result<Heads<'a>> {
        match *shape {
            [_, h, s, d] => Ok(Heads { data, batch: h * s * d, head: s * d, row: d, heads: h, len: s, dim: d }),
            [_, s, c] => {
                let h = heads.ok_or_else(|| Error::node(node, format!("3-D {what} needs its head count attribute")))?;
                if c % h != 0 {
                    return Err(Error::node(node, format!("{what} width {c} is not a multiple of {h} heads")));
                }
                Ok(Heads { data, batch: s * c, head: c / h, row: c, heads: h, len: s, dim: c / h })
            }
            _ => Err(Error::node(node, format!("{what} of shape {shape:?} is neither 3-D nor 4-D"))),
        }
    }

    /// Rows `s0..s0 + n` of head `h` of batch `b`, as an `n x dim` matrix.
    fn rows(&self, b: usize, h: usize, s0: usize, n: usize) -> MatRef<'a> {
        let start = b * self.batch + h * self.head + s0 * self.row;
        let end = if n == 0 { start } else { start + (n - 1) * self.row + self.dim };
        MatRef { data: &self.data[start..end], rows: n, cols: self.dim, row_stride: self.row, col_stride: 1 }
    }
}

/// `[B, H, past + S, d]`: the past rows of each head, then the new ones.
fn concat_cache(past: Option<(&[f32], usize)>, new: &Heads, batch: usize) -> Vec<f32> {
    let p = past.map_or(0, |(_, p)| p);
    let (h, d, total) = (new.heads, new.dim, p + new.len);
    let mut out = vec![0f32; batch * h * total * d];
    out.par_chunks_mut((total * d).max(1)).enumerate().for_each(|(bh, dst)| {
        let (b, hh) = (bh / h, bh % h);
        if let Some((data, _)) = past {
            dst[..p * d].copy_from_slice(&data[bh * p * d..(bh + 1) * p * d]);
        }
        for s in 0..new.len {
            let src = b * new.batch + hh * new.head + s * new.row;
            dst[(p + s) * d..(p + s + 1) * d].copy_from_slice(&new.data[src..src + d]);
        }
    });
    out
}

/// The attention mask, broadcast over `[B, Hq, Sq, T]` except for its key
/// axis, which keys past its length treat as masked.
struct Mask {
    /// Additive values (a boolean mask as 0 / -inf).
    values: Vec<f32>,
    strides: [usize; 3],
    keys: usize,
}

impl Mask {
    fn of(node: &Node, t: &Tensor, full: [usize; 3], total: usize) -> Result<Mask> {
        let shape = t.shape();
        if shape.is_empty() || shape.len() > 4 {
            return Err(Error::node(node, format!("attn_mask of rank {} (1 to 4 expected)", shape.len())));
        }
        let keys = shape[shape.len() - 1];
        if keys > total {
            return Err(Error::node(node, format!("attn_mask has {keys} keys, more than the {total} attended")));
        }
        // Broadcast strides of the leading axes against [B, Hq, Sq].
        let lead = &shape[..shape.len() - 1];
        let mut strides = [0usize; 3];
        let mut step = keys;
        for (axis, &n) in lead.iter().enumerate().rev() {
            let target = 3 - (lead.len() - axis);
            if n != 1 && n != full[target] {
                return Err(Error::node(node, format!("attn_mask {shape:?} does not broadcast to {full:?} x keys")));
            }
            strides[target] = if n == 1 { 0 } else { step };
            step *= n;
        }
        let values = match t.dtype() {
            DType::Bool => t.bytes().iter().map(|&v| if v != 0 { 0.0 } else { f32::NEG_INFINITY }).collect(),
            d if d.is_float() => to_f32_vec(t),
            d => return Err(Error::node(node, format!("attn_mask of type {d} (bool or float expected)"))),
        };
        Ok(Mask { values, strides, keys })
    }

    /// Adds row `(b, h, i)` of the mask to `bias` (keys past the mask's end
    /// masked).
    fn add_row(&self, b: usize, h: usize, i: usize, bias: &mut [f32]) {
        let at = b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        let (given, past_end) = bias.split_at_mut(self.keys);
        for (o, &m) in given.iter_mut().zip(&self.values[at..at + self.keys]) {
            *o += m;
        }
        past_end.fill(f32::NEG_INFINITY);
    }
}

fn build_attention(node: &Node, _: &BuildCtx) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let attrs = Attrs::parse(&node)?;
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| run(&node, &attrs, inputs, ctx)))
}

fn run(node: &Node, at: &Attrs, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
    let (q, k, v) = (req(node, inputs, 0)?, req(node, inputs, 1)?, req(node, inputs, 2)?);
    let (mask, past_k, past_v, nonpad) = (opt(inputs, 3), opt(inputs, 4), opt(inputs, 5), opt(inputs, 6));
    for (t, what) in [(q, "Q"), (k, "K"), (v, "V")]
        .into_iter()
        .chain(past_k.map(|t| (t, "past_key")))
        .chain(past_v.map(|t| (t, "past_value")))
    {
        if !t.dtype().is_float() {
            return Err(Error::node(node, format!("{what} must be a float tensor, got {}", t.dtype())));
        }
    }
    let rank = q.rank();
    if k.rank() != rank || v.rank() != rank {
        return Err(Error::node(node, "Q, K and V must have the same rank"));
    }
    let (qd, kd, vd) = (to_f32_vec(q), to_f32_vec(k), to_f32_vec(v));
    let qh = Heads::of(node, "Q", &qd, q.shape(), at.q_heads)?;
    let kh = Heads::of(node, "K", &kd, k.shape(), at.kv_heads)?;
    let vh = Heads::of(node, "V", &vd, v.shape(), at.kv_heads)?;
    let batch = q.shape()[0];
    if k.shape()[0] != batch || v.shape()[0] != batch {
        return Err(Error::node(node, "Q, K and V differ in batch size"));
    }
    if kh.dim != qh.dim || vh.heads != kh.heads || vh.len != kh.len {
        return Err(Error::node(
            node,
            format!(
                "K {:?} and V {:?} do not fit Q {:?} (head sizes, heads or lengths)",
                k.shape(),
                v.shape(),
                q.shape()
            ),
        ));
    }
    let (hq, hkv, sq, dq, dv) = (qh.heads, kh.heads, qh.len, qh.dim, vh.dim);
    if hq % hkv != 0 {
        return Err(Error::node(node, format!("{hq} query heads are not a multiple of {hkv} key/value heads")));
    }
    let group = hq / hkv;
    // The cache: past rows first, then the new ones.
    if past_k.is_some() != past_v.is_some() {
        return Err(Error::node(node, "past_key and past_value must come together"));
    }
    if past_k.is_some() && nonpad.is_some() {
        return Err(Error::node(node, "nonpad_kv_seqlen cannot be combined with past_key / past_value"));
    }
    let past = match (past_k, past_v) {
        (Some(pk), Some(pv)) => {
            let p = pk.shape().get(2).copied().unwrap_or(0);
            if pk.shape() != [batch, hkv, p, dq] || pv.shape() != [batch, hkv, p, dv] {
                return Err(Error::node(
                    node,
                    format!(
                        "past_key {:?} / past_value {:?} are not [{batch}, {hkv}, P, {dq} / {dv}]",
                        pk.shape(),
                        pv.shape()
                    ),
                ));
            }
            Some((to_f32_vec(pk), to_f32_vec(pv), p))
        }
        _ => None,
    };
    let past_len = past.as_ref().map_or(0, |p| p.2);
    let total = past_len + kh.len;
    let keys = concat_cache(past.as_ref().map(|p| (&p.0[..], past_len)), &kh, batch);
    let values = concat_cache(past.as_ref().map(|p| (&p.1[..], past_len)), &vh, batch);
    let nonpad: Option<Vec<i64>> = match nonpad {
        Some(t) => {
            let n = t.to_i64_vec()?;
            if n.len() != batch {
                return Err(Error::node(node, format!("nonpad_kv_seqlen has {} values for batch {batch}", n.len())));
            }
            Some(n)
        }
        None => None,
    };
    let mask = mask.map(|m| Mask::of(node, m, [batch, hq, sq], total)).transpose()?;
    let scale = at.scale.unwrap_or(1.0 / (dq as f32).sqrt());
    let want_qk = node.outputs.get(3).is_some_and(|o| !o.is_empty());

    // Per (batch, query head): the output rows [Sq, dv] and, when asked
    // for, the scores [Sq, T].
    let mut y4 = vec![0f32; batch * hq * sq * dv];
    let mut qk = if want_qk { vec![0f32; batch * hq * sq * total] } else { Vec::new() };
    let qk_chunk = if want_qk { sq * total } else { 0 };
    let task = |bh: usize, y: &mut [f32], qk_out: &mut [f32]| {
        let (b, h) = (bh / hq, bh % hq);
        let g = h / group;
        let kmat = MatRef {
            data: &keys[(b * hkv + g) * total * dq..][..total * dq],
            rows: total,
            cols: dq,
            row_stride: dq,
            col_stride: 1,
        };
        let vmat = MatRef::row_major(&values[(b * hkv + g) * total * dv..][..total * dv], total, dv);
        // Where the causal and window frontiers sit for this batch.
        let offset = match &nonpad {
            Some(n) => n[b] - sq as i64,
            None => past_len as i64,
        };
        let valid = nonpad.as_ref().map(|n| n[b]);
        let mut scores = vec![0f32; QUERY_BLOCK.min(sq.max(1)) * total];
        let mut bias = vec![0f32; total];
        for i0 in (0..sq).step_by(QUERY_BLOCK) {
            let n = QUERY_BLOCK.min(sq - i0);
            let s = &mut scores[..n * total];
            sgemm(qh.rows(b, h, i0, n), kmat.t(), s, total, scale, 0.0, Parallel::None);
            for (r, row) in s.chunks_exact_mut(total.max(1)).enumerate().take(n) {
                let i = i0 + r;
                if at.softcap > 0.0 {
                    row.iter_mut().for_each(|x| *x = at.softcap * (*x / at.softcap).tanh());
                }
                if want_qk && at.qk_mode <= 1 {
                    qk_out[i * total..(i + 1) * total].copy_from_slice(row);
                }
                // The additive bias of this query row.
                bias.fill(0.0);
                if let Some(m) = &mask {
                    m.add_row(b, h, i, &mut bias);
                }
                let frontier = i as i64 + offset;
                for (j, o) in bias.iter_mut().enumerate() {
                    let j = j as i64;
                    let diff = frontier - j;
                    let blocked = (at.causal && j > frontier)
                        || (at.left >= 0 && diff > at.left)
                        || (at.right >= 0 && -diff > at.right)
                        || valid.is_some_and(|n| j >= n);
                    if blocked {
                        *o = f32::NEG_INFINITY;
                    }
                }
                let all_masked = bias.iter().all(|&x| x == f32::NEG_INFINITY);
                row.iter_mut().zip(&bias).for_each(|(x, &c)| *x += c);
                if want_qk && at.qk_mode == 2 {
                    qk_out[i * total..(i + 1) * total].copy_from_slice(row);
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if all_masked || max == f32::NEG_INFINITY {
                    row.fill(0.0);
                } else {
                    let mut sum = 0f64;
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x as f64;
                    }
                    let inv = (1.0 / sum) as f32;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
                if want_qk && at.qk_mode == 3 {
                    qk_out[i * total..(i + 1) * total].copy_from_slice(row);
                }
            }
            let p = MatRef::row_major(&s[..], n, total);
            sgemm(p, vmat, &mut y[i0 * dv..(i0 + n) * dv], dv, 1.0, 0.0, Parallel::None);
        }
    };
    let y_chunk = (sq * dv).max(1);
    if want_qk {
        y4.par_chunks_mut(y_chunk)
            .zip(qk.par_chunks_mut(qk_chunk.max(1)))
            .enumerate()
            .for_each(|(bh, (y, s))| task(bh, y, s));
    } else {
        y4.par_chunks_mut(y_chunk).enumerate().for_each(|(bh, y)| task(bh, y, &mut []));
    }

    // Y in the inputs' layout: [B, Hq, Sq, dv], or [B, Sq, Hq·dv] for 3-D.
    let y_shape: Vec<usize> = if rank == 4 { vec![batch, hq, sq, dv] } else { vec![batch, sq, hq * dv] };
    let y = write_whole_output::<f32>(ctx, q.dtype(), &y_shape, |out| {
        if rank == 4 {
            out.copy_from_slice(&y4);
        } else {
            for (bh, src) in y4.chunks_exact(y_chunk).enumerate() {
                let (b, h) = (bh / hq, bh % hq);
                for (s, row) in src.chunks_exact(dv.max(1)).enumerate() {
                    let at = (b * sq + s) * hq * dv + h * dv;
                    out[at..at + dv].copy_from_slice(row);
                }
            }
        }
        Ok(())
    })?;
    let mut outs = vec![y];
    let wanted = |i: usize| node.outputs.get(i).is_some_and(|o| !o.is_empty());
    for (i, (data, d, dtype)) in [(keys, dq, k.dtype()), (values, dv, v.dtype())].into_iter().enumerate() {
        if i + 1 >= node.outputs.len() {
            break;
        }
        outs.push(if wanted(i + 1) {
            write_whole_output::<f32>(ctx, dtype, &[batch, hkv, total, d], |out| {
                out.copy_from_slice(&data);
                Ok(())
            })?
        } else {
            Tensor::zeros(dtype, &[0])?
        });
    }
    if want_qk {
        outs.push(write_whole_output::<f32>(ctx, q.dtype(), &[batch, hq, sq, total], |out| {
            out.copy_from_slice(&qk);
            Ok(())
        })?);
    }
    Ok(outs)
}
