//! The stage counts of the tile driver (`gemm::stage_ticks_since_last`)
//! and of attention on tiles (`attention::stage_ticks_since_last`), in a
//! test binary of their own: they are process-wide, and a product or a head
//! running in another test of the same process would add to them. The two
//! sets are separate statics, and attention on tiles calls the microkernel
//! directly (never the driver), so this file's two tests do not add to each
//! other's counts.

use tessera_kernels::gemm::{stage_ticks_since_last, tile_sgemm, Epilogue, MatRef, PackedB, Split, TileIsa};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

/// With timing on, a product counts time in the microkernel, its
/// epilogues and the packing of A, and less in the tile sessions than in
/// the microkernel (the sessions' begin and end may round to nothing off
/// x86-64, where the stamps are nanoseconds); with it off, a product counts
/// nothing.
#[test]
fn stage_counts_follow_the_switch() {
    let (m, k, n) = (64, 96, 64);
    let (a, b) = (values(m * k, 1), values(k * n, 2));
    let pb = PackedB::from_f32(MatRef::row_major(&b, k, n), Split::Bf16);
    let mut c = vec![0f32; m * n];
    let _ = stage_ticks_since_last(true);
    tile_sgemm(TileIsa::Emulated, MatRef::row_major(&a, m, k), &pb, &mut c, n, &Epilogue::default());
    let [kloop, _prefetch, finish, pack, session, _wait_first, _wait_last] = stage_ticks_since_last(false);
    assert!(kloop > 0 && finish > 0 && pack > 0, "{kloop} {finish} {pack}");
    assert!(kloop > session, "{kloop} {session}");
    tile_sgemm(TileIsa::Emulated, MatRef::row_major(&a, m, k), &pb, &mut c, n, &Epilogue::default());
    assert_eq!(stage_ticks_since_last(false), [0; 7]);

    // A product of one task (one 32x32 block) on a pool of two threads:
    // the thread that gets no task waits for the whole product, which is
    // longer than the one task's microkernel calls.
    let (m, k, n) = (32, 256, 32);
    let (a, b) = (values(m * k, 3), values(k * n, 4));
    let pb = PackedB::from_f32(MatRef::row_major(&b, k, n), Split::Bf16);
    let mut c = vec![0f32; m * n];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let _ = stage_ticks_since_last(true);
    pool.install(|| tile_sgemm(TileIsa::Emulated, MatRef::row_major(&a, m, k), &pb, &mut c, n, &Epilogue::default()));
    let [kloop, .., wait_first, _wait_last] = stage_ticks_since_last(false);
    assert!(kloop > 0 && wait_first >= kloop, "{kloop} {wait_first}");
}

/// The tile attention's stage counts (its own, apart from the driver's):
/// with timing on, one head on two query panels (the second ragged) counts
/// time in every stage, and their sum fits in the call's own time; with it
/// off, a head counts nothing.
#[test]
fn attention_stage_counts_follow_the_switch() {
    use tessera_kernels::attention::{head_on_tiles, stage_ticks_since_last, HeadBlock, QueryBlock};
    use tessera_kernels::gemm::tick_count;
    let (rows, kv_len, d, dv) = (40, 70, 48, 40);
    let (q, k, v) = (values(rows * d, 5), values(kv_len * d, 6), values(kv_len * dv, 7));
    let krow = |j: usize| &k[j * d..][..d];
    let vrow = |j: usize| &v[j * dv..][..dv];
    let queries = [QueryBlock { q: MatRef::row_major(&q, rows, d), bias: None }];
    let head = HeadBlock { queries: &queries, k: &krow, v: &vrow, kv_len, v_dim: dv, scale: 0.125 };
    let written = std::sync::atomic::AtomicUsize::new(0);
    let out_row = |_b: usize, _i: usize, _j0: usize, _f: f32, vals: &[f32]| {
        written.fetch_add(vals.len(), std::sync::atomic::Ordering::Relaxed);
    };
    let _ = stage_ticks_since_last(true);
    let t0 = tick_count();
    head_on_tiles(TileIsa::Emulated, &head, &out_row);
    let spent = tick_count().saturating_sub(t0);
    let stages = stage_ticks_since_last(false);
    assert_eq!(written.load(std::sync::atomic::Ordering::Relaxed), rows * dv);
    // Packing K and V, packing Q, score products, score rows, softmax,
    // value products, output rows: each did work.
    for (i, &t) in stages[..7].iter().enumerate() {
        assert!(t > 0, "stage {i} counted nothing: {stages:?}");
    }
    assert!(stages.iter().sum::<u64>() <= spent, "{stages:?} over {spent}");
    head_on_tiles(TileIsa::Emulated, &head, &out_row);
    assert_eq!(stage_ticks_since_last(false), [0; 8]);

    // The whole operator with tile products (its own laps: the output
    // prefetch, the session, every head), on one thread: two heads of 40
    // query rows over 70 keys.
    use tessera_kernels::attention::{attention_on, AttentionDims, Products, Rows};
    let dims = AttentionDims { batch: 1, q_len: rows, kv_len, heads: 2, head_dim: 16 };
    let c = dims.heads * dims.head_dim;
    let (q, k, v) = (values(rows * c, 8), values(kv_len * c, 9), values(kv_len * c, 10));
    let mut out = vec![f32::NAN; rows * c];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let _ = stage_ticks_since_last(true);
    let t0 = tick_count();
    pool.install(|| {
        let (q, k, v) =
            (Rows { data: &q, row_stride: c }, Rows { data: &k, row_stride: c }, Rows { data: &v, row_stride: c });
        attention_on(Products::Tiles(TileIsa::Emulated), q, k, v, None, 0.25, dims, &mut out)
    });
    let spent = tick_count().saturating_sub(t0);
    let stages = stage_ticks_since_last(false);
    assert!(out.iter().all(|x| x.is_finite()), "every output written");
    for (i, &t) in stages.iter().enumerate() {
        assert!(t > 0, "stage {i} counted nothing in attention_on: {stages:?}");
    }
    assert!(stages.iter().sum::<u64>() <= spent, "{stages:?} over {spent}");
}
