//! The tile GEMM driver: weights packed once ([`PackedB`]), activations
//! packed per call, a parallel loop over 32x32 output blocks, and an
//! epilogue program applied to each block while it is in L1.
//!
//! Loop structure (BLIS-style, with K kept whole per block because a
//! 32-wide panel of K <= 4096 bf16 values fits in L2): tasks own one
//! 32-column B panel and a run of 32-row A panels; inside a task the B panel
//! stays hot while the A panels stream.

use aligned_vec::{AVec, ConstAlign};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::epilogue::{Epilogue, I8Correction, Residual};
use super::pack::{self, Split};
pub use super::ukernel::amx::Prefetch;
use super::ukernel::{AccBlock, DotKind, TileIsa, TileSession, BLOCK_BYTES, MR, NR};
use super::MatRef;
use crate::weight_mem::WeightBuf;

pub(crate) type Bytes = AVec<u8, ConstAlign<64>>;

pub(crate) fn zeroed(len: usize) -> Bytes {
    aligned_bytes(len, 0)
}

/// `len` bytes of `value`, 64-byte aligned (the packed panels' alignment).
pub fn aligned_bytes(len: usize, value: u8) -> AVec<u8, ConstAlign<64>> {
    AVec::from_iter(64, std::iter::repeat_n(value, len))
}

thread_local! {
    /// The packed-A buffer of the last call on this thread, reused so that
    /// a steady stream of GEMMs allocates nothing.
    static A_BUFFER: std::cell::Cell<Option<Bytes>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with a 64-byte aligned buffer of at least `len` bytes
/// (contents unspecified: packing writes every byte it covers).
fn with_a_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    with_reused_bytes(&A_BUFFER, len, f)
}

/// Runs `f` with at least `len` bytes of `slot`, a thread's reusable
/// 64-byte aligned buffer (grown when too short; contents unspecified).
pub(crate) fn with_reused_bytes<R>(
    slot: &'static std::thread::LocalKey<std::cell::Cell<Option<Bytes>>>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    let mut buf = slot.with(|c| c.take()).filter(|b| b.len() >= len).unwrap_or_else(|| zeroed(len));
    let r = f(&mut buf[..len]);
    slot.with(|c| c.set(Some(buf)));
    r
}

/// A weight matrix `B` (`k x n`) in a tile kernel's native layout, packed
/// once when a session is created and owned by the provider that runs it.
pub struct PackedB {
    kind: DotKind,
    split: Option<Split>,
    k: usize,
    n: usize,
    /// k-blocks per panel, all parts included.
    kblocks: usize,
    data: WeightBuf,
    /// int8: sum over K of each column (as the dot product reads it) and the
    /// zero point of each column (one value = per tensor).
    col_sums: Vec<i32>,
    zero: Vec<i32>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({:?}, {:?}, {}x{}, {} bytes)", self.kind, self.split, self.k, self.n, self.data.len())
    }
}

impl PackedB {
    /// Packs an fp32 `B` for bf16 tiles with the given split.
    pub fn from_f32(b: MatRef<f32>, split: Split) -> PackedB {
        let (k, n) = (b.rows, b.cols);
        let kblocks = pack::k_blocks(DotKind::Bf16, k) * split.parts();
        let panel = kblocks * BLOCK_BYTES;
        let mut data = WeightBuf::zeroed(panel * n.div_ceil(NR));
        b.check();
        data.par_chunks_mut(panel.max(1)).enumerate().for_each(|(p, dst)| {
            let (j0, cols) = (p * NR, NR.min(n - p * NR));
            // Plain bf16 from rows or columns in memory: the vector packers
            // (the same bytes; every weight passes here at session creation).
            if split == Split::Bf16 && b.col_stride == 1 {
                pack::pack_b_bf16_from_rows(dst, cols, k, |kk| &b.data[kk * b.row_stride + j0..][..cols]);
            } else if split == Split::Bf16 && b.row_stride == 1 {
                pack::pack_b_bf16_from_columns(dst, cols, k, |j| &b.data[(j0 + j) * b.col_stride..][..k]);
            } else if b.col_stride == 1 {
                pack::pack_b_f32_rows(dst, b, j0, cols, split);
            } else {
                pack::pack_b_f32(dst, cols, k, split, |kk, j| b.data[kk * b.row_stride + (j0 + j) * b.col_stride]);
            }
        });
        PackedB { kind: DotKind::Bf16, split: Some(split), k, n, kblocks, data, col_sums: vec![], zero: vec![] }
    }

    /// Packs an 8-bit `B` (`bytes[kk * n + j]`, row-major `k x n`), signed or
    /// not, with a zero point per tensor (`zero.len() == 1`) or per column.
    pub fn from_i8(bytes: &[u8], k: usize, n: usize, signed: bool, zero: &[i32]) -> PackedB {
        assert_eq!(bytes.len(), k * n, "B has {} bytes, want {k}x{n}", bytes.len());
        assert!(zero.len() == 1 || zero.len() == n, "zero point must be per tensor or per column");
        let kind = DotKind::I8 { a_signed: false, b_signed: signed };
        let kblocks = pack::k_blocks(kind, k);
        let panel = kblocks * BLOCK_BYTES;
        let mut data = WeightBuf::zeroed(panel * n.div_ceil(NR));
        data.par_chunks_mut(panel.max(1)).enumerate().for_each(|(p, dst)| {
            let j0 = p * NR;
            pack::pack_b_i8(dst, NR.min(n - j0), k, |kk| &bytes[kk * n + j0..]);
        });
        let val = |v: u8| if signed { v as i8 as i32 } else { v as i32 };
        let mut col_sums = vec![0i32; n];
        for row in bytes.chunks(n.max(1)) {
            for (s, &v) in col_sums.iter_mut().zip(row) {
                *s += val(v);
            }
        }
        PackedB { kind, split: None, k, n, kblocks, data, col_sums, zero: zero.to_vec() }
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn split(&self) -> Option<Split> {
        self.split
    }
    /// Parts each k-block is stored in (1 unless split).
    fn parts(&self) -> usize {
        self.split.map_or(1, Split::parts)
    }
    pub fn packed_bytes(&self) -> usize {
        self.data.len()
    }
    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// The right operand as the driver reads it: `count` panels of `kblocks`
/// k-blocks (each k-block in `parts` parts) side by side in `data`.
#[derive(Copy, Clone)]
struct Panels<'a> {
    data: &'a [u8],
    kblocks: usize,
    count: usize,
    parts: usize,
}

impl<'a> Panels<'a> {
    fn panel(&self, p: usize) -> &'a [u8] {
        let len = self.kblocks * BLOCK_BYTES;
        &self.data[p * len..(p + 1) * len]
    }
}

impl PackedB {
    fn view(&self) -> Panels<'_> {
        Panels { data: &self.data, kblocks: self.kblocks, count: self.panels(), parts: self.parts() }
    }
}

/// A constant left operand `A` (`m x k`: a convolution's weight, output
/// channels by taps) packed once into bf16 A panels, so that the
/// activations can be the right-hand side (see [`tile_sgemm_rows`]).
pub struct PackedA {
    m: usize,
    k: usize,
    kblocks: usize,
    data: WeightBuf,
}

impl std::fmt::Debug for PackedA {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedA(bf16, {}x{}, {} bytes)", self.m, self.k, self.data.len())
    }
}

impl PackedA {
    /// Packs an fp32 `A` for bf16 tiles (one part: plain bf16).
    pub fn from_f32(a: MatRef<f32>) -> PackedA {
        let (m, k) = (a.rows, a.cols);
        let kblocks = pack::k_blocks(DotKind::Bf16, k);
        let a_len = kblocks * BLOCK_BYTES;
        let mut data = WeightBuf::zeroed(a_len * m.div_ceil(MR));
        if a_len > 0 {
            data.par_chunks_mut(a_len).enumerate().for_each(|(p, dst)| {
                let i0 = p * MR;
                pack::pack_a_f32(dst, a.rows_range(i0, MR.min(m - i0)), Split::Bf16);
            });
        }
        PackedA { m, k, kblocks, data }
    }
    pub fn m(&self) -> usize {
        self.m
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn packed_bytes(&self) -> usize {
        self.data.len()
    }
}

thread_local! {
    /// The packed right operand of [`tile_sgemm_rows`]' last call on this
    /// thread (reused like the packed-A buffer).
    static B_BUFFER: std::cell::Cell<Option<Bytes>> = const { std::cell::Cell::new(None) };
}

/// `c = epi(a @ b)` for a packed constant `a` (`m x k`) and a row-major
/// `k x n` right operand `b` (a convolution's im2col rows, or its input's
/// channels for a pointwise one), packed here into bf16 panels. `c` is
/// row-major with row stride `ldc` and is overwritten; the epilogue's
/// `row_bias` suits a bias per output channel.
pub fn tile_sgemm_rows(isa: TileIsa, a: &PackedA, b: MatRef<f32>, c: &mut [f32], ldc: usize, epi: &Epilogue) {
    tile_sgemm_rows_with(isa, TileBlocking::configured(), a, b, c, ldc, epi)
}

/// [`tile_sgemm_rows`] with an explicit blocking.
pub fn tile_sgemm_rows_with(
    isa: TileIsa,
    blk: TileBlocking,
    a: &PackedA,
    b: MatRef<f32>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    let (m, k, n) = (a.m, a.k, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert_eq!(b.col_stride, 1, "B must be row-major");
    if m == 0 || n == 0 {
        return;
    }
    b.check();
    assert!((m - 1) * ldc + n <= c.len(), "output does not fit its slice");
    epi.check(m, n);
    let row = |kk: usize| &b.data[kk * b.row_stride..kk * b.row_stride + n];
    if k == 0 {
        // No taps: the epilogue of zero products.
        let zeros = vec![0f32; n];
        for (i, dst) in c.chunks_mut(ldc).take(m).enumerate() {
            epi.apply_f32(&zeros, i, 0, &mut dst[..n]);
        }
        return;
    }
    let b_len = a.kblocks * BLOCK_BYTES;
    let count = n.div_ceil(NR);
    with_reused_bytes(&B_BUFFER, b_len * count, |bp| {
        timed_pack(|| {
            bp.par_chunks_mut(b_len).enumerate().for_each(|(p, dst)| {
                let j0 = p * NR;
                pack::pack_b_bf16_from_rows(dst, NR.min(n - j0), k, |kk| &row(kk)[j0..]);
            })
        });
        let b = Panels { data: bp, kblocks: a.kblocks, count, parts: 1 };
        let out = OutPtr(c.as_mut_ptr());
        let finish = move |acc: &mut AccBlock, i0: usize, j0: usize| {
            let (rows, cols) = (MR.min(m - i0), NR.min(n - j0));
            // SAFETY: rows i0.. < m and columns j0..j0 + cols <= n lie in
            // `c` (checked above); blocks of different tasks are disjoint.
            let mut dst = unsafe { out.block_rows(ldc, i0, j0, rows, cols) };
            epi.apply_block_into(acc, i0, j0, cols, &mut dst[..rows]);
        };
        let ahead = move |i0: usize, j0: usize| {
            out.prefetch_for_epilogue(ldc, epi, i0, j0, MR.min(m - i0), NR.min(n - j0));
        };
        drive(isa, blk, DotKind::Bf16, &a.data, m, b, &finish, &ahead);
    });
}

/// A raw output pointer shared by tasks that write disjoint blocks.
#[derive(Copy, Clone)]
struct OutPtr<T>(*mut T);
// SAFETY: tasks write disjoint 32x32 blocks (see `drive`); the pointer is
// only dereferenced inside those blocks.
unsafe impl<T> Send for OutPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for OutPtr<T> {}

impl<T: Copy> OutPtr<T> {
    // A method, not field access, so closures capture the Sync wrapper.
    fn at(&self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }

    /// Prefetches the output lines of the block at (i0, j0) (see
    /// [`prefetch_rows`]).
    fn prefetch_block(&self, ldc: usize, i0: usize, j0: usize, rows: usize, cols: usize) {
        prefetch_rows(self.0 as *const T, ldc, i0, j0, rows, cols);
    }

    /// Stores rows `0..rows`, columns `0..cols` of a finished 32x32 block
    /// whose top-left output is (i0, j0), in a row-major output with row
    /// stride `ldc`.
    ///
    /// # Safety
    /// The `rows x cols` region at (i0, j0) lies inside the output the
    /// pointer was made from, and no other task writes it.
    unsafe fn store_block(&self, ldc: usize, block: &[T; MR * NR], i0: usize, j0: usize, rows: usize, cols: usize) {
        for (i, src) in block.chunks_exact(NR).take(rows).enumerate() {
            // SAFETY: the row segment is inside the region the caller vouches for.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.at((i0 + i) * ldc + j0), cols) };
            dst.copy_from_slice(&src[..cols]);
        }
    }

    /// The block's output rows: row `i < rows` is columns `j0..j0 + cols`
    /// of output row `i0 + i` (row stride `ldc`); rows past `rows` empty.
    ///
    /// # Safety
    /// The `rows x cols` region at (i0, j0) lies inside the output the
    /// pointer was made from, and no other task touches it while the
    /// slices live.
    unsafe fn block_rows<'o>(&self, ldc: usize, i0: usize, j0: usize, rows: usize, cols: usize) -> [&'o mut [T]; MR] {
        std::array::from_fn(|i| {
            if i < rows {
                // SAFETY: distinct rows of the region the caller vouches for.
                unsafe { std::slice::from_raw_parts_mut(self.at((i0 + i) * ldc + j0), cols) }
            } else {
                &mut []
            }
        })
    }

    /// [`OutPtr::store_block`] transposed: element (i, j) of the block goes
    /// to output row `j0 + j`, column `i0 + i`.
    ///
    /// # Safety
    /// The `cols x rows` region at (j0, i0) lies inside the output the
    /// pointer was made from, and no other task writes it.
    unsafe fn store_block_transposed(
        &self,
        ld: usize,
        block: &[T; MR * NR],
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
    ) {
        for j in 0..cols {
            // SAFETY: the row segment is inside the region the caller vouches for.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.at((j0 + j) * ld + i0), rows) };
            for (i, d) in dst.iter_mut().enumerate() {
                *d = block[i * NR + j];
            }
        }
    }
}

impl OutPtr<f32> {
    /// [`OutPtr::store_block_transposed`] for a product whose epilogue has a
    /// residual (laid out like the output, row stride `res.row_stride`):
    /// each stored row is finished by [`Epilogue::finish_transposed_row`].
    ///
    /// # Safety
    /// As for [`OutPtr::store_block_transposed`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn store_block_transposed_finished(
        &self,
        ld: usize,
        block: &[f32; MR * NR],
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
        epi: &Epilogue,
        res: Residual,
    ) {
        let mut v = [0f32; MR];
        for j in 0..cols {
            for (i, x) in v.iter_mut().enumerate().take(rows) {
                *x = block[i * NR + j];
            }
            epi.finish_transposed_row(&mut v[..rows], &res.data[(j0 + j) * res.row_stride + i0..][..rows]);
            // SAFETY: the row segment is inside the region the caller vouches for.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.at((j0 + j) * ld + i0), rows) };
            dst.copy_from_slice(&v[..rows]);
        }
    }

    /// Prefetches what a block's fp32 epilogue touches: its output rows
    /// and its residual rows.
    fn prefetch_for_epilogue(&self, ldc: usize, epi: &Epilogue, i0: usize, j0: usize, rows: usize, cols: usize) {
        self.prefetch_block(ldc, i0, j0, rows, cols);
        if let Some(r) = epi.residual {
            prefetch_rows(r.data.as_ptr(), r.row_stride, i0, j0, rows, cols);
        }
    }
}

/// Asks for the lines of `rows` rows of `cols` elements at (i0, j0), row
/// stride `ld`, in L1 (a hint), so that their misses overlap the block's
/// multiplication instead of stalling its epilogue. A read prefetch
/// (PREFETCHT0) also for the lines the epilogue will write: a portable
/// build compiles the write hint to it anyway (PREFETCHW needs the `prfchw`
/// feature at compile time), and PREFETCHW itself, emitted by a scratch
/// build, measured no clear change end to end on the lent Xeon
/// (`benches/results/2026-12-02-phases/emr16_prefetchw_ab.txt`).
/// Addresses are computed, never dereferenced.
fn prefetch_rows<T>(ptr: *const T, ld: usize, i0: usize, j0: usize, rows: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in 0..rows {
        let row = ptr.wrapping_add((i0 + i) * ld + j0) as *const i8;
        let bytes = cols * std::mem::size_of::<T>();
        // Each line the row touches, once (a 32-float row at a line
        // boundary is two lines, not three prefetches).
        let skew = row as usize % 64;
        for l in 0..(skew + bytes).div_ceil(64) {
            let line = row.wrapping_sub(skew).wrapping_add(l * 64);
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch is a hint and never faults, whatever the
            // address; SSE is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, ld, i0, j0, rows, cols);
}

/// Asks the cache hierarchy to bring `bytes` into L2 (a hint; no effect
/// on results).
fn prefetch_l2(bytes: &[u8]) {
    crate::prefetch_lines(bytes, usize::MAX, false);
}

/// How the tile driver blocks the loops, and which microkernel prefetch it
/// uses. Measured with `tessera bench-gemm --tile-blocking`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TileBlocking {
    /// k-blocks per K chunk (0: all of K). A chunk of one B panel stays in
    /// L1 while every A panel of the task's chunk passes it, so only A
    /// streams from L2; the accumulators go to memory between chunks.
    pub kc_blocks: usize,
    /// Most A panels a task keeps (in L2) and passes each B chunk over;
    /// their accumulator blocks (4 KiB each) stay hot across the K chunks.
    pub a_panels: usize,
    /// L2 bytes the task's A panels may take in all.
    pub a_bytes: usize,
    pub prefetch: Prefetch,
    /// How the next weight panel travels from memory to L2.
    pub stream: WeightStream,
    /// A fixed task grid (A panels x B panels per task, clamped to the
    /// limits above) instead of the driver's own choice: for measuring
    /// grids. [`TileBlocking::name`] shows the grid requested.
    pub grid: Option<(usize, usize)>,
    /// How the threads share out the grid's runs of B panels.
    pub schedule: Schedule,
}

/// How the tile driver's threads share out a product's runs of B panels.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// Runs of the grid's length, each a task that an idle thread takes
    /// over; the product's last task can leave every other thread waiting
    /// for a whole run.
    Static,
    /// Runs claimed by each thread from its own contiguous share of the
    /// grid's (A chunk, B panel) pairs, then from the back of other
    /// threads' shares: runs of the grid's length shortening to one panel
    /// toward the end, so that the threads finish together (see
    /// `GuidedRuns`).
    Guided,
}

impl Schedule {
    fn name(self) -> &'static str {
        match self {
            Schedule::Static => "static",
            Schedule::Guided => "guided",
        }
    }
}

/// How a task brings its next weight panel into L2 while it multiplies the
/// current one (at M = 128 each weight byte feeds only 128 products, so the
/// weight's trip from DRAM is as long as its multiplication).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum WeightStream {
    /// Hardware prefetchers only.
    Off,
    /// Every line of the next panel prefetched when a panel starts.
    Bulk,
    /// The next panel's lines shared among the current panel's microkernel
    /// calls, a few per k-block, so that the prefetches never queue up.
    Spread,
}

impl WeightStream {
    fn name(self) -> &'static str {
        match self {
            WeightStream::Off => "off",
            WeightStream::Bulk => "bulk",
            WeightStream::Spread => "spread",
        }
    }
}

impl TileBlocking {
    /// K chunked by [`TileBlocking::KC_AUTO`], up to 8 A panels (1 MiB) per
    /// task, the next k-blocks of A prefetched into L1, the next weight panel
    /// streamed into L2 from inside the k-loop.
    ///
    /// Measured on a 2-core Xeon with AMX, weights from DRAM, 2 threads
    /// (`benches/results/2026-11-27-attention-gelu/`): against the previous
    /// default (K whole, A and B prefetched) faster in 19 of 24 pairs, by
    /// up to 18% at K = 768, slower in 3 of 4 at K = 3072 (up to 10%;
    /// `gemm_blockings.txt`); for bf16, 8-k-block chunks lost to whole K at
    /// 32 k-blocks and more (K = 1024 to 3072, `gemm_kchunks_local.txt`),
    /// hence the 24-k-block (48 KiB) limit. End to end the change was mixed (ORT's
    /// int8 BERT faster in 4 of 4 rounds, bf16 and int8 slower in 3 of 4).
    /// Streaming the next weight panel from inside the k-loop (`Spread`)
    /// beat prefetching it all at a panel's start (`Bulk`) in 16 of 16
    /// same-run pairs at BERT shapes from DRAM at 2 threads on the lent
    /// Xeon, by 3% to 80% (`benches/results/2026-11-27-weight-stream/`).
    /// The guided schedule against the fixed grid on the lent 16-core Xeon
    /// (`benches/results/2026-11-30-guided/`, one binary, 4 alternating
    /// rounds): BERT-base faster in 3 of 4 rounds at 2 threads bf16 and 4
    /// of 4 int8 (median 1.13x each), 3 of 4 at 16 threads (1.11x bf16,
    /// 1.05x int8), the wait after each thread's last task down from
    /// 1.0-3.5 to 0.5-1.2 ms per run (2 threads, bf16); in bench-gemm at
    /// M = 128 0.94-1.50x, faster where the fixed grid's last task is long
    /// (128x768x768 at 2 threads 1.24-1.50x), level to 6% slower at some
    /// 16-thread shapes whose runs it cuts finer; on Zen 4 level (1.00-1.01x).
    pub const DEFAULT: TileBlocking = TileBlocking {
        kc_blocks: TileBlocking::KC_AUTO,
        a_panels: 8,
        a_bytes: 1 << 20,
        prefetch: Prefetch::A,
        stream: WeightStream::Spread,
        grid: None,
        schedule: Schedule::Guided,
    };

    /// `kc_blocks` for "chunks of 8 k-blocks when a panel has at most 24
    /// (48 KiB, an L1's worth: a chunk of B then stays in L1 while every A
    /// panel passes it), K whole beyond" (written `auto`).
    pub const KC_AUTO: usize = usize::MAX;

    /// The k-blocks per K chunk for panels of `kblocks` k-blocks.
    pub fn k_chunk(&self, kblocks: usize) -> usize {
        match self.kc_blocks {
            0 => kblocks.max(1),
            TileBlocking::KC_AUTO if kblocks <= 24 => 8,
            TileBlocking::KC_AUTO => kblocks.max(1),
            kc => kc,
        }
    }

    /// Parses `kc:panels:prefetch[:stream[:grid[:schedule]]]` (prefetch
    /// `none`, `a` or `ab`; stream `off`, `bulk` or `spread`; grid `auto` or
    /// `PxR`, A and B panels per task; schedule `static` or `guided`), as in
    /// `8:4:a`; `kc` 0 keeps K whole, `auto` is [`TileBlocking::KC_AUTO`].
    pub fn parse(s: &str) -> Result<TileBlocking, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (kc, panels, pf, stream, grid, schedule) = match parts[..] {
            [kc, panels, pf] => (kc, panels, pf, None, None, None),
            [kc, panels, pf, stream] => (kc, panels, pf, Some(stream), None, None),
            [kc, panels, pf, stream, grid] => (kc, panels, pf, Some(stream), Some(grid), None),
            [kc, panels, pf, stream, grid, schedule] => (kc, panels, pf, Some(stream), Some(grid), Some(schedule)),
            _ => {
                return Err(format!(
                    "tile blocking '{s}': want kc:panels:prefetch[:stream[:grid[:schedule]]], like 8:4:a"
                ))
            }
        };
        let schedule = match schedule {
            None => TileBlocking::DEFAULT.schedule,
            Some("static") => Schedule::Static,
            Some("guided") => Schedule::Guided,
            Some(other) => return Err(format!("tile blocking '{s}': schedule '{other}' is not static or guided")),
        };
        let grid = match grid {
            None | Some("auto") => None,
            Some(g) => {
                let pair =
                    g.split_once('x').and_then(|(p, r)| Some((p.parse::<usize>().ok()?, r.parse::<usize>().ok()?)));
                match pair {
                    Some((p, r)) if p > 0 && r > 0 => Some((p, r)),
                    _ => return Err(format!("tile blocking '{s}': grid '{g}' is not auto or PxR (like 2x3)")),
                }
            }
        };
        let stream = match stream {
            None => TileBlocking::DEFAULT.stream,
            Some("off") => WeightStream::Off,
            Some("bulk") => WeightStream::Bulk,
            Some("spread") => WeightStream::Spread,
            Some(other) => return Err(format!("tile blocking '{s}': stream '{other}' is not off, bulk or spread")),
        };
        let num =
            |v: &str, what: &str| v.parse::<usize>().map_err(|_| format!("tile blocking '{s}': bad {what} '{v}'"));
        let prefetch = match pf {
            "none" => Prefetch::None,
            "a" => Prefetch::A,
            "ab" => Prefetch::Ab,
            other => return Err(format!("tile blocking '{s}': prefetch '{other}' is not none, a or ab")),
        };
        let a_panels = num(panels, "panel count")?;
        if a_panels == 0 || a_panels > 64 {
            return Err(format!("tile blocking '{s}': panels must be 1..=64"));
        }
        let kc_blocks = if kc == "auto" { TileBlocking::KC_AUTO } else { num(kc, "kc")? };
        Ok(TileBlocking { kc_blocks, a_panels, prefetch, stream, grid, schedule, ..TileBlocking::DEFAULT })
    }

    /// The blocking [`tile_sgemm`] and [`tile_igemm`] use: `DEFAULT`, or
    /// `TESSERA_TILE_BLOCKING` from the environment (the syntax of
    /// [`TileBlocking::parse`]), so that whole models can be measured under
    /// another blocking without a rebuild. A value that does not parse is
    /// reported once on stderr and ignored.
    pub fn configured() -> TileBlocking {
        static CONFIGURED: std::sync::OnceLock<TileBlocking> = std::sync::OnceLock::new();
        *CONFIGURED.get_or_init(|| match std::env::var("TESSERA_TILE_BLOCKING") {
            Ok(v) => TileBlocking::parse(&v).unwrap_or_else(|e| {
                eprintln!("TESSERA_TILE_BLOCKING ignored: {e}");
                TileBlocking::DEFAULT
            }),
            Err(_) => TileBlocking::DEFAULT,
        })
    }

    pub fn name(&self) -> String {
        let pf = match self.prefetch {
            Prefetch::None => "none",
            Prefetch::A => "a",
            Prefetch::Ab => "ab",
        };
        let kc = if self.kc_blocks == TileBlocking::KC_AUTO { "auto".to_string() } else { self.kc_blocks.to_string() };
        // The schedule is named only where it is not the default. Names
        // written before it existed (fixed grids then) read the same but
        // parse as the guided schedule now: add `:static` to compare with
        // results from before fb84577.
        let grid = match (self.grid, self.schedule == TileBlocking::DEFAULT.schedule) {
            (Some((p, r)), true) => format!(":{p}x{r}"),
            (None, true) => String::new(),
            (Some((p, r)), false) => format!(":{p}x{r}:{}", self.schedule.name()),
            (None, false) => format!(":auto:{}", self.schedule.name()),
        };
        format!("{kc}:{}:{pf}:{}{grid}", self.a_panels, self.stream.name())
    }
}

impl Default for TileBlocking {
    fn default() -> Self {
        TileBlocking::DEFAULT
    }
}

/// Runs the microkernel over every 32x32 output block. `a` holds the packed
/// A panels (`kblocks * BLOCK_BYTES` bytes each); `finish(acc, i0, j0)` gets
/// each finished block, and `ahead(i0, j0)` runs before the block's last
/// microkernel call (to prefetch what `finish` will touch).
///
/// A task owns a chunk of A panels and a range of B panels, in one of two
/// loop orders:
/// * **A resident** (the task's A panels, all of K, fit `a_bytes`): for each
///   B panel, K is walked in chunks: a chunk of the B panel is loaded into
///   L1 by the first A panel and serves every other A panel of the task from
///   there, each into its own accumulator block; the A panels stay in L2
///   while the B panels stream past once.
/// * **K outermost** (they do not fit, as with long K or operands split in
///   parts): K is cut into chunks whose A part fits `a_bytes`, and each
///   chunk of A meets every B panel of the task before the next chunk
///   starts; the task's accumulator blocks (at most [`ACC_BYTES`]) carry
///   the sums from chunk to chunk. A and B are each read once per task,
///   where the first order would read A again for every B panel.
#[allow(clippy::too_many_arguments)]
fn drive(
    isa: TileIsa,
    blk: TileBlocking,
    kind: DotKind,
    a: &[u8],
    m: usize,
    b: Panels,
    finish: &(dyn Fn(&mut AccBlock, usize, usize) + Sync),
    ahead: &(dyn Fn(usize, usize) + Sync),
) {
    // The stage time stamps in a copy of their own, so that the untimed
    // driver is compiled without them.
    if STAGE_TIMING.load(Ordering::Relaxed) {
        drive_timed::<true>(isa, blk, kind, a, m, b, finish, ahead)
    } else {
        drive_timed::<false>(isa, blk, kind, a, m, b, finish, ahead)
    }
}

/// [`drive`], counting its stages into [`STAGE_TICKS`] when `TIMED`.
#[allow(clippy::too_many_arguments)]
fn drive_timed<const TIMED: bool>(
    isa: TileIsa,
    blk: TileBlocking,
    kind: DotKind,
    a: &[u8],
    m: usize,
    b: Panels,
    finish: &(dyn Fn(&mut AccBlock, usize, usize) + Sync),
    ahead: &(dyn Fn(usize, usize) + Sync),
) {
    let mb = m.div_ceil(MR);
    let nb = b.count;
    if mb == 0 || nb == 0 {
        return;
    }
    let kblocks = b.kblocks;
    let a_len = kblocks * BLOCK_BYTES;
    // Split operands run whole k-steps (a k-block's parts together).
    let step = b.parts;
    let whole = |kc: usize| (kc / step).max(1) * step;
    let threads = rayon::current_num_threads().max(1);
    let most_panels = blk.a_panels.max(1).min(mb);
    // Where all `most_panels` A panels would not fit, the grid keeps the
    // accumulator blocks a K-outermost task needs within bounds (it may
    // still come out small enough to run resident).
    let most_blocks = if a_len * most_panels <= blk.a_bytes {
        usize::MAX
    } else {
        (ACC_BYTES / std::mem::size_of::<AccBlock>()).max(1)
    };
    let TaskGrid { a_panels: per_chunk, b_panels: per_range } = match blk.grid {
        Some((p, r)) => TaskGrid::clamped(p, r, nb, most_panels, most_blocks),
        None => TaskGrid::choose(mb, nb, threads, most_panels, most_blocks),
    };
    // The task's own A panels decide the loop order (a grid of fewer panels
    // than `most_panels` may fit where all of them would not).
    let resident = a_len * per_chunk <= blk.a_bytes;
    let kc = if resident {
        whole(blk.k_chunk(kblocks))
    } else {
        let fit = blk.a_bytes / (per_chunk * BLOCK_BYTES);
        let kc = if blk.kc_blocks == TileBlocking::KC_AUTO { KOUTER_AUTO_CHUNK } else { blk.k_chunk(kblocks) };
        whole(kc.min(fit))
    };
    let m_chunks = mb.div_ceil(per_chunk);
    let chunks = kblocks.max(1).div_ceil(kc);

    // Per pool thread (timed copy only): its first task's start and its
    // last task's end, to tell the waits around the tasks apart.
    let spans: Vec<[AtomicU64; 2]> =
        if TIMED { (0..threads).map(|_| [AtomicU64::new(u64::MAX), AtomicU64::new(0)]).collect() } else { Vec::new() };
    let drive_start = stage_ticks(TIMED);
    // A task multiplies A chunk `mc` by the B panels `cols`. `claim_next`
    // (called once, as the task starts its last B panel or its last K chunk
    // of it) gives the run the thread takes next, so that its first panel
    // streams in meanwhile; the task returns that run.
    let task = |mc: usize, cols: std::ops::Range<usize>, claim_next: &dyn Fn() -> Option<Run>| -> Option<Run> {
        let task_start = stage_ticks(TIMED);
        let claimed: std::cell::Cell<Option<Option<Run>>> = std::cell::Cell::new(None);
        // The next run's first panel (or its first `len` bytes), claiming
        // the run now. That takes it from the other threads one panel's
        // time early (at most one panel of wait at a product's end), for a
        // first panel that streams in instead of arriving cold; with no
        // weight stream there is nothing to gain, and the run is claimed
        // when this task ends.
        let next_run_panel = |len: usize| -> &[u8] {
            if blk.stream == WeightStream::Off {
                return &[];
            }
            let run = claim_next();
            let earlier = claimed.replace(Some(run.clone()));
            debug_assert!(earlier.is_none(), "the next run claimed twice");
            match run {
                Some((_, next_cols)) => {
                    let p = b.panel(next_cols.start);
                    &p[..len.min(p.len())]
                }
                None => &[],
            }
        };
        // The task's stage counts, summed here and added to `STAGE_TICKS`
        // once at its end (one shared line updated by every call of every
        // thread would itself cost time at 16 threads).
        let counts: [std::cell::Cell<u64>; 5] = Default::default();
        let count = |stage: usize, from: u64| {
            if TIMED {
                // Time stamps read on different cores of a guest may step
                // back a little: never below zero.
                counts[stage].set(counts[stage].get() + stage_ticks(true).saturating_sub(from));
            }
        };
        let t0 = stage_ticks(TIMED);
        let sess = TileSession::begin(isa, blk.prefetch);
        count(4, t0);
        let rows = mc * per_chunk..((mc + 1) * per_chunk).min(mb);
        // One microkernel call: A panel `mi` times B panel `pn` over the
        // k-blocks `k0..k1`, streaming `stream` into L2 meanwhile.
        let call = |mi: usize, pn: usize, k0: usize, k1: usize, acc: &mut AccBlock, stream: &[u8]| {
            let (lo, hi) = (k0 * BLOCK_BYTES, k1 * BLOCK_BYTES);
            let ap = &a[mi * a_len..(mi + 1) * a_len];
            if k1 >= kblocks {
                let t0 = stage_ticks(TIMED);
                ahead(mi * MR, pn * NR);
                count(1, t0);
            }
            let t0 = stage_ticks(TIMED);
            sess.run_streaming(kind, step, &ap[lo..hi], &b.panel(pn)[lo..hi], (k1 - k0) / step, acc, k0 > 0, stream);
            count(0, t0);
            if k1 >= kblocks {
                let t0 = stage_ticks(TIMED);
                finish(acc, mi * MR, pn * NR);
                count(2, t0);
            }
        };
        let spread = |next, i, share| spread_share(blk.stream, next, i, share);
        if resident {
            // One accumulator block per A panel only when K is chunked (each
            // block must survive the other panels' chunks); with K whole, one
            // block serves them all and a task allocates nothing.
            let mut single = AccBlock::new();
            let mut per_panel: Vec<AccBlock> =
                if chunks > 1 { (0..rows.len()).map(|_| AccBlock::new()).collect() } else { Vec::new() };
            // Microkernel calls per B panel, among which `Spread` shares the
            // next panel's lines.
            let share = a_len.div_ceil(rows.len() * chunks).next_multiple_of(64);
            for pn in cols.clone() {
                // Weights come from DRAM once per inference: start the next
                // panel's trip to L2 while this one is multiplied.
                let next = if pn + 1 < cols.end { b.panel(pn + 1) } else { next_run_panel(a_len) };
                if blk.stream == WeightStream::Bulk {
                    prefetch_l2(next);
                }
                let mut i = 0;
                for c in 0..chunks {
                    let (k0, k1) = (c * kc, ((c + 1) * kc).min(kblocks));
                    for (idx, mi) in rows.clone().enumerate() {
                        let acc = if chunks > 1 { &mut per_panel[idx] } else { &mut single };
                        call(mi, pn, k0, k1, acc, spread(next, i, share));
                        i += 1;
                    }
                }
            }
        } else {
            let mut accs: Vec<AccBlock> = (0..rows.len() * cols.len()).map(|_| AccBlock::new()).collect();
            for c in 0..chunks {
                let (k0, k1) = (c * kc, ((c + 1) * kc).min(kblocks));
                let (lo, hi) = (k0 * BLOCK_BYTES, k1 * BLOCK_BYTES);
                for (bi, pn) in cols.clone().enumerate() {
                    // The weight chunk after this one: the next panel's, or
                    // the first panel's next chunk.
                    let next = if pn + 1 < cols.end {
                        &b.panel(pn + 1)[lo..hi]
                    } else if c + 1 < chunks {
                        &b.panel(cols.start)[hi..(hi + kc * BLOCK_BYTES).min(a_len)]
                    } else {
                        next_run_panel(kc * BLOCK_BYTES)
                    };
                    if blk.stream == WeightStream::Bulk {
                        prefetch_l2(next);
                    }
                    // The next chunk may be longer than this one (the last,
                    // short chunk before the next run's first).
                    let share = (hi - lo).max(next.len()).div_ceil(rows.len()).next_multiple_of(64);
                    for (idx, mi) in rows.clone().enumerate() {
                        call(mi, pn, k0, k1, &mut accs[bi * rows.len() + idx], spread(next, idx, share));
                    }
                }
            }
        }
        let t0 = stage_ticks(TIMED);
        drop(sess);
        count(4, t0);
        if TIMED {
            for (total, c) in STAGE_TICKS.iter().zip(&counts) {
                total.fetch_add(c.get(), Ordering::Relaxed);
            }
            let span = &spans[rayon::current_thread_index().unwrap_or(0) % threads];
            span[0].fetch_min(task_start, Ordering::Relaxed);
            span[1].fetch_max(stage_ticks(true), Ordering::Relaxed);
        }
        claimed.take().unwrap_or_else(claim_next)
    };
    // One thread has nobody to balance against: the grid's own tasks.
    let schedule = if threads == 1 { Schedule::Static } else { blk.schedule };
    match schedule {
        Schedule::Static => {
            let n_ranges = nb.div_ceil(per_range);
            let tasks = m_chunks * n_ranges;
            let fixed = |t: usize| {
                let nr = t % n_ranges;
                task(t / n_ranges, nr * per_range..((nr + 1) * per_range).min(nb), &|| None);
            };
            if tasks <= 1 || threads == 1 {
                (0..tasks).for_each(fixed);
            } else {
                (0..tasks).into_par_iter().for_each(fixed);
            }
        }
        Schedule::Guided => {
            let takers = threads.min(m_chunks * nb);
            let claims = GuidedRuns::new(m_chunks, nb, per_range, takers);
            // Each taker claims runs until none is left, so a thread that
            // stalls holds up only the run it has claimed.
            let take = |me: usize| {
                let mut run = claims.claim(me);
                while let Some((mc, cols)) = run {
                    run = task(mc, cols, &|| claims.claim(me));
                }
            };
            if takers <= 1 {
                take(0);
            } else {
                (0..takers).into_par_iter().for_each(take);
            }
        }
    }
    if TIMED {
        // Each thread's wait for its first task (all of the product for a
        // thread that got none) and after its last one, until the product
        // ends.
        let drive_end = stage_ticks(true);
        for [first, last] in &spans {
            let (first, last) = (first.load(Ordering::Relaxed), last.load(Ordering::Relaxed));
            let (before, after) = if first == u64::MAX {
                (drive_end.saturating_sub(drive_start), 0)
            } else {
                (first.saturating_sub(drive_start), drive_end.saturating_sub(last))
            };
            STAGE_TICKS[5].fetch_add(before, Ordering::Relaxed);
            STAGE_TICKS[6].fetch_add(after, Ordering::Relaxed);
        }
    }
}

/// Whether [`drive`] counts its time stamps into [`STAGE_TICKS`] (for
/// `tessera bench-gemm --stages`; off by default).
static STAGE_TIMING: AtomicBool = AtomicBool::new(false);

/// Time stamp counts spent, when [`STAGE_TIMING`] is on, in each stage
/// [`stage_ticks_since_last`] lists, summed over threads.
static STAGE_TICKS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Turns the tile driver's stage counts on or off and returns what they
/// summed since the last call, in time stamp counts over all threads: the
/// microkernel calls, the output prefetches, the epilogues (`finish`), the
/// packing of A (its wall time times the threads), the tasks' tile
/// sessions (begin and end), and each pool thread's wait in a product for
/// its first task and after its last one. In one run, so their shares hold
/// whatever speed the machine runs at.
pub fn stage_ticks_since_last(on: bool) -> [u64; 7] {
    STAGE_TIMING.store(on, Ordering::Relaxed);
    STAGE_TICKS.each_ref().map(|t| t.swap(0, Ordering::Relaxed))
}

/// Runs `pack` (a parallel packing of A) and, when stage timing is on,
/// counts its wall time once per thread of the pool.
fn timed_pack(pack: impl FnOnce()) {
    let timing = STAGE_TIMING.load(Ordering::Relaxed);
    let t0 = stage_ticks(timing);
    pack();
    if timing {
        let spent = stage_ticks(true).saturating_sub(t0) * rayon::current_num_threads() as u64;
        STAGE_TICKS[3].fetch_add(spent, Ordering::Relaxed);
    }
}

/// A time stamp (the cycle counter on x86-64, else nanoseconds since the
/// first call), in the units of [`stage_ticks_since_last`].
pub fn tick_count() -> u64 {
    stage_ticks(true)
}

/// A time stamp when `on` (see [`tick_count`]), else 0.
#[inline(always)]
fn stage_ticks(on: bool) -> u64 {
    if !on {
        return 0;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` exists on every x86-64 CPU and has no operands.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

/// How [`drive`] cuts a product into tasks: each task multiplies a run of
/// `a_panels` A panels by a run of `b_panels` B panels (the last runs may
/// be shorter).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaskGrid {
    pub a_panels: usize,
    pub b_panels: usize,
}

impl TaskGrid {
    /// The grid over `mb` A panels and `nb` B panels for `threads` threads.
    /// A task takes at most `most_a` A panels and `most_blocks` panel pairs
    /// (a single B panel may exceed `most_blocks`).
    ///
    /// First choice: all `most_a` A panels per task and the B panels cut
    /// into enough runs for about two tasks per thread, so that threads
    /// that finish early take over the work of threads that stall. Where
    /// that leaves a single B panel per task on several threads (the B
    /// panels too few for the threads), no task has a next B panel to
    /// stream while it multiplies ([`WeightStream`]) and threads may sit
    /// idle; then the grid with the least modelled time instead: the tasks
    /// run in waves of `threads`, a task of `p` x `r` panels costs `p * r`
    /// panel products plus [`PANEL_LOAD_COST`] for each of its `p + r`
    /// panels brought in (a B panel streams from memory, an A panel arrives
    /// from the core that packed it), and the largest task is charged again
    /// by a quarter of its length, for the wait when its thread stalls
    /// ([`makespan`]); ties go to the grid that loads fewer panels in all.
    ///
    /// The model decides whenever N is at most 32 * ceil(2 * threads /
    /// ceil(mb / most_a)) on several threads: at 16 threads and the default
    /// 8 A panels, N up to 1024 at M up to 256, up to 512 at M = 512, up to
    /// 256 at M = 1024; at 2 threads N up to 128 at M up to 256.
    ///
    /// Measured (`benches/results/2026-11-28-task-grid/`), weights warm: on
    /// the lent 16-core Xeon (AMX) at M = 128 and N = 768 on 16 threads the
    /// first choice is 24 tasks of 4 x 1; the model's 16 tasks of 2 x 3 ran
    /// 128x768x768 faster in all 19 rounds of five runs (medians per run
    /// +12 to +38% bf16, +20 to +34% int8); 128x64x768 ran 1.7-1.8x faster
    /// at 2 and at 16 threads, 512x32x768 (a single B panel) 1.8-2.7x at 16
    /// threads and level at 2; on Zen 4 (avx512-dot, 2 threads) 128x64x768
    /// ran 1.95-2.19x faster. Where the first choice has several B panels
    /// per task the model's grids were no faster: over the 12 such cases
    /// (6 shapes x 2 kinds) of one run at 16 threads their geometric mean
    /// was 0.97 of the first choice's, and at M = 128, N = 2304 the model's
    /// 48 tasks of 2 x 3 lost to 24 tasks of 4 x 3 in all 8 rounds (per
    /// round 4-31%). Not measured: convolutions with few output positions
    /// (their B panels are the positions) and the other sizes above.
    pub(crate) fn choose(mb: usize, nb: usize, threads: usize, most_a: usize, most_blocks: usize) -> TaskGrid {
        let (mb, nb, threads) = (mb.max(1), nb.max(1), threads.max(1));
        let most_a = most_a.clamp(1, mb);
        let m_chunks = mb.div_ceil(most_a);
        let fewest_ranges = nb.div_ceil((most_blocks / most_a).max(1));
        let n_ranges = (2 * threads).div_ceil(m_chunks).clamp(1, nb).max(fewest_ranges);
        let first = TaskGrid { a_panels: most_a, b_panels: nb.div_ceil(n_ranges) };
        if threads == 1 || first.b_panels > 1 {
            return first;
        }
        // More runs than four per thread in either direction never shorten
        // the waves, so the candidates stay few (at most 4 * threads + 1
        // distinct run lengths each way) whatever the shape.
        let runs = |panels: usize, fewest: usize| {
            let most = (fewest + 4 * threads).min(panels);
            let mut lengths: Vec<usize> = (fewest..=most).map(|n| panels.div_ceil(n)).collect();
            lengths.dedup();
            lengths
        };
        let loads = |g: TaskGrid| mb.div_ceil(g.a_panels) * nb + nb.div_ceil(g.b_panels) * mb;
        let time = |g: TaskGrid| makespan(threads, [(mb, g.a_panels), (nb, g.b_panels)]);
        let mut best = (time(first), loads(first), first);
        for p in runs(mb, mb.div_ceil(most_a)) {
            for r in runs(nb, nb.div_ceil((most_blocks / p).max(1))) {
                let grid = TaskGrid { a_panels: p, b_panels: r };
                let key = (time(grid), loads(grid), grid);
                if (key.0, key.1) < (best.0, best.1) {
                    best = key;
                }
            }
        }
        best.2
    }

    /// A requested grid of `p` x `r` panels within the limits [`choose`]
    /// keeps: 1 to `most_a` A panels, 1 to `nb` B panels, at most
    /// `most_blocks` panel pairs unless one B panel alone exceeds them.
    ///
    /// [`choose`]: TaskGrid::choose
    pub(crate) fn clamped(p: usize, r: usize, nb: usize, most_a: usize, most_blocks: usize) -> TaskGrid {
        let p = p.clamp(1, most_a.max(1));
        TaskGrid { a_panels: p, b_panels: r.clamp(1, nb.max(1)).min((most_blocks / p).max(1)) }
    }
}

/// The modelled time of a grid whose tasks take runs of `p` out of `mb`
/// and of `r` out of `nb` panels: tasks largest first, in waves of
/// `threads`, each wave as long as its largest task; in units of a panel
/// product over [`STRAGGLER_SHARE`].
fn makespan(threads: usize, [(mb, p), (nb, r)]: [(usize, usize); 2]) -> usize {
    // A run is full-length or the shorter last one: at most four kinds of
    // task, (count, cost) each.
    let runs =
        |panels: usize, run: usize| [(panels / run, run), (usize::from(!panels.is_multiple_of(run)), panels % run)];
    let mut kinds = [(0usize, 0usize); 4];
    for (i, (ma, pa)) in runs(mb, p).into_iter().enumerate() {
        for (j, (nr, rb)) in runs(nb, r).into_iter().enumerate() {
            kinds[2 * i + j] = (ma * nr, pa * rb + PANEL_LOAD_COST * (pa + rb));
        }
    }
    kinds.sort_unstable_by_key(|&(_, cost)| std::cmp::Reverse(cost));
    // A thread of a shared machine may lose its core for a while: the
    // largest task's length, over STRAGGLER_SHARE, is the time the others
    // wait when nobody can take over its work.
    let straggler =
        if threads > 1 { kinds.iter().find(|&&(count, _)| count > 0).map_or(0, |&(_, cost)| cost) } else { 0 };
    let (mut at, mut total) = (0usize, 0usize);
    for (count, cost) in kinds {
        // Waves that start among these tasks are this long.
        let first = at.div_ceil(threads) * threads;
        let end = at + count;
        if end > first {
            total += (end - first).div_ceil(threads) * cost;
        }
        at = end;
    }
    total * STRAGGLER_SHARE + straggler
}

/// See [`makespan`]: the largest task is charged a quarter of its length
/// again. Chosen with [`PANEL_LOAD_COST`] on a sweep of 17 fixed grids on
/// 7 shapes and both tile kinds at 16 threads on the lent Xeon
/// (`benches/results/2026-11-28-task-grid/emr16_run6_*`,
/// `fit_grid_model.py`), where the model alone picked grids that ran at
/// 0.94 of each case's best (geometric mean; with an eighth 0.87 and with a
/// half 0.925, each over the 12 of 14 cases whose pick was measured); that
/// sweep alone overrated the model (see [`TaskGrid::choose`]).
const STRAGGLER_SHARE: usize = 4;

/// The cost of bringing one panel into a task, in panel products (one
/// 32x32 output block over all of K): both grow with K, so the ratio holds
/// at any K. At M = 128 a B panel streamed from memory takes about as long
/// as the products it feeds (see [`WeightStream`]).
const PANEL_LOAD_COST: usize = 1;

/// A run of a product's tasks: an A chunk and a range of B panels.
type Run = (usize, std::ops::Range<usize>);

/// The runs of one product under [`Schedule::Guided`]. The (A chunk,
/// B panel) pairs, A chunks in order and each chunk's B panels in order,
/// are cut into one contiguous segment per taker. A taker claims runs from
/// the front of its own segment, so that its weight panels follow each
/// other in memory as in a fixed grid; when that is empty it takes from the
/// back of the segment with the most pairs left. A run never crosses an A
/// chunk's end and is at most `run` pairs long; once a segment has `run`
/// pairs or fewer left, a claim takes half of them (rounded up), so that
/// runs shorten toward the end and a stalled taker keeps little to itself.
struct GuidedRuns {
    /// Per segment, its unclaimed pairs `front..back` as `front << 32 | back`
    /// (pair `chunk * nb + panel`).
    segments: Vec<AtomicU64>,
    nb: usize,
    run: usize,
}

impl GuidedRuns {
    fn new(m_chunks: usize, nb: usize, run: usize, takers: usize) -> GuidedRuns {
        let nb = nb.max(1);
        let total = m_chunks * nb;
        // Pair indices fit 32 bits: a product has far fewer 32x32 blocks.
        assert!(u32::try_from(total).is_ok(), "{total} output block pairs");
        let count = takers.clamp(1, total.max(1));
        let segments = (0..count)
            .map(|i| {
                let (front, back) = (i * total / count, (i + 1) * total / count);
                AtomicU64::new(((front as u64) << 32) | back as u64)
            })
            .collect();
        GuidedRuns { segments, nb, run: run.clamp(1, nb) }
    }

    /// Pairs a claim takes from `left` unclaimed ones.
    fn claim_len(&self, left: usize) -> usize {
        if left > self.run {
            self.run
        } else {
            left.div_ceil(2)
        }
    }

    /// The next run for taker `me`: its A chunk and its B panels, or `None`
    /// when every pair is claimed.
    fn claim(&self, me: usize) -> Option<Run> {
        let unpack = |v: u64| ((v >> 32) as usize, (v & 0xffff_ffff) as usize);
        let pack = |front: usize, back: usize| ((front as u64) << 32) | back as u64;
        let own = &self.segments[me % self.segments.len()];
        // From the front of the taker's own segment.
        let mut v = own.load(Ordering::Relaxed);
        loop {
            let (front, back) = unpack(v);
            if front >= back {
                break;
            }
            let len = self.claim_len(back - front).min(self.nb - front % self.nb);
            match own.compare_exchange_weak(v, pack(front + len, back), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((front / self.nb, front % self.nb..front % self.nb + len)),
                Err(now) => v = now,
            }
        }
        // From the back of the segment with the most pairs left (the
        // taker's own is empty by now).
        loop {
            let (victim, v) = self.segments.iter().map(|s| (s, s.load(Ordering::Relaxed))).max_by_key(|&(_, v)| {
                let (front, back) = unpack(v);
                back.saturating_sub(front)
            })?;
            let (front, back) = unpack(v);
            if front >= back {
                return None;
            }
            let len = self.claim_len(back - front).min((back - 1) % self.nb + 1);
            if victim.compare_exchange(v, pack(front, back - len), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                let start = back - len;
                return Some((start / self.nb, start % self.nb..start % self.nb + len));
            }
        }
    }
}

/// The `i`-th call's `share` bytes of `next`, the memory a microkernel call
/// streams into L2 under [`WeightStream::Spread`] (none otherwise).
fn spread_share(stream: WeightStream, next: &[u8], i: usize, share: usize) -> &[u8] {
    if stream != WeightStream::Spread {
        return &[];
    }
    let from = (i * share).min(next.len());
    &next[from..(from + share).min(next.len())]
}

/// `auto` K chunk, in k-blocks, when K is outermost: 64 KiB of a B panel.
/// Measured on the 2-core AMX Xeon, 128x768x3072 from DRAM at 2 threads,
/// bf16x6 (`benches/results/2026-11-27-split-kernels/gemm_kouter_chunks.txt`
/// and one earlier sweep): chunks of 8 to 96 k-blocks within the noise of
/// each other (213-291 GFLOP/s), the largest chunk the A budget allows
/// (126 k-blocks, what `0` gives there) the slowest in both sweeps (183 and
/// 224); 32 sits in the middle of the flat range.
const KOUTER_AUTO_CHUNK: usize = 32;

/// Most bytes of accumulator blocks a task keeps when K is outermost (in
/// L2 beside the A chunk).
const ACC_BYTES: usize = 512 << 10;

/// `c = epilogue(a @ b)` for fp32 `a` (`m x k`, any strides) and a packed
/// fp32 weight, on bf16 tiles with the weight's split. `c` is row-major with
/// row stride `ldc` and is overwritten.
pub fn tile_sgemm(isa: TileIsa, a: MatRef<f32>, b: &PackedB, c: &mut [f32], ldc: usize, epi: &Epilogue) {
    tile_sgemm_with(isa, TileBlocking::configured(), a, b, c, ldc, epi)
}

/// [`tile_sgemm`] with explicit loop blocking (for measurements).
pub fn tile_sgemm_with(
    isa: TileIsa,
    blk: TileBlocking,
    a: MatRef<f32>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    sgemm_checked(isa, blk, a, b, c, ldc, false, epi)
}

/// [`tile_sgemm`] storing the result transposed: element (i, j) of
/// `epilogue(a @ b)` goes to `ct[j * ldct + i]` (the epilogue's bias is
/// still per column j; its residual is laid out like `ct`, element (i, j)
/// at `data[j * row_stride + i]`). A
/// convolution's `[positions, channels]` product lands in NCHW this way,
/// with no transposing pass over memory.
pub fn tile_sgemm_transposed(isa: TileIsa, a: MatRef<f32>, b: &PackedB, ct: &mut [f32], ldct: usize, epi: &Epilogue) {
    sgemm_checked(isa, TileBlocking::configured(), a, b, ct, ldct, true, epi)
}

/// The argument checks of [`tile_sgemm_with`] and [`tile_sgemm_transposed`]
/// (`transposed`: `c` holds the result's transpose), then the product.
#[allow(clippy::too_many_arguments)]
fn sgemm_checked(
    isa: TileIsa,
    blk: TileBlocking,
    a: MatRef<f32>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    transposed: bool,
    epi: &Epilogue,
) {
    assert!(b.split.is_some(), "tile_sgemm needs a weight packed from fp32");
    let (m, k, n) = (a.rows, a.cols, b.n);
    assert_eq!(k, b.k, "inner dimensions differ");
    a.check();
    if m == 0 || n == 0 {
        return;
    }
    let (rows, cols) = if transposed { (n, m) } else { (m, n) };
    assert!((rows - 1) * ldc + cols <= c.len(), "output does not fit its slice");
    if transposed {
        // The residual is laid out like the stored (transposed) output.
        epi.before_transpose().check(m, n);
        if let Some(r) = epi.residual {
            assert!((n - 1) * r.row_stride + m <= r.data.len(), "residual does not fit {n}x{m}");
        }
    } else {
        epi.check(m, n);
    }
    let a_len = b.kblocks * BLOCK_BYTES;
    with_a_buffer(a_len * m.div_ceil(MR), |ap| sgemm_packed(isa, blk, a, ap, a_len, b, c, ldc, transposed, epi))
}

#[allow(clippy::too_many_arguments)]
fn sgemm_packed(
    isa: TileIsa,
    blk: TileBlocking,
    a: MatRef<f32>,
    ap: &mut [u8],
    a_len: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    transposed: bool,
    epi: &Epilogue,
) {
    let split = b.split.expect("checked by tile_sgemm");
    timed_pack(|| pack_a_panels(a, ap, a_len, split));
    sgemm_from_panels(isa, blk, ap, a.rows, b, c, ldc, transposed, epi)
}

/// Packs every row of `a` into A panels of `a_len` bytes each. Where the
/// pool has more threads than there are panels (M = 128 gives 4), each
/// panel is packed in runs of k-blocks by several threads: at 16 threads
/// the fp32-accurate split's packing took a fifth of BERT-base's run with
/// 12 threads idle (`benches/results/2026-12-01-big-gemm/`).
fn pack_a_panels(a: MatRef<f32>, ap: &mut [u8], a_len: usize, split: Split) {
    let m = a.rows;
    let panels = m.div_ceil(MR);
    let step = split.parts() * BLOCK_BYTES;
    debug_assert!(a_len.is_multiple_of(step), "a panel of {a_len} bytes is not whole k-steps of {step}");
    let kblocks = a_len / step;
    let runs = pack_runs(panels, kblocks, rayon::current_num_threads());
    let run_blocks = kblocks.div_ceil(runs).max(1);
    ap.par_chunks_mut(a_len.max(1)).enumerate().for_each(|(p, panel)| {
        let i0 = p * MR;
        let rows = a.rows_range(i0, MR.min(m - i0));
        if runs <= 1 {
            return pack::pack_a_f32(panel, rows, split);
        }
        panel.par_chunks_mut(run_blocks * step).enumerate().for_each(|(r, dst)| {
            let b0 = r * run_blocks;
            pack::pack_a_f32_blocks(dst, rows, split, b0..(b0 + run_blocks).min(kblocks));
        });
    });
}

/// Runs of k-blocks to cut each of `panels` A panels of `kblocks` k-blocks
/// into, for `threads` threads: 1 while the panels alone give every thread
/// one, else enough for about two runs per thread, each (but the last of a
/// panel) at least [`MIN_PACK_RUN`] k-blocks.
fn pack_runs(panels: usize, kblocks: usize, threads: usize) -> usize {
    if panels == 0 || panels >= threads {
        return 1;
    }
    (2 * threads).div_ceil(panels).min(kblocks / MIN_PACK_RUN).max(1)
}

/// Fewest k-blocks (32 rows x 128 values) a thread packs as one run: less
/// work than that costs about as much to hand out as to do.
const MIN_PACK_RUN: usize = 4;

/// A [`tile_sgemm`] call cut into its stages, timed apart by `tessera
/// bench-gemm --stages`: the A panels packed on their own
/// ([`StagedA::pack`]), then the product over them with no epilogue
/// ([`StagedA::product`], each finished block left in its accumulators).
/// Together with the whole call they show what packing, the tile loop and
/// the epilogue each cost.
pub struct StagedA {
    m: usize,
    k: usize,
    a_len: usize,
    split: Split,
    panels: Bytes,
}

impl StagedA {
    /// Room for `m` rows of A panels for weight `b`.
    pub fn new(m: usize, b: &PackedB) -> StagedA {
        let a_len = b.kblocks * BLOCK_BYTES;
        let split = b.split.expect("StagedA needs a weight packed from fp32");
        StagedA { m, k: b.k, a_len, split, panels: zeroed(a_len * m.div_ceil(MR)) }
    }

    /// Packs `a` (`m x k`, `b.k()` columns) as [`tile_sgemm`] does.
    pub fn pack(&mut self, a: MatRef<f32>) {
        assert_eq!((a.rows, a.cols), (self.m, self.k), "A's shape differs from StagedA::new's");
        a.check();
        pack_a_panels(a, &mut self.panels, self.a_len, self.split);
    }

    /// The tile loop over the packed panels and `b`, with no epilogue.
    pub fn product(&self, isa: TileIsa, blk: TileBlocking, b: &PackedB) {
        assert_eq!((b.kblocks * BLOCK_BYTES, b.split), (self.a_len, Some(self.split)), "another weight's layout");
        drive(isa, blk, DotKind::Bf16, &self.panels, self.m, b.view(), &|_, _, _| {}, &|_, _| {});
    }

    /// The epilogue alone, with no tile work: every 32x32 block of the
    /// `m x n` output finished from a zero accumulator block into `c` (row
    /// stride `ldc`), B panels outer and A panels inner as the driver runs
    /// them, the B panels shared among the threads.
    pub fn epilogue(&self, n: usize, c: &mut [f32], ldc: usize, epi: &Epilogue) {
        let m = self.m;
        if m == 0 || n == 0 {
            return;
        }
        // Rows of the output must not overlap: the threads write them.
        assert!(m == 1 || ldc >= n, "row stride {ldc} is shorter than a row of {n}");
        assert!((m - 1) * ldc + n <= c.len(), "output does not fit its slice");
        epi.check(m, n);
        let out = OutPtr(c.as_mut_ptr());
        (0..n.div_ceil(NR)).into_par_iter().for_each(|pn| {
            let acc = AccBlock::new();
            for i0 in (0..m).step_by(MR) {
                let (j0, rows) = (pn * NR, MR.min(m - i0));
                let cols = NR.min(n - j0);
                // SAFETY: rows i0.. < m and columns j0..j0 + cols <= n lie
                // in `c` (checked above); each B panel's columns go to one
                // thread.
                let mut dst = unsafe { out.block_rows(ldc, i0, j0, rows, cols) };
                epi.apply_block_into(&acc, i0, j0, cols, &mut dst[..rows]);
            }
        });
    }
}

/// The tile product of `m` rows of packed A panels (`ap`, in `b`'s split)
/// and `b`, finished by `epi` into `c` (transposed or not, as
/// [`tile_sgemm`] and [`tile_sgemm_transposed`]).
#[allow(clippy::too_many_arguments)]
fn sgemm_from_panels(
    isa: TileIsa,
    blk: TileBlocking,
    ap: &[u8],
    m: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    transposed: bool,
    epi: &Epilogue,
) {
    let n = b.n;
    let out = OutPtr(c.as_mut_ptr());
    let head = epi.before_transpose();
    let finish = move |acc: &mut AccBlock, i0: usize, j0: usize| {
        let (rows, cols) = (MR.min(m - i0), NR.min(n - j0));
        if transposed {
            head.apply_block(acc, i0, j0, rows, cols);
            // SAFETY: columns j0.. < n are rows of `c` and rows i0.. + rows
            // <= m lie inside them, as they do in the residual (checked by
            // the caller); blocks of different tasks are disjoint.
            unsafe {
                match epi.residual {
                    None => out.store_block_transposed(ldc, acc.as_f32(), i0, j0, rows, cols),
                    Some(r) => out.store_block_transposed_finished(ldc, acc.as_f32(), i0, j0, rows, cols, epi, r),
                }
            }
        } else {
            // SAFETY: rows i0.. < m and columns j0..j0 + cols <= n lie in
            // `c` (checked by the caller); blocks of different tasks are
            // disjoint.
            let mut dst = unsafe { out.block_rows(ldc, i0, j0, rows, cols) };
            epi.apply_block_into(acc, i0, j0, cols, &mut dst[..rows]);
        }
    };
    let ahead = move |i0: usize, j0: usize| {
        let (rows, cols) = (MR.min(m - i0), NR.min(n - j0));
        if transposed {
            out.prefetch_block(ldc, j0, i0, cols, rows);
        } else {
            out.prefetch_for_epilogue(ldc, epi, i0, j0, rows, cols);
        }
    };
    drive(isa, blk, DotKind::Bf16, ap, m, b.view(), &finish, &ahead);
}

thread_local! {
    /// The hidden layer of [`tile_mlp`]'s last call on this thread, as A
    /// panels (reused like the packed-A buffer).
    static HIDDEN_BUFFER: std::cell::Cell<Option<Bytes>> = const { std::cell::Cell::new(None) };
}

/// Two products in a row on bf16 tiles, `c = epi2(epi1(a @ b1) @ b2)`, the
/// first one's output (the hidden layer) written by its epilogue straight
/// into the second one's A panels, in the weights' split: each finished
/// 32x32 block of the first product is exactly one k-block of one A panel
/// of the second. The hidden layer never exists in fp32 and is not read
/// back to be packed (under plain bf16 it is also stored at half the
/// bytes); the result is the one the two products give one after the
/// other (the second splits its A the same way).
///
/// Both weights must be packed from fp32 with the same split, `b2.k()` must
/// be `b1.n()`, K and the hidden width non-zero, and `epi1` without a
/// residual. `c` is row-major with row stride `ldc` and is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn tile_mlp(
    isa: TileIsa,
    a: MatRef<f32>,
    b1: &PackedB,
    epi1: &Epilogue,
    b2: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi2: &Epilogue,
) {
    tile_mlp_with(isa, TileBlocking::configured(), a, b1, epi1, b2, c, ldc, epi2)
}

/// [`tile_mlp`] with explicit loop blocking (for measurements and tests).
#[allow(clippy::too_many_arguments)]
pub fn tile_mlp_with(
    isa: TileIsa,
    blk: TileBlocking,
    a: MatRef<f32>,
    b1: &PackedB,
    epi1: &Epilogue,
    b2: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi2: &Epilogue,
) {
    let split = b1.split.expect("tile_mlp needs weights packed from fp32");
    assert_eq!(b2.split, Some(split), "tile_mlp needs both weights in one split");
    let (m, k, hidden, n) = (a.rows, a.cols, b1.n, b2.n);
    assert_eq!(k, b1.k, "inner dimensions differ");
    assert_eq!(hidden, b2.k, "the second weight's rows are not the first one's columns");
    assert!(k > 0 && hidden > 0, "tile_mlp needs non-empty inner dimensions");
    assert!(epi1.residual.is_none(), "the hidden layer takes no residual");
    a.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "output does not fit its slice");
    epi1.check(m, hidden);
    epi2.check(m, n);
    let panels = m.div_ceil(MR);
    // A k-block of an A panel is `parts` blocks side by side.
    let step = split.parts() * BLOCK_BYTES;
    let (a_len, h_len) = (b1.kblocks * BLOCK_BYTES, b2.kblocks * BLOCK_BYTES);
    with_a_buffer(a_len * panels, |ap| {
        timed_pack(|| pack_a_panels(a, ap, a_len, split));
        with_reused_bytes(&HIDDEN_BUFFER, h_len * panels, |hp| {
            let hidden_out = OutPtr(hp.as_mut_ptr());
            // Block (i0, j0) of the hidden layer is k-block j0 / 32 of A
            // panel i0 / 32.
            let at = move |i0: usize, j0: usize| (i0 / MR) * h_len + (j0 / NR) * step;
            let finish = move |acc: &mut AccBlock, i0: usize, j0: usize| {
                let (rows, cols) = (MR.min(m - i0), NR.min(hidden - j0));
                // SAFETY: `at(i0, j0) + step <= panels * h_len`, the
                // buffer's length (i0 < m, j0 < hidden, and a panel holds
                // ceil(hidden / 32) k-blocks of `step` bytes); blocks of
                // different tasks are different k-blocks, so this task
                // alone writes these bytes, and the buffer outlives `drive`.
                let dst = unsafe { std::slice::from_raw_parts_mut(hidden_out.at(at(i0, j0)), step) };
                // Rows past `rows` and columns past `cols` are zero: they
                // pad the second product's ragged M and K.
                epi1.apply_block_into_a_panel(acc, i0, j0, rows, cols, split, dst);
            };
            let ahead = move |i0: usize, j0: usize| {
                prefetch_rows(hidden_out.at(at(i0, j0)) as *const u8, 64, 0, 0, step / 64, 64);
            };
            drive(isa, blk, DotKind::Bf16, ap, m, b1.view(), &finish, &ahead);
            sgemm_from_panels(isa, blk, hp, m, b2, c, ldc, false, epi2);
        })
    })
}

/// An 8-bit activation matrix (raw bytes, row-major with `row_stride`).
#[derive(Copy, Clone, Debug)]
pub struct I8Mat<'a> {
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub signed: bool,
}

/// The output of an integer GEMM.
pub enum I8Out<'a> {
    /// The exact integer result (MatMulInteger).
    I32 { c: &'a mut [i32], ldc: usize },
    /// The exact integer result stored transposed: element (i, j) at
    /// `c[j * ld + i]` (an integer convolution's `[positions, channels]`
    /// product lands in NCHW this way, as with [`tile_sgemm_transposed`]).
    I32Transposed { c: &'a mut [i32], ld: usize },
    /// `scale_a[i] * scale_b[j] * result`, then the epilogue (dynamic
    /// quantization: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul).
    F32 { c: &'a mut [f32], ldc: usize, scale_a: &'a [f32], scale_b: &'a [f32], epi: &'a Epilogue<'a> },
}

/// `sum_k (a[i,k] - za[i]) * (b[k,j] - zb[j])` on int8 tiles, with the
/// zero points folded in after the product (`a_zero` per tensor or per row).
pub fn tile_igemm(isa: TileIsa, a: I8Mat, a_zero: &[i32], b: &PackedB, out: I8Out) {
    tile_igemm_with(isa, TileBlocking::configured(), a, a_zero, b, out)
}

/// [`tile_igemm`] with explicit loop blocking (for measurements).
pub fn tile_igemm_with(isa: TileIsa, blk: TileBlocking, a: I8Mat, a_zero: &[i32], b: &PackedB, out: I8Out) {
    let (m, k) = (a.rows, a.cols);
    if m > 0 {
        assert!((m - 1) * a.row_stride + k <= a.data.len(), "A does not fit its slice");
    }
    igemm_panels(isa, blk, m, k, a.signed, a_zero, b, out, |i0, rows, dst, sums| {
        pack::pack_a_i8(dst, rows, k, a.signed, |i| &a.data[(i0 + i) * a.row_stride..][..k], sums)
    })
}

thread_local! {
    /// A panel's rows as [`tile_igemm_gather`] makes them, before packing.
    static GATHERED_ROWS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`tile_igemm`] with A's rows made while A is packed: `gather(i, row)`
/// writes row `i`'s `k` bytes into a panel's scratch rows (in L1/L2), which
/// are packed right away. For an A that would otherwise be written out in
/// full and read back (a convolution's im2row), this saves that pass.
#[allow(clippy::too_many_arguments)]
pub fn tile_igemm_gather(
    isa: TileIsa,
    m: usize,
    k: usize,
    signed: bool,
    gather: impl Fn(usize, &mut [u8]) + Sync,
    a_zero: &[i32],
    b: &PackedB,
    out: I8Out,
) {
    igemm_panels(isa, TileBlocking::configured(), m, k, signed, a_zero, b, out, |i0, rows, dst, sums| {
        let mut scratch = GATHERED_ROWS.with(|c| c.take());
        if scratch.len() < MR * k {
            scratch.resize(MR * k, 0);
        }
        for i in 0..rows {
            gather(i0 + i, &mut scratch[i * k..][..k]);
        }
        pack::pack_a_i8(dst, rows, k, signed, |i| &scratch[i * k..][..k], sums);
        GATHERED_ROWS.with(|c| c.set(scratch));
    })
}

/// The int8 product with A packed panel by panel (`pack_panel(i0, rows,
/// dst, sums)` packs rows `i0..i0 + rows` and their sums), over the pool.
#[allow(clippy::too_many_arguments)]
fn igemm_panels(
    isa: TileIsa,
    blk: TileBlocking,
    m: usize,
    k: usize,
    a_signed: bool,
    a_zero: &[i32],
    b: &PackedB,
    out: I8Out,
    pack_panel: impl Fn(usize, usize, &mut [u8], &mut [i32]) + Sync,
) {
    let DotKind::I8 { b_signed, .. } = b.kind else { panic!("tile_igemm needs a weight packed from 8-bit values") };
    let n = b.n;
    assert_eq!(k, b.k, "inner dimensions differ");
    assert!(a_zero.len() == 1 || a_zero.len() == m, "A zero point must be per tensor or per row");
    if m == 0 || n == 0 {
        return;
    }
    let kind = DotKind::I8 { a_signed, b_signed };
    let a_len = b.kblocks * BLOCK_BYTES;
    with_a_buffer(a_len * m.div_ceil(MR), |ap| {
        let mut row_sums = vec![0i32; m];
        timed_pack(|| {
            ap.par_chunks_mut(a_len.max(1)).zip(row_sums.par_chunks_mut(MR)).enumerate().for_each(|(p, (dst, sums))| {
                let i0 = p * MR;
                pack_panel(i0, MR.min(m - i0), dst, sums);
            })
        });
        igemm_packed(kind, isa, blk, m, k, a_zero, ap, &row_sums, b, out)
    })
}

/// `c = epi(a @ b)` for fp32 `a` (`m x k`, any strides) and an 8-bit
/// weight, `a` quantized on the fly: each row symmetrically to int8 with its
/// own scale (as [`crate::quant::quantize_rows_i8`], bit for bit), straight
/// into the packed panels, so the quantized matrix never goes to memory.
pub fn tile_igemm_quantizing(
    isa: TileIsa,
    a: MatRef<f32>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    scale_b: &[f32],
    epi: &Epilogue,
) {
    tile_igemm_quantizing_with(isa, TileBlocking::configured(), a, b, c, ldc, scale_b, epi)
}

/// [`tile_igemm_quantizing`] with explicit loop blocking.
#[allow(clippy::too_many_arguments)]
pub fn tile_igemm_quantizing_with(
    isa: TileIsa,
    blk: TileBlocking,
    a: MatRef<f32>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    scale_b: &[f32],
    epi: &Epilogue,
) {
    let DotKind::I8 { b_signed, .. } = b.kind else { panic!("tile_igemm needs a weight packed from 8-bit values") };
    let (m, k, n) = (a.rows, a.cols, b.n);
    assert_eq!(k, b.k, "inner dimensions differ");
    a.check();
    if m == 0 || n == 0 {
        return;
    }
    let kind = DotKind::I8 { a_signed: true, b_signed };
    let a_len = b.kblocks * BLOCK_BYTES;
    with_a_buffer(a_len * m.div_ceil(MR), |ap| {
        let mut row_sums = vec![0i32; m];
        let mut scale_a = vec![0f32; m];
        let panels = ap.par_chunks_mut(a_len.max(1)).zip(row_sums.par_chunks_mut(MR)).zip(scale_a.par_chunks_mut(MR));
        timed_pack(|| {
            panels.enumerate().for_each(|(p, ((dst, sums), scales))| {
                let (i0, rows) = (p * MR, MR.min(m - p * MR));
                pack::quantize_pack_a_i8(dst, a, i0, rows, sums, scales);
            })
        });
        let out = I8Out::F32 { c, ldc, scale_a: &scale_a, scale_b, epi };
        igemm_packed(kind, isa, blk, m, k, &[0], ap, &row_sums, b, out)
    })
}

#[allow(clippy::too_many_arguments)]
fn igemm_packed(
    kind: DotKind,
    isa: TileIsa,
    blk: TileBlocking,
    m: usize,
    k: usize,
    a_zero: &[i32],
    ap: &[u8],
    row_sums: &[i32],
    b: &PackedB,
    out: I8Out,
) {
    let n = b.n;
    let corr = I8Correction { k: k as i32, a_zero, row_sums, b_zero: &b.zero, col_sums: &b.col_sums };
    match out {
        I8Out::I32 { c, ldc } => {
            assert!((m - 1) * ldc + n <= c.len(), "output does not fit its slice");
            let out = OutPtr(c.as_mut_ptr());
            let finish = move |acc: &mut AccBlock, i0: usize, j0: usize| {
                let (rows, cols) = (MR.min(m - i0), NR.min(n - j0));
                corr.correct_block(acc, i0, j0, rows, cols);
                // SAFETY: inside `c` (checked above); blocks are disjoint.
                unsafe { out.store_block(ldc, acc.as_i32(), i0, j0, rows, cols) };
            };
            let ahead = move |i0: usize, j0: usize| {
                out.prefetch_block(ldc, i0, j0, MR.min(m - i0), NR.min(n - j0));
            };
            drive(isa, blk, kind, ap, m, b.view(), &finish, &ahead);
        }
        I8Out::I32Transposed { c, ld } => {
            assert!((n - 1) * ld + m <= c.len(), "output does not fit its slice");
            let out = OutPtr(c.as_mut_ptr());
            let finish = move |acc: &mut AccBlock, i0: usize, j0: usize| {
                let (rows, cols) = (MR.min(m - i0), NR.min(n - j0));
                corr.correct_block(acc, i0, j0, rows, cols);
                // SAFETY: columns j0.. < n are rows of `c` and rows i0.. + rows
                // <= m lie inside them (checked above); blocks are disjoint.
                unsafe { out.store_block_transposed(ld, acc.as_i32(), i0, j0, rows, cols) };
            };
            let ahead = move |i0: usize, j0: usize| {
                out.prefetch_block(ld, j0, i0, NR.min(n - j0), MR.min(m - i0));
            };
            drive(isa, blk, kind, ap, m, b.view(), &finish, &ahead);
        }
        I8Out::F32 { c, ldc, scale_a, scale_b, epi } => {
            assert!((m - 1) * ldc + n <= c.len(), "output does not fit its slice");
            assert!(scale_a.len() == 1 || scale_a.len() == m, "A scale must be per tensor or per row");
            assert!(scale_b.len() == 1 || scale_b.len() == n, "B scale must be per tensor or per column");
            epi.check(m, n);
            let out = OutPtr(c.as_mut_ptr());
            let finish = move |acc: &mut AccBlock, i0: usize, j0: usize| {
                let (rows, cols) = (MR.min(m - i0), NR.min(n - j0));
                // SAFETY: inside `c` (checked above); blocks are disjoint.
                let mut dst = unsafe { out.block_rows(ldc, i0, j0, rows, cols) };
                corr.dequantize_block_into(scale_a, scale_b, epi, acc, i0, j0, cols, &mut dst[..rows]);
            };
            let ahead =
                move |i0: usize, j0: usize| out.prefetch_for_epilogue(ldc, epi, i0, j0, MR.min(m - i0), NR.min(n - j0));
            drive(isa, blk, kind, ap, m, b.view(), &finish, &ahead);
        }
    }
}

/// Named for scripts/test's AMX check: on a machine with AMX every test
/// here runs the AMX kernel beside the emulation.
#[cfg(test)]
mod amx_tests {
    use super::*;
    use crate::gemm::{Activation, Residual};
    use proptest::prelude::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `StagedA`'s stages run on every ISA, and its epilogue stage alone
    /// finishes every element from a zero product (here `relu(bias)`),
    /// ragged edges included.
    #[test]
    fn staged_gemm_stages_touch_what_they_say() {
        let (m, k, n) = (70, 40, 45);
        let a = rand_vec(m * k, 11);
        let b = rand_vec(k * n, 12);
        let bias = rand_vec(n, 13);
        let pb = PackedB::from_f32(MatRef::row_major(&b, k, n), Split::Bf16);
        for isa in isas() {
            let mut staged = StagedA::new(m, &pb);
            staged.pack(MatRef::row_major(&a, m, k));
            staged.product(isa, TileBlocking::DEFAULT, &pb);
            let mut c = vec![f32::NAN; m * n];
            let epi = Epilogue { bias: Some(&bias), activation: Activation::Relu, ..Default::default() };
            staged.epilogue(n, &mut c, n, &epi);
            for (at, v) in c.iter().enumerate() {
                assert_eq!(*v, bias[at % n].max(0.0), "{isa:?} element {at}");
            }
        }
    }

    /// The ISAs to test (see [`crate::gemm::ukernel::isas_under_test`]).
    fn isas() -> Vec<TileIsa> {
        crate::gemm::ukernel::isas_under_test()
    }

    /// Error bound relative to sum |a||b| for each split.
    fn rel_bound(split: Split, k: usize) -> f64 {
        let acc = 2.0 * k as f64 * 2f64.powi(-24);
        match split {
            Split::Bf16 => 2.0 * 2f64.powi(-8) + acc,
            Split::Bf16x3 => 3.0 * 2f64.powi(-16) + acc,
            Split::Bf16x6 => 8.0 * 2f64.powi(-24) + acc,
        }
    }

    /// Small blockings so that the K chunks, chunk edges, A-panel groups and
    /// both loop orders of the driver (A resident, K outermost: small
    /// `a_bytes`) are all reached on test-sized shapes.
    fn blocking() -> impl Strategy<Value = TileBlocking> {
        let knobs = (0usize..5, 1usize..4, 0usize..3, 0usize..3, 0usize..3, 0usize..4, any::<bool>());
        knobs.prop_map(|(kc, panels, pf, st, ab, g, guided)| {
            TileBlocking {
                kc_blocks: if kc == 4 { TileBlocking::KC_AUTO } else { kc },
                a_panels: panels,
                a_bytes: [BLOCK_BYTES, 5 * BLOCK_BYTES, TileBlocking::DEFAULT.a_bytes][ab],
                prefetch: [Prefetch::None, Prefetch::A, Prefetch::Ab][pf],
                stream: [WeightStream::Off, WeightStream::Bulk, WeightStream::Spread][st],
                // Fixed grids too (clamped to the limits by the driver).
                grid: [None, Some((1, 1)), Some((2, 3)), Some((9, 9))][g],
                schedule: if guided { Schedule::Guided } else { Schedule::Static },
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn check_sgemm(isa: TileIsa, blk: TileBlocking, m: usize, k: usize, n: usize, split: Split, seed: u64, ta: bool) {
        let a = rand_vec(m * k, seed);
        let b = rand_vec(k * n, seed ^ 0x55);
        let bias = rand_vec(n, seed ^ 0x77);
        let res = rand_vec(m * n, seed ^ 0x99);
        let av = if ta { MatRef::row_major(&a, k, m).t() } else { MatRef::row_major(&a, m, k) };
        let pb = PackedB::from_f32(MatRef::row_major(&b, k, n), split);
        let mut c = vec![f32::NAN; m * n];
        let epi = Epilogue {
            alpha: 0.5,
            requantize: None,
            bias: Some(&bias),
            row_bias: None,
            activation: Activation::None,
            residual: Some(Residual { data: &res, row_stride: n }),
            residual_first: false,
        };
        tile_sgemm_with(isa, blk, av, &pb, &mut c, n, &epi);
        let bound = rel_bound(split, k);
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let x = av.data[i * av.row_stride + p * av.col_stride] as f64;
                    let y = b[p * n + j] as f64;
                    exact += x * y;
                    mag += (x * y).abs();
                }
                let want = 0.5 * exact + bias[j] as f64 + res[i * n + j] as f64;
                let got = c[i * n + j] as f64;
                let tol = 0.5 * bound * mag + 1e-6;
                assert!((got - want).abs() <= tol, "{isa:?} {split:?} {m}x{k}x{n} at ({i},{j}): {got} vs {want}");
            }
        }
    }

    /// [`tile_mlp`] against its two products one after the other (an fp32
    /// hidden layer, which the second product splits as it packs it): the
    /// same bits, ragged M, K, hidden width and N included.
    fn check_mlp(
        isa: TileIsa,
        blk: TileBlocking,
        (m, k, hidden, n): (usize, usize, usize, usize),
        split: Split,
        seed: u64,
        act: Activation,
    ) {
        let a = rand_vec(m * k, seed);
        let w1 = rand_vec(k * hidden, seed ^ 0x11);
        let w2 = rand_vec(hidden * n, seed ^ 0x22);
        let (b1, b2) = (rand_vec(hidden, seed ^ 0x33), rand_vec(n, seed ^ 0x44));
        let ldc = n + 2;
        let res = rand_vec(m * ldc, seed ^ 0x55);
        let (p1, p2) = (
            PackedB::from_f32(MatRef::row_major(&w1, k, hidden), split),
            PackedB::from_f32(MatRef::row_major(&w2, hidden, n), split),
        );
        let epi1 = Epilogue { bias: Some(&b1), activation: act, ..Default::default() };
        let epi2 = Epilogue {
            bias: Some(&b2),
            residual: Some(Residual { data: &res, row_stride: ldc }),
            ..Default::default()
        };
        let av = MatRef::row_major(&a, m, k);
        let mut fused = vec![f32::NAN; m * ldc];
        // A stale hidden buffer of NaNs (bf16 0xFFFF): any byte of the
        // second product's A panels that the handover leaves unwritten,
        // padding included, turns the result into NaN.
        let stale = (p2.kblocks * BLOCK_BYTES * m.div_ceil(MR)).max(1 << 16);
        HIDDEN_BUFFER.with(|c| c.set(Some(aligned_bytes(stale, 0xFF))));
        tile_mlp_with(isa, blk, av, &p1, &epi1, &p2, &mut fused, ldc, &epi2);
        let mut h = vec![f32::NAN; m * hidden];
        tile_sgemm_with(isa, blk, av, &p1, &mut h, hidden, &epi1);
        let mut twice = vec![f32::NAN; m * ldc];
        tile_sgemm_with(isa, blk, MatRef::row_major(&h, m, hidden), &p2, &mut twice, ldc, &epi2);
        for i in 0..m {
            for j in 0..ldc {
                let (f, t) = (fused[i * ldc + j], twice[i * ldc + j]);
                if j >= n {
                    assert!(f.is_nan(), "wrote past N at ({i},{j})");
                } else {
                    assert_eq!(
                        f.to_bits(),
                        t.to_bits(),
                        "{isa:?} {m}x{k}x{hidden}x{n} {act:?} at ({i},{j}): {f} vs {t}"
                    );
                }
            }
        }
    }

    /// [`tile_sgemm_rows`]: a packed left operand, a row-major right one
    /// with a row stride wider than N, a bias per row, a residual before
    /// or after ReLU, against f64.
    #[allow(clippy::too_many_arguments)]
    fn check_rows(isa: TileIsa, blk: TileBlocking, m: usize, k: usize, n: usize, pad: usize, seed: u64, first: bool) {
        let a = rand_vec(m * k, seed);
        let ldb = n + pad;
        let b = rand_vec(k * ldb, seed ^ 0x55);
        let row_bias = rand_vec(m, seed ^ 0x77);
        let ldc = n + 3;
        let res = rand_vec(m * ldc, seed ^ 0x99);
        let pa = PackedA::from_f32(MatRef::row_major(&a, m, k));
        let mut c = vec![f32::NAN; m * ldc];
        let epi = Epilogue {
            row_bias: Some(&row_bias),
            activation: Activation::Relu,
            residual: Some(Residual { data: &res, row_stride: ldc }),
            residual_first: first,
            ..Default::default()
        };
        tile_sgemm_rows_with(
            isa,
            blk,
            &pa,
            MatRef { data: &b, rows: k, cols: n, row_stride: ldb, col_stride: 1 },
            &mut c,
            ldc,
            &epi,
        );
        let bound = rel_bound(Split::Bf16, k);
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let x = a[i * k + p] as f64 * b[p * ldb + j] as f64;
                    exact += x;
                    mag += x.abs();
                }
                let (pre, r) = (exact + row_bias[i] as f64, res[i * ldc + j] as f64);
                let want = if first { (pre + r).max(0.0) } else { pre.max(0.0) + r };
                let got = c[i * ldc + j] as f64;
                // Each operand rounded to bf16 (relative 2^-8 at worst).
                let tol = bound * mag + 1e-6;
                assert!((got - want).abs() <= tol, "{isa:?} {m}x{k}x{n} at ({i},{j}): {got} vs {want}");
            }
            assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()), "wrote past N in row {i}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn tile_sgemm_rows_matches_reference(
            m in 1usize..100, k in 0usize..150, n in 1usize..75, pad in 0usize..4, seed in any::<u64>(),
            first in any::<bool>(), blk in blocking(),
        ) {
            for isa in isas() {
                check_rows(isa, blk, m, k, n, pad, seed, first);
            }
        }

        #[test]
        fn tile_mlp_matches_its_two_products(
            m in 1usize..80, k in 1usize..90, hidden in 1usize..110, n in 1usize..70, seed in any::<u64>(),
            act in prop_oneof![Just(Activation::None), Just(Activation::Relu), Just(Activation::GeluErfPieces)],
            split in prop_oneof![Just(Split::Bf16), Just(Split::Bf16x3), Just(Split::Bf16x6)],
            blk in blocking(),
        ) {
            for isa in isas() {
                check_mlp(isa, blk, (m, k, hidden, n), split, seed, act);
            }
        }

        #[test]
        fn tile_sgemm_matches_reference(
            m in 1usize..100, k in 1usize..200, n in 1usize..75, seed in any::<u64>(), ta in any::<bool>(),
            split in prop_oneof![Just(Split::Bf16), Just(Split::Bf16x3), Just(Split::Bf16x6)],
            blk in blocking(),
        ) {
            for isa in isas() {
                check_sgemm(isa, blk, m, k, n, split, seed, ta);
            }
        }

        #[test]
        fn tile_igemm_matches_reference(
            m in 1usize..70, k in 1usize..150, n in 1usize..70, seed in any::<u64>(),
            a_signed in any::<bool>(), b_signed in any::<bool>(), per_col in any::<bool>(), per_row in any::<bool>(),
            blk in blocking(),
        ) {
            for isa in isas() {
                check_igemm(isa, blk, m, k, n, seed, a_signed, b_signed, per_row, per_col);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_igemm(
        isa: TileIsa,
        blk: TileBlocking,
        m: usize,
        k: usize,
        n: usize,
        seed: u64,
        sa: bool,
        sb: bool,
        per_row: bool,
        per_col: bool,
    ) {
        let bytes =
            |len: usize, s: u64| rand_vec(len, s).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect::<Vec<u8>>();
        let a = bytes(m * k, seed);
        let b = bytes(k * n, seed ^ 3);
        let za: Vec<i32> = (0..if per_row { m } else { 1 }).map(|i| (i as i32 * 7 + 3) % 40 - 20).collect();
        let zb: Vec<i32> = (0..if per_col { n } else { 1 }).map(|j| (j as i32 * 5 + 1) % 30 - 15).collect();
        let pb = PackedB::from_i8(&b, k, n, sb, &zb);
        let val = |v: u8, s: bool| if s { v as i8 as i64 } else { v as i64 };
        let want = |i: usize, j: usize| -> i64 {
            let za = za[if per_row { i } else { 0 }] as i64;
            let zb = zb[if per_col { j } else { 0 }] as i64;
            (0..k).map(|p| (val(a[i * k + p], sa) - za) * (val(b[p * n + j], sb) - zb)).sum()
        };
        let am = I8Mat { data: &a, rows: m, cols: k, row_stride: k, signed: sa };
        let mut c = vec![i32::MIN; m * n];
        tile_igemm_with(isa, blk, am, &za, &pb, I8Out::I32 { c: &mut c, ldc: n });
        for i in 0..m {
            for j in 0..n {
                assert_eq!(c[i * n + j] as i64, want(i, j), "{isa:?} {m}x{k}x{n} s{sa}{sb} at ({i},{j})");
            }
        }
        // A's rows made while it is packed (a convolution's im2row): the same.
        let mut cg = vec![i32::MIN; m * n];
        let gather = |i: usize, row: &mut [u8]| row.copy_from_slice(&a[i * k..][..k]);
        tile_igemm_gather(isa, m, k, sa, gather, &za, &pb, I8Out::I32 { c: &mut cg, ldc: n });
        assert_eq!(cg, c, "{isa:?} gathered rows");
        // Stored transposed, with a leading dimension wider than m: the
        // same values, and nothing written between the rows.
        let ld = m + 3;
        let mut ct = vec![i32::MIN; (n - 1) * ld + m];
        tile_igemm_with(isa, blk, am, &za, &pb, I8Out::I32Transposed { c: &mut ct, ld });
        for j in 0..n {
            for i in 0..m {
                assert_eq!(ct[j * ld + i], c[i * n + j], "{isa:?} transposed at ({i},{j})");
            }
            if j + 1 < n {
                assert!(ct[j * ld + m..(j + 1) * ld].iter().all(|&v| v == i32::MIN), "{isa:?} gap after row {j}");
            }
        }
        // The dequantized output: scales per row / column or per tensor
        // (with the zero points' choice), a bias, ReLU and a residual.
        let scale_a: Vec<f32> = (0..if per_row { m } else { 1 }).map(|i| 0.5 + i as f32 * 0.01).collect();
        let scale_b: Vec<f32> = (0..if per_col { n } else { 1 }).map(|j| 0.01 + j as f32 * 1e-3).collect();
        let bias: Vec<f32> = (0..n).map(|j| (j as f32 - 20.0) * 0.05).collect();
        let res: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.25).collect();
        let mut f = vec![f32::NAN; m * n];
        let epi = Epilogue {
            activation: Activation::Relu,
            bias: Some(&bias),
            residual: Some(Residual { data: &res, row_stride: n }),
            ..Default::default()
        };
        tile_igemm_with(
            isa,
            blk,
            am,
            &za,
            &pb,
            I8Out::F32 { c: &mut f, ldc: n, scale_a: &scale_a, scale_b: &scale_b, epi: &epi },
        );
        for i in 0..m {
            for j in 0..n {
                let (sa, sb) =
                    (scale_a[if per_row { i } else { 0 }] as f64, scale_b[if per_col { j } else { 0 }] as f64);
                let w = (want(i, j) as f64 * sa * sb + bias[j] as f64).max(0.0) + res[i * n + j] as f64;
                assert!((f[i * n + j] as f64 - w).abs() <= 1e-5 * w.abs().max(1.0), "scaled ({i},{j})");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Quantizing A while packing it gives the bits of quantizing it
        /// first (`quantize_rows_i8`) and multiplying the bytes.
        #[test]
        fn quantizing_igemm_matches_quantize_then_multiply(
            m in 1usize..80, k in 1usize..300, n in 1usize..70, seed in any::<u64>(), ta in any::<bool>(),
            b_signed in any::<bool>(), per_col in any::<bool>(), gelu in any::<bool>(), blk in blocking(),
        ) {
            let a = rand_vec(m * k, seed);
            let bytes: Vec<u8> = rand_vec(k * n, seed ^ 1).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
            let zb: Vec<i32> = (0..if per_col { n } else { 1 }).map(|j| (j as i32 * 3) % 11 - 5).collect();
            let pb = PackedB::from_i8(&bytes, k, n, b_signed, &zb);
            let scale_b: Vec<f32> = (0..if per_col { n } else { 1 }).map(|j| 0.02 + j as f32 * 1e-3).collect();
            let bias = rand_vec(n, seed ^ 2);
            let res = rand_vec(m * n, seed ^ 3);
            let epi = Epilogue {
                bias: Some(&bias),
                activation: if gelu { Activation::GeluErf } else { Activation::None },
                residual: Some(Residual { data: &res, row_stride: n }),
                ..Default::default()
            };
            let av = if ta { MatRef::row_major(&a, k, m).t() } else { MatRef::row_major(&a, m, k) };
            let dense: Vec<f32> = (0..m * k).map(|ij| av.data[(ij / k) * av.row_stride + (ij % k) * av.col_stride]).collect();
            let (mut q, mut sa) = (Vec::new(), Vec::new());
            crate::quant::quantize_rows_i8(&dense, k, &mut q, &mut sa);
            for isa in isas() {
                let mut want = vec![f32::NAN; m * n];
                let am = I8Mat { data: &q, rows: m, cols: k, row_stride: k, signed: true };
                let o = I8Out::F32 { c: &mut want, ldc: n, scale_a: &sa, scale_b: &scale_b, epi: &epi };
                tile_igemm_with(isa, blk, am, &[0], &pb, o);
                let mut got = vec![f32::NAN; m * n];
                tile_igemm_quantizing_with(isa, blk, av, &pb, &mut got, n, &scale_b, &epi);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    prop_assert_eq!(g.to_bits(), w.to_bits(), "{:?} {}x{}x{} at {}", isa, m, k, n, i);
                }
            }
        }
    }

    #[test]
    fn epilogue_activations_match_scalar_definitions() {
        let acc: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let acts = [
            Activation::Relu,
            Activation::GeluErf,
            Activation::GeluErfPieces,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::Relu6,
        ];
        for act in acts {
            let epi = Epilogue { activation: act, bias: Some(&[0.25]), ..Default::default() };
            let mut dst = vec![0f32; 40];
            epi.apply_f32(&acc, 0, 0, &mut dst);
            for (x, y) in acc.iter().zip(&dst) {
                let v = *x as f64 + 0.25;
                let want = match act {
                    Activation::Relu => v.max(0.0),
                    Activation::GeluErf | Activation::GeluErfPieces => {
                        0.5 * v * (1.0 + crate::elementwise::erf_f64(v / 2f64.sqrt()))
                    }
                    Activation::GeluTanh => {
                        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
                    }
                    Activation::Silu => v / (1.0 + (-v).exp()),
                    Activation::Relu6 => v.clamp(0.0, 6.0),
                    Activation::None => v,
                };
                // The degree-4 pieces are within 5e-6 absolute (the
                // reduced precisions' GELU); the rest within 2e-6.
                let tol = if act == Activation::GeluErfPieces { 5e-6 } else { 2e-6 };
                assert!((*y as f64 - want).abs() <= tol * want.abs().max(1.0), "{act:?}({v}) = {y}, want {want}");
            }
        }
    }

    #[test]
    fn split_parts_reconstruct_fp32() {
        for x in rand_vec(1000, 5).into_iter().map(|v| v * 1e3) {
            let p = pack::split_f32(x, 3);
            let sum: f64 = p.iter().map(|&b| half::bf16::from_bits(b).to_f64()).sum();
            assert_eq!(sum as f32, x);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// The split microkernels, called directly on every prefetch
        /// variant, against the emulation (which runs the listed products
        /// one by one): same sums up to fp32 rounding, with and without
        /// loading the accumulators, over 0 to 5 k-steps.
        #[test]
        fn split_microkernels_match_emulation(
            parts in 1usize..4, ksteps in 0usize..6, seed in any::<u64>(), accumulate in any::<bool>(), pf in 0usize..3,
        ) {
            let split = [Split::Bf16, Split::Bf16x3, Split::Bf16x6][parts - 1];
            let k = 32 * ksteps;
            let (a, b) = (rand_vec(32 * k, seed), rand_vec(k * 32, seed ^ 3));
            let len = ksteps * parts * BLOCK_BYTES;
            let (mut ap, mut bp) = (zeroed(len), zeroed(len));
            pack::pack_a_f32(&mut ap, MatRef::row_major(&a, 32, k), split);
            pack::pack_b_f32(&mut bp, 32, k, split, |kk, j| b[kk * 32 + j]);
            let start = rand_vec(MR * NR, seed ^ 5);
            let run = |isa: TileIsa| {
                let mut acc = AccBlock::new();
                acc.0.iter_mut().zip(&start).for_each(|(d, s)| *d = s.to_bits());
                let sess = TileSession::begin(isa, [Prefetch::None, Prefetch::A, Prefetch::Ab][pf]);
                sess.run_streaming(DotKind::Bf16, parts, &ap, &bp, ksteps, &mut acc, accumulate, &bp);
                *acc.as_f32()
            };
            let want = run(TileIsa::Emulated);
            for isa in isas().into_iter().filter(|&i| i != TileIsa::Emulated) {
                let got = run(isa);
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    let (i, j) = (idx / NR, idx % NR);
                    let mag: f32 = (0..k).map(|p| (a[i * k + p] * b[p * 32 + j]).abs()).sum::<f32>() + 1.0;
                    prop_assert!((g - w).abs() <= 1e-6 * mag, "{isa:?} parts {parts} at ({i},{j}): {g} vs {w}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The AVX-512 dot-product microkernel (named for scripts/test's
        /// check of CPUs with avx512_bf16 and avx512_vnni) on raw int8
        /// panels of every signedness, against the emulation: the same i32
        /// sums bit for bit (mod 2^32), with and without loading the
        /// accumulators, over 0 to 5 k-steps; the sign mappings (a flipped
        /// operand and its correction) are exact or they are wrong.
        #[test]
        fn avx512dot_int8_microkernel_matches_emulation(
            ksteps in 0usize..6, seed in any::<u64>(), accumulate in any::<bool>(),
        ) {
            if !isas().contains(&TileIsa::Avx512Dot) {
                return Ok(());
            }
            let len = ksteps * BLOCK_BYTES;
            let bytes = |salt: u64| -> Vec<u8> { rand_vec(len, seed ^ salt).iter().map(|v| (v * 127.9 + 128.0) as u8).collect() };
            let (a, b) = (bytes(1), bytes(2));
            // Start values over the whole u32 range, so that sums wrap.
            let start: Vec<u32> =
                rand_vec(2 * MR * NR, seed ^ 3).chunks(2).map(|p| (((p[0] + 1.0) * 65535.0) as u32) << 16 | (((p[1] + 1.0) * 32767.0) as u32)).collect();
            for a_signed in [false, true] {
                for b_signed in [false, true] {
                    let kind = DotKind::I8 { a_signed, b_signed };
                    let run = |isa: TileIsa| {
                        let mut acc = AccBlock::new();
                        acc.0.copy_from_slice(&start);
                        // B itself as the stream to prefetch: the prefetch
                        // loop runs on real bytes, and must not change a bit.
                        TileSession::begin(isa, Prefetch::None)
                            .run_streaming(kind, 1, &a, &b, ksteps, &mut acc, accumulate, &b);
                        acc.0
                    };
                    prop_assert_eq!(run(TileIsa::Avx512Dot).to_vec(), run(TileIsa::Emulated).to_vec(), "{:?}", kind);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// The transposed store writes exactly the transpose of the normal
        /// one (same bits), ragged shapes, strided A, with a leading
        /// dimension wider than M; a residual (before or after the
        /// activation) is read laid out like each output.
        #[test]
        fn transposed_store_is_the_transpose(
            m in 1usize..80, k in 1usize..70, n in 1usize..70, pad in 0usize..5, seed in any::<u64>(), ta in any::<bool>(),
            residual in 0usize..3,
        ) {
            let a = rand_vec(m * k, seed);
            let b = rand_vec(k * n, seed ^ 1);
            let bias = rand_vec(n, seed ^ 2);
            let res = rand_vec(m * n, seed ^ 3);
            let ld = m + pad;
            let mut res_t = vec![f32::NAN; n * ld];
            for i in 0..m {
                for j in 0..n {
                    res_t[j * ld + i] = res[i * n + j];
                }
            }
            let av = if ta { MatRef::row_major(&a, k, m).t() } else { MatRef::row_major(&a, m, k) };
            let epi = Epilogue { bias: Some(&bias), activation: Activation::GeluErf, ..Default::default() };
            let with_res = |data, row_stride| Epilogue {
                residual: (residual > 0).then_some(Residual { data, row_stride }),
                residual_first: residual == 2,
                ..epi
            };
            let (epi, epi_t) = (with_res(&res, n), with_res(&res_t, ld));
            for split in [Split::Bf16, Split::Bf16x6] {
                let pb = PackedB::from_f32(MatRef::row_major(&b, k, n), split);
                for isa in isas() {
                    let mut c = vec![0f32; m * n];
                    tile_sgemm(isa, av, &pb, &mut c, n, &epi);
                    let mut ct = vec![f32::NAN; n * ld];
                    tile_sgemm_transposed(isa, av, &pb, &mut ct, ld, &epi_t);
                    for i in 0..m {
                        for j in 0..n {
                            prop_assert_eq!(ct[j * ld + i].to_bits(), c[i * n + j].to_bits(), "{:?} ({}, {})", isa, i, j);
                        }
                    }
                    prop_assert!(ct.chunks(ld).all(|r| r[m..].iter().all(|v| v.is_nan())), "wrote past M");
                }
            }
        }
    }

    /// The fp32-accurate mode's claim: bf16x6 error is within 4x of an fp32
    /// GEMM's (both against f64), measured on a BERT-sized product.
    #[test]
    fn bf16x6_error_within_4x_of_fp32() {
        let (m, k, n) = (64, 768, 96);
        let a = rand_vec(m * k, 11);
        let b = rand_vec(k * n, 12);
        let mut fp32 = vec![0f32; m * n];
        crate::gemm::sgemm(
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            &mut fp32,
            n,
            1.0,
            0.0,
            crate::gemm::Parallel::None,
        );
        let exact: Vec<f64> =
            (0..m * n).map(|ij| (0..k).map(|p| a[(ij / n) * k + p] as f64 * b[p * n + ij % n] as f64).sum()).collect();
        let err = |c: &[f32]| c.iter().zip(&exact).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
        let e32 = err(&fp32);
        for isa in isas() {
            let pb = PackedB::from_f32(MatRef::row_major(&b, k, n), Split::Bf16x6);
            let mut c = vec![0f32; m * n];
            tile_sgemm(isa, MatRef::row_major(&a, m, k), &pb, &mut c, n, &Epilogue::default());
            let e6 = err(&c);
            assert!(e6 <= 4.0 * e32, "{isa:?}: bf16x6 max error {e6:e} vs fp32 {e32:e}");
        }
    }
}

#[cfg(test)]
mod blocking_tests {
    use super::*;

    #[test]
    fn blocking_names_parse_back() {
        for s in [
            "0:8:ab:bulk",
            "4:2:none:spread",
            "16:64:a:off",
            "auto:8:a:spread",
            "auto:8:a:spread:2x3",
            "auto:8:a:spread:auto:static",
            "auto:8:a:spread:2x3:static",
        ] {
            assert_eq!(TileBlocking::parse(s).unwrap().name(), s);
        }
        let three = TileBlocking::parse("0:8:ab").unwrap();
        assert_eq!(three.stream, TileBlocking::DEFAULT.stream);
        assert_eq!(TileBlocking::parse(&TileBlocking::DEFAULT.name()).unwrap(), TileBlocking::DEFAULT);
        let auto = TileBlocking::DEFAULT;
        assert_eq!((auto.k_chunk(1), auto.k_chunk(24), auto.k_chunk(25), auto.k_chunk(96)), (8, 8, 25, 96));
        assert_eq!(TileBlocking::parse("0:8:a").unwrap().k_chunk(12), 12);
        assert_eq!(TileBlocking::parse("0:8:a:off:auto").unwrap().grid, None);
        assert_eq!(TileBlocking::parse("0:8:a:off:4x1").unwrap().grid, Some((4, 1)));
        assert_eq!(TileBlocking::parse("0:8:a:off:4x1:guided").unwrap(), TileBlocking::parse("0:8:a:off:4x1").unwrap());
        assert_eq!(TileBlocking::parse("0:8:a:off:auto:static").unwrap().schedule, Schedule::Static);
        for bad in [
            "0:8",
            "0:8:ab:fast",
            "0:0:ab",
            "x:8:ab",
            "0:8:ab:bulk:1",
            "0:8:ab:bulk:0x2",
            "0:8:ab:bulk:2x0",
            "0:8:ab:bulk:2x",
            "0:8:ab:bulk:x3",
            "0:8:ab:bulk:2x3x4",
            "0:8:ab:bulk:99999999999999999999999x1",
            "0:8:a:off:2x3:1",
            "0:8:a:off:2x3:dynamic",
            "0:8:a:off:2x3:static:1",
        ] {
            assert!(TileBlocking::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn bf16_weights_from_rows_columns_and_strides_pack_as_the_element_packer_does() {
        // Row-major, column-major (a transposed view, as Gemm's transB) and
        // neither (every other element): plain bf16 through the vector
        // packers must give the element packer's bytes.
        for (k, n) in [(1, 1), (1, 40), (45, 1), (70, 33), (64, 64), (129, 97)] {
            let vals: Vec<f32> = (0..2 * k * n).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
            let views = [
                MatRef::row_major(&vals[..k * n], k, n),
                MatRef::row_major(&vals[..k * n], n, k).t(),
                MatRef { data: &vals, rows: k, cols: n, row_stride: 2 * n, col_stride: 2 },
            ];
            for b in views {
                let got = PackedB::from_f32(b, Split::Bf16);
                let panel = got.kblocks * BLOCK_BYTES;
                let mut want = vec![0u8; panel * n.div_ceil(NR)];
                for (p, dst) in want.chunks_mut(panel).enumerate() {
                    let j0 = p * NR;
                    pack::pack_b_f32(dst, NR.min(n - j0), k, Split::Bf16, |kk, j| {
                        b.data[kk * b.row_stride + (j0 + j) * b.col_stride]
                    });
                }
                assert!(got.data[..] == want[..], "{k}x{n} strides {} {}", b.row_stride, b.col_stride);
            }
        }
    }

    /// Every run `GuidedRuns` hands out, in order, claimed by takers in
    /// the order `order` gives (cycled) until all are taken.
    fn guided_runs(m_chunks: usize, nb: usize, run: usize, takers: usize, order: &[usize]) -> Vec<(usize, Run)> {
        let claims = GuidedRuns::new(m_chunks, nb, run, takers);
        let mut out = Vec::new();
        for &me in order.iter().cycle() {
            match claims.claim(me) {
                Some(r) => out.push((me, r)),
                None => return out,
            }
        }
        unreachable!()
    }

    fn lens(runs: &[(usize, Run)]) -> Vec<usize> {
        runs.iter().map(|(_, (_, r))| r.len()).collect()
    }

    #[test]
    fn guided_runs_follow_each_takers_segment_then_halve() {
        // BERT-base at batch 1 on 2 threads, N = 768: each taker starts
        // with the grid's run of 6 panels from its own 12, then halves what
        // is left; its panels follow each other.
        let both = guided_runs(1, 24, 6, 2, &[0, 1]);
        let cols: Vec<_> = both.iter().map(|(me, (_, r))| (*me, r.start, r.end)).collect();
        assert_eq!(
            cols,
            [(0, 0, 6), (1, 12, 18), (0, 6, 9), (1, 18, 21), (0, 9, 11), (1, 21, 23), (0, 11, 12), (1, 23, 24)]
        );
        // A taker that never comes back after its first run: the other
        // takes the rest of its segment from the back, in halves.
        let claims = GuidedRuns::new(1, 24, 6, 2);
        assert_eq!(claims.claim(1), Some((0, 12..18)));
        let rest: Vec<Run> = std::iter::from_fn(|| claims.claim(0)).collect();
        assert_eq!(rest, [(0, 0..6), (0, 6..9), (0, 9..11), (0, 11..12), (0, 21..24), (0, 19..21), (0, 18..19)]);
        // One panel per run where the grid says so.
        assert_eq!(lens(&guided_runs(3, 5, 1, 16, &[0])), [1; 15]);
        assert_eq!(lens(&guided_runs(1, 3, 99, 1, &[0])), [2, 1]);
    }

    #[test]
    fn guided_runs_cover_each_pair_once_within_chunks() {
        for (m_chunks, nb, run, takers, order) in [
            (1, 24, 6, 2, &[0, 1][..]),
            (4, 96, 12, 16, &[3, 0, 15, 15, 7][..]),
            (2, 10, 4, 3, &[2][..]),
            (3, 7, 3, 5, &[4, 1][..]),
            (1, 1, 1, 8, &[5][..]),
            (5, 33, 40, 2, &[1, 1, 0][..]),
            (2, 3, 2, 64, &[9, 40][..]),
        ] {
            let runs = guided_runs(m_chunks, nb, run, takers, order);
            let mut seen = vec![0u32; m_chunks * nb];
            for (_, (chunk, cols)) in &runs {
                assert!(*chunk < m_chunks && !cols.is_empty() && cols.end <= nb && cols.len() <= run.max(1));
                cols.clone().for_each(|p| seen[chunk * nb + p] += 1);
            }
            assert!(seen.iter().all(|&n| n == 1), "{m_chunks} {nb} {run} {takers}: {runs:?}");
        }
    }

    #[test]
    fn guided_runs_claimed_by_racing_threads_cover_each_pair_once() {
        // Four threads released together on one-panel runs (every claim
        // a race), many times over.
        for _ in 0..200 {
            let (m_chunks, nb) = (4, 500);
            let claims = GuidedRuns::new(m_chunks, nb, 1, 4);
            let start = std::sync::Barrier::new(4);
            let taken: Vec<Vec<Run>> = std::thread::scope(|s| {
                let (claims, start) = (&claims, &start);
                let handles: Vec<_> = (0..4)
                    .map(|me| {
                        s.spawn(move || {
                            start.wait();
                            // Half the takers steal from the start.
                            std::iter::from_fn(|| claims.claim(if me % 2 == 0 { me } else { 0 })).collect()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut seen = vec![0u32; m_chunks * nb];
            for (chunk, cols) in taken.iter().flatten() {
                cols.clone().for_each(|p| seen[chunk * nb + p] += 1);
            }
            assert!(seen.iter().all(|&n| n == 1));
        }
    }

    #[test]
    fn a_product_with_no_output_columns_runs_nothing_on_several_threads() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let a = vec![0u8; 3 * BLOCK_BYTES];
        let none = Panels { data: &[], kblocks: 1, count: 0, parts: 1 };
        let blocks = std::sync::atomic::AtomicUsize::new(0);
        let finish = |_: &mut AccBlock, _: usize, _: usize| {
            blocks.fetch_add(1, Ordering::Relaxed);
        };
        pool.install(|| {
            drive(TileIsa::Emulated, TileBlocking::DEFAULT, DotKind::Bf16, &a, 70, none, &finish, &|_, _| {})
        });
        assert_eq!(blocks.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pack_runs_cut_panels_only_for_idle_threads() {
        // As many panels as threads or more: whole panels.
        assert_eq!(pack_runs(4, 24, 2), 1);
        assert_eq!(pack_runs(4, 24, 4), 1);
        // M = 128 at 16 threads: 8 runs per panel, limited by the shortest
        // run (K = 768: 24 k-blocks, 6 runs of 4; K = 3072: 8 runs of 12).
        assert_eq!(pack_runs(4, 24, 16), 6);
        assert_eq!(pack_runs(4, 96, 16), 8);
        // Too short to cut; no panels at all.
        assert_eq!(pack_runs(1, 3, 16), 1);
        assert_eq!(pack_runs(0, 24, 16), 1);
    }

    /// Panels packed in runs of k-blocks by a pool with more threads than
    /// panels hold the bytes of panels packed whole, for every split, with
    /// a ragged last panel and a ragged last run.
    #[test]
    fn panels_packed_in_runs_match_whole_panels() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(8).build().unwrap();
        let (m, k) = (40, 700);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 1001) as f32 - 500.0) / 77.0).collect();
        let view = MatRef::row_major(&a, m, k);
        for split in [Split::Bf16, Split::Bf16x3, Split::Bf16x6] {
            let a_len = pack::k_blocks(DotKind::Bf16, k) * split.parts() * BLOCK_BYTES;
            // 2 panels of 22 k-blocks on 8 threads: runs of 5, 5, 5, 5 and 2
            // k-blocks.
            assert_eq!(pack_runs(2, a_len / (split.parts() * BLOCK_BYTES), 8), 5);
            let mut runs = vec![0xAAu8; 2 * a_len];
            pool.install(|| pack_a_panels(view, &mut runs, a_len, split));
            let mut whole = vec![0x55u8; 2 * a_len];
            for (p, dst) in whole.chunks_mut(a_len).enumerate() {
                pack::pack_a_f32(dst, view.rows_range(32 * p, 32.min(m - 32 * p)), split);
            }
            assert!(runs == whole, "{split:?}");
        }
    }

    fn grid(mb: usize, nb: usize, threads: usize, most_a: usize) -> (usize, usize) {
        let g = TaskGrid::choose(mb, nb, threads, most_a, usize::MAX);
        (g.a_panels, g.b_panels)
    }

    #[test]
    fn task_grid_first_choice_then_model() {
        // About two tasks per thread, all A panels in each, where each task
        // gets several B panels: 2 threads at M = 128, 16 threads at
        // M = 1024 or 2048 and at M = 128 with N = 2304 or 3072.
        assert_eq!(grid(4, 24, 2, 8), (4, 6));
        assert_eq!(grid(4, 96, 2, 8), (4, 24));
        assert_eq!(grid(32, 96, 16, 8), (8, 12));
        assert_eq!(grid(64, 64, 16, 8), (8, 16));
        assert_eq!(grid(4, 96, 16, 8), (4, 3));
        assert_eq!(grid(4, 72, 16, 8), (4, 3));
        // One thread: the same rule (two tasks; nothing to balance), even
        // with a single B panel.
        assert_eq!(grid(4, 24, 1, 8), (4, 12));
        assert_eq!(grid(9, 1, 1, 8), (8, 1));
        // BERT-base at batch 1 (4 A panels) on 16 threads at N = 768: that
        // rule gives 24 tasks of 4 x 1 (a wave and a half, nothing to
        // stream); the model one wave of 16 tasks of 2 x 3.
        assert_eq!(grid(4, 24, 16, 8), (2, 3));
        // One B panel per task in one whole wave still goes to the model,
        // and so does a single B panel: 2048 x 32 on 16 threads splits M
        // into 16 tasks instead of 8.
        assert_eq!(grid(4, 16, 16, 8), (2, 2));
        assert_eq!(grid(64, 1, 16, 8), (4, 1));
    }

    #[test]
    fn task_grid_model_beats_the_first_choice_where_it_decides() {
        // Where the first choice leaves one B panel per task, the model's
        // grid, modelled faster than the first choice.
        for (mb, nb, threads, want) in [
            (4, 24, 16, (2, 3)),
            (4, 16, 16, (2, 2)),
            (64, 1, 16, (4, 1)),
            (16, 2, 16, (2, 1)),
            (8, 2, 2, (4, 2)),
            (4, 3, 2, (2, 3)),
        ] {
            let g = TaskGrid::choose(mb, nb, threads, 8, usize::MAX);
            assert_eq!((g.a_panels, g.b_panels), want, "{mb} {nb} {threads}");
            let most_a = 8.min(mb);
            let first = (most_a, nb.div_ceil((2 * threads).div_ceil(mb.div_ceil(most_a)).clamp(1, nb)));
            assert_eq!(first.1, 1, "{mb} {nb} {threads}: the first choice has one B panel per task");
            let time = |p: usize, r: usize| makespan(threads, [(mb, p), (nb, r)]);
            assert!(time(g.a_panels, g.b_panels) < time(first.0, first.1), "{mb} {nb} {threads}: {g:?}");
        }
        // 4 x 16 on 16 threads: the model's 2 x 2 against the first 4 x 1.
        assert!(makespan(16, [(4, 2), (16, 2)]) < makespan(16, [(4, 4), (16, 1)]));
    }

    #[test]
    fn requested_grids_are_clamped_to_the_limits() {
        let c = |p, r, nb, most_a, most_blocks| {
            let g = TaskGrid::clamped(p, r, nb, most_a, most_blocks);
            (g.a_panels, g.b_panels)
        };
        assert_eq!(c(2, 3, 24, 8, usize::MAX), (2, 3));
        assert_eq!(c(9, 9, 24, 4, usize::MAX), (4, 9));
        assert_eq!(c(0, 0, 24, 4, usize::MAX), (1, 1));
        assert_eq!(c(2, 50, 24, 8, usize::MAX), (2, 24));
        // Panel pairs: 4 x 9 = 36 over 12 becomes 4 x 3; one B panel may
        // exceed the limit.
        assert_eq!(c(4, 9, 24, 8, 12), (4, 3));
        assert_eq!(c(8, 9, 24, 8, 4), (8, 1));
    }

    #[test]
    fn task_grid_respects_its_limits() {
        for mb in [1, 2, 3, 4, 7, 9, 32, 64, 100] {
            for nb in [1, 2, 5, 24, 96, 1000] {
                for threads in [1, 2, 3, 16, 64] {
                    for most_a in [1, 2, 8] {
                        for most_blocks in [1, 6, 128, usize::MAX] {
                            let g = TaskGrid::choose(mb, nb, threads, most_a, most_blocks);
                            assert!(g.a_panels >= 1 && g.a_panels <= most_a.min(mb), "{mb} {nb} {threads}: {g:?}");
                            assert!(g.b_panels >= 1 && g.b_panels <= nb, "{mb} {nb} {threads}: {g:?}");
                            assert!(g.a_panels * g.b_panels <= most_blocks || g.b_panels == 1, "{g:?}");
                            // A requested grid equal to the choice survives
                            // the clamp unchanged.
                            let c = TaskGrid::clamped(g.a_panels, g.b_panels, nb, most_a.min(mb), most_blocks);
                            assert_eq!(c, g, "{mb} {nb} {threads}");
                        }
                    }
                }
            }
        }
    }
}
