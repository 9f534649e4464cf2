//! Multi-head attention in one pass: `softmax(scale · Q Kᵀ + mask) V` per
//! head, reading Q, K and V in their `[B, S, H·d]` layout (the linear
//! layers' output) and writing `[B, S, H·d]`, so the head split and merge
//! transposes never touch memory. Scores exist only for one head and a
//! block of query rows at a time (about 32K values per task, at least 8
//! rows), never as a `[B, H, S, Sk]` tensor.

use rayon::prelude::*;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::elementwise::softmax_exp_in_place;
use crate::gemm::pack::{self, Split};
use crate::gemm::tile::{with_reused_bytes, Bytes};
use crate::gemm::ukernel::{amx::Prefetch, AccBlock, DotKind, TileIsa, TileSession, BLOCK_BYTES, MR, NR};
use crate::gemm::{sgemm, MatRef, Parallel};
use crate::SyncPtr;

/// Where the two products of each head (scores and the weighted sum) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    /// fp32 on the vector units (fp32-accurate).
    Vector,
    /// bf16 operands on the tile unit, fp32 accumulation (the bf16
    /// precision's error: about 3 significant digits per operand).
    Tiles(TileIsa),
}

/// Geometry: batch, query length, key/value length, heads, head size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// An additive mask broadcast over `[B, H, Sq, Sk]`: element strides per
/// axis, 0 where the mask repeats.
#[derive(Clone, Copy, Debug)]
pub struct MaskView<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 4],
}

/// Q, K or V: row `t` (a position of the flattened `[B, S]`) holds the
/// `H·d` values of all heads at `data[t * row_stride..]`. The stride is
/// `H·d` for a plain `[B, S, H·d]` tensor and larger when Q, K and V are
/// column ranges of one packed projection.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
}

impl Rows<'_> {
    /// Whether `rows` rows of `width` values fit the slice.
    fn holds(&self, rows: usize, width: usize) -> bool {
        rows == 0 || (self.row_stride >= width && (rows - 1) * self.row_stride + width <= self.data.len())
    }
}

/// `out[b, i, h·d..] = softmax_j(scale · q[b,i,h] · k[b,j,h] + mask[b,h,i,j]) · v[b,j,h]`.
/// Q must hold `B·Sq` rows and K, V `B·Sk` rows of `H·d` values; `out` is
/// `[B, Sq, H·d]`; the mask view must fit its data. Runs on the current
/// rayon pool, its products on the vector units.
pub fn attention(q: Rows, k: Rows, v: Rows, mask: Option<MaskView>, scale: f32, dims: AttentionDims, out: &mut [f32]) {
    attention_on(Products::Vector, q, k, v, mask, scale, dims, out)
}

/// [`attention`] with its products on `products`.
#[allow(clippy::too_many_arguments)]
pub fn attention_on(
    products: Products,
    q: Rows,
    k: Rows,
    v: Rows,
    mask: Option<MaskView>,
    scale: f32,
    dims: AttentionDims,
    out: &mut [f32],
) {
    let AttentionDims { batch, q_len, kv_len, heads, head_dim: d } = dims;
    let c = heads * d;
    assert!(q.holds(batch * q_len, c) && out.len() >= batch * q_len * c, "q/out too short");
    assert!(k.holds(batch * kv_len, c) && v.holds(batch * kv_len, c), "k/v too short");
    if batch == 0 || q_len == 0 || c == 0 {
        return;
    }
    if kv_len == 0 {
        // Nothing to attend to: the weighted sum over no values.
        out[..batch * q_len * c].fill(0.0);
        return;
    }
    // A task is one (batch, head, block of query rows): its K and V head
    // slices are packed once by the GEMMs and serve every row of the block.
    // Blocks are whole sequences unless the scores of a block would exceed
    // 32K values (long sequences; 8 rows at least) or the pool needs more
    // tasks.
    let threads = rayon::current_num_threads().max(1);
    let by_memory = (32768 / kv_len).max(8);
    let by_tasks = q_len.div_ceil((2 * threads).div_ceil(batch * heads));
    let rows = by_memory.min(by_tasks).clamp(1, q_len);
    let layout = HeadsLayout { batch, heads, len: q_len, dim: d, heads_inner: true };
    par_head_blocks(&mut out[..batch * q_len * c], layout, 1, rows, |blk| {
        let (b, h, r0, r) = (blk.batch(), blk.head(), blk.s0(), blk.rows());
        let (lq, lk, lv) = (q.row_stride, k.row_stride, v.row_stride);
        let qh =
            MatRef { data: &q.data[(b * q_len + r0) * lq + h * d..], rows: r, cols: d, row_stride: lq, col_stride: 1 };
        let kh = |j: usize| &k.data[(b * kv_len + j) * lk + h * d..][..d];
        let vh =
            MatRef { data: &v.data[b * kv_len * lv + h * d..], rows: kv_len, cols: d, row_stride: lv, col_stride: 1 };
        // The mask of this task's query rows (row i of the block, key j at
        // `i * row_stride + j * key_stride`).
        let block_mask = mask.map(|m| ScoreBias {
            data: &m.data[b * m.strides[0] + h * m.strides[1] + r0 * m.strides[2]..],
            row_stride: m.strides[2],
            key_stride: m.strides[3],
        });
        // Turns row i of the block's scores into unnormalized
        // probabilities (the mask added, then e^(s - max)); returns the
        // factor that normalizes them.
        let probabilities = |i: usize, row: &mut [f32]| -> f32 {
            if let Some(m) = block_mask {
                m.add_to_row(i, row);
            }
            softmax_exp_in_place(row)
        };
        // Writes `norm * vals` to row i of the block's output, from column
        // j0 of the head.
        let blk = std::cell::RefCell::new(blk);
        let out_row = |i: usize, j0: usize, norm: f32, vals: &[f32]| {
            let mut w = blk.borrow_mut();
            softmax_rows::scaled_into(norm, vals, &mut w.row(0, i)[j0..][..vals.len()]);
        };
        // The vector path keeps the block's scores and output rows; the
        // tiles keep one panel's scores.
        let scratch = match products {
            Products::Vector => r * kv_len + r * d,
            Products::Tiles(_) => MR.min(r) * kv_len,
        };
        with_scratch(scratch, |f32s| match products {
            Products::Vector => {
                let (scores, oh) = f32s.split_at_mut(r * kv_len);
                let kt = MatRef {
                    data: &k.data[b * kv_len * lk + h * d..],
                    rows: d,
                    cols: kv_len,
                    row_stride: 1,
                    col_stride: lk,
                };
                sgemm(qh, kt, scores, kv_len, scale, 0.0, Parallel::None);
                for (i, row) in scores.chunks_exact_mut(kv_len).enumerate() {
                    let inv = probabilities(i, row);
                    row.iter_mut().for_each(|p| *p *= inv);
                }
                sgemm(MatRef::row_major(scores, r, kv_len), vh, oh, d, 1.0, 0.0, Parallel::None);
                for (i, row) in oh.chunks_exact(d).enumerate() {
                    out_row(i, 0, 1.0, row);
                }
            }
            Products::Tiles(isa) => {
                let mut laps = Laps::start(STAGE_TIMING.load(Ordering::Relaxed));
                // The block's output rows into L2 before they are written
                // (short rows at a large stride, as in `prefetch_head`; a
                // read prefetch: the stores then find the lines at hand).
                if r * d * 4 <= PREFETCH_BUDGET {
                    let mut w = blk.borrow_mut();
                    for i in 0..r {
                        crate::prefetch_lines(w.row(0, i), usize::MAX, false);
                    }
                }
                laps.lap(Stage::OutputRows);
                let sess = TileSession::begin(isa, Prefetch::None);
                laps.lap(Stage::Session);
                let vrow = |kk: usize| &vh.data[kk * lv..][..d];
                let queries = [QueryBlock { q: qh, bias: block_mask }];
                let head = HeadBlock { queries: &queries, k: &kh, v: &vrow, kv_len, v_dim: d, scale };
                head.on_tiles(&sess, f32s, &|_, i, j0, norm, vals| out_row(i, j0, norm, vals), &mut laps);
                drop(sess);
                laps.lap(Stage::Session);
                laps.flush();
            }
        });
    });
}

/// Where the rows of an output of heads lie: row `s` of head `h` of batch
/// `b` holds `dim` values, in `[B, H, S, dim]` order, or with
/// `heads_inner` in `[B, S, H·dim]` order (heads side by side in each
/// position's row, as the 3-D attention layout has them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadsLayout {
    pub batch: usize,
    pub heads: usize,
    pub len: usize,
    pub dim: usize,
    pub heads_inner: bool,
}

impl HeadsLayout {
    /// Elements the layout spans (None on overflow).
    pub fn numel(&self) -> Option<usize> {
        self.batch.checked_mul(self.heads)?.checked_mul(self.len)?.checked_mul(self.dim)
    }

    fn row_at(&self, b: usize, h: usize, s: usize) -> usize {
        let (hh, ss, d) = (self.heads, self.len, self.dim);
        if self.heads_inner {
            ((b * ss + s) * hh + h) * d
        } else {
            ((b * hh + h) * ss + s) * d
        }
    }
}

/// The rows `s0..s0 + rows()` of heads `head()..head() + heads()` of one
/// batch in an output laid out by a [`HeadsLayout`]: a task of
/// [`par_head_blocks`] writes them, and only them.
pub struct HeadBlockRows<'o> {
    out: SyncPtr<f32>,
    layout: HeadsLayout,
    batch: usize,
    head: usize,
    heads: usize,
    s0: usize,
    rows: usize,
    _out: std::marker::PhantomData<&'o mut [f32]>,
}

impl HeadBlockRows<'_> {
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The first head of the block.
    pub fn head(&self) -> usize {
        self.head
    }

    /// Heads in the block.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The block's first row.
    pub fn s0(&self) -> usize {
        self.s0
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `i` of head `head() + r` of the block (`dim` values).
    pub fn row(&mut self, r: usize, i: usize) -> &mut [f32] {
        assert!(i < self.rows && r < self.heads, "row {i} of head {r} of a block of {} x {}", self.heads, self.rows);
        let at = self.layout.row_at(self.batch, self.head + r, self.s0 + i);
        // SAFETY: `par_head_blocks` made this writer (its fields are
        // private) for a block inside the layout and checked that `out`
        // holds the whole layout, so `at + dim` is in bounds; the layout
        // maps distinct (batch, head, row) to disjoint ranges of `dim`
        // values and a task alone owns all `heads` heads x `rows` rows of
        // its block; the
        // returned slice borrows this writer mutably, so no two slices of
        // it live at once; `out` stays mutably borrowed by
        // `par_head_blocks` until every task has returned, and the writer
        // cannot leave its task (it is lent, not given).
        unsafe { std::slice::from_raw_parts_mut(self.out.at(at), self.layout.dim) }
    }
}

/// Runs `f` once for every block of `block` rows (the last one shorter)
/// of every run of `heads` consecutive heads (a grouped-query group, or 1)
/// of every batch of `out`, laid out by `layout`, in parallel on the
/// current rayon pool; each call writes its own rows. Tasks are numbered in
/// (batch, head run, block) order. Panics if `out` is shorter than the
/// layout, `block` is 0, or `heads` does not divide the layout's heads.
pub fn par_head_blocks<'o>(
    out: &'o mut [f32],
    layout: HeadsLayout,
    heads: usize,
    block: usize,
    f: impl Fn(&mut HeadBlockRows<'o>) + Sync,
) {
    assert!(block > 0, "blocks of 0 rows");
    assert!(layout.numel().is_some_and(|n| n <= out.len()), "output shorter than its layout");
    if layout.dim == 0 || layout.len == 0 || layout.heads == 0 || layout.batch == 0 {
        return;
    }
    assert!(heads > 0 && layout.heads.is_multiple_of(heads), "{} heads in runs of {heads}", layout.heads);
    let (blocks, runs) = (layout.len.div_ceil(block), layout.heads / heads);
    let ptr = SyncPtr(out.as_mut_ptr());
    (0..layout.batch * runs * blocks).into_par_iter().for_each(|t| {
        let (bg, blk) = (t / blocks, t % blocks);
        let s0 = blk * block;
        let mut rows = HeadBlockRows {
            out: ptr,
            layout,
            batch: bg / runs,
            head: bg % runs * heads,
            heads,
            s0,
            rows: block.min(layout.len - s0),
            _out: std::marker::PhantomData,
        };
        f(&mut rows);
    });
}

thread_local! {
    /// A task's scores and output rows, reused so that a steady stream of
    /// heads allocates (and zeroes) nothing.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// A task's packed tile panels, reused likewise.
    static PANELS: Cell<Option<Bytes>> = const { Cell::new(None) };
}

/// Runs `f` with at least `len` f32 of this thread's scratch (contents
/// unspecified: every user writes before it reads).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|c| c.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|c| c.set(buf));
    r
}

/// `out_row(query, row, first column, factor, values)`: writes `factor *
/// values` into a row of one of a task's query blocks.
pub type OutRow<'o> = dyn Fn(usize, usize, usize, f32, &[f32]) + 'o;

/// A block of query rows of one head, `d` values each, and the additive
/// bias of their scores.
#[derive(Clone, Copy, Debug)]
pub struct QueryBlock<'a> {
    pub q: MatRef<'a, f32>,
    pub bias: Option<ScoreBias<'a>>,
}

/// Keys and values of one head and the query blocks that read them: one,
/// or the query heads of a grouped-query group, which then share one
/// packing of K and V. Row `j` of K is `k(j)` (`d` values, the queries'
/// width), row `j` of V is `v(j)` (`v_dim` values), for `j < kv_len`.
/// Callers with other layouts (heads as an axis, a key/value cache)
/// describe them through the two closures.
pub struct HeadBlock<'a, 'f> {
    pub queries: &'f [QueryBlock<'a>],
    pub k: &'f dyn Fn(usize) -> &'a [f32],
    pub v: &'f dyn Fn(usize) -> &'a [f32],
    pub kv_len: usize,
    pub v_dim: usize,
    pub scale: f32,
}

/// `softmax_j(scale · q_i · k_j + bias(i, j)) · V` for every row `i` of
/// every query block `b` of `head`, its two products on `isa`'s bf16 tiles
/// (fp32 accumulation), each output row written through `out_row(b, i,
/// first column, factor, values)` as `factor * values` (one call per 32
/// columns of V; one call of factor 0 per row when there are no keys,
/// `kv_len` 0, which makes every row zeros). Rows whose scores are all
/// -inf come out NaN, as a plain softmax gives them. Every query block
/// must have the same head size, at least 1 (panics otherwise). Runs on
/// the calling thread.
pub fn head_on_tiles(isa: TileIsa, head: &HeadBlock, out_row: &OutRow) {
    let d = head.queries.first().map_or(1, |b| b.q.cols);
    assert!(d > 0 && head.queries.iter().all(|b| b.q.cols == d), "query blocks of size 0 or of unequal sizes");
    if head.kv_len == 0 {
        let zeros = vec![0f32; head.v_dim];
        for (b, block) in head.queries.iter().enumerate() {
            (0..block.q.rows).for_each(|i| out_row(b, i, 0, 0.0, &zeros));
        }
        return;
    }
    let rows = head.queries.iter().map(|b| b.q.rows).max().unwrap_or(0);
    let mut laps = Laps::start(STAGE_TIMING.load(Ordering::Relaxed));
    let sess = TileSession::begin(isa, Prefetch::None);
    laps.lap(Stage::Session);
    with_scratch(MR.min(rows) * head.kv_len, |scores| head.on_tiles(&sess, scores, out_row, &mut laps));
    drop(sess);
    laps.lap(Stage::Session);
    laps.flush();
}

/// The stages of attention on tiles ([`head_on_tiles`], and
/// [`attention_on`] with tile products) that [`stage_ticks_since_last`]
/// counts.
#[derive(Clone, Copy)]
enum Stage {
    /// Packing K and V into B panels; also the head's operand prefetch
    /// ([`HeadBlock::prefetch_head`]) and taking the panel buffer (in
    /// [`head_on_tiles`], the score buffer too), which come before it.
    PackKv,
    /// Packing a panel of query rows into an A panel.
    PackQ,
    /// The score products (`Q Kᵀ`) on the tiles.
    ScoreProducts,
    /// Scores out of the accumulators: scale, mask, running maximum.
    ScoreRows,
    /// Exponentials and sums, rounded into the second product's A panel.
    Softmax,
    /// The weighted sums (`P V`) on the tiles.
    ValueProducts,
    /// Output rows through `out_row`; in [`attention_on`], also the
    /// block's output prefetch before the head starts.
    OutputRows,
    /// Beginning and ending the tile session.
    Session,
}

const STAGES: usize = 8;

/// Whether attention on tiles counts its stages (for `tessera bench
/// --profile`; off by default).
static STAGE_TIMING: AtomicBool = AtomicBool::new(false);

/// Time stamp counts per [`Stage`], summed over threads.
static STAGE_TICKS: [AtomicU64; STAGES] = [const { AtomicU64::new(0) }; STAGES];

/// Turns the tile attention's stage counts on or off and returns what they
/// summed since the last call, in time stamp counts over all threads (the
/// tile driver's units, [`crate::gemm::tick_count`]), in the order: packing
/// K and V, packing Q, score products, score rows, softmax, value
/// products, output rows, tile session.
pub fn stage_ticks_since_last(on: bool) -> [u64; STAGES] {
    STAGE_TIMING.store(on, Ordering::Relaxed);
    STAGE_TICKS.each_ref().map(|t| t.swap(0, Ordering::Relaxed))
}

/// One head's stage times, counted locally and added to [`STAGE_TICKS`]
/// once; stamps only when on.
struct Laps {
    on: bool,
    last: u64,
    ticks: [u64; STAGES],
}

impl Laps {
    fn start(on: bool) -> Laps {
        Laps { on, last: if on { crate::gemm::tick_count() } else { 0 }, ticks: [0; STAGES] }
    }

    /// Counts the time since the last stamp to `stage`.
    #[inline(always)]
    fn lap(&mut self, stage: Stage) {
        if self.on {
            let now = crate::gemm::tick_count();
            self.ticks[stage as usize] += now.saturating_sub(self.last);
            self.last = now;
        }
    }

    fn flush(&self) {
        if self.on {
            for (total, &t) in STAGE_TICKS.iter().zip(&self.ticks) {
                total.fetch_add(t, Ordering::Relaxed);
            }
        }
    }
}

/// Most bytes of a head's operands (or of a block's output rows) asked
/// into L2 ahead of use: BERT's heads (128 positions of 64 values: 96 KiB
/// of Q, K and V) whole, a long sequence's no more than a slice of L2.
const PREFETCH_BUDGET: usize = 256 << 10;

impl HeadBlock<'_, '_> {
    /// Asks for every row of K and V and of the query blocks into L2 before
    /// the head starts, when they fit [`PREFETCH_BUDGET`]. The rows are
    /// short runs at a large stride (a head's 64 columns of a `[B, S, 3·H·d]`
    /// projection output), which the hardware prefetchers do not follow, so
    /// without this each packer waits on a few lines at a time. On the lent
    /// Xeon it halved the packing of Q and cut attention by 10-25% at batch 8
    /// (`benches/results/2026-12-02-phases/emr16_prefetch_ab.txt`).
    fn prefetch_head(&self) {
        let d = self.queries.first().map_or(0, |b| b.q.cols);
        let q_rows: usize = self.queries.iter().map(|b| b.q.rows).sum();
        let bytes = 4 * (self.kv_len * (d + self.v_dim) + q_rows * d);
        if bytes > PREFETCH_BUDGET {
            return;
        }
        for j in 0..self.kv_len {
            crate::prefetch_lines((self.k)(j), d * 4, false);
            crate::prefetch_lines(&(self.v)(j)[..self.v_dim], self.v_dim * 4, false);
        }
        for qb in self.queries.iter().filter(|qb| qb.q.col_stride == 1) {
            for i in 0..qb.q.rows {
                let at = i * qb.q.row_stride;
                if let Some(row) = qb.q.data.get(at..at + d) {
                    crate::prefetch_lines(row, d * 4, false);
                }
            }
        }
    }

    /// The head on bf16 tiles, one panel of 32 query rows at a time so
    /// that its scores (32 rows) stay in L1: `scale · Q Kᵀ` (Kᵀ packed
    /// straight from K's rows) with the mask added and each row's maximum
    /// gathered as the scores leave the accumulators, each row's
    /// unnormalized softmax rounded to bf16 straight into the A panel of
    /// the second product, and `P · V` (V packed from its rows) scaled by
    /// each row's normalizing factor as it is written out by
    /// `out_row(query block, row, first column, factor, values)`; K and V
    /// are packed once for all the query blocks. `scores` holds at least
    /// `min(32, rows)` rows of `kv_len` for the longest block.
    fn on_tiles(&self, sess: &TileSession, scores: &mut [f32], out_row: &OutRow, laps: &mut Laps) {
        let Some(first) = self.queries.first() else { return };
        let (d, dv, kv_len) = (first.q.cols, self.v_dim, self.kv_len);
        let (kb_d, kb_kv) = (pack::k_blocks(DotKind::Bf16, d), pack::k_blocks(DotKind::Bf16, kv_len));
        let (len_d, len_kv) = (kb_d * BLOCK_BYTES, kb_kv * BLOCK_BYTES);
        let (np_kv, np_d) = (kv_len.div_ceil(NR), dv.div_ceil(NR));
        let sizes = [len_d, np_kv * len_d, len_kv, np_d * len_kv];
        with_reused_bytes(&PANELS, sizes.iter().sum(), |panels| {
            self.prefetch_head();
            let (qp, rest) = panels.split_at_mut(sizes[0]);
            let (kp, rest) = rest.split_at_mut(sizes[1]);
            let (pp, vp) = rest.split_at_mut(sizes[2]);
            for (p, dst) in kp.chunks_exact_mut(len_d).enumerate() {
                pack::pack_b_bf16_from_columns(dst, NR.min(kv_len - p * NR), d, |j| (self.k)(p * NR + j));
            }
            for (p, dst) in vp.chunks_exact_mut(len_kv).enumerate() {
                let j0 = p * NR;
                pack::pack_b_bf16_from_rows(dst, NR.min(dv - j0), kv_len, |kk| &(self.v)(kk)[j0..]);
            }
            laps.lap(Stage::PackKv);
            let mut acc = AccBlock::new();
            let panels = self
                .queries
                .iter()
                .enumerate()
                .flat_map(|(b, qb)| (0..qb.q.rows.div_ceil(MR)).map(move |pm| (b, qb, pm)));
            for (qi, qb, pm) in panels {
                let (r, mask) = (qb.q.rows, qb.bias);
                let (i0, rows) = (pm * MR, MR.min(r - pm * MR));
                pack::pack_a_f32(qp, qb.q.rows_range(i0, rows), Split::Bf16);
                laps.lap(Stage::PackQ);
                let scores = &mut scores[..rows * kv_len];
                let mut lane_max = [[f32::NEG_INFINITY; 16]; MR];
                for pn in 0..np_kv {
                    let (j0, cols) = (pn * NR, NR.min(kv_len - pn * NR));
                    sess.run(DotKind::Bf16, qp, &kp[pn * len_d..][..len_d], kb_d, &mut acc, false);
                    laps.lap(Stage::ScoreProducts);
                    let block = ScoreBlock { rows, cols, i0, j0, kv_len, scale: self.scale, mask };
                    softmax_rows::scores_from_block(acc.as_f32(), block, scores, &mut lane_max);
                    laps.lap(Stage::ScoreRows);
                }
                let mut norm = [0f32; MR];
                for (i, row) in scores.chunks_exact_mut(kv_len).enumerate() {
                    norm[i] = softmax_rows::probabilities_into_panel(row, &lane_max[i], pp, kb_kv, i);
                }
                for i in rows..MR {
                    pack::pack_a_row_bf16(pp, kb_kv, i, &[]);
                }
                laps.lap(Stage::Softmax);
                for pn in 0..np_d {
                    let (j0, cols) = (pn * NR, NR.min(dv - pn * NR));
                    sess.run(DotKind::Bf16, pp, &vp[pn * len_kv..][..len_kv], kb_kv, &mut acc, false);
                    laps.lap(Stage::ValueProducts);
                    for (i, src) in acc.as_f32().chunks_exact(NR).take(rows).enumerate() {
                        out_row(qi, i0 + i, j0, norm[i], &src[..cols]);
                    }
                    laps.lap(Stage::OutputRows);
                }
            }
        })
    }
}

/// The additive bias of a block of query rows' scores: row `i` of the
/// block, key `j` at `data[i * row_stride + j * key_stride]` (a stride is 0
/// where the bias repeats).
#[derive(Clone, Copy, Debug)]
pub struct ScoreBias<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub key_stride: usize,
}

impl ScoreBias<'_> {
    /// `row[j] += mask(i, j)` for every key of row `i` (the vector path's
    /// whole rows).
    fn add_to_row(&self, i: usize, row: &mut [f32]) {
        let (base, len) = (i * self.row_stride, row.len());
        if self.key_stride == 1 {
            row.iter_mut().zip(&self.data[base..base + len]).for_each(|(s, &a)| *s += a);
        } else {
            row.iter_mut().enumerate().for_each(|(j, s)| *s += self.data[base + j * self.key_stride]);
        }
    }

    /// Keys `j0..j0 + cols` of row `i`, contiguous: a slice of the mask, or
    /// gathered into `buf` when the keys are strided.
    fn keys<'s>(&'s self, i: usize, j0: usize, cols: usize, buf: &'s mut [f32; NR]) -> &'s [f32] {
        let base = i * self.row_stride;
        if self.key_stride == 1 {
            &self.data[base + j0..][..cols]
        } else {
            for (j, v) in buf[..cols].iter_mut().enumerate() {
                *v = self.data[base + (j0 + j) * self.key_stride];
            }
            &buf[..cols]
        }
    }
}

/// Where one 32x32 accumulator block of scores goes: its `rows` x `cols`
/// values are rows `0..rows` of the panel's scores (rows `kv_len` long),
/// columns `j0..`, scaled by `scale`, plus the mask of the task's query
/// rows `i0..` (the panel's first row within the task's block).
#[derive(Clone, Copy, Debug)]
struct ScoreBlock<'a> {
    rows: usize,
    cols: usize,
    i0: usize,
    j0: usize,
    kv_len: usize,
    scale: f32,
    mask: Option<ScoreBias<'a>>,
}

/// The row work between attention's two tile products. Attention rows are
/// short (a sequence's keys), so passes over a row and their horizontal
/// reductions cost as much as the exponentials: with AVX-512 the scale,
/// the mask and each row's running maximum are applied as the scores
/// leave the accumulators, and the exponentials go straight to the bf16
/// panel. The portable path does the same steps one pass at a time; on one
/// CPU both give the same bits
/// (`amx_machine_fused_softmax_rows_match_the_portable_passes`; a CPU
/// without AVX-512 runs the portable path, whose reductions add in
/// another order).
mod softmax_rows {
    use super::ScoreBlock;
    use crate::elementwise::softmax_exp_in_place;
    use crate::gemm::pack;
    use crate::gemm::ukernel::{MR, NR};

    /// Writes a block of scores (`scale · acc`, plus the mask) into
    /// `scores` (rows of `kv_len`) and folds each row's values into its
    /// 16-lane running maximum (lane `j % 16`; NaN skipped, as in
    /// [`softmax_exp_in_place`]).
    pub(super) fn scores_from_block(
        acc: &[f32; MR * NR],
        blk: ScoreBlock,
        scores: &mut [f32],
        lane_max: &mut [[f32; 16]; MR],
    ) {
        assert!(blk.rows <= MR && blk.cols <= NR && blk.j0 + blk.cols <= blk.kv_len);
        assert!(scores.len() >= blk.rows * blk.kv_len);
        #[cfg(target_arch = "x86_64")]
        if avx512::usable() {
            // SAFETY: the CPU has the features the function enables
            // (checked by `usable`).
            unsafe { avx512::scores_from_block(acc, blk, scores, lane_max) };
            return;
        }
        portable_scores_from_block(acc, blk, scores, lane_max)
    }

    fn portable_scores_from_block(
        acc: &[f32; MR * NR],
        blk: ScoreBlock,
        scores: &mut [f32],
        lane_max: &mut [[f32; 16]; MR],
    ) {
        let mut buf = [0f32; NR];
        for (i, src) in acc.chunks_exact(NR).take(blk.rows).enumerate() {
            let dst = &mut scores[i * blk.kv_len + blk.j0..][..blk.cols];
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = blk.scale * s);
            if let Some(m) = blk.mask {
                dst.iter_mut().zip(m.keys(blk.i0 + i, blk.j0, blk.cols, &mut buf)).for_each(|(s, &a)| *s += a);
            }
            for (j, &v) in dst.iter().enumerate() {
                // `v > max` is false for NaN: skipped.
                let m = &mut lane_max[i][(blk.j0 + j) % 16];
                if v > *m {
                    *m = v;
                }
            }
        }
    }

    /// Turns `row` (its scores, `lane_max` their running maximum) into
    /// `e^(s - max)` rounded to bf16 in row `i` of the A panel `panel` of
    /// `kb` k-blocks (zero past the row's end); returns `1 / sum` of the
    /// fp32 exponentials. `row` may be overwritten.
    pub(super) fn probabilities_into_panel(
        row: &mut [f32],
        lane_max: &[f32; 16],
        panel: &mut [u8],
        kb: usize,
        i: usize,
    ) -> f32 {
        assert!(i < MR && row.len() <= 32 * kb && panel.len() >= kb * crate::gemm::ukernel::BLOCK_BYTES);
        #[cfg(target_arch = "x86_64")]
        if avx512::usable() {
            // SAFETY: the CPU has the features the function enables
            // (checked by `usable`).
            return unsafe { avx512::probabilities_into_panel(row, lane_max, panel, kb, i) };
        }
        // The maximum is taken again from the row (the same value).
        let _ = lane_max;
        let inv = softmax_exp_in_place(row);
        pack::pack_a_row_bf16(panel, kb, i, row);
        inv
    }

    /// `dst = factor * src` (an output row of the weighted sum).
    pub(super) fn scaled_into(factor: f32, src: &[f32], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "x86_64")]
        if avx512::usable() {
            // SAFETY: the CPU has the features the function enables
            // (checked by `usable`).
            unsafe { avx512::scaled_into(factor, src, dst) };
            return;
        }
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = factor * s);
    }

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use super::super::ScoreBlock;
        use crate::elementwise::wide_exp::exp_nonpositive_x16;
        use crate::gemm::pack::avx512::put_a_row_bf16x32;
        use crate::gemm::ukernel::{MR, NR};
        use std::arch::x86_64::*;

        pub(super) fn usable() -> bool {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("fma")
        }

        /// Lane masks for the first `n` (at most 32) of two 16-lane halves.
        fn halves(n: usize) -> (__mmask16, __mmask16) {
            let lanes = |c: usize| ((1u32 << c) - 1) as __mmask16;
            (lanes(n.min(16)), lanes(n.saturating_sub(16)))
        }

        #[target_feature(enable = "avx512f")]
        pub(super) fn scaled_into(factor: f32, src: &[f32], dst: &mut [f32]) {
            // The masks below come from `src`'s length and cover `dst` too.
            assert_eq!(src.len(), dst.len(), "source and destination lengths differ");
            let f = _mm512_set1_ps(factor);
            for at in (0..src.len()).step_by(16) {
                let mask = ((1u32 << (src.len() - at).min(16)) - 1) as __mmask16;
                // SAFETY: the mask selects the values of `src` and `dst`
                // from `at` (equal lengths, asserted above); masked-off lanes
                // never fault.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(at));
                    _mm512_mask_storeu_ps(dst.as_mut_ptr().add(at), mask, _mm512_mul_ps(f, v));
                }
            }
        }

        #[target_feature(enable = "avx512f")]
        pub(super) fn scores_from_block(
            acc: &[f32; MR * NR],
            blk: ScoreBlock,
            scores: &mut [f32],
            lane_max: &mut [[f32; 16]; MR],
        ) {
            let (k0, k1) = halves(blk.cols);
            let scale = _mm512_set1_ps(blk.scale);
            let mut buf = [0f32; NR];
            for (i, (src, max)) in acc.chunks_exact(NR).zip(lane_max.iter_mut()).take(blk.rows).enumerate() {
                // SAFETY: `src` is one row of 32 values; `max` is 16 values.
                let (mut v0, mut v1, m) = unsafe {
                    (
                        _mm512_mul_ps(scale, _mm512_loadu_ps(src.as_ptr())),
                        _mm512_mul_ps(scale, _mm512_loadu_ps(src.as_ptr().add(16))),
                        _mm512_loadu_ps(max.as_ptr()),
                    )
                };
                if let Some(mask) = blk.mask {
                    let keys = mask.keys(blk.i0 + i, blk.j0, blk.cols, &mut buf);
                    // SAFETY: the lane masks select the `cols` values of
                    // `keys`; masked-off lanes never fault.
                    unsafe {
                        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, keys.as_ptr()));
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, keys.as_ptr().wrapping_add(16)));
                    }
                }
                let dst = &mut scores[i * blk.kv_len + blk.j0..][..blk.cols];
                // As in `softmax_exp`: a NaN in the first operand yields
                // the second, so NaNs are skipped; lanes past `cols` keep
                // their maximum.
                let m = _mm512_mask_max_ps(m, k0, v0, m);
                let m = _mm512_mask_max_ps(m, k1, v1, m);
                // SAFETY: the lane masks select the `cols` values of `dst`;
                // `max` is 16 values.
                unsafe {
                    _mm512_mask_storeu_ps(dst.as_mut_ptr(), k0, v0);
                    _mm512_mask_storeu_ps(dst.as_mut_ptr().wrapping_add(16), k1, v1);
                    _mm512_storeu_ps(max.as_mut_ptr(), m);
                }
            }
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512bf16,fma")]
        pub(super) fn probabilities_into_panel(
            row: &[f32],
            lane_max: &[f32; 16],
            panel: &mut [u8],
            kb: usize,
            i: usize,
        ) -> f32 {
            // SAFETY: `lane_max` is 16 values.
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(unsafe { _mm512_loadu_ps(lane_max.as_ptr()) }));
            let mut sum = _mm512_setzero_ps();
            for b in 0..kb {
                let at = 32 * b;
                let (k0, k1) = halves(row.len().saturating_sub(at).min(32));
                let p = row.as_ptr().wrapping_add(at);
                // SAFETY: the lane masks select the values of `row` from
                // `at` (at most 32); masked-off lanes never fault.
                let (x0, x1) = unsafe { (_mm512_maskz_loadu_ps(k0, p), _mm512_maskz_loadu_ps(k1, p.wrapping_add(16))) };
                let e0 = _mm512_maskz_mov_ps(k0, exp_nonpositive_x16(_mm512_sub_ps(x0, max)));
                let e1 = _mm512_maskz_mov_ps(k1, exp_nonpositive_x16(_mm512_sub_ps(x1, max)));
                // In the order `softmax_exp` adds them: the same sum.
                sum = _mm512_add_ps(_mm512_add_ps(sum, e0), e1);
                put_a_row_bf16x32(panel, b, i, e0, e1);
            }
            1.0 / _mm512_reduce_add_ps(sum)
        }
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    mod tests {
        use super::super::{ScoreBias, ScoreBlock};
        use super::*;
        use crate::gemm::ukernel::BLOCK_BYTES;
        use crate::gemm::vector::tests::rand_f32 as rnd;

        /// The fused rows against the portable passes, bit for bit: ragged
        /// blocks, contiguous, strided and absent masks, -inf and NaN. Named
        /// for scripts/test's AMX check: every AMX machine has AVX-512 BF16,
        /// so there it must run (`TESSERA_REQUIRE_AMX=1`); elsewhere it says
        /// that it did not.
        #[test]
        fn amx_machine_fused_softmax_rows_match_the_portable_passes() {
            if !crate::vector_test_runs(avx512::usable(), "AVX-512 BF16", "fused softmax rows") {
                return;
            }
            let shapes =
                [(32usize, 128usize), (32, 100), (7, 33), (1, 1), (19, 64), (32, 31), (32, 48), (5, 45), (3, 62)];
            for (case, &(rows, kv_len)) in shapes.iter().enumerate() {
                let kb = kv_len.div_ceil(32);
                let mut mask_data = rnd(4 * 64 * kv_len, 90 + case as u64);
                mask_data.iter_mut().step_by(7).for_each(|v| *v = -1e4);
                mask_data[3] = f32::NEG_INFINITY;
                // Row i0 + 1 = 3 of the row-major mask: every key masked.
                mask_data[3 * kv_len..4 * kv_len].fill(f32::NEG_INFINITY);
                let masks = [
                    None,
                    Some(ScoreBias { data: &mask_data, row_stride: 0, key_stride: 1 }),
                    Some(ScoreBias { data: &mask_data, row_stride: kv_len, key_stride: 1 }),
                    Some(ScoreBias { data: &mask_data, row_stride: 1, key_stride: 3 }),
                    Some(ScoreBias { data: &mask_data, row_stride: 5, key_stride: 0 }),
                ];
                for (mi, mask) in masks.into_iter().enumerate() {
                    let scale = 0.125 + case as f32;
                    let (mut fused, mut plain) = (vec![0f32; rows * kv_len], vec![0f32; rows * kv_len]);
                    let (mut max_f, mut max_p) = ([[f32::NEG_INFINITY; 16]; MR], [[f32::NEG_INFINITY; 16]; MR]);
                    for pn in 0..kv_len.div_ceil(NR) {
                        let mut acc = [0f32; MR * NR];
                        acc.copy_from_slice(&rnd(MR * NR, (case * 100 + mi * 10 + pn) as u64));
                        acc[5] = f32::NAN;
                        let blk = ScoreBlock {
                            rows,
                            cols: NR.min(kv_len - pn * NR),
                            i0: 2,
                            j0: pn * NR,
                            kv_len,
                            scale,
                            mask,
                        };
                        // SAFETY: AVX-512 with bf16 checked above.
                        unsafe { avx512::scores_from_block(&acc, blk, &mut fused, &mut max_f) };
                        portable_scores_from_block(&acc, blk, &mut plain, &mut max_p);
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fused), bits(&plain), "case {case} mask {mi}: scores");
                    assert_eq!(bits(max_f.as_flattened()), bits(max_p.as_flattened()), "case {case} mask {mi}: maxima");
                    let (mut panel_f, mut panel_p) = (vec![7u8; kb * BLOCK_BYTES], vec![7u8; kb * BLOCK_BYTES]);
                    for i in 0..rows {
                        let row = &mut fused[i * kv_len..][..kv_len];
                        // SAFETY: AVX-512 with bf16 checked above.
                        let inv_f =
                            unsafe { avx512::probabilities_into_panel(row, &max_f[i], &mut panel_f, kb, i % MR) };
                        let row = &mut plain[i * kv_len..][..kv_len];
                        let inv_p = softmax_exp_in_place(row);
                        pack::pack_a_row_bf16(&mut panel_p, kb, i % MR, row);
                        assert_eq!(inv_f.to_bits(), inv_p.to_bits(), "case {case} mask {mi} row {i}: 1/sum");
                    }
                    assert_eq!(panel_f, panel_p, "case {case} mask {mi}: probabilities");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::vector::tests::rand_f32 as rnd;
    use proptest::prelude::*;

    fn reference(q: &[f32], k: &[f32], v: &[f32], mask: Option<MaskView>, scale: f32, dm: AttentionDims) -> Vec<f32> {
        let AttentionDims { batch, q_len, kv_len, heads, head_dim: d } = dm;
        let c = heads * d;
        let mut out = vec![0f32; batch * q_len * c];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..q_len {
                    let mut s: Vec<f64> = (0..kv_len)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|t| {
                                    q[(b * q_len + i) * c + h * d + t] as f64
                                        * k[(b * kv_len + j) * c + h * d + t] as f64
                                })
                                .sum();
                            let m = mask.map_or(0.0, |m| {
                                m.data[b * m.strides[0] + h * m.strides[1] + i * m.strides[2] + j * m.strides[3]] as f64
                            });
                            dot * scale as f64 + m
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                    s.iter_mut().for_each(|x| *x = (*x - mx).exp());
                    let sum: f64 = s.iter().sum();
                    for t in 0..d {
                        let acc: f64 =
                            (0..kv_len).map(|j| s[j] / sum * v[(b * kv_len + j) * c + h * d + t] as f64).sum();
                        out[(b * q_len + i) * c + h * d + t] = acc as f32;
                    }
                }
            }
        }
        out
    }

    /// Random Q, K and V for `dm`, and a padding mask over every fifth key.
    struct Inputs {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        pad: Vec<f32>,
    }

    fn inputs(dm: AttentionDims, seed: u64) -> Inputs {
        let c = dm.heads * dm.head_dim;
        Inputs {
            q: rnd(dm.batch * dm.q_len * c, seed),
            k: rnd(dm.batch * dm.kv_len * c, seed + 1),
            v: rnd(dm.batch * dm.kv_len * c, seed + 2),
            pad: (0..dm.batch * dm.kv_len).map(|i| if i % 5 == 4 { -1e4 } else { 0.0 }).collect(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn matches_the_reference_on_ragged_shapes(
            batch in 1usize..3, q_len in 1usize..70, kv_len in 0usize..40, heads in 1usize..4, d in 1usize..20,
            mask_kind in 0usize..3, seed in 0u64..500,
        ) {
            let dm = AttentionDims { batch, q_len, kv_len, heads, head_dim: d };
            let c = heads * d;
            let Inputs { q, k, v, pad } = inputs(dm, seed);
            // A padding mask [B, 1, 1, Sk] or a full [B, H, Sq, Sk] one.
            let full = rnd(batch * heads * q_len * kv_len, seed + 3);
            let mask = match mask_kind {
                1 => Some(MaskView { data: &pad, strides: [kv_len, 0, 0, 1] }),
                2 => Some(MaskView { data: &full, strides: [heads * q_len * kv_len, q_len * kv_len, kv_len, 1] }),
                _ => None,
            };
            let scale = 1.0 / (d as f32).sqrt();
            let want = reference(&q, &k, &v, mask, scale, dm);
            let rows = |data| Rows { data, row_stride: c };
            let mut got = vec![f32::NAN; want.len()];
            attention(rows(&q[..]), rows(&k[..]), rows(&v[..]), mask, scale, dm, &mut got);
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
            // The same through one packed [B, S, 3C] projection (Q, K and V
            // as column ranges), where the sequence lengths allow it.
            if q_len == kv_len {
                let packed: Vec<f32> = (0..batch * q_len)
                    .flat_map(|t| [&q, &k, &v].into_iter().flat_map(move |x| x[t * c..(t + 1) * c].to_vec()))
                    .collect();
                let at = |o: usize| Rows { data: &packed[o..], row_stride: 3 * c };
                let mut got = vec![f32::NAN; want.len()];
                attention(at(0), at(c), at(2 * c), mask, scale, dm, &mut got);
                for (a, b) in got.iter().zip(&want) {
                    prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "packed: {} vs {}", a, b);
                }
            }
        }
    }

    /// Every row of every head of both layouts is handed to exactly one
    /// task, at its place: ragged last blocks, one block, one row each.
    #[test]
    fn head_blocks_cover_each_row_once_in_place() {
        for heads_inner in [false, true] {
            let shapes =
                [(2, 3, 7, 5, 3, 1), (1, 2, 4, 1, 9, 2), (3, 1, 5, 2, 1, 1), (2, 2, 0, 3, 2, 1), (2, 6, 5, 3, 2, 3)];
            for (batch, heads, len, dim, block, run) in shapes {
                let layout = HeadsLayout { batch, heads, len, dim, heads_inner };
                let mut out = vec![0f32; layout.numel().unwrap() + 3];
                let calls = std::sync::atomic::AtomicUsize::new(0);
                par_head_blocks(&mut out, layout, run, block, |blk| {
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    assert!(blk.rows() >= 1 && blk.rows() <= block && blk.s0() % block == 0);
                    assert!(blk.heads() == run && blk.head() % run == 0);
                    for r in 0..blk.heads() {
                        for i in 0..blk.rows() {
                            let tag = ((blk.batch() * heads + blk.head() + r) * len + blk.s0() + i) as f32;
                            blk.row(r, i).iter_mut().enumerate().for_each(|(x, v)| *v += tag * 10.0 + x as f32 + 1.0);
                        }
                    }
                });
                assert_eq!(calls.into_inner(), batch * heads / run * len.div_ceil(block));
                let mut want = vec![0f32; out.len()];
                for (b, h, s_, x) in (0..batch).flat_map(|b| {
                    (0..heads).flat_map(move |h| (0..len).flat_map(move |s_| (0..dim).map(move |x| (b, h, s_, x))))
                }) {
                    let at = if heads_inner {
                        ((b * len + s_) * heads + h) * dim
                    } else {
                        ((b * heads + h) * len + s_) * dim
                    };
                    want[at + x] = ((b * heads + h) * len + s_) as f32 * 10.0 + x as f32 + 1.0;
                }
                assert_eq!(out, want, "{layout:?} in blocks of {block} rows, {run} heads");
            }
        }
    }

    /// The ISAs a tile test runs: the emulation always, and AMX and the
    /// AVX-512 dot products where the machine has them (see
    /// `isas_under_test`).
    fn tile_isas() -> Vec<TileIsa> {
        crate::gemm::ukernel::isas_under_test()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Named for scripts/test's AMX check. bf16 operands: scores are
        /// off by up to about scale·d·2⁻⁸ and probabilities by 2⁻⁸
        /// relative, so the output is held to 3% of max |v|; a misplaced
        /// element would be off by the order of |v| itself. Masks: none,
        /// padding `[B,1,1,Sk]`, full `[B,H,Sq,Sk]`, one `[Sq,Sk]` for all
        /// (as causal masks come), stored transposed (keys strided), and
        /// one value per query row (keys broadcast).
        #[test]
        fn amx_tile_attention_matches_the_reference(
            batch in 1usize..3, q_len in 1usize..70, kv_len in 1usize..80, heads in 1usize..4, d in 1usize..70,
            mask_kind in 0usize..6, seed in 0u64..500,
        ) {
            let dm = AttentionDims { batch, q_len, kv_len, heads, head_dim: d };
            let c = heads * d;
            let Inputs { q, k, v, pad } = inputs(dm, seed);
            let (sq, sk) = (q_len, kv_len);
            let (len, strides) = match mask_kind {
                2 => (batch * heads * sq * sk, [heads * sq * sk, sq * sk, sk, 1]),
                3 => (sq * sk, [0, 0, sk, 1]),
                4 => (sq * sk, [0, 0, 1, sq]),
                5 => (batch * sq, [sq, 0, 1, 0]),
                _ => (0, [kv_len, 0, 0, 1]),
            };
            let varied: Vec<f32> = (0..len)
                .map(|i| if (i as u64 * 7 + seed) % 5 == 4 { -1e4 } else { ((i * 37 % 101) as f32 - 50.0) * 0.02 })
                .collect();
            let mask = match mask_kind {
                0 => None,
                1 => Some(MaskView { data: &pad, strides }),
                _ => Some(MaskView { data: &varied, strides }),
            };
            let scale = 1.0 / (d as f32).sqrt();
            let want = reference(&q, &k, &v, mask, scale, dm);
            let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let rows = |data| Rows { data, row_stride: c };
            for isa in tile_isas() {
                let mut got = vec![f32::NAN; want.len()];
                attention_on(Products::Tiles(isa), rows(&q[..]), rows(&k[..]), rows(&v[..]), mask, scale, dm, &mut got);
                for (a, b) in got.iter().zip(&want) {
                    prop_assert!((a - b).abs() <= 0.03 * vmax, "{:?}: {} vs {}", isa, a, b);
                }
            }
        }
    }
}
