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
//! The score output follows the spec's order of steps (0: the raw
//! product, 1: after the soft cap, 2: after the bias, 3: the
//! probabilities); onnx.reference's mode 0 returns the capped scores when
//! there is a soft cap, against the spec's own function body.
//!
//! Everything computes in f32: f16 and bf16 inputs are widened and outputs
//! rounded back, f64 ones too (at f32 accuracy), and `softmax_precision`
//! asks for no more than that for the 16-bit types. Work runs per (batch,
//! query head, block of query rows) on the vector units, per (batch,
//! grouped-query group, block of query rows) on tiles: scores exist for
//! one block at a time unless the score output is asked for.
//!
//! The two products run on the fp32 vector units, or, where the tile
//! provider claims the node (bf16, auto and int8 precisions), on bf16 tiles
//! with fp32 accumulation (`tessera_kernels::attention::head_on_tiles`):
//! the bias is added and the softmax taken as the scores leave the tiles.
//! A row whose every key is masked gives zeros on both paths; with an
//! infinite or NaN value in V the vector path gives NaN there (0 · inf, as
//! the reference does), the tile path still zeros.
//! The tile path takes no soft cap and no score output (the provider
//! declines those nodes); given them anyway, or fewer than
//! [`TILE_MIN_QUERY_ROWS`] query rows (a decoding step), the op runs its
//! vector path.

use rayon::prelude::*;
use tessera_core::{DType, Error, Node, Result, Tensor};
use tessera_kernels::attention::{
    head_on_tiles, par_head_blocks, HeadBlock, HeadsLayout, Products, QueryBlock, ScoreBias,
};
use tessera_kernels::gemm::ukernel::MR;
use tessera_kernels::gemm::{sgemm, MatRef, Parallel, TileIsa};

use super::common::{expect_float, to_f32_vec, write_whole_output, Float};
use crate::cpu::registry::{BuildCtx, CpuOp, OpRegistry, RunCtx};
use crate::cpu::util::{broadcast_shapes, broadcast_strides, opt, req};

pub fn register(r: &mut OpRegistry) {
    r.add("Attention", |node: &Node, _: &BuildCtx| attention_op(node, Products::Vector));
}

/// Query rows per block of scores.
const QUERY_BLOCK: usize = 64;

/// Fewest query rows (per head) for which the products run on tiles when
/// the op is given them: for one query head per key/value head, and for
/// grouped-query heads (whose group shares one packing of its key/value
/// head). The packing and the 32-row panels that the query rows fill
/// are repaid only by enough rows. One-node models with a 511-position
/// cache, 2 threads
/// (`benches/results/2026-11-28-onnx-attention-tiles/tile_min_query_rows*.txt`):
/// each head packing alone (as a group of one does), vector units 0.56-0.69
/// ms against tiles 0.97-1.0 for 2 to 8 query rows, 0.92 against 0.99 for
/// 16, 1.40 against 1.00 for 32; groups of 4 sharing their packing, 0.54-0.66
/// against 0.73-0.82 for 2 to 8 rows, 0.88 against 0.74 for 16.
const TILE_MIN_QUERY_ROWS: [usize; 2] = [32, 16];

/// Most values of the bias one tile task builds (its query heads' rows).
const TILE_BIAS_BUDGET: usize = 1 << 18;

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
    /// Q, K and V are one `[B, S, 3C]` value, side by side (set by the
    /// merge_qkv pass on 3-D nodes, never in a file's own model).
    packed: bool,
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
        let packed = node.attr_int_or(tessera_core::passes::merge_qkv::QKV_PACKED, 0)? != 0;
        if packed && !(node.inputs.len() >= 3 && node.inputs[0] == node.inputs[1] && node.inputs[1] == node.inputs[2]) {
            return Err(Error::node(node, "packed Q/K/V must be one value given three times"));
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
            packed,
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
    /// `[B, H, S, d]` (4-D) or `[B, S, H·d]` (3-D, `heads` given); with
    /// `packed = Some(p)`, part `p` (0 Q, 1 K, 2 V) of a 3-D `[B, S, 3·H·d]`.
    fn of(
        node: &Node,
        what: &str,
        data: &'a [f32],
        shape: &[usize],
        heads: Option<usize>,
        packed: Option<usize>,
    ) -> Result<Heads<'a>> {
        match (shape, packed) {
            (&[_, h, s, d], None) => {
                Ok(Heads { data, batch: h * s * d, head: s * d, row: d, heads: h, len: s, dim: d })
            }
            (&[_, s, width], _) => {
                let h = heads.ok_or_else(|| Error::node(node, format!("3-D {what} needs its head count attribute")))?;
                let c = match packed {
                    Some(_) if width % 3 != 0 => {
                        return Err(Error::node(node, format!("packed Q/K/V width {width} is not 3 parts")))
                    }
                    Some(_) => width / 3,
                    None => width,
                };
                if c % h != 0 {
                    return Err(Error::node(node, format!("{what} width {c} is not a multiple of {h} heads")));
                }
                let data = data.get(packed.unwrap_or(0) * c..).unwrap_or_default();
                Ok(Heads { data, batch: s * width, head: c / h, row: width, heads: h, len: s, dim: c / h })
            }
            _ => Err(Error::node(node, format!("{what} of shape {shape:?} is neither 3-D nor 4-D (or packed 3-D)"))),
        }
    }

    /// The rows of `cache` (`[B, H, past + S, d]`, see [`concat_cache`])
    /// when there is a past to prepend, else these.
    fn or_cache(self, cache: Option<&'a [f32]>, past: usize) -> Heads<'a> {
        match cache {
            Some(data) if past > 0 => {
                let (len, dim) = (past + self.len, self.dim);
                Heads { data, batch: self.heads * len * dim, head: len * dim, row: dim, len, ..self }
            }
            _ => self,
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
fn concat_cache(past: Option<(&[f32], usize)>, new: &Heads, out: &mut [f32]) {
    let p = past.map_or(0, |(_, p)| p);
    let (h, d, total) = (new.heads, new.dim, p + new.len);
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
}

/// The key or value cache (`[B, Hkv, past + S, d]`): built straight into
/// the `present_*` output where that is f32, else into a buffer.
enum Cache {
    Output(Tensor),
    Buffer(Vec<f32>),
}

impl Cache {
    fn values(&self) -> Result<&[f32]> {
        match self {
            Cache::Output(t) => t.as_slice::<f32>(),
            Cache::Buffer(v) => Ok(v),
        }
    }
}

/// The attention mask, broadcast over `[B, Hq, Sq, T]` except for its key
/// axis, which keys past its length treat as masked.
struct Mask {
    /// Additive values (a boolean mask as 0 / -inf).
    values: Vec<f32>,
    strides: [usize; 3],
    keys: usize,
    /// Keys attended (those past `keys` are masked).
    total: usize,
}

impl Mask {
    /// The mask of query rows `i0..` of head `h` of batch `b` as a bias
    /// view, when it covers every key (no padded keys to mask).
    fn view(&self, b: usize, h: usize, i0: usize) -> Option<ScoreBias<'_>> {
        let at = b * self.strides[0] + h * self.strides[1] + i0 * self.strides[2];
        (self.keys == self.total).then(|| ScoreBias {
            data: &self.values[at..],
            row_stride: self.strides[2],
            key_stride: 1,
        })
    }

    fn of(node: &Node, t: &Tensor, full: [usize; 3], total: usize) -> Result<Mask> {
        let shape = t.shape();
        if shape.is_empty() || shape.len() > 4 {
            return Err(Error::node(node, format!("attn_mask of rank {} (1 to 4 expected)", shape.len())));
        }
        let keys = shape[shape.len() - 1];
        if keys > total {
            return Err(Error::node(node, format!("attn_mask has {keys} keys, more than the {total} attended")));
        }
        // The leading axes broadcast against [B, Hq, Sq]; each of their
        // elements is a row of `keys` values.
        let lead = &shape[..shape.len() - 1];
        if broadcast_shapes(node, &[lead, &full])? != full {
            return Err(Error::node(node, format!("attn_mask {shape:?} does not broadcast to {full:?} x keys")));
        }
        let st = broadcast_strides(lead, &full);
        let strides = [st[0] * keys, st[1] * keys, st[2] * keys];
        let values = match t.dtype() {
            DType::Bool => t.bytes().iter().map(|&v| if v != 0 { 0.0 } else { f32::NEG_INFINITY }).collect(),
            d if d.is_float() => to_f32_vec(t),
            d => return Err(Error::node(node, format!("attn_mask of type {d} (bool or float expected)"))),
        };
        Ok(Mask { values, strides, keys, total })
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

/// The additive bias of one batch's scores: the attention mask, then -inf
/// outside the keys that the causal and window frontiers and the key
/// padding leave.
struct Bias<'m> {
    mask: Option<&'m Mask>,
    at: &'m Attrs,
    b: usize,
    total: usize,
    /// Query row `i` sits at key `i + offset` for the frontiers.
    offset: i64,
    /// Keys from here on are padding (`nonpad_kv_seqlen`).
    valid: Option<i64>,
}

impl Bias<'_> {
    /// Writes the bias of query row `i` of head `h` over all keys; returns
    /// whether it masks every key.
    fn row(&self, h: usize, i: usize, bias: &mut [f32]) -> bool {
        bias.fill(0.0);
        if let Some(m) = self.mask {
            m.add_row(self.b, h, i, bias);
        }
        let (at, total) = (self.at, self.total);
        let frontier = (i as i64).saturating_add(self.offset);
        let mut hi = total as i64;
        if at.causal {
            hi = hi.min(frontier.saturating_add(1));
        }
        if at.right >= 0 {
            hi = hi.min(frontier.saturating_add(at.right).saturating_add(1));
        }
        if let Some(n) = self.valid {
            hi = hi.min(n);
        }
        let lo = if at.left >= 0 { frontier.saturating_sub(at.left).max(0) } else { 0 };
        let clamp = |v: i64| v.clamp(0, total as i64) as usize;
        let (lo, hi) = (clamp(lo), clamp(hi).max(clamp(lo)));
        bias[..lo].fill(f32::NEG_INFINITY);
        bias[hi..].fill(f32::NEG_INFINITY);
        bias[lo..hi].iter().all(|&c| c == f32::NEG_INFINITY)
    }

    /// Whether row `i` of head `h` has every key masked.
    fn masks_all(&self, h: usize, i: usize) -> bool {
        self.row(h, i, &mut vec![0f32; self.total])
    }

    /// The keys that rows `i0..i0 + n` can attend: under a causal mask none
    /// reaches key `i0 + n + offset` or any later one (the scores there need
    /// not be computed, their probabilities being 0).
    fn live(&self, i0: usize, n: usize) -> usize {
        match self.at.causal {
            true => ((i0 + n) as i64).saturating_add(self.offset).clamp(0, self.total as i64) as usize,
            false => self.total,
        }
    }
}

/// The op with its two products on `products`.
pub(crate) fn attention_op(node: &Node, products: Products) -> Result<Box<dyn CpuOp>> {
    op_with(node, products, TILE_MIN_QUERY_ROWS)
}

/// [`attention_op`] taking tiles from `tile_min_rows` query rows, without
/// and with grouped-query heads (tests run the tile path on small shapes).
fn op_with(node: &Node, products: Products, tile_min_rows: [usize; 2]) -> Result<Box<dyn CpuOp>> {
    let node = node.clone();
    let attrs = Attrs::parse(&node)?;
    let tiles = match products {
        Products::Tiles(isa) => Tiles { isa, min_rows: tile_min_rows },
        Products::Vector => Tiles { isa: TileIsa::Emulated, min_rows: [usize::MAX; 2] },
    };
    Ok(Box::new(move |inputs: &[Option<&Tensor>], ctx: &mut RunCtx| run(&node, &attrs, tiles, inputs, ctx)))
}

/// The tile ISA and the fewest query rows that take it, without and with
/// grouped-query heads (`usize::MAX`: the vector units only).
#[derive(Clone, Copy, Debug)]
struct Tiles {
    isa: TileIsa,
    min_rows: [usize; 2],
}

/// Why the tile path cannot run `node` (None: it can).
pub(crate) fn tile_path_refusal(node: &Node) -> Option<String> {
    let attrs = match Attrs::parse(node) {
        Ok(a) => a,
        Err(e) => return Some(e.to_string()),
    };
    if attrs.softcap != 0.0 {
        return Some("a soft cap (applied between the products) stays on the vector path".into());
    }
    if node.outputs.get(3).is_some_and(|o| !o.is_empty()) {
        return Some("the score output (materialized scores) stays on the vector path".into());
    }
    None
}

fn run(node: &Node, at: &Attrs, tiles: Tiles, inputs: &[Option<&Tensor>], ctx: &mut RunCtx) -> Result<Vec<Tensor>> {
    let (q, k, v) = (req(node, inputs, 0)?, req(node, inputs, 1)?, req(node, inputs, 2)?);
    let (mask, past_k, past_v, nonpad) = (opt(inputs, 3), opt(inputs, 4), opt(inputs, 5), opt(inputs, 6));
    for (t, what) in [(q, "Q"), (k, "K"), (v, "V")]
        .into_iter()
        .chain(past_k.map(|t| (t, "past_key")))
        .chain(past_v.map(|t| (t, "past_value")))
    {
        expect_float(node, t, what)?;
    }
    let rank = q.rank();
    if k.rank() != rank || v.rank() != rank {
        return Err(Error::node(node, "Q, K and V must have the same rank"));
    }
    let (qd, kd, vd) = (<f32 as Float>::read(q)?, <f32 as Float>::read(k)?, <f32 as Float>::read(v)?);
    let part = |p: usize| at.packed.then_some(p);
    let qh = Heads::of(node, "Q", &qd, q.shape(), at.q_heads, part(0))?;
    let kh = Heads::of(node, "K", &kd, k.shape(), at.kv_heads, part(1))?;
    let vh = Heads::of(node, "V", &vd, v.shape(), at.kv_heads, part(2))?;
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
    if hkv == 0 || hq % hkv != 0 {
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
            Some((<f32 as Float>::read(pk)?, <f32 as Float>::read(pv)?, p))
        }
        _ => None,
    };
    let past_len = past.as_ref().map_or(0, |p| p.2);
    let total = past_len + kh.len;
    // With a cache, K and V are its concatenation with the new rows (which
    // is also what `present_*` return); without, the inputs serve as they are.
    let want = |i: usize| node.outputs.get(i).is_some_and(|o| !o.is_empty());
    let mut caches = Vec::with_capacity(2);
    for (i, new, dtype) in [(1, &kh, k.dtype()), (2, &vh, v.dtype())] {
        let p = past.as_ref().map(|p| (if i == 1 { &p.0[..] } else { &p.1[..] }, past_len));
        caches.push(if p.is_none() && !want(i) {
            None
        } else if want(i) && dtype == DType::F32 {
            let mut t = ctx.alloc_for_overwrite(DType::F32, &[batch, new.heads, total, new.dim])?;
            concat_cache(p, new, t.as_mut_slice::<f32>()?);
            Some(Cache::Output(t))
        } else {
            let mut v = vec![0f32; batch * new.heads * total * new.dim];
            concat_cache(p, new, &mut v);
            Some(Cache::Buffer(v))
        });
    }
    fn values_of(c: &Option<Cache>) -> Result<Option<&[f32]>> {
        c.as_ref().map(Cache::values).transpose()
    }
    let (kall, vall) = (kh.or_cache(values_of(&caches[0])?, past_len), vh.or_cache(values_of(&caches[1])?, past_len));
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
    let want_qk = want(3);
    // Whether the bias can mask keys beyond what the attention mask does.
    let structural = at.causal || at.left >= 0 || at.right >= 0 || nonpad.is_some();

    let bias_of = |b: usize| Bias {
        mask: mask.as_ref(),
        at,
        b,
        total,
        offset: match &nonpad {
            Some(n) => n[b].saturating_sub(sq as i64),
            None => past_len as i64,
        },
        valid: nonpad.as_ref().map(|n| n[b]),
    };
    // A task is one block of `rows` query rows of one (batch, query head).
    // Its scores are `rows x T` values: about 32K at most, or 64 rows once
    // T passes 512; fewer rows where the heads alone would leave threads
    // without work.
    let threads = rayon::current_num_threads().max(1);
    let by_tasks = sq.div_ceil((2 * threads).div_ceil((batch * hq).max(1)));
    let rows = (32768 / total.max(1)).max(QUERY_BLOCK).min(by_tasks).max(1);
    let blocks = sq.div_ceil(rows);
    let tasks = batch * hq * blocks;
    // Y in the inputs' layout: [B, Hq, Sq, dv], or [B, Sq, Hq·dv] for 3-D.
    let y_shape: Vec<usize> = if rank == 4 { vec![batch, hq, sq, dv] } else { vec![batch, sq, hq * dv] };

    // On tiles, the tasks write Y in its layout (f32) or into a buffer
    // in that layout (other types).
    let tiled_y = match tiles {
        Tiles { isa, min_rows }
            if at.softcap == 0.0 && !want_qk && sq >= min_rows[(group > 1) as usize] && dq > 0 && hq > 0 =>
        {
            let layout = HeadsLayout { batch, heads: hq, len: sq, dim: dv, heads_inner: rank == 3 };
            // A task is a block of query rows of the query heads that read
            // one key/value head (a grouped-query group, or one head): they
            // share one packing of K and V.
            // Blocks shorter than a 32-row panel would only add panel work
            // per head; the bias built for a group's heads stays within
            // its budget.
            let by_tasks = sq.div_ceil((2 * threads).div_ceil((batch * hkv).max(1)));
            let short = MR.min(sq).max(1);
            // Where only a mask covering every key masks, it serves as it
            // is; otherwise each block's bias rows are built, once for the
            // group unless the mask differs between heads. (No keys: the
            // kernel writes zeros, no bias needed.)
            let biased = (mask.is_some() || structural) && total > 0;
            let in_place = !structural && mask.as_ref().is_some_and(|m| m.keys == total);
            let per_head = mask.as_ref().is_some_and(|m| m.strides[1] != 0);
            let built_heads = match (biased && !in_place, per_head) {
                (false, _) => 0,
                (true, true) => group,
                (true, false) => 1,
            };
            let by_budget = TILE_BIAS_BUDGET / (built_heads * total).max(1);
            let rows = (32768 / total.max(1)).max(QUERY_BLOCK).min(by_tasks).min(by_budget).max(short);
            Some(write_whole_output::<f32>(ctx, q.dtype(), &y_shape, |out| {
                par_head_blocks(out, layout, group, rows, |blk| {
                    let (b, h0, i0, n) = (blk.batch(), blk.head(), blk.s0(), blk.rows());
                    let g = h0 / group;
                    let bias = bias_of(b);
                    let mut built = vec![0f32; built_heads * n * total];
                    for (r, head_rows) in built.chunks_exact_mut((n * total).max(1)).enumerate() {
                        for (i, row) in head_rows.chunks_exact_mut(total).enumerate() {
                            bias.row(h0 + r, i0 + i, row);
                        }
                    }
                    let bias_of_head = |r: usize| match (biased, in_place) {
                        (false, _) => None,
                        (true, true) => mask.as_ref().and_then(|m| m.view(b, h0 + r, i0)),
                        (true, false) => {
                            let at = if per_head { r * n * total } else { 0 };
                            Some(ScoreBias { data: &built[at..], row_stride: total, key_stride: 1 })
                        }
                    };
                    let queries: Vec<QueryBlock> = (0..group)
                        .map(|r| QueryBlock { q: qh.rows(b, h0 + r, i0, n), bias: bias_of_head(r) })
                        .collect();
                    let krow = |j: usize| kall.rows(b, g, j, 1).data;
                    let vrow = |j: usize| vall.rows(b, g, j, 1).data;
                    let head =
                        HeadBlock { queries: &queries, k: &krow, v: &vrow, kv_len: bias.live(i0, n), v_dim: dv, scale };
                    let blk = std::cell::RefCell::new(blk);
                    // A row whose bias masks every key comes out of the
                    // softmax as NaN; the spec asks for zeros there. Only
                    // NaN rows are checked, each once.
                    let dead = std::cell::RefCell::new(vec![None; group * n]);
                    let masks_all = |r: usize, i: usize| {
                        *dead.borrow_mut()[r * n + i].get_or_insert_with(|| bias.masks_all(h0 + r, i0 + i))
                    };
                    head_on_tiles(isa, &head, &|r, i, j0, norm, vals| {
                        let mut w = blk.borrow_mut();
                        let dst = &mut w.row(r, i)[j0..][..vals.len()];
                        if norm.is_nan() && masks_all(r, i) {
                            dst.fill(0.0);
                        } else {
                            dst.iter_mut().zip(vals).for_each(|(d, &v)| *d = norm * v);
                        }
                    });
                });
                Ok(())
            })?)
        }
        _ => None,
    };

    // Otherwise per (batch, query head): the output rows [Sq, dv] and, when
    // asked for, the scores [Sq, T] (sizes checked against the tensor
    // limits before they are allocated). A 4-D f32 Y is the output itself;
    // other layouts and types go through a buffer.
    let direct = tiled_y.is_none() && rank == 4 && q.dtype() == DType::F32;
    let mut y_out = if direct { Some(ctx.alloc(DType::F32, &[batch, hq, sq, dv])?) } else { None };
    let mut y_buf = Vec::new();
    if tiled_y.is_none() && !direct {
        y_buf = vec![0f32; tessera_core::tensor::checked_numel(&[batch, hq, sq, dv])?];
    }
    let y4: &mut [f32] = match &mut y_out {
        Some(t) => t.as_mut_slice::<f32>()?,
        None => &mut y_buf,
    };
    let mut qk = match want_qk {
        true => vec![0f32; tessera_core::tensor::checked_numel(&[batch, hq, sq, total])?],
        false => Vec::new(),
    };
    let task = |t: usize, y: &mut [f32], qk_out: &mut [f32]| {
        let (bh, i0) = (t / blocks, t % blocks * rows);
        let (b, h) = (bh / hq, bh % hq);
        let g = h / group;
        let n = rows.min(sq - i0);
        let bias = bias_of(b);
        // All keys' scores when they are an output.
        let live = if want_qk { total } else { bias.live(i0, n) };
        let mut s = vec![0f32; n * total];
        let mut bias_buf = vec![0f32; total];
        sgemm(qh.rows(b, h, i0, n), kall.rows(b, g, 0, live).t(), &mut s, total, scale, 0.0, Parallel::None);
        for (r, row) in s.chunks_exact_mut(total.max(1)).enumerate().take(n) {
            let (i, qk_row) = (i0 + r, r * total..(r + 1) * total);
            let row = &mut row[..live];
            if want_qk && at.qk_mode == 0 {
                qk_out[qk_row.clone()].copy_from_slice(row);
            }
            if at.softcap > 0.0 {
                row.iter_mut().for_each(|x| *x = at.softcap * (*x / at.softcap).tanh());
            }
            if want_qk && at.qk_mode == 1 {
                qk_out[qk_row.clone()].copy_from_slice(row);
            }
            let mut all_masked = false;
            if mask.is_some() || structural {
                all_masked = bias.row(h, i, &mut bias_buf);
                row.iter_mut().zip(&bias_buf).for_each(|(x, &c)| *x += c);
            }
            if want_qk && at.qk_mode == 2 {
                qk_out[qk_row.clone()].copy_from_slice(row);
            }
            // A row whose bias masks every key gives zeros, as the spec
            // asks (decided on the bias: a score of +inf there would make
            // the softmax NaN).
            if all_masked {
                row.fill(0.0);
            } else {
                let inv = tessera_kernels::elementwise::softmax_exp_in_place(row);
                row.iter_mut().for_each(|x| *x *= inv);
            }
            if want_qk && at.qk_mode == 3 {
                qk_out[qk_row].copy_from_slice(row);
            }
        }
        if dv > 0 {
            let p = MatRef { data: &s, rows: n, cols: live, row_stride: total, col_stride: 1 };
            sgemm(p, vall.rows(b, g, 0, live), y, dv, 1.0, 0.0, Parallel::None);
        }
    };
    // Blocks of Y rows and of scores, one of each per task (empty where
    // there are no values: scores not asked for, or rows of width 0).
    fn blocks_of(buf: &mut [f32], sq: usize, rows: usize, width: usize, tasks: usize) -> Vec<&mut [f32]> {
        if buf.is_empty() {
            return (0..tasks).map(|_| <&mut [f32]>::default()).collect();
        }
        buf.chunks_mut(sq * width).flat_map(|c| c.chunks_mut(rows * width)).collect()
    }
    let y_blocks = blocks_of(y4, sq, rows, dv, tasks);
    let qk_blocks = blocks_of(&mut qk, sq, rows, total, tasks);
    if tiled_y.is_none() {
        y_blocks.into_par_iter().zip(qk_blocks).enumerate().for_each(|(t, (y, s))| task(t, y, s));
    }
    let y_chunk = (sq * dv).max(1);
    let y = match (tiled_y, y_out) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => write_whole_output::<f32>(ctx, q.dtype(), &y_shape, |out| {
            if rank == 4 {
                out.copy_from_slice(&y_buf);
            } else {
                for (bh, src) in y_buf.chunks_exact(y_chunk).enumerate() {
                    let (b, h) = (bh / hq, bh % hq);
                    for (s, row) in src.chunks_exact(dv.max(1)).enumerate() {
                        let at = (b * sq + s) * hq * dv + h * dv;
                        out[at..at + dv].copy_from_slice(row);
                    }
                }
            }
            Ok(())
        })?,
    };
    let mut outs = vec![y];
    let mut caches = caches.into_iter();
    let (keys, values) = (caches.next().flatten(), caches.next().flatten());
    for (i, (cache, d, dtype)) in [(keys, dq, k.dtype()), (values, dv, v.dtype())].into_iter().enumerate() {
        if i + 1 >= node.outputs.len() {
            break;
        }
        outs.push(match cache {
            Some(Cache::Output(t)) => t,
            Some(Cache::Buffer(data)) if want(i + 1) => {
                write_whole_output::<f32>(ctx, dtype, &[batch, hkv, total, d], |out| {
                    out.copy_from_slice(&data);
                    Ok(())
                })?
            }
            _ => Tensor::zeros(dtype, &[0])?,
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

#[cfg(test)]
mod tests {
    use super::super::testutil::{run_node, t_f32};
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use tessera_core::{Attr, DType, Node, Tensor};

    /// One random problem: sizes, options and data.
    #[derive(Clone, Debug)]
    struct Case {
        batch: usize,
        kv_heads: usize,
        group: usize,
        sq: usize,
        sk: usize,
        past: usize,
        d: usize,
        dv: usize,
        rank: usize,
        /// 0: none, 1: bool, 2: additive.
        mask: u8,
        /// Leading mask shape over [B, Hq, Sq] (1 where it broadcasts) and
        /// its key count.
        mask_lead: Vec<usize>,
        mask_keys: usize,
        causal: bool,
        softcap: f32,
        window: (i64, i64),
        nonpad: Option<Vec<i64>>,
        qk_mode: Option<i64>,
        seed: u64,
    }

    fn case() -> impl Strategy<Value = Case> {
        let sizes = (1usize..3, 1usize..3, 1usize..4, 1usize..6, 1usize..6, 0usize..4, 1usize..6, 1usize..5);
        let options = (3usize..5, 0u8..3, 1usize..4, any::<u64>(), any::<bool>(), 0u8..2, (-1i64..3, -1i64..3), 0u8..5);
        (sizes, options, any::<bool>(), 0u64..1000).prop_map(
            |(
                (batch, kv_heads, group, sq, sk, past, d, dv),
                (rank, mask, mask_rank, bits, causal, capped, window, qk),
                use_nonpad,
                seed,
            )| {
                let hq = kv_heads * group;
                let full = [batch, hq, sq];
                // Each leading axis of the mask either matches or broadcasts.
                let lead: Vec<usize> = (0..mask_rank.min(3))
                    .map(|i| 3 - mask_rank.min(3) + i)
                    .map(|a| if bits >> a & 1 == 1 { full[a] } else { 1 })
                    .collect();
                let total = past + sk;
                let mask_keys = 1 + (bits >> 8) as usize % total;
                // nonpad_kv_seqlen excludes a cache.
                let (past, nonpad) = if use_nonpad {
                    (0, Some((0..batch).map(|b| ((bits >> (16 + 3 * b)) % (sk as u64 + 2)) as i64 - 1).collect()))
                } else {
                    (past, None)
                };
                let mask_keys = mask_keys.min(past + sk);
                Case {
                    batch,
                    kv_heads,
                    group,
                    sq,
                    sk,
                    past,
                    d,
                    dv,
                    rank,
                    mask,
                    mask_lead: lead,
                    mask_keys,
                    causal,
                    softcap: if capped == 1 { 1.5 } else { 0.0 },
                    window,
                    nonpad,
                    qk_mode: if qk < 4 { Some(qk as i64) } else { None },
                    seed,
                }
            },
        )
    }

    fn random(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    /// The operator's definition, in f64 on whole [B, H, S, d] tensors.
    /// Returns Y as [B, Hq, Sq, dv] and the scores output as [B, Hq, Sq, T].
    #[allow(clippy::too_many_arguments)]
    fn reference(
        c: &Case,
        q4: &[f32],
        k4: &[f32],
        v4: &[f32],
        mask: Option<&[f32]>,
        mask_bool: Option<&[bool]>,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (hq, t) = (c.kv_heads * c.group, c.past + c.sk);
        let mut y = vec![0f64; c.batch * hq * c.sq * c.dv];
        let mut qk = vec![0f64; c.batch * hq * c.sq * t];
        let off = 3 - c.mask_lead.len();
        for b in 0..c.batch {
            for h in 0..hq {
                let g = h / c.group;
                for i in 0..c.sq {
                    let mut s = vec![0f64; t];
                    let mut raw = vec![0f64; t];
                    let mut bias = vec![0f64; t];
                    for j in 0..t {
                        let mut dot = 0f64;
                        for x in 0..c.d {
                            dot += q4[((b * hq + h) * c.sq + i) * c.d + x] as f64
                                * k4[((b * c.kv_heads + g) * t + j) * c.d + x] as f64;
                        }
                        s[j] = dot * scale;
                        raw[j] = s[j];
                        if c.softcap > 0.0 {
                            s[j] = c.softcap as f64 * (s[j] / c.softcap as f64).tanh();
                        }
                        // Mask element (b, h, i, j), broadcast, keys past its end masked.
                        let coord = [b, h, i];
                        let mut at = 0;
                        for (a, &n) in c.mask_lead.iter().enumerate() {
                            at = at * n + if n == 1 { 0 } else { coord[off + a] };
                        }
                        let at = at * c.mask_keys + j;
                        if j >= c.mask_keys && c.mask != 0 {
                            bias[j] = f64::NEG_INFINITY;
                        } else if let Some(m) = mask {
                            bias[j] += m[at] as f64;
                        } else if let Some(m) = mask_bool {
                            if !m[at] {
                                bias[j] = f64::NEG_INFINITY;
                            }
                        }
                        let offset = match &c.nonpad {
                            Some(n) => n[b] - c.sq as i64,
                            None => c.past as i64,
                        };
                        let p = i as i64 + offset;
                        let jj = j as i64;
                        let (left, right) = c.window;
                        if (c.causal && jj > p)
                            || (left >= 0 && p - jj > left)
                            || (right >= 0 && jj - p > right)
                            || c.nonpad.as_ref().is_some_and(|n| jj >= n[b])
                        {
                            bias[j] = f64::NEG_INFINITY;
                        }
                    }
                    let row = ((b * hq + h) * c.sq + i) * t;
                    let mode = c.qk_mode.unwrap_or(0);
                    let biased: Vec<f64> = s.iter().zip(&bias).map(|(a, b)| a + b).collect();
                    let max = biased.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = if bias.iter().all(|&v| v == f64::NEG_INFINITY) {
                        vec![0.0; t]
                    } else {
                        let e: Vec<f64> = biased.iter().map(|v| (v - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        e.iter().map(|v| v / sum).collect()
                    };
                    let shown = match mode {
                        0 => &raw,
                        1 => &s,
                        2 => &biased,
                        _ => &p,
                    };
                    qk[row..row + t].copy_from_slice(shown);
                    for x in 0..c.dv {
                        y[((b * hq + h) * c.sq + i) * c.dv + x] =
                            (0..t).map(|j| p[j] * v4[((b * c.kv_heads + g) * t + j) * c.dv + x] as f64).sum();
                    }
                }
            }
        }
        (y, qk)
    }

    /// `[B, H, S, d]` as `[B, S, H·d]`.
    fn to_3d(x: &[f32], b: usize, h: usize, s: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for bb in 0..b {
            for hh in 0..h {
                for ss in 0..s {
                    for dd in 0..d {
                        out[((bb * s + ss) * h + hh) * d + dd] = x[((bb * h + hh) * s + ss) * d + dd];
                    }
                }
            }
        }
        out
    }

    fn check(c: &Case) {
        check_on(c, Products::Vector)
    }

    /// Runs the case with its products on `products` against the f64
    /// reference: held to 1e-4 relative on the vector units; on bf16 tiles
    /// to 3% of max |V| (scores off by up to about scale·d·2⁻⁸ and
    /// probabilities by 2⁻⁸ relative; a misplaced element is off by the
    /// order of |V| itself), fully masked rows exactly zero.
    fn check_on(c: &Case, products: Products) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
        let (hq, hkv, t) = (c.kv_heads * c.group, c.kv_heads, c.past + c.sk);
        let q4 = random(c.batch * hq * c.sq * c.d, &mut rng);
        let knew = random(c.batch * hkv * c.sk * c.d, &mut rng);
        let vnew = random(c.batch * hkv * c.sk * c.dv, &mut rng);
        let pk = random(c.batch * hkv * c.past * c.d, &mut rng);
        let pv = random(c.batch * hkv * c.past * c.dv, &mut rng);
        // The cache as the reference sees it: past rows, then the new ones.
        let cat = |past: &[f32], new: &[f32], d: usize| {
            let mut out = Vec::new();
            for bh in 0..c.batch * hkv {
                out.extend_from_slice(&past[bh * c.past * d..(bh + 1) * c.past * d]);
                out.extend_from_slice(&new[bh * c.sk * d..(bh + 1) * c.sk * d]);
            }
            out
        };
        let (k4, v4) = (cat(&pk, &knew, c.d), cat(&pv, &vnew, c.dv));
        let mask_len: usize = c.mask_lead.iter().product::<usize>() * c.mask_keys;
        let mut mask_shape = c.mask_lead.clone();
        mask_shape.push(c.mask_keys);
        // Additive masks carry some -inf, boolean ones some false.
        let float_mask: Vec<f32> = (0..mask_len)
            .map(|_| if rng.random_bool(0.2) { f32::NEG_INFINITY } else { rng.random_range(-1.0f32..1.0) })
            .collect();
        let bool_mask: Vec<bool> = (0..mask_len).map(|_| rng.random_bool(0.7)).collect();
        let scale = if c.seed.is_multiple_of(2) { None } else { Some(0.3f32) };
        let (want_y, want_qk) = reference(
            c,
            &q4,
            &k4,
            &v4,
            (c.mask == 2).then_some(&float_mask[..]),
            (c.mask == 1).then_some(&bool_mask[..]),
            scale.map_or(1.0 / (c.d as f64).sqrt(), |s| s as f64),
        );

        let (q_in, k_in, v_in) = if c.rank == 4 {
            (
                t_f32(&[c.batch, hq, c.sq, c.d], &q4),
                t_f32(&[c.batch, hkv, c.sk, c.d], &knew),
                t_f32(&[c.batch, hkv, c.sk, c.dv], &vnew),
            )
        } else {
            (
                t_f32(&[c.batch, c.sq, hq * c.d], &to_3d(&q4, c.batch, hq, c.sq, c.d)),
                t_f32(&[c.batch, c.sk, hkv * c.d], &to_3d(&knew, c.batch, hkv, c.sk, c.d)),
                t_f32(&[c.batch, c.sk, hkv * c.dv], &to_3d(&vnew, c.batch, hkv, c.sk, c.dv)),
            )
        };
        let mask_in = match c.mask {
            1 => Some(
                Tensor::from_slice(&mask_shape, &bool_mask.iter().map(|&v| v as u8).collect::<Vec<u8>>())
                    .unwrap()
                    .with_dtype(DType::Bool)
                    .unwrap(),
            ),
            2 => Some(t_f32(&mask_shape, &float_mask)),
            _ => None,
        };
        let has_past = c.past > 0;
        // The present outputs, with a past (the cache) or without (K and V).
        let presents = has_past || c.seed.is_multiple_of(3);
        let mut node = Node::new(
            "Attention",
            "a",
            &["q", "k", "v", "m", "pk", "pv", "n"],
            &[
                "y",
                if presents { "present_k" } else { "" },
                if presents { "present_v" } else { "" },
                if c.qk_mode.is_some() { "qk" } else { "" },
            ],
        )
        .with_attr("is_causal", Attr::Int(c.causal as i64))
        .with_attr("left_window_size", Attr::Int(c.window.0))
        .with_attr("right_window_size", Attr::Int(c.window.1));
        if c.rank == 3 {
            node = node.with_attr("q_num_heads", Attr::Int(hq as i64)).with_attr("kv_num_heads", Attr::Int(hkv as i64));
        }
        if let Some(s) = scale {
            node = node.with_attr("scale", Attr::Float(s));
        }
        if c.softcap > 0.0 {
            node = node.with_attr("softcap", Attr::Float(c.softcap));
        }
        if let Some(m) = c.qk_mode {
            node = node.with_attr("qk_matmul_output_mode", Attr::Int(m));
        }
        let inputs = vec![
            Some(q_in),
            Some(k_in),
            Some(v_in),
            mask_in,
            has_past.then(|| t_f32(&[c.batch, hkv, c.past, c.d], &pk)),
            has_past.then(|| t_f32(&[c.batch, hkv, c.past, c.dv], &pv)),
            c.nonpad.as_ref().map(|n| Tensor::from_slice(&[c.batch], n).unwrap()),
        ];
        let outs = match products {
            Products::Vector => run_node(&node, 25, &inputs).unwrap(),
            tiles => {
                let op = op_with(&node, tiles, [1, 1]).unwrap();
                let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
                op.run(&refs, &mut crate::cpu::registry::RunCtx::default()).unwrap()
            }
        };
        let y = outs[0].as_slice::<f32>().unwrap();
        let want_y: Vec<f64> = if c.rank == 4 {
            want_y
        } else {
            let w: Vec<f32> = want_y.iter().map(|&v| v as f32).collect();
            to_3d(&w, c.batch, hq, c.sq, c.dv).into_iter().map(|v| v as f64).collect()
        };
        assert_eq!(y.len(), want_y.len());
        let vmax = v4.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
        for (i, (&got, &want)) in y.iter().zip(&want_y).enumerate() {
            let close = match products {
                Products::Vector => (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                Products::Tiles(_) if want == 0.0 => got == 0.0,
                Products::Tiles(_) => (got as f64 - want).abs() <= 0.03 * vmax,
            };
            assert!(close, "Y[{i}]: {got} vs {want} in {c:?} on {products:?}");
        }
        if presents {
            assert_eq!(outs[1].shape(), [c.batch, hkv, t, c.d]);
            assert_eq!(outs[1].as_slice::<f32>().unwrap(), &k4[..]);
            assert_eq!(outs[2].shape(), [c.batch, hkv, t, c.dv]);
            assert_eq!(outs[2].as_slice::<f32>().unwrap(), &v4[..]);
        }
        if c.qk_mode.is_some() {
            let qk = outs[3].as_slice::<f32>().unwrap();
            assert_eq!(outs[3].shape(), [c.batch, hq, c.sq, t]);
            for (i, (&got, &want)) in qk.iter().zip(&want_qk).enumerate() {
                let same = (got as f64 == want) || (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs());
                assert!(same, "scores[{i}]: {got} vs {want} in {c:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn attention_matches_its_definition(c in case()) {
            check(&c);
        }
    }

    /// The ISAs a tile test runs: the emulation always, and AMX and the
    /// AVX-512 dot products where the machine has them (see
    /// `isas_under_test`).
    fn tile_isas() -> Vec<TileIsa> {
        tessera_kernels::gemm::ukernel::isas_under_test()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(120))]
        /// The products on bf16 tiles (as the tile provider runs the op),
        /// over the same random cases less the soft cap and the score
        /// output, which the tile path does not take. Named for
        /// scripts/test's AMX check.
        #[test]
        fn amx_onnx_attention_on_tiles_matches_its_definition(c in case()) {
            let c = Case { softcap: 0.0, qk_mode: None, ..c };
            for isa in tile_isas() {
                check_on(&c, Products::Tiles(isa));
            }
        }
    }

    /// The tile path over several query blocks and panels of 32 rows,
    /// with causal frontiers, a cache and key/value widths past one tile;
    /// masks that cover every key serve as they are where nothing else
    /// masks (per batch, head and query row, additive and boolean).
    #[test]
    fn amx_onnx_attention_on_tiles_long_sequences() {
        let cases = [
            (600, true, 40, 70, 2, vec![600], 602),
            (100, false, 64, 64, 2, vec![100], 102),
            (33, true, 3, 2, 2, vec![33], 35),
            (40, false, 16, 24, 2, vec![2, 4, 40], 45),
            (40, false, 16, 24, 1, vec![2, 4, 1], 45),
            (70, false, 8, 8, 2, vec![1, 4, 70], 75),
            (600, true, 8, 8, 2, vec![1, 4, 600], 602),
        ];
        for (sq, causal, d, dv, mask, lead, keys) in cases {
            let c = Case {
                batch: 2,
                kv_heads: 2,
                group: 2,
                sq,
                sk: sq,
                past: 5,
                d,
                dv,
                rank: 4,
                mask,
                mask_lead: lead,
                mask_keys: keys,
                causal,
                softcap: 0.0,
                window: (-1, -1),
                nonpad: None,
                qk_mode: None,
                seed: 11,
            };
            for isa in tile_isas() {
                check_on(&c, Products::Tiles(isa));
            }
        }
    }

    /// Query blocks: more query rows than one block of scores holds (past
    /// 512 keys a block is 64 rows), with and without the score output
    /// (without it, a causal block skips the keys past its last frontier).
    #[test]
    fn attention_over_several_query_blocks() {
        for (sq, causal, qk_mode) in [(600, true, None), (600, true, Some(3)), (530, false, None), (64, true, None)] {
            let c = Case {
                batch: 1,
                kv_heads: 2,
                group: 2,
                sq,
                sk: sq,
                past: 3,
                d: 3,
                dv: 2,
                rank: 3,
                mask: 2,
                mask_lead: vec![sq],
                mask_keys: sq + 1,
                causal,
                softcap: 0.0,
                window: (-1, -1),
                nonpad: None,
                qk_mode,
                seed: 7,
            };
            check(&c);
        }
    }

    /// Extreme window sizes and key counts: no overflow, the meaning kept
    /// (a window longer than any sequence bounds nothing; a key count below
    /// zero masks every key, one above the total masks none).
    #[test]
    fn attention_with_extreme_windows_and_key_counts() {
        let q = t_f32(&[1, 1, 3, 2], &[0.3, -0.2, 1.0, 0.5, -0.7, 0.1]);
        let k = t_f32(&[1, 1, 4, 2], &[0.1, 0.2, -0.3, 0.4, 0.5, -0.6, 0.7, 0.8]);
        let v = t_f32(&[1, 1, 4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let run = |attrs: &[(&str, i64)], nonpad: Option<i64>| {
            let mut node = Node::new("Attention", "a", &["q", "k", "v", "", "", "", "n"], &["y"]);
            for (name, v) in attrs {
                node = node.with_attr(name, Attr::Int(*v));
            }
            let n = nonpad.map(|n| Tensor::from_slice(&[1], &[n]).unwrap());
            let inputs = vec![Some(q.clone()), Some(k.clone()), Some(v.clone()), None, None, None, n];
            run_node(&node, 24, &inputs).unwrap()[0].as_slice::<f32>().unwrap().to_vec()
        };
        let plain = run(&[], None);
        let causal = run(&[("is_causal", 1)], None);
        assert_ne!(plain, causal);
        let huge = [("left_window_size", i64::MAX), ("right_window_size", i64::MAX)];
        assert_eq!(run(&huge, None), plain);
        assert_eq!(run(&[huge[0], huge[1], ("is_causal", 1)], Some(i64::MIN)), vec![0.0; 6]);
        // All keys valid, the causal frontier pushed past every key.
        assert_eq!(run(&[("is_causal", 1)], Some(i64::MAX)), plain);
    }

    fn node3(outputs: &[&str]) -> Node {
        Node::new("Attention", "a", &["q", "k", "v", "m", "pk", "pv"], outputs)
            .with_attr("q_num_heads", Attr::Int(2))
            .with_attr("kv_num_heads", Attr::Int(1))
    }

    #[test]
    fn attention_rejects_inconsistent_inputs() {
        let q = t_f32(&[1, 3, 8], &[0.5; 24]);
        let k = t_f32(&[1, 4, 4], &[0.5; 16]);
        let v = t_f32(&[1, 4, 4], &[0.5; 16]);
        let err = |node: &Node, inputs: Vec<Option<Tensor>>| run_node(node, 23, &inputs).unwrap_err().to_string();
        // Baseline: runs.
        assert!(run_node(&node3(&["y"]), 23, &[Some(q.clone()), Some(k.clone()), Some(v.clone())]).is_ok());
        // 3 query heads do not share 2 key/value heads.
        let n = node3(&["y"]).with_attr("q_num_heads", Attr::Int(3)).with_attr("kv_num_heads", Attr::Int(2));
        let q3 = t_f32(&[1, 3, 6], &[0.5; 18]);
        let k2 = t_f32(&[1, 4, 4], &[0.5; 16]);
        assert!(err(&n, vec![Some(q3), Some(k2.clone()), Some(k2)]).contains("not a multiple"));
        // Head sizes of Q and K differ.
        let k_wide = t_f32(&[1, 4, 6], &[0.5; 24]);
        assert!(err(&node3(&["y"]), vec![Some(q.clone()), Some(k_wide), Some(v.clone())]).contains("do not fit"));
        // A mask with more keys than attended.
        let m = t_f32(&[3, 5], &[0.0; 15]);
        assert!(
            err(&node3(&["y"]), vec![Some(q.clone()), Some(k.clone()), Some(v.clone()), Some(m)]).contains("more than")
        );
        // A mask that does not broadcast.
        let m = t_f32(&[2, 4], &[0.0; 8]);
        assert!(
            err(&node3(&["y"]), vec![Some(q.clone()), Some(k.clone()), Some(v.clone()), Some(m)]).contains("broadcast")
        );
        // past_key without past_value, and a past of the wrong head size.
        let pk = t_f32(&[1, 1, 2, 4], &[0.5; 8]);
        assert!(err(
            &node3(&["y"]),
            vec![Some(q.clone()), Some(k.clone()), Some(v.clone()), None, Some(pk.clone()), None]
        )
        .contains("together"));
        let pv = t_f32(&[1, 1, 2, 3], &[0.5; 6]);
        assert!(err(&node3(&["y"]), vec![Some(q.clone()), Some(k.clone()), Some(v.clone()), None, Some(pk), Some(pv)])
            .contains("past_key"));
        // 3-D inputs without head counts; a bad mode.
        let bare = Node::new("Attention", "a", &["q", "k", "v"], &["y"]);
        assert!(err(&bare, vec![Some(q.clone()), Some(k.clone()), Some(v.clone())]).contains("head count"));
        let bad = node3(&["y"]).with_attr("qk_matmul_output_mode", Attr::Int(4));
        assert!(err(&bad, vec![Some(q), Some(k), Some(v)]).contains("qk_matmul_output_mode"));
    }

    /// Zero-sized and oversized problems: a clear error or an empty result,
    /// never a panic or a huge allocation.
    #[test]
    fn attention_degenerate_and_oversized_shapes() {
        let err = |node: &Node, inputs: Vec<Option<Tensor>>| run_node(node, 23, &inputs).unwrap_err().to_string();
        let plain = Node::new("Attention", "a", &["q", "k", "v"], &["y", "", "", "qk"])
            .with_attr("qk_matmul_output_mode", Attr::Int(3));
        // No key/value heads.
        let (q, kv) = (t_f32(&[1, 2, 3, 4], &[0.5; 24]), t_f32(&[1, 0, 3, 4], &[]));
        assert!(err(&plain, vec![Some(q.clone()), Some(kv.clone()), Some(kv)]).contains("not a multiple"));
        // Values of width 0: Y is empty, the probabilities are still there.
        let k = t_f32(&[1, 1, 3, 4], &[0.25; 12]);
        let v = t_f32(&[1, 1, 3, 0], &[]);
        let outs = run_node(&plain, 23, &[Some(q), Some(k), Some(v)]).unwrap();
        assert_eq!(outs[0].shape(), [1, 2, 3, 0]);
        assert_eq!(outs[3].shape(), [1, 2, 3, 3]);
        assert!(outs[3].as_slice::<f32>().unwrap().iter().all(|&p| (p - 1.0 / 3.0).abs() < 1e-6));
        // Scores of 2^17 queries by 2^18 keys (2^35 values): refused.
        let q = t_f32(&[1, 1, 1 << 17, 1], &vec![0.0; 1 << 17]);
        let k = t_f32(&[1, 1, 1 << 18, 1], &vec![0.0; 1 << 18]);
        assert!(err(&plain, vec![Some(q), Some(k.clone()), Some(k)]).contains("too many elements"));
    }

    /// Degenerate shapes on the tile path: no keys at all under a causal
    /// frontier (zeros), heads of size 0 (the vector path's uniform
    /// weights), no query heads, a packed attribute on three different
    /// values (refused).
    #[test]
    fn amx_tiles_degenerate_shapes() {
        let run = |node: &Node, inputs: &[Option<Tensor>], products: Products| {
            let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
            op_with(node, products, [1, 1]).and_then(|op| op.run(&refs, &mut crate::cpu::registry::RunCtx::default()))
        };
        let causal = Node::new("Attention", "a", &["q", "k", "v"], &["y"]).with_attr("is_causal", Attr::Int(1));
        let plain = Node::new("Attention", "a", &["q", "k", "v"], &["y"]);
        for isa in tile_isas() {
            let tiles = Products::Tiles(isa);
            let (q, kv) = (t_f32(&[1, 2, 3, 4], &[0.5; 24]), t_f32(&[1, 1, 0, 4], &[]));
            let y = run(&causal, &[Some(q), Some(kv.clone()), Some(kv)], tiles).unwrap();
            assert_eq!(y[0].shape(), [1, 2, 3, 4]);
            assert!(y[0].as_slice::<f32>().unwrap().iter().all(|&v| v == 0.0));
            let (q, k) = (t_f32(&[1, 1, 3, 0], &[]), t_f32(&[1, 1, 4, 0], &[]));
            let v = t_f32(&[1, 1, 4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
            let y = run(&plain, &[Some(q), Some(k), Some(v)], tiles).unwrap();
            assert_eq!(y[0].as_slice::<f32>().unwrap(), &[4.0, 5.0, 4.0, 5.0, 4.0, 5.0]);
        }
        // No query heads (4-D): an empty Y.
        for isa in tile_isas() {
            let (q, kv) = (t_f32(&[1, 0, 20, 4], &[]), t_f32(&[1, 1, 3, 4], &[0.5; 12]));
            let y = run(&plain, &[Some(q), Some(kv.clone()), Some(kv)], Products::Tiles(isa)).unwrap();
            assert_eq!(y[0].shape(), [1, 0, 20, 4]);
        }
        let forged = plain.with_attr(tessera_core::passes::merge_qkv::QKV_PACKED, Attr::Int(1));
        let err = op_with(&forged, Products::Vector, [1, 1]).err().expect("refused").to_string();
        assert!(err.contains("one value"), "{err}");
    }

    /// Below `TILE_MIN_QUERY_ROWS` query rows the op given tiles runs its
    /// vector products (the very fp32 result); from there on, the tiles.
    #[test]
    fn amx_tiles_from_the_fewest_query_rows() {
        let [alone, grouped] = TILE_MIN_QUERY_ROWS;
        let cases = [(1, alone - 1, false), (1, alone, true), (2, grouped - 1, false), (2, grouped, true)];
        for (group, sq, tiled) in cases {
            let mut rng = rand::rngs::StdRng::seed_from_u64(sq as u64);
            let t = |h: usize, n: usize, rng: &mut rand::rngs::StdRng| t_f32(&[1, h, n, 16], &random(h * n * 16, rng));
            let inputs = [Some(t(2, sq, &mut rng)), Some(t(2 / group, 40, &mut rng)), Some(t(2 / group, 40, &mut rng))];
            let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
            let node = Node::new("Attention", "a", &["q", "k", "v"], &["y"]);
            let run = |p: Products| {
                let y = attention_op(&node, p).unwrap().run(&refs, &mut crate::cpu::registry::RunCtx::default());
                y.unwrap()[0].as_slice::<f32>().unwrap().to_vec()
            };
            let vector = run(Products::Vector);
            for isa in tile_isas() {
                assert_eq!(run(Products::Tiles(isa)) != vector, tiled, "{sq} query rows, groups of {group}, {isa:?}");
            }
        }
    }

    /// Q, K and V packed side by side in one `[B, S, 3C]` value (as the
    /// merge_qkv pass leaves a 3-D node) give the very result of the three
    /// apart, on the vector units and on tiles, with a cache and a mask.
    #[test]
    fn amx_packed_qkv_matches_the_three_apart() {
        let (b, s, h, d, past) = (2usize, 21usize, 3usize, 8usize, 4usize);
        let c = h * d;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (q, k, v) = (random(b * s * c, &mut rng), random(b * s * c, &mut rng), random(b * s * c, &mut rng));
        let packed: Vec<f32> = (0..b * s)
            .flat_map(|t| [&q, &k, &v].into_iter().flat_map(move |x| x[t * c..(t + 1) * c].to_vec()))
            .collect();
        let (pk, pv) = (random(b * h * past * d, &mut rng), random(b * h * past * d, &mut rng));
        let mask = random(s * (past + s), &mut rng);
        let node = |qkv: [&str; 3]| {
            Node::new("Attention", "a", &[qkv[0], qkv[1], qkv[2], "m", "pk", "pv"], &["y", "present_k", "present_v"])
                .with_attr("q_num_heads", Attr::Int(h as i64))
                .with_attr("kv_num_heads", Attr::Int(h as i64))
                .with_attr("is_causal", Attr::Int(1))
        };
        let rest = [
            Some(t_f32(&[s, past + s], &mask)),
            Some(t_f32(&[b, h, past, d], &pk)),
            Some(t_f32(&[b, h, past, d], &pv)),
        ];
        let apart = node(["q", "k", "v"]);
        let together = node(["qkv", "qkv", "qkv"]).with_attr(tessera_core::passes::merge_qkv::QKV_PACKED, Attr::Int(1));
        let mut ins_apart = vec![Some(t_f32(&[b, s, c], &q)), Some(t_f32(&[b, s, c], &k)), Some(t_f32(&[b, s, c], &v))];
        ins_apart.extend(rest.iter().cloned());
        let p = t_f32(&[b, s, 3 * c], &packed);
        let mut ins_together = vec![Some(p.clone()), Some(p.clone()), Some(p)];
        ins_together.extend(rest.iter().cloned());
        let mut products = vec![Products::Vector];
        products.extend(tile_isas().into_iter().map(Products::Tiles));
        for products in products {
            let run = |node: &Node, inputs: &[Option<Tensor>]| {
                let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
                op_with(node, products, [1, 1])
                    .unwrap()
                    .run(&refs, &mut crate::cpu::registry::RunCtx::default())
                    .unwrap()
            };
            let (want, got) = (run(&apart, &ins_apart), run(&together, &ins_together));
            assert_eq!(got.len(), 3);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.shape(), w.shape(), "{products:?}");
                assert_eq!(g.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap(), "{products:?}");
            }
        }
        // A packed width that is not three parts, and a packed 4-D input.
        let odd = t_f32(&[b, s, 3 * c + 1], &vec![0.0; b * s * (3 * c + 1)]);
        let err = run_node(&together, 23, &[Some(odd.clone()), Some(odd.clone()), Some(odd)]).unwrap_err();
        assert!(err.to_string().contains("3 parts"), "{err}");
        let four = t_f32(&[1, h, s, 3 * d], &vec![0.0; h * s * 3 * d]);
        let err = run_node(&together, 23, &[Some(four.clone()), Some(four.clone()), Some(four)]).unwrap_err();
        assert!(err.to_string().contains("packed"), "{err}");
    }

    /// A row whose every key is masked gives zeros, as the spec says, not
    /// the NaN a plain softmax would.
    #[test]
    fn attention_fully_masked_row_is_zero() {
        let node = Node::new("Attention", "a", &["q", "k", "v", "m"], &["y"]);
        let q = t_f32(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let k = t_f32(&[1, 1, 2, 2], &[1.0, 0.0, 0.0, 1.0]);
        let v = t_f32(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let m = Tensor::from_slice(&[2, 2], &[1u8, 1, 0, 0]).unwrap().with_dtype(DType::Bool).unwrap();
        let y = run_node(&node, 23, &[Some(q), Some(k), Some(v), Some(m)]).unwrap();
        let y = y[0].as_slice::<f32>().unwrap();
        assert_eq!(&y[2..], &[0.0, 0.0]);
        assert!(y[..2].iter().all(|v| v.is_finite() && *v > 1.0));
    }
}
