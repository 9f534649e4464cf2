//! The BLIS-style driver for register-blocked vector and outer-product
//! microkernels (Arm NEON and SME today; the portable [`Reference`] kernel
//! everywhere). Packing, blocking and threading live here; a kernel only
//! multiplies two packed panels into an `mr x nr` tile.
//!
//! Panel layout, shared by every kernel: K is cut into groups of
//! `kgroup` values (1 for plain multiply-add, 2 for bf16 pairs, 4 for int8
//! dot products); an A panel is `[group][mr][kgroup]` and a B panel is
//! `[group][nr][kgroup]`, zero-padded past the matrix edges, so ragged M, N
//! and K cost only padding.
//!
//! The kernel writes a fresh tile per K block; the driver adds it into C in
//! the output type (fp32 or i32) and applies the epilogue on the last K
//! block, while the rows are still in cache. A reduced-precision
//! accumulator (fp16) therefore only sums one K block before it is widened.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{Epilogue, MatRef};

/// One microkernel: `tile = A_panel · B_panel` over `groups` K groups.
pub trait VectorKernel: Sync {
    /// Element type of the packed panels.
    type In: Copy + Default + Send + Sync + 'static;
    /// Element type of the tile the kernel writes.
    type Acc: Copy + Default + Send + Sync + 'static;
    fn name(&self) -> &'static str;
    /// Tile rows and columns.
    fn mr(&self) -> usize;
    fn nr(&self) -> usize;
    /// Values of K packed side by side per panel row (see the module doc).
    fn kgroup(&self) -> usize;
    /// `tile` (row-major `mr x nr`) = the product of the panels. Panics if a
    /// slice is shorter than the panel or tile it must hold.
    fn run(&self, groups: usize, a: &[Self::In], b: &[Self::In], tile: &mut [Self::Acc]);
}

/// Conversion of fp32 operands into a kernel's input type.
pub trait FromF32: Copy {
    fn from_f32(v: f32) -> Self;
}
impl FromF32 for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl FromF32 for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
impl FromF32 for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// Widening of a kernel's accumulator into fp32.
pub trait ToF32: Copy {
    fn to_f32(self) -> f32;
}
impl ToF32 for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}
impl ToF32 for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// A kernel the fp32 entry points can drive: fp32 operands convert into its
/// input type and its accumulators widen back to fp32.
pub trait FloatKernel: VectorKernel<In: FromF32, Acc: ToF32> {}
impl<K: VectorKernel<In: FromF32, Acc: ToF32>> FloatKernel for K {}

/// Block sizes of the driver's loops (per kernel; tuned per chip family).
#[derive(Copy, Clone, Debug)]
pub struct Blocking {
    /// Values of K per packed block (rounded to the kernel's group).
    pub kc: usize,
    /// Rows of A per packed block (rounded to `mr`).
    pub mc: usize,
    /// Columns of B per packed block (rounded to `nr`).
    pub nc: usize,
}

impl Blocking {
    /// L1-sized B micro-panels, an L2-sized A block, all of N at once
    /// unless very wide (sized for 64-128 KiB L1 and 4+ MiB L2, as on Apple
    /// M-series performance cores and Arm server cores).
    pub const DEFAULT: Blocking = Blocking { kc: 256, mc: 128, nc: 4096 };
}

/// Packs `rows x kc` values (`at(r, kk)`) into `[group][width][kgroup]`,
/// zero beyond `rows` and `kc`.
fn pack_panel<T: Copy + Default>(
    dst: &mut [T],
    width: usize,
    rows: usize,
    kc: usize,
    kgroup: usize,
    at: impl Fn(usize, usize) -> T,
) {
    let groups = kc.div_ceil(kgroup);
    debug_assert!(dst.len() >= groups * width * kgroup);
    for g in 0..groups {
        let blk = &mut dst[g * width * kgroup..(g + 1) * width * kgroup];
        for r in 0..width {
            for q in 0..kgroup {
                let kk = g * kgroup + q;
                blk[r * kgroup + q] = if r < rows && kk < kc { at(r, kk) } else { T::default() };
            }
        }
    }
}

/// Packs one `kc x ncur` block of B (from column `jc`, row `pc`) into
/// `nr`-column panels, in parallel.
#[allow(clippy::too_many_arguments)]
fn pack_rhs_block<T: Copy + Default + Send>(
    dst: &mut [T],
    nr: usize,
    kg: usize,
    n: usize,
    jc: usize,
    pc: usize,
    kc: usize,
    b_at: &(dyn Fn(usize, usize) -> T + Sync),
) {
    let panel_b = kc.div_ceil(kg) * nr * kg;
    dst.par_chunks_mut(panel_b.max(1)).enumerate().for_each(|(p, d)| {
        let j0 = jc + p * nr;
        pack_panel(d, nr, nr.min(n - j0), kc, kg, |j, kk| b_at(pc + kk, j0 + j));
    });
}

/// Where the driver gets B: packed per call, or packed once (a weight).
enum RhsSource<'a, T> {
    Pack(&'a (dyn Fn(usize, usize) -> T + Sync)),
    Packed(&'a PackedRhs<T>),
}

/// A constant right-hand side (a weight) packed once for one kernel and
/// blocking, every K and N block in the kernel's panel layout.
pub struct PackedRhs<T> {
    k: usize,
    n: usize,
    kc: usize,
    nc: usize,
    nr: usize,
    kgroup: usize,
    /// `[N block][K block]`.
    blocks: Vec<Vec<T>>,
}

impl<T: Copy + Default + Send + Sync> PackedRhs<T> {
    /// Packs fp32 `b` (`k x n`) for `kern` with blocking `blk`.
    pub fn from_f32<K: VectorKernel<In = T>>(kern: &K, blk: Blocking, b: MatRef<f32>) -> PackedRhs<T>
    where
        T: FromF32,
    {
        b.check();
        let (k, n) = (b.rows, b.cols);
        let (nr, kg) = (kern.nr(), kern.kgroup());
        let kc = blk.kc.max(kg).div_ceil(kg) * kg;
        let nc = blk.nc.max(nr).div_ceil(nr) * nr;
        let b_at = |kk: usize, j: usize| T::from_f32(b.data[kk * b.row_stride + j * b.col_stride]);
        let k_blocks: Vec<(usize, usize)> =
            if k == 0 { vec![(0, 0)] } else { (0..k).step_by(kc).map(|p| (p, kc.min(k - p))).collect() };
        let mut blocks = Vec::new();
        for jc in (0..n).step_by(nc) {
            let npanels = nc.min(n - jc).div_ceil(nr);
            for &(pc, kcur) in &k_blocks {
                let mut d = vec![T::default(); kcur.div_ceil(kg) * nr * kg * npanels];
                pack_rhs_block(&mut d, nr, kg, n, jc, pc, kcur, &b_at);
                blocks.push(d);
            }
        }
        PackedRhs { k, n, kc, nc, nr, kgroup: kg, blocks }
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn packed_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.len()).sum::<usize>() * std::mem::size_of::<T>()
    }
}

/// The loops: `store(first, last, row, j0, tile_row, c_row)` adds or writes
/// one tile row into C (`first`/`last`: first and last K block).
#[allow(clippy::too_many_arguments)]
fn drive<K: VectorKernel, O: Send>(
    kern: &K,
    blk: Blocking,
    m: usize,
    n: usize,
    k: usize,
    a_at: impl Fn(usize, usize) -> K::In + Sync,
    b: RhsSource<'_, K::In>,
    c: &mut [O],
    ldc: usize,
    store: impl Fn(bool, bool, usize, usize, &[K::Acc], &mut [O]) + Sync,
) {
    let (mr, nr, kg) = (kern.mr(), kern.nr(), kern.kgroup());
    assert!(mr > 0 && nr > 0 && kg > 0, "kernel with an empty tile");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C does not fit its slice");
    let kc_max = blk.kc.max(kg).div_ceil(kg) * kg;
    let mc = blk.mc.max(mr).div_ceil(mr) * mr;
    let nc = blk.nc.max(nr).div_ceil(nr) * nr;
    // K = 0 still has to store (zeros, then the epilogue): one empty block.
    let k_blocks: Vec<(usize, usize)> =
        if k == 0 { vec![(0, 0)] } else { (0..k).step_by(kc_max).map(|p| (p, kc_max.min(k - p))).collect() };
    let c = &mut c[..(m - 1) * ldc + n];
    let mut b_own: Vec<K::In> = Vec::new();
    if let RhsSource::Packed(p) = &b {
        assert!(
            p.k == k && p.n == n && p.kc == kc_max && p.nc == nc && p.nr == nr && p.kgroup == kg,
            "prepacked B does not match this product and kernel"
        );
    }
    for (jci, jc) in (0..n).step_by(nc).enumerate() {
        let ncur = nc.min(n - jc);
        let npanels = ncur.div_ceil(nr);
        for (bi, &(pc, kc)) in k_blocks.iter().enumerate() {
            let groups = kc.div_ceil(kg);
            let panel_b = groups * nr * kg;
            let b_pack: &[K::In] = match &b {
                RhsSource::Packed(p) => &p.blocks[jci * k_blocks.len() + bi],
                RhsSource::Pack(b_at) => {
                    b_own.clear();
                    b_own.resize(panel_b * npanels, K::In::default());
                    pack_rhs_block(&mut b_own, nr, kg, n, jc, pc, kc, b_at);
                    &b_own
                }
            };
            let (first, last) = (bi == 0, bi + 1 == k_blocks.len());
            c.par_chunks_mut(mc * ldc).enumerate().for_each(|(ib, c_rows)| {
                let i0 = ib * mc;
                let mcur = mc.min(m - i0);
                let panel_a = groups * mr * kg;
                let mut a_pack = vec![K::In::default(); panel_a * mcur.div_ceil(mr)];
                for (p, dst) in a_pack.chunks_mut(panel_a.max(1)).enumerate() {
                    let r0 = i0 + p * mr;
                    pack_panel(dst, mr, mr.min(m - r0), kc, kg, |r, kk| a_at(r0 + r, pc + kk));
                }
                let mut tile = vec![K::Acc::default(); mr * nr];
                // Indexed, not chunked: with K = 0 the panels are empty.
                for jp in 0..npanels {
                    let bp = &b_pack[jp * panel_b..(jp + 1) * panel_b];
                    let j0 = jc + jp * nr;
                    let cols = nr.min(n - j0);
                    for ip in 0..mcur.div_ceil(mr) {
                        let ap = &a_pack[ip * panel_a..(ip + 1) * panel_a];
                        kern.run(groups, ap, bp, &mut tile);
                        let r0 = ip * mr;
                        for r in 0..mr.min(mcur - r0) {
                            let row = &mut c_rows[(r0 + r) * ldc + j0..][..cols];
                            store(first, last, i0 + r0 + r, j0, &tile[r * nr..r * nr + cols], row);
                        }
                    }
                }
            });
        }
    }
}

/// `c = epilogue(a · b)` for fp32 operands on a float kernel (inputs
/// rounded to the kernel's type, products widened to fp32 per K block).
/// `c` is row-major with row stride `ldc`.
pub fn vector_sgemm<K>(
    kern: &K,
    blk: Blocking,
    a: MatRef<f32>,
    b: MatRef<f32>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) where
    K: FloatKernel,
{
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    a.check();
    b.check();
    let (m, n) = (a.rows, b.cols);
    epi.check(m, n);
    let b_at = |kk: usize, j: usize| K::In::from_f32(b.data[kk * b.row_stride + j * b.col_stride]);
    float_product(kern, blk, a, n, RhsSource::Pack(&b_at), c, ldc, epi)
}

/// [`vector_sgemm`] with a weight packed once by [`PackedRhs::from_f32`]
/// for the same kernel and blocking.
pub fn vector_sgemm_packed<K>(
    kern: &K,
    blk: Blocking,
    a: MatRef<f32>,
    b: &PackedRhs<K::In>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) where
    K: FloatKernel,
{
    assert_eq!(a.cols, b.k, "inner dimensions differ");
    a.check();
    epi.check(a.rows, b.n);
    float_product(kern, blk, a, b.n, RhsSource::Packed(b), c, ldc, epi)
}

#[allow(clippy::too_many_arguments)]
fn float_product<K>(
    kern: &K,
    blk: Blocking,
    a: MatRef<f32>,
    n: usize,
    b: RhsSource<'_, K::In>,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) where
    K: FloatKernel,
{
    let (m, k) = (a.rows, a.cols);
    let a_at = |i: usize, kk: usize| K::In::from_f32(a.data[i * a.row_stride + kk * a.col_stride]);
    drive(kern, blk, m, n, k, a_at, b, c, ldc, |first, last, row, j0, t, dst| {
        for (d, v) in dst.iter_mut().zip(t) {
            *d = if first { v.to_f32() } else { *d + v.to_f32() };
        }
        if last {
            let mut acc = [0f32; 256];
            let mut j = 0;
            for chunk in dst.chunks_mut(256) {
                let acc = &mut acc[..chunk.len()];
                acc.copy_from_slice(chunk);
                epi.apply_f32(acc, row, j0 + j, chunk);
                j += chunk.len();
            }
        }
    });
}

/// `c = a · b` for signed 8-bit operands (`a` row-major `m x k`, `b`
/// row-major `k x n`), exact i32 results, on an int8 kernel.
#[allow(clippy::too_many_arguments)]
pub fn vector_igemm<K>(
    kern: &K,
    blk: Blocking,
    a: &[i8],
    b: &[i8],
    m: usize,
    k: usize,
    n: usize,
    c: &mut [i32],
    ldc: usize,
) where
    K: VectorKernel<In = i8, Acc = i32>,
{
    assert!(a.len() >= m * k && b.len() >= k * n, "operands do not fit their slices");
    let a_at = |i: usize, kk: usize| a[i * k + kk];
    let b_at = |kk: usize, j: usize| b[kk * n + j];
    drive(kern, blk, m, n, k, a_at, RhsSource::Pack(&b_at), c, ldc, |first, _, _, _, t, dst| {
        for (d, &v) in dst.iter_mut().zip(t) {
            *d = if first { v } else { d.wrapping_add(v) };
        }
    });
}

/// Multiply-accumulate of a reference kernel's element types.
pub trait RefMac<In>: Copy + Default + Send + Sync + 'static {
    fn mac(self, a: In, b: In) -> Self;
}
impl RefMac<f32> for f32 {
    fn mac(self, a: f32, b: f32) -> f32 {
        a.mul_add(b, self)
    }
}
impl RefMac<i8> for i32 {
    fn mac(self, a: i8, b: i8) -> i32 {
        self.wrapping_add(a as i32 * b as i32)
    }
}

/// The portable kernel: any tile shape and K grouping, plain loops. It
/// checks the driver and packing on every machine, and is the reference
/// the ISA kernels are tested against.
pub struct Reference<In, Acc> {
    pub mr: usize,
    pub nr: usize,
    pub kgroup: usize,
    _t: std::marker::PhantomData<fn(In) -> Acc>,
}

impl<In, Acc> Reference<In, Acc> {
    pub fn new(mr: usize, nr: usize, kgroup: usize) -> Self {
        Reference { mr, nr, kgroup, _t: std::marker::PhantomData }
    }
}

impl<In: Copy + Default + Send + Sync + 'static, Acc: RefMac<In>> VectorKernel for Reference<In, Acc> {
    type In = In;
    type Acc = Acc;
    fn name(&self) -> &'static str {
        "reference"
    }
    fn mr(&self) -> usize {
        self.mr
    }
    fn nr(&self) -> usize {
        self.nr
    }
    fn kgroup(&self) -> usize {
        self.kgroup
    }
    fn run(&self, groups: usize, a: &[In], b: &[In], tile: &mut [Acc]) {
        let (mr, nr, kg) = (self.mr, self.nr, self.kgroup);
        let (a, b, tile) = (&a[..groups * mr * kg], &b[..groups * nr * kg], &mut tile[..mr * nr]);
        tile.fill(Acc::default());
        for g in 0..groups {
            for i in 0..mr {
                for j in 0..nr {
                    let mut acc = tile[i * nr + j];
                    for q in 0..kg {
                        acc = acc.mac(a[(g * mr + i) * kg + q], b[(g * nr + j) * kg + q]);
                    }
                    tile[i * nr + j] = acc;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gemm::Activation;
    use proptest::prelude::*;

    pub(crate) fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub(crate) fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for kk in 0..k {
                let av = a[i * k + kk] as f64;
                for j in 0..n {
                    c[i * n + j] += av * b[kk * n + j] as f64;
                }
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        // Tile shapes and K groupings of every kernel family, ragged edges,
        // small blocks so several K and M blocks occur.
        #[test]
        fn reference_kernel_through_driver_matches_naive(
            m in 1usize..70, k in 0usize..90, n in 1usize..70, shape in 0usize..4, seed in 0u64..1000
        ) {
            let (mr, nr, kg) = [(8, 12, 1), (8, 16, 1), (32, 32, 2), (8, 12, 4)][shape];
            let a = rand_f32(m * k, seed);
            let b = rand_f32(k * n, seed + 1);
            let blk = Blocking { kc: 16, mc: 16, nc: 24 };
            let mut c = vec![f32::NAN; m * n];
            let kern = Reference::<f32, f32>::new(mr, nr, kg);
            vector_sgemm(&kern, blk, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), &mut c, n, &Epilogue::default());
            let want = naive(&a, &b, m, k, n);
            for (g, w) in c.iter().zip(&want) {
                prop_assert!((*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
            }
            let ai: Vec<i8> = a.iter().map(|v| (v * 127.0) as i8).collect();
            let bi: Vec<i8> = b.iter().map(|v| (v * 127.0) as i8).collect();
            let mut ci = vec![7i32; m * n];
            vector_igemm(&Reference::<i8, i32>::new(mr, nr, kg), blk, &ai, &bi, m, k, n, &mut ci, n);
            for i in 0..m {
                for j in 0..n {
                    let w: i32 = (0..k).map(|kk| ai[i * k + kk] as i32 * bi[kk * n + j] as i32).sum();
                    prop_assert_eq!(ci[i * n + j], w);
                }
            }
        }
    }

    #[test]
    fn prepacked_weight_gives_the_same_result() {
        let (m, k, n) = (37, 70, 53);
        let a = rand_f32(m * k, 5);
        let b = rand_f32(k * n, 6);
        let kern = Reference::<f32, f32>::new(8, 12, 2);
        let blk = Blocking { kc: 16, mc: 16, nc: 24 };
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let mut c1 = vec![0f32; m * n];
        vector_sgemm(&kern, blk, av, bv, &mut c1, n, &Epilogue::default());
        let packed = PackedRhs::from_f32(&kern, blk, bv);
        let mut c2 = vec![0f32; m * n];
        vector_sgemm_packed(&kern, blk, av, &packed, &mut c2, n, &Epilogue::default());
        assert_eq!(c1, c2);
        // A weight stored transposed (Gemm's transB), read through a view.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let t = PackedRhs::from_f32(&kern, blk, MatRef::row_major(&bt, n, k).t());
        let mut c3 = vec![0f32; m * n];
        vector_sgemm_packed(&kern, blk, av, &t, &mut c3, n, &Epilogue::default());
        assert_eq!(c1, c3);
    }

    #[test]
    fn epilogue_applies_once_after_the_last_k_block() {
        let (m, k, n) = (5, 40, 7);
        let a = rand_f32(m * k, 3);
        let b = rand_f32(k * n, 4);
        let bias: Vec<f32> = (0..n).map(|j| j as f32).collect();
        let epi = Epilogue { alpha: 2.0, bias: Some(&bias), activation: Activation::Relu, ..Default::default() };
        let mut c = vec![0f32; m * n];
        let kern = Reference::<f32, f32>::new(4, 4, 1);
        let blk = Blocking { kc: 8, mc: 4, nc: 4 };
        vector_sgemm(&kern, blk, MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n), &mut c, n, &epi);
        let want = naive(&a, &b, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let w = (2.0 * want[i * n + j] + j as f64).max(0.0);
                assert!((c[i * n + j] as f64 - w).abs() < 1e-4, "{} vs {w}", c[i * n + j]);
            }
        }
    }
}
