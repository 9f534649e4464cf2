//! Batched GEMM with a per-row-block epilogue, parallel over batches and row
//! blocks (and inside each GEMM when there are too few blocks to go round).

use rayon::prelude::*;

use super::{gemm_checked, GemmScalar, MatRef, Parallel};
use crate::SyncPtr;

/// A batch of equally shaped matrices in one slice: matrix `i` starts at
/// `offsets[i]` (offsets may repeat, for broadcast operands).
#[derive(Copy, Clone, Debug)]
pub struct BatchRef<'a, T> {
    pub data: &'a [T],
    pub offsets: &'a [usize],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> BatchRef<'a, T> {
    /// Matrix `i` of the batch as a view.
    pub fn mat(&self, i: usize) -> MatRef<'a, T> {
        let off = self.offsets[i].min(self.data.len());
        MatRef {
            data: &self.data[off..],
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

/// Called as `epilogue(batch_index, first_row, rows)` on each finished block
/// of output rows (`rows` holds whole rows of `n` elements), while the block
/// is still in cache.
pub type RowEpilogue<'a, T> = &'a (dyn Fn(usize, usize, &mut [T]) + Sync);

/// Output rows per block so that a block stays around 256 KiB.
fn cache_rows(n: usize, elem: usize) -> usize {
    ((256 * 1024) / (n.max(1) * elem)).max(8)
}

/// For every matrix `i` of the batch: `c_i = alpha * a_i @ b_i + beta * c_i`,
/// where `c` holds the outputs contiguously (`[batch, m, n]`), then runs the
/// epilogue on each block of rows. Panics only on caller bugs (views that do
/// not fit their slices, mismatched batch sizes).
pub fn gemm_batched<T: GemmScalar>(
    a: BatchRef<T>,
    b: BatchRef<T>,
    c: &mut [T],
    alpha: T,
    beta: T,
    epilogue: Option<RowEpilogue<T>>,
) {
    let batch = a.offsets.len();
    assert_eq!(batch, b.offsets.len(), "batch sizes differ");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions differ");
    if batch == 0 || m == 0 || n == 0 {
        return;
    }
    let mn = m * n;
    assert!(c.len() >= batch * mn, "output does not fit its slice");
    let c = &mut c[..batch * mn];
    let threads = rayon::current_num_threads().max(1);
    let size = std::mem::size_of::<T>();
    let rb_cache = cache_rows(n, size).min(m);
    let work = (batch as u128) * (m as u128) * (n as u128) * (k.max(1) as u128);

    let run_block = |bi: usize, r0: usize, cr: &mut [T], par: Parallel| {
        let rows = cr.len() / n;
        gemm_checked(a.mat(bi).rows_range(r0, rows), b.mat(bi), cr, n, alpha, beta, par);
        if let Some(epi) = epilogue {
            epi(bi, r0, cr);
        }
    };

    if threads == 1 || work < (1 << 15) {
        // Each GEMM call packs all of B: row blocks (for an epilogue on
        // cache-hot rows) only while B is no bigger than a block's output,
        // else one call per matrix and the epilogue after it, by blocks.
        // (At M = 128, K = 768, N = 3072 the blocks packed a 9 MiB B seven
        // times: BERT-base's fp32 products ran at half the GEMM's speed.)
        let rb = if k <= rb_cache { rb_cache } else { m };
        for (bi, cb) in c.chunks_mut(mn).enumerate() {
            for (ri, cr) in cb.chunks_mut(rb * n).enumerate() {
                gemm_checked(
                    a.mat(bi).rows_range(ri * rb, cr.len() / n),
                    b.mat(bi),
                    cr,
                    n,
                    alpha,
                    beta,
                    Parallel::None,
                );
                if let Some(epi) = epilogue {
                    for (ei, er) in cr.chunks_mut(rb_cache * n).enumerate() {
                        epi(bi, ri * rb + ei * rb_cache, er);
                    }
                }
            }
        }
        return;
    }
    if batch < threads {
        // Few large products: split each one inside the GEMM (which packs
        // B once per call) rather than by row blocks (each of which would
        // pack all of B again), then run the epilogue over row blocks.
        for (bi, cb) in c.chunks_mut(mn).enumerate() {
            product_by_columns(a.mat(bi), b.mat(bi), cb, alpha, beta, threads);
            if let Some(epi) = epilogue {
                let rows = m.div_ceil(2 * threads).max(1);
                cb.par_chunks_mut(rows * n).enumerate().for_each(|(ri, cr)| epi(bi, ri * rows, cr));
            }
        }
        return;
    }
    // Aim for about two tasks per thread, with blocks of at least 16 rows.
    let want = 2 * threads;
    let blocks_per_batch = want.div_ceil(batch).min(m.div_ceil(16)).max(1);
    let rb = m.div_ceil(blocks_per_batch).min(rb_cache).max(1);
    let tasks = batch * m.div_ceil(rb);
    let inner = if tasks >= threads { Parallel::None } else { Parallel::Rayon(threads.div_ceil(tasks)) };
    c.par_chunks_mut(mn).enumerate().for_each(|(bi, cb)| {
        cb.par_chunks_mut(rb * n).enumerate().for_each(|(ri, cr)| run_block(bi, ri * rb, cr, inner));
    });
}

/// Columns per task when one product is split by columns: whole 64-column
/// ranges, so that each task's share of B is packed by it alone.
const COLUMN_RANGE: usize = 64;

/// `c = alpha * a @ b + beta * c` on `threads` threads: split by column
/// ranges, one single-threaded GEMM each (each packs only its columns of
/// B), where there are at least two ranges a thread; else the GEMM's own
/// threading. (BERT-base's fp32 products at M = 128 on 2 threads: the
/// GEMM's own split scaled 1.36x over one thread.)
fn product_by_columns<T: GemmScalar>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], alpha: T, beta: T, threads: usize) {
    let (m, n) = (a.rows, b.cols);
    let ranges = n.div_ceil(COLUMN_RANGE);
    if ranges < 2 * threads {
        gemm_checked(a, b, c, n, alpha, beta, Parallel::Rayon(threads));
        return;
    }
    a.check();
    b.check();
    assert!(m == 0 || (m - 1) * n + n <= c.len(), "output does not fit its slice");
    let width = n.div_ceil(2 * threads).next_multiple_of(COLUMN_RANGE);
    let out = SyncPtr(c.as_mut_ptr());
    (0..n.div_ceil(width)).into_par_iter().for_each(|p| {
        let (j0, w) = (p * width, width.min(n - p * width));
        let bp = b.cols_range(j0, w);
        bp.check();
        // SAFETY: `a` and the column view `bp` fit their slices (checked);
        // the output region is rows < m, columns j0..j0 + w with row stride
        // n, inside `c` (checked above); tasks own disjoint column ranges,
        // and `c` is exclusively borrowed for the call.
        unsafe { super::gemm_raw(a, bp, out.at(j0), n, alpha, beta, Parallel::None) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_with_broadcast_and_epilogue() {
        // a: 2 matrices 3x2, b: one 2x4 matrix shared by both.
        let a: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let b: Vec<f32> = (0..8).map(|v| (v as f32) * 0.5).collect();
        let mut c = vec![0.0f32; 2 * 3 * 4];
        let epi = |bi: usize, r0: usize, rows: &mut [f32]| {
            for (i, row) in rows.chunks_mut(4).enumerate() {
                for v in row {
                    *v += (bi * 100 + (r0 + i) * 10) as f32;
                }
            }
        };
        gemm_batched(
            BatchRef { data: &a, offsets: &[0, 6], rows: 3, cols: 2, row_stride: 2, col_stride: 1 },
            BatchRef { data: &b, offsets: &[0, 0], rows: 2, cols: 4, row_stride: 4, col_stride: 1 },
            &mut c,
            1.0,
            0.0,
            Some(&epi),
        );
        for bi in 0..2 {
            for i in 0..3 {
                for j in 0..4 {
                    let mut acc = 0.0;
                    for p in 0..2 {
                        acc += a[bi * 6 + i * 2 + p] * b[p * 4 + j];
                    }
                    acc += (bi * 100 + i * 10) as f32;
                    assert_eq!(c[bi * 12 + i * 4 + j], acc);
                }
            }
        }
    }

    /// One thread, a B larger than an output block (one GEMM call per
    /// matrix): the epilogue still sees every row once, with its index.
    #[test]
    fn epilogue_covers_every_row_when_b_is_packed_once() {
        let (bt, m, k, n) = (2usize, 100usize, 300usize, 2000usize);
        let a: Vec<f32> = (0..bt * m * k).map(|v| ((v * 7 % 13) as f32) - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|v| ((v * 5 % 11) as f32) - 5.0).collect();
        let ao: Vec<usize> = (0..bt).map(|i| i * m * k).collect();
        let mut c = vec![0.0f32; bt * m * n];
        let seen = std::sync::Mutex::new(vec![0u32; bt * m]);
        let epi = |bi: usize, r0: usize, rows: &mut [f32]| {
            for (i, row) in rows.chunks_mut(n).enumerate() {
                seen.lock().unwrap()[bi * m + r0 + i] += 1;
                row.iter_mut().for_each(|v| *v += (r0 + i) as f32);
            }
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        pool.install(|| {
            gemm_batched(
                BatchRef { data: &a, offsets: &ao, rows: m, cols: k, row_stride: k, col_stride: 1 },
                BatchRef { data: &b, offsets: &[0, 0], rows: k, cols: n, row_stride: n, col_stride: 1 },
                &mut c,
                1.0,
                0.0,
                Some(&epi),
            )
        });
        assert!(seen.into_inner().unwrap().iter().all(|&s| s == 1));
        for (x, i, j) in [(0, 0, 0), (0, 99, 1999), (1, 37, 1234), (1, 64, 5)] {
            let acc: f32 = (0..k).map(|p| a[x * m * k + i * k + p] * b[p * n + j]).sum();
            assert_eq!(c[x * m * n + i * n + j], acc + i as f32, "({x}, {i}, {j})");
        }
    }

    /// One product on three threads, split by column ranges (one of them
    /// ragged), B in either layout, with beta.
    #[test]
    fn product_split_by_columns_matches_reference() {
        let (m, k, n) = (37usize, 50usize, 64 * 7 + 13);
        let a: Vec<f64> = (0..m * k).map(|v| ((v * 7 % 13) as f64) - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|v| ((v * 5 % 11) as f64) - 5.0).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for transposed in [false, true] {
            let (rs, cs) = if transposed { (1, k) } else { (n, 1) };
            let mut c: Vec<f64> = (0..m * n).map(|v| (v % 3) as f64).collect();
            let c0 = c.clone();
            pool.install(|| {
                gemm_batched(
                    BatchRef { data: &a, offsets: &[0], rows: m, cols: k, row_stride: k, col_stride: 1 },
                    BatchRef { data: &b, offsets: &[0], rows: k, cols: n, row_stride: rs, col_stride: cs },
                    &mut c,
                    2.0,
                    0.5,
                    None,
                )
            });
            for i in 0..m {
                for j in 0..n {
                    let acc: f64 = (0..k).map(|p| a[i * k + p] * b[p * rs + j * cs]).sum();
                    assert_eq!(c[i * n + j], 2.0 * acc + 0.5 * c0[i * n + j], "({i}, {j}), transposed {transposed}");
                }
            }
        }
    }

    #[test]
    fn large_batched_matches_reference() {
        let (bt, m, k, n) = (3usize, 70usize, 33usize, 45usize);
        let a: Vec<f64> = (0..bt * m * k).map(|v| ((v * 7 % 13) as f64) - 6.0).collect();
        let b: Vec<f64> = (0..bt * k * n).map(|v| ((v * 5 % 11) as f64) - 5.0).collect();
        let mut c = vec![0.0f64; bt * m * n];
        let ao: Vec<usize> = (0..bt).map(|i| i * m * k).collect();
        let bo: Vec<usize> = (0..bt).map(|i| i * k * n).collect();
        gemm_batched(
            BatchRef { data: &a, offsets: &ao, rows: m, cols: k, row_stride: k, col_stride: 1 },
            // b given transposed: element (p, j) at j * k + p.
            BatchRef { data: &b, offsets: &bo, rows: k, cols: n, row_stride: 1, col_stride: k },
            &mut c,
            2.0,
            0.0,
            None,
        );
        for x in 0..bt {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0;
                    for p in 0..k {
                        acc += a[x * m * k + i * k + p] * b[x * k * n + j * k + p];
                    }
                    assert_eq!(c[x * m * n + i * n + j], 2.0 * acc);
                }
            }
        }
    }
}
