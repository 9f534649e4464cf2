//! Packing into the tile microkernels' layouts.
//!
//! A panel covers 32 rows of A (or 32 columns of B) and all of K, as a run
//! of k-blocks of [`BLOCK_BYTES`]: two tiles of 16 rows x 64 bytes.
//! * A tile: row r = one row of A, 64 bytes of consecutive K values.
//! * B tile: row r = for each of 16 columns, the `group` consecutive K
//!   values `group*r .. group*r + group` side by side (the "VNNI" layout the
//!   dot-product instructions read: pairs for bf16, quadruples for int8).
//!
//! fp32 operands can be split into up to three bf16 parts (`hi + mid + lo`
//! holds all 24 bits of an fp32 significand). Each k-block is then packed as
//! its parts side by side (a k-step of `parts` k-blocks), and the split
//! microkernels run the products of [`Split::products`] on each k-step, so
//! each part is stored, and read, once.

use std::ops::Range;

use half::bf16;

use super::ukernel::{split_products, DotKind, BLOCK_BYTES, TILE_BYTES, TILE_ROWS, TILE_ROW_BYTES};
use super::MatRef;

/// How an fp32 GEMM runs on bf16 tiles.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Round both operands to bf16: one product, about 3 significant digits.
    Bf16,
    /// Two-part split, products hi*hi + hi*lo + lo*hi: about 16 bits.
    Bf16x3,
    /// Three-part split, the six products above 2^-24 relative: fp32-class.
    Bf16x6,
}

impl Split {
    pub fn parts(self) -> usize {
        match self {
            Split::Bf16 => 1,
            Split::Bf16x3 => 2,
            Split::Bf16x6 => 3,
        }
    }
    /// (part of A, part of B) per product, in the order the microkernels
    /// run them.
    pub fn products(self) -> &'static [(usize, usize)] {
        split_products(self.parts())
    }
    pub fn name(self) -> &'static str {
        match self {
            Split::Bf16 => "bf16",
            Split::Bf16x3 => "bf16x3",
            Split::Bf16x6 => "bf16x6",
        }
    }
}

/// `x` as the sum of `parts` bf16 values (round to nearest even at each step).
#[inline(always)]
pub fn split_f32(x: f32, parts: usize) -> [u16; 3] {
    let mut out = [0u16; 3];
    let mut rest = x;
    for slot in out.iter_mut().take(parts) {
        let h = bf16::from_f32(rest);
        *slot = h.to_bits();
        // Exact in fp32: rest and h agree in their leading bits.
        rest -= h.to_f32();
        if !rest.is_finite() {
            rest = 0.0;
        }
    }
    out
}

/// Number of k-blocks covering `k` values of one product.
pub fn k_blocks(kind: DotKind, k: usize) -> usize {
    k.div_ceil(kind.k_per_block())
}

/// Byte offset of row `i` (0..32), K position `kk` inside a k-block of an
/// A panel.
#[inline(always)]
fn a_offset(i: usize, kk_byte: usize) -> usize {
    (i / TILE_ROWS) * TILE_BYTES + (i % TILE_ROWS) * TILE_ROW_BYTES + kk_byte
}

/// Byte offset of column `j` (0..32), K position `kk` inside a k-block of
/// a B panel, for elements of `esz` bytes in groups of `group`.
#[inline(always)]
fn b_offset(j: usize, kk: usize, group: usize, esz: usize) -> usize {
    (j / 16) * TILE_BYTES + (kk / group) * TILE_ROW_BYTES + ((j % 16) * group + kk % group) * esz
}

/// bf16 bits of `x`, rounded to nearest even (branch-free, so loops over
/// it vectorize). NaN becomes the quiet NaN, as the hardware conversion
/// does (rounding its bits could carry a payload into infinity).
#[inline(always)]
fn bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0x7FC0 | ((b >> 16) as u16 & 0x8000)
    } else {
        rounded
    }
}

/// `out[i] = bf16_rne(src[i])`; with AVX-512 BF16 (every CPU with AMX has
/// it) one instruction converts 32 values. The instruction treats
/// subnormal inputs as zero, as the tile unit does with subnormal bf16.
fn to_bf16(src: &[f32], out: &mut [u16]) {
    assert_eq!(src.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if avx512::usable() {
        // SAFETY: the CPU has the features the function enables (checked
        // by `usable`).
        unsafe { avx512::to_bf16(src, out) };
        return;
    }
    for (o, &x) in out.iter_mut().zip(src) {
        *o = bf16_rne(x);
    }
}

/// Splits 32 values into `parts` bf16 planes (hi, mid, lo). Past an
/// infinity or NaN (in the value or its rounding) the later parts are
/// zero, as in [`split_f32`]: an infinite activation then stays infinite
/// in the product instead of turning NaN through `inf - inf`.
#[inline(always)]
fn split_block(src: &[f32; 32], parts: usize, out: &mut [[u16; 32]; 3]) {
    split_block_rounded(src, parts, out, bf16_rne)
}

/// [`split_block`] with each part rounded by `round`.
#[inline(always)]
fn split_block_rounded(src: &[f32; 32], parts: usize, out: &mut [[u16; 32]; 3], round: impl Fn(f32) -> u16) {
    let mut rest = *src;
    for plane in out.iter_mut().take(parts) {
        for (h, r) in plane.iter_mut().zip(rest.iter_mut()) {
            *h = round(*r);
            let left = *r - f32::from_bits((*h as u32) << 16);
            *r = if left.is_finite() { left } else { 0.0 };
        }
    }
}

/// Writes 32 bf16 values (bit patterns) as one 64-byte tile row.
#[inline(always)]
fn put_tile_row(dst: &mut [u8], vals: &[u16; 32]) {
    const { assert!(cfg!(target_endian = "little"), "tile rows are little-endian") };
    let dst = &mut dst[..64];
    // SAFETY: `dst` holds exactly 64 bytes (sliced above) and `vals` is 64
    // bytes of plain integers; on a little-endian target their bytes are
    // the tile row's bytes. The regions cannot overlap (one is borrowed
    // mutably, the other shared).
    unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr() as *const u8, dst.as_mut_ptr(), 64) };
}

/// (Packing only converts and copies: `FMA` is unused.)
#[inline(always)]
fn pack_a_f32_body<const FMA: bool>(dst: &mut [u8], a: MatRef<f32>, split: Split, blocks: Range<usize>) {
    let (rows, k) = (a.rows, a.cols);
    let kb = k_blocks(DotKind::Bf16, k);
    let np = split.parts();
    let (b0, b1) = (blocks.start, blocks.end);
    assert!(b0 <= b1 && b1 <= kb, "k-blocks {b0}..{b1} of a panel of {kb}");
    let nb = b1 - b0;
    assert!(dst.len() >= nb * np * BLOCK_BYTES && rows <= 32);
    // The values of the blocks: columns c0..c1 of each row (a strided A
    // gathers only those).
    let (c0, c1) = ((32 * b0).min(k), (32 * b1).min(k));
    let a = a.cols_range(c0, c1 - c0);
    #[cfg(target_arch = "x86_64")]
    let vector_split = split != Split::Bf16 && avx512::usable();
    let mut gathered = Vec::new();
    for i in 0..32 {
        if i >= rows {
            for blk in 0..nb * np {
                dst[blk * BLOCK_BYTES + a_offset(i, 0)..][..TILE_ROW_BYTES].fill(0);
            }
            continue;
        }
        if i + 1 < rows && a.col_stride == 1 {
            if let Some(next) = a.data.get((i + 1) * a.row_stride..(i + 1) * a.row_stride + a.cols) {
                crate::prefetch_for_reading(next);
            }
        }
        let src = a.row(i, &mut gathered);
        if split == Split::Bf16 {
            // The common case: the row converted in runs, then whole tile
            // rows copied out.
            pack_a_row_bf16(dst, nb, i, src);
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if vector_split {
            // SAFETY: the CPU has the features the function enables
            // (checked by `usable`).
            unsafe { avx512::pack_a_row_split(dst, nb, np, i, src) };
            continue;
        }
        for b in 0..nb {
            pack_a_row_parts(&mut dst[b * np * BLOCK_BYTES..], split, i, &src[b * 32..src.len().min(b * 32 + 32)]);
        }
    }
}

/// Writes row `i` (0..32) of one k-block of an A panel in `split`'s parts
/// (`dst` holds the k-block's parts side by side, as [`pack_a_f32`] lays
/// them out): `src` (at most 32 values) split and zero past its end; an
/// empty `src` zeroes the row. Always inlined: the epilogues that call it
/// are compiled for each vector unit, and the splitting vectorizes there.
#[inline(always)]
pub fn pack_a_row_parts(dst: &mut [u8], split: Split, i: usize, src: &[f32]) {
    let np = split.parts();
    assert!(i < 32 && src.len() <= 32 && dst.len() >= np * BLOCK_BYTES);
    if np == 1 {
        return pack_a_row_bf16(dst, 1, i, src);
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::usable() {
        // SAFETY: the CPU has the features the function enables (checked
        // by `usable`).
        return unsafe { avx512::pack_a_row_split(dst, 1, np, i, src) };
    }
    pack_a_row_parts_portable(dst, split, i, src)
}

/// [`pack_a_row_parts`] for a split into 2 or 3 parts, without vector
/// instructions.
#[inline(always)]
fn pack_a_row_parts_portable(dst: &mut [u8], split: Split, i: usize, src: &[f32]) {
    let np = split.parts();
    let mut chunk = [0f32; 32];
    chunk[..src.len()].copy_from_slice(src);
    let mut planes = [[0u16; 32]; 3];
    split_block(&chunk, np, &mut planes);
    for (p, plane) in planes.iter().take(np).enumerate() {
        put_tile_row(&mut dst[p * BLOCK_BYTES + a_offset(i, 0)..], plane);
    }
}

/// Packs the rows of `a` (at most 32: one panel) into `dst`, each k-block
/// as the parts of `split` side by side, zero padded to 32 rows and whole
/// k-blocks.
pub fn pack_a_f32(dst: &mut [u8], a: MatRef<f32>, split: Split) {
    pack_a_f32_blocks(dst, a, split, 0..k_blocks(DotKind::Bf16, a.cols))
}

/// The k-blocks `blocks` of [`pack_a_f32`]'s panel for `a`, into `dst`
/// (which holds just those blocks, the first at its start): so that
/// several threads can pack one panel.
pub fn pack_a_f32_blocks(dst: &mut [u8], a: MatRef<f32>, split: Split, blocks: Range<usize>) {
    with_vector_features!(pack_a_f32_body(dst: &mut [u8], a: MatRef<f32>, split: Split, blocks: Range<usize>))
}

/// Writes row `i` (0..32) of a bf16 A panel of `kb` k-blocks: `src`
/// rounded to bf16, zero past its end (`src.len() <= 32 * kb`; an empty
/// `src` zeroes the row). For operands made row by row, such as attention
/// probabilities, which then need no fp32 copy of the whole panel.
pub fn pack_a_row_bf16(dst: &mut [u8], kb: usize, i: usize, src: &[f32]) {
    assert!(i < 32 && src.len() <= 32 * kb && dst.len() >= kb * BLOCK_BYTES);
    #[cfg(target_arch = "x86_64")]
    if avx512::usable() {
        // SAFETY: the CPU has the features the function enables (checked
        // by `usable`).
        unsafe { avx512::pack_a_row_bf16(dst, kb, i, src) };
        return;
    }
    pack_a_row_bf16_portable(dst, kb, i, src)
}

fn pack_a_row_bf16_portable(dst: &mut [u8], kb: usize, i: usize, src: &[f32]) {
    // Converted 16 k-blocks at a time (one conversion call each).
    const RUN: usize = 16;
    let mut conv = [0u16; 32 * RUN];
    for b0 in (0..kb).step_by(RUN) {
        let blocks = RUN.min(kb - b0);
        let part = &src[(32 * b0).min(src.len())..(32 * (b0 + blocks)).min(src.len())];
        to_bf16(part, &mut conv[..part.len()]);
        conv[part.len()..32 * blocks].fill(0);
        for (b, vals) in conv[..32 * blocks].chunks_exact(32).enumerate() {
            let vals: &[u16; 32] = vals.try_into().expect("32 values");
            put_tile_row(&mut dst[(b0 + b) * BLOCK_BYTES + a_offset(i, 0)..], vals);
        }
    }
}

/// Packs columns `0..cols` (at most 32) of an fp32 B panel, `get(k, j)`
/// giving B[k][j].
pub fn pack_b_f32(dst: &mut [u8], cols: usize, k: usize, split: Split, get: impl Fn(usize, usize) -> f32) {
    let kb = k_blocks(DotKind::Bf16, k);
    let np = split.parts();
    assert!(dst.len() >= kb * np * BLOCK_BYTES && cols <= 32);
    dst[..kb * np * BLOCK_BYTES].fill(0);
    for kk in 0..k {
        let (blk, pos) = (kk / 32, kk % 32);
        for j in 0..cols {
            let parts = split_f32(get(kk, j), np);
            for (p, part) in parts.iter().take(np).enumerate() {
                let off = (blk * np + p) * BLOCK_BYTES + b_offset(j, pos, 2, 2);
                dst[off..off + 2].copy_from_slice(&part.to_le_bytes());
            }
        }
    }
}

/// [`pack_b_f32`] for a row-major `b` (`col_stride` 1): columns
/// `j0..j0 + cols` (`cols <= 32`) of its `b.rows` rows, in `split`'s parts,
/// the same bytes. Two rows of B at a time, each split 32 columns at once
/// ([`split_block_as_split_f32`]) and interleaved into whole tile rows, so
/// that it vectorizes: [`pack_b_f32`] splits and places one value at a
/// time, and every weight of an fp32 session on the tiles passes here. A
/// 768x3072 weight in three parts on one Zen 4 thread: 18.8-19.2 ms per
/// value, 3.7-4.0 by rows
/// (`benches/results/2026-12-02-phases/zen4_split_b_packing.txt`).
pub fn pack_b_f32_rows(dst: &mut [u8], b: MatRef<f32>, j0: usize, cols: usize, split: Split) {
    with_vector_features!(pack_b_f32_rows_body(dst: &mut [u8], b: MatRef<f32>, j0: usize, cols: usize, split: Split))
}

/// (Packing only converts and copies: `FMA` is unused.)
#[inline(always)]
fn pack_b_f32_rows_body<const FMA: bool>(dst: &mut [u8], b: MatRef<f32>, j0: usize, cols: usize, split: Split) {
    let (k, np) = (b.rows, split.parts());
    let kb = k_blocks(DotKind::Bf16, k);
    assert!(dst.len() >= kb * np * BLOCK_BYTES && cols <= 32 && j0 + cols <= b.cols && b.col_stride == 1);
    dst[..kb * np * BLOCK_BYTES].fill(0);
    let row = |kk: usize| -> [f32; 32] {
        let mut v = [0f32; 32];
        if kk < k {
            v[..cols].copy_from_slice(&b.data[kk * b.row_stride + j0..][..cols]);
        }
        v
    };
    let (mut even, mut odd) = ([[0u16; 32]; 3], [[0u16; 32]; 3]);
    for kk in (0..k).step_by(2) {
        split_block_as_split_f32(&row(kk), np, &mut even);
        split_block_as_split_f32(&row(kk + 1), np, &mut odd);
        let (blk, pos) = (kk / 32, kk % 32);
        for p in 0..np {
            let at = (blk * np + p) * BLOCK_BYTES + (pos / 2) * TILE_ROW_BYTES;
            for g in 0..cols.div_ceil(16) {
                // Tile row: K pair (kk, kk + 1) of 16 columns side by side.
                let mut words = [0u16; 32];
                for (jj, pair) in words.chunks_exact_mut(2).enumerate() {
                    pair[0] = even[p][16 * g + jj];
                    pair[1] = odd[p][16 * g + jj];
                }
                put_tile_row(&mut dst[at + g * TILE_BYTES..], &words);
            }
        }
    }
}

/// [`split_f32`] of 32 values at once, bit for bit: rounded to nearest
/// even, a NaN keeping its sign and the top 7 bits of its payload and made
/// quiet (as `half` does, where [`split_block`] makes each NaN the quiet
/// NaN of its sign), and the parts after an infinity or NaN zero.
#[inline(always)]
fn split_block_as_split_f32(src: &[f32; 32], parts: usize, out: &mut [[u16; 32]; 3]) {
    let round = |x: f32| if x.is_nan() { ((x.to_bits() >> 16) as u16) | 0x0040 } else { bf16_rne(x) };
    split_block_rounded(src, parts, out, round)
}

/// Packs a bf16 B panel whose columns are rows of a matrix: column `j`
/// (`j < cols <= 32`) of B is `row(j)[..k]` (B = Rᵀ, as Kᵀ in attention
/// scores).
pub fn pack_b_bf16_from_columns<'a>(dst: &mut [u8], cols: usize, k: usize, row: impl Fn(usize) -> &'a [f32]) {
    let kb = k_blocks(DotKind::Bf16, k);
    assert!(dst.len() >= kb * BLOCK_BYTES && cols <= 32);
    #[cfg(target_arch = "x86_64")]
    if avx512::usable() {
        // SAFETY: the CPU has the features the function enables (checked
        // by `usable`).
        unsafe { avx512::pack_b_bf16_from_columns(dst, cols, k, kb, row) };
        return;
    }
    pack_b_bf16_from_columns_portable(dst, cols, k, kb, row)
}

fn pack_b_bf16_from_columns_portable<'a>(
    dst: &mut [u8],
    cols: usize,
    k: usize,
    kb: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    // Each group of 16 columns is one tile per k-block: its tile row p
    // holds K pair (2p, 2p + 1) of the 16 columns side by side, a 16x16
    // transpose of the columns' bf16 pairs.
    let mut conv = vec![0u16; 16 * kb * 32];
    for g in 0..2 {
        conv.fill(0);
        for jj in 0..16.min(cols.saturating_sub(16 * g)) {
            to_bf16(&row(16 * g + jj)[..k], &mut conv[jj * kb * 32..][..k]);
        }
        for blk in 0..kb {
            for p in 0..TILE_ROWS {
                let mut tile_row = [0u16; 32];
                for (jj, pair) in tile_row.chunks_exact_mut(2).enumerate() {
                    let at = jj * kb * 32 + blk * 32 + 2 * p;
                    pair.copy_from_slice(&conv[at..at + 2]);
                }
                put_tile_row(&mut dst[blk * BLOCK_BYTES + g * TILE_BYTES + p * TILE_ROW_BYTES..], &tile_row);
            }
        }
    }
}

/// Packs a bf16 B panel from its rows: row `kk` (`kk < k`) of B, columns
/// `0..cols` (`cols <= 32`), is `row(kk)[..cols]` (as V in attention).
pub fn pack_b_bf16_from_rows<'a>(dst: &mut [u8], cols: usize, k: usize, row: impl Fn(usize) -> &'a [f32]) {
    let kb = k_blocks(DotKind::Bf16, k);
    assert!(dst.len() >= kb * BLOCK_BYTES && cols <= 32);
    #[cfg(target_arch = "x86_64")]
    if avx512::usable() {
        // SAFETY: the CPU has the features the function enables (checked
        // by `usable`).
        unsafe { avx512::pack_b_bf16_from_rows(dst, cols, k, kb, row) };
        return;
    }
    pack_b_bf16_from_rows_portable(dst, cols, k, kb, row)
}

fn pack_b_bf16_from_rows_portable<'a>(
    dst: &mut [u8],
    cols: usize,
    k: usize,
    kb: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    dst[..kb * BLOCK_BYTES].fill(0);
    let (mut even, mut odd) = ([0u16; 32], [0u16; 32]);
    for kk in (0..k).step_by(2) {
        to_bf16(&row(kk)[..cols], &mut even[..cols]);
        if kk + 1 < k {
            to_bf16(&row(kk + 1)[..cols], &mut odd[..cols]);
        } else {
            odd = [0; 32];
        }
        // K pair (kk, kk + 1) of every column, interleaved: one tile row
        // per 16 columns.
        let mut pairs = [0u16; 64];
        for (j, pair) in pairs.chunks_exact_mut(2).enumerate() {
            pair[0] = even[j];
            pair[1] = odd[j];
        }
        let base = (kk / 32) * BLOCK_BYTES + ((kk % 32) / 2) * TILE_ROW_BYTES;
        for (g, half) in pairs.chunks_exact(32).enumerate().take(cols.div_ceil(16)) {
            let half: &[u16; 32] = half.try_into().expect("32 values");
            put_tile_row(&mut dst[base + g * TILE_BYTES..], half);
        }
    }
}

/// The bf16 packers with AVX-512 BF16 (every CPU with AMX has it): 32
/// values converted per instruction, pairs interleaved and 16x16 blocks of
/// pairs transposed in registers. Bit-equal to the portable packers above
/// (the tests compare them on this path wherever the CPU has it).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{a_offset, BLOCK_BYTES, TILE_BYTES, TILE_ROWS, TILE_ROW_BYTES};
    use std::arch::x86_64::*;

    /// Row `i` (0..32) of k-block `b` of a bf16 A panel from 32 fp32
    /// values held in two registers (`lo` the first 16), rounded to bf16:
    /// for kernels that make A rows in registers (attention's
    /// probabilities).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) fn put_a_row_bf16x32(dst: &mut [u8], b: usize, i: usize, lo: __m512, hi: __m512) {
        // The second operand fills the low half.
        // SAFETY: both are 512 bits of plain lanes; only the type changes.
        let words = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) };
        put_row(dst, b * BLOCK_BYTES + a_offset(i, 0), words);
    }

    /// Whether [`quantize_pack_a_row_i8`] can run (AVX-512F only).
    pub(super) fn quantizer_usable() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    pub(super) fn usable() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// `src[at..at + 32]` rounded to bf16 (zeros past the end of `src`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn bf16x32(src: &[f32], at: usize) -> __m512i {
        let n = src.len().saturating_sub(at).min(32);
        let lanes = |c: usize| ((1u32 << c) - 1) as __mmask16;
        let (m0, m1) = (lanes(n.min(16)), lanes(n.saturating_sub(16)));
        let p = src.as_ptr().wrapping_add(at);
        // SAFETY: only lanes whose mask bit is set are read, and those are
        // the `n` values of `src` from `at`; masked-off lanes never fault.
        let (lo, hi) = unsafe { (_mm512_maskz_loadu_ps(m0, p), _mm512_maskz_loadu_ps(m1, p.wrapping_add(16))) };
        // The second operand fills the low half.
        let words = _mm512_cvtne2ps_pbh(hi, lo);
        // SAFETY: both are 512 bits of plain lanes; only the type changes.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(words) }
    }

    /// [`super::to_bf16`]: 32 values per conversion, the ragged end
    /// through masked loads and a masked store.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn to_bf16(src: &[f32], out: &mut [u16]) {
        for (at, o) in (0..src.len()).step_by(32).zip(out.chunks_mut(32)) {
            let mask = if o.len() == 32 { u32::MAX } else { (1u32 << o.len()) - 1 };
            // SAFETY: the mask selects the `o.len()` words of `o`; lanes
            // masked off are neither written nor faulted on.
            unsafe { _mm512_mask_storeu_epi16(o.as_mut_ptr().cast(), mask, bf16x32(src, at)) };
        }
    }

    /// [`super::quantize_pack_a_i8`] for row `i` of the panel (`src` its
    /// `k` values, `kb` k-blocks): returns the row's scale and the sum of
    /// its quantized values. The same values as the portable path: max |x|
    /// skipping NaN (scale 1 for a row of zeros, NaN or an infinity), each
    /// value times the scale's inverse, clamped to +-127 and rounded half
    /// to even; a NaN value becomes 0.
    #[target_feature(enable = "avx512f")]
    pub(super) fn quantize_pack_a_row_i8(dst: &mut [u8], kb: usize, i: usize, src: &[f32]) -> (f32, i32) {
        let k = src.len();
        let mask = |at: usize| {
            let n = k.saturating_sub(at).min(16);
            if n == 16 {
                u16::MAX
            } else {
                ((1u32 << n) - 1) as __mmask16
            }
        };
        let p = src.as_ptr();
        // SAFETY: only lanes whose mask bit is set are read, and those lie
        // inside `src`; masked-off lanes never fault. `at` may lie past the
        // end of `src` (the last k-block's tail): its mask is then 0 and the
        // address, formed by `wrapping_add`, is never dereferenced.
        let load = |at: usize| unsafe { _mm512_maskz_loadu_ps(mask(at), p.wrapping_add(at)) };
        let mut most = _mm512_setzero_ps();
        for at in (0..k).step_by(16) {
            // A NaN first operand yields the second: NaN is skipped.
            most = _mm512_max_ps(_mm512_abs_ps(load(at)), most);
        }
        let m = _mm512_reduce_max_ps(most);
        let s = if m > 0.0 && m.is_finite() { m / 127.0 } else { 1.0 };
        let inv = _mm512_set1_ps(1.0 / s);
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        let mut sum = _mm512_setzero_si512();
        for b in 0..kb {
            let at = b * BLOCK_BYTES + a_offset(i, 0);
            let out = &mut dst[at..at + TILE_ROW_BYTES];
            for q in 0..4 {
                let y = _mm512_mul_ps(load(64 * b + 16 * q), inv);
                let finite = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
                let y = _mm512_maskz_mov_ps(finite, _mm512_min_ps(_mm512_max_ps(y, lo), hi));
                // Rounds half to even (the default MXCSR mode).
                let v = _mm512_cvtps_epi32(y);
                sum = _mm512_add_epi32(sum, v);
                // SAFETY: `out` is 64 bytes (sliced above); the 16 bytes
                // at 16q are inside it; unaligned store.
                unsafe { _mm_storeu_si128(out.as_mut_ptr().add(16 * q).cast(), _mm512_cvtsepi32_epi8(v)) };
            }
        }
        (s, _mm512_reduce_add_epi32(sum))
    }

    /// Writes one 64-byte tile row at `dst[at..at + 64]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn put_row(dst: &mut [u8], at: usize, v: __m512i) {
        let row = &mut dst[at..at + TILE_ROW_BYTES];
        // SAFETY: `row` is 64 bytes (sliced above); unaligned store.
        unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), v) };
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn pack_a_row_bf16(dst: &mut [u8], kb: usize, i: usize, src: &[f32]) {
        for b in 0..kb {
            put_row(dst, b * BLOCK_BYTES + a_offset(i, 0), bf16x32(src, 32 * b));
        }
    }

    /// Row `i` (0..32) of `kb` k-blocks of an A panel split into `parts`
    /// bf16 parts (each k-block's parts side by side, as
    /// [`super::pack_a_f32`] lays them out): `src` (at most `32 * kb`
    /// values) split, zero past its end. The same parts as the portable
    /// split except where the value a part is rounded from is subnormal:
    /// the conversion instruction makes that part zero where the portable
    /// rounding keeps a subnormal bf16 (which the tile unit reads as zero
    /// anyway) or, just below the smallest normal, rounds up to it; and a
    /// NaN's part keeps the instruction's payload bits.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn pack_a_row_split(dst: &mut [u8], kb: usize, parts: usize, i: usize, src: &[f32]) {
        assert!(
            (2..=3).contains(&parts) && src.len() <= 32 * kb,
            "{parts} parts of {} values in {kb} k-blocks",
            src.len()
        );
        let p = src.as_ptr();
        let lanes = |c: usize| ((1u32 << c) - 1) as __mmask16;
        let inf = _mm512_set1_ps(f32::INFINITY);
        // The bf16 words of a register, back to fp32 (exact).
        let widen = |words: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(words)));
        // What `x` leaves after its part `words`, zero where that is not
        // finite (past an infinity or NaN the later parts are zero).
        let rest = |x: __m512, words: __m256i| {
            let r = _mm512_sub_ps(x, widen(words));
            _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(r), inf), r)
        };
        for b in 0..kb {
            let n = src.len().saturating_sub(32 * b).min(32);
            let (m0, m1) = (lanes(n.min(16)), lanes(n.saturating_sub(16)));
            // SAFETY: only lanes whose mask bit is set are read, and those
            // are the `n` values of `src` from `32 * b`; masked-off lanes
            // never fault (the address is formed by `wrapping_add`).
            let (mut lo, mut hi) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m0, p.wrapping_add(32 * b)),
                    _mm512_maskz_loadu_ps(m1, p.wrapping_add(32 * b + 16)),
                )
            };
            for part in 0..parts {
                // The second operand fills the low half.
                // SAFETY: both are 512 bits of plain lanes; only the type changes.
                let words = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) };
                put_row(dst, (b * parts + part) * BLOCK_BYTES + a_offset(i, 0), words);
                if part + 1 < parts {
                    lo = rest(lo, _mm512_castsi512_si256(words));
                    hi = rest(hi, _mm512_extracti64x4_epi64::<1>(words));
                }
            }
        }
    }

    /// Positions of the pair interleave: word `2j` from the first operand's
    /// word `FIRST + j`, word `2j + 1` from the second's.
    const fn interleave<const FIRST: u16>() -> [u16; 32] {
        let mut t = [0u16; 32];
        let mut j = 0;
        while j < 16 {
            t[2 * j] = FIRST + j as u16;
            t[2 * j + 1] = 32 + FIRST + j as u16;
            j += 1;
        }
        t
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn pack_b_bf16_from_rows<'a>(
        dst: &mut [u8],
        cols: usize,
        k: usize,
        kb: usize,
        row: impl Fn(usize) -> &'a [f32],
    ) {
        let (low, high) = (interleave::<0>(), interleave::<16>());
        // SAFETY: each array is 64 bytes; unaligned loads.
        let (low, high) =
            unsafe { (_mm512_loadu_si512(low.as_ptr().cast()), _mm512_loadu_si512(high.as_ptr().cast())) };
        let zero = _mm512_setzero_si512();
        let get = |kk: usize| if kk < k { bf16x32(&row(kk)[..cols], 0) } else { zero };
        for pair in 0..kb * TILE_ROWS {
            let kk = 2 * pair;
            let (even, odd) = (get(kk), get(kk + 1));
            let at = (kk / 32) * BLOCK_BYTES + (pair % TILE_ROWS) * TILE_ROW_BYTES;
            put_row(dst, at, _mm512_permutex2var_epi16(even, low, odd));
            put_row(dst, at + TILE_BYTES, _mm512_permutex2var_epi16(even, high, odd));
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn pack_b_bf16_from_columns<'a>(
        dst: &mut [u8],
        cols: usize,
        k: usize,
        kb: usize,
        row: impl Fn(usize) -> &'a [f32],
    ) {
        for g in 0..2 {
            for blk in 0..kb {
                // Register jj: column 16g + jj's 16 K pairs of this k-block;
                // transposed, register p: pair p of the 16 columns.
                let mut t = [_mm512_setzero_si512(); 16];
                for (jj, reg) in t.iter_mut().enumerate().take(cols.saturating_sub(16 * g)) {
                    *reg = bf16x32(&row(16 * g + jj)[..k], 32 * blk);
                }
                transpose_16x16(&mut t);
                for (p, reg) in t.iter().enumerate() {
                    put_row(dst, blk * BLOCK_BYTES + g * TILE_BYTES + p * TILE_ROW_BYTES, *reg);
                }
            }
        }
    }

    /// Transposes 16 registers of 16 dwords: `t[i][j]` becomes `t[j][i]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose_16x16(t: &mut [__m512i; 16]) {
        // Dword pairs, then quadruples, inside each 128-bit lane: u[4q + c]
        // holds, in lane L, element 4L + c of rows 4q..4q + 4.
        let mut u = [_mm512_setzero_si512(); 16];
        for q in 0..4 {
            let r = 4 * q;
            let (p0, p1) = (_mm512_unpacklo_epi32(t[r], t[r + 1]), _mm512_unpackhi_epi32(t[r], t[r + 1]));
            let (p2, p3) = (_mm512_unpacklo_epi32(t[r + 2], t[r + 3]), _mm512_unpackhi_epi32(t[r + 2], t[r + 3]));
            u[r] = _mm512_unpacklo_epi64(p0, p2);
            u[r + 1] = _mm512_unpackhi_epi64(p0, p2);
            u[r + 2] = _mm512_unpacklo_epi64(p1, p3);
            u[r + 3] = _mm512_unpackhi_epi64(p1, p3);
        }
        // Then the lanes: row 4L + c gathers lane L of u[c], u[4 + c],
        // u[8 + c] and u[12 + c].
        for c in 0..4 {
            let x = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
            let y = _mm512_shuffle_i32x4::<0xDD>(u[c], u[4 + c]);
            let x2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
            let y2 = _mm512_shuffle_i32x4::<0xDD>(u[8 + c], u[12 + c]);
            t[c] = _mm512_shuffle_i32x4::<0x88>(x, x2);
            t[8 + c] = _mm512_shuffle_i32x4::<0xDD>(x, x2);
            t[4 + c] = _mm512_shuffle_i32x4::<0x88>(y, y2);
            t[12 + c] = _mm512_shuffle_i32x4::<0xDD>(y, y2);
        }
    }
}

/// Packs rows `0..rows` of an 8-bit A panel; `row(i)` is row `i`'s `k` bytes.
/// `sums[i]` gets row `i`'s sum (of signed or unsigned values), which the
/// zero-point correction needs: taken here, while the row is in L1.
pub fn pack_a_i8<'a>(
    dst: &mut [u8],
    rows: usize,
    k: usize,
    signed: bool,
    row: impl Fn(usize) -> &'a [u8],
    sums: &mut [i32],
) {
    let kind = DotKind::I8 { a_signed: false, b_signed: false };
    let kb = k_blocks(kind, k);
    assert!(dst.len() >= kb * BLOCK_BYTES && rows <= 32 && sums.len() >= rows);
    dst[..kb * BLOCK_BYTES].fill(0);
    for (i, sum) in sums.iter_mut().enumerate().take(rows) {
        let src = &row(i)[..k];
        // Two loops, so that each vectorizes (a sign test per byte does not).
        // Wrapping i32 as the product is: it cannot wrap for k < 2^23.
        *sum = if signed {
            src.iter().fold(0i32, |s, &v| s.wrapping_add(v as i8 as i32))
        } else {
            src.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32))
        };
        for (b, chunk) in src.chunks(64).enumerate() {
            let off = b * BLOCK_BYTES + a_offset(i, 0);
            dst[off..off + chunk.len()].copy_from_slice(chunk);
        }
    }
}

/// Quantizes rows `i0..i0 + rows` of `a` (at most 32, one A panel) to
/// signed int8 per row and packs them: `dst` as [`pack_a_i8`] leaves it,
/// `sums[i]` the row's sum of quantized values, `scales[i]` its scale, each
/// row as [`crate::quant::quantize_rows_i8`] quantizes it (NaN included:
/// it becomes 0). One fused AVX-512 pass per row (max, then quantize, pack
/// and sum) where the CPU has AVX-512F; else those two functions.
pub fn quantize_pack_a_i8(
    dst: &mut [u8],
    a: MatRef<f32>,
    i0: usize,
    rows: usize,
    sums: &mut [i32],
    scales: &mut [f32],
) {
    let k = a.cols;
    let kb = k_blocks(DotKind::I8 { a_signed: true, b_signed: true }, k);
    const PANEL_ROWS: usize = 2 * TILE_ROWS;
    assert!(dst.len() >= kb * BLOCK_BYTES && rows <= PANEL_ROWS && sums.len() >= rows && scales.len() >= rows);
    assert!(i0 + rows <= a.rows, "rows {i0}..{} of {}", i0 + rows, a.rows);
    #[cfg(target_arch = "x86_64")]
    if avx512::quantizer_usable() {
        let mut gathered = Vec::new();
        for i in 0..PANEL_ROWS {
            if i < rows {
                let src = a.row(i0 + i, &mut gathered);
                // SAFETY: the CPU has AVX-512F (checked above).
                (scales[i], sums[i]) = unsafe { avx512::quantize_pack_a_row_i8(dst, kb, i, src) };
            } else {
                for b in 0..kb {
                    let at = b * BLOCK_BYTES + a_offset(i, 0);
                    dst[at..at + TILE_ROW_BYTES].fill(0);
                }
            }
        }
        return;
    }
    quantize_pack_a_i8_portable(dst, a, i0, rows, sums, scales);
}

/// [`quantize_pack_a_i8`] on any CPU: each row quantized by
/// [`crate::quant::quantize_row_i8`], then packed by [`pack_a_i8`].
pub(crate) fn quantize_pack_a_i8_portable(
    dst: &mut [u8],
    a: MatRef<f32>,
    i0: usize,
    rows: usize,
    sums: &mut [i32],
    scales: &mut [f32],
) {
    thread_local! {
        /// A panel's rows quantized to 8 bits, before they are packed.
        static QUANTIZED_ROWS: std::cell::Cell<Option<super::tile::Bytes>> = const { std::cell::Cell::new(None) };
    }
    let k = a.cols;
    super::tile::with_reused_bytes(&QUANTIZED_ROWS, rows * k, |q| {
        let mut gathered = Vec::new();
        for (i, s) in scales.iter_mut().enumerate().take(rows) {
            *s = crate::quant::quantize_row_i8(a.row(i0 + i, &mut gathered), &mut q[i * k..(i + 1) * k]);
        }
        pack_a_i8(dst, rows, k, true, |i| &q[i * k..][..k], sums);
    });
}

/// Packs columns `0..cols` of an 8-bit B panel: row `kk` (`kk < k`) of B,
/// columns `0..cols` (`cols <= 32`), is `row(kk)[..cols]` (raw bytes).
/// A tile row holds one quad of K (4 consecutive rows of B) for 16 columns,
/// each column's 4 bytes side by side, so the panel is written a quad at a
/// time in its own order: four rows of B read side by side, one 4-byte
/// write per column (packing byte by byte, with an offset worked out per
/// byte, was a sixth of an int8 session's creation).
pub fn pack_b_i8<'a>(dst: &mut [u8], cols: usize, k: usize, row: impl Fn(usize) -> &'a [u8]) {
    let kind = DotKind::I8 { a_signed: false, b_signed: false };
    let kb = k_blocks(kind, k);
    assert!(dst.len() >= kb * BLOCK_BYTES && cols <= 32);
    dst[..kb * BLOCK_BYTES].fill(0);
    let zeros = [0u8; 32];
    for kk in (0..k).step_by(4) {
        let rows: [&[u8]; 4] = std::array::from_fn(|t| if kk + t < k { &row(kk + t)[..cols] } else { &zeros[..cols] });
        let at = (kk / 64) * BLOCK_BYTES + ((kk % 64) / 4) * TILE_ROW_BYTES;
        let quads = rows[0].iter().zip(rows[1]).zip(rows[2]).zip(rows[3]);
        for (j, (((&b0, &b1), &b2), &b3)) in quads.enumerate() {
            let word = at + (j / 16) * TILE_BYTES + (j % 16) * 4;
            dst[word..word + 4].copy_from_slice(&[b0, b1, b2, b3]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The int8 B layout byte by byte, from its definition (`b_offset`).
    fn pack_b_i8_reference(dst: &mut [u8], cols: usize, k: usize, get: impl Fn(usize, usize) -> u8) {
        let kb = k_blocks(DotKind::I8 { a_signed: false, b_signed: false }, k);
        dst[..kb * BLOCK_BYTES].fill(0);
        for kk in 0..k {
            for j in 0..cols {
                dst[(kk / 64) * BLOCK_BYTES + b_offset(j, kk % 64, 4, 1)] = get(kk, j);
            }
        }
    }

    proptest! {
        /// Every split, ragged K and columns, and values that split
        /// unevenly: huge, tiny, infinities, NaN with payload bits.
        #[test]
        fn split_b_panel_from_rows_matches_the_per_value_packer(
            k in 1usize..80,
            cols in 1usize..=32,
            parts in 1usize..=3,
            vals in proptest::collection::vec(prop_oneof![
                -2.0f32..2.0,
                -1e30f32..1e30,
                -1e-37f32..1e-37,
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                Just(f32::from_bits(0x7FC1_2345)),
                Just(f32::from_bits(0xFF80_0001)),
                Just(-0.0f32),
                // Rounding up into infinity, and exact ties of the first part.
                Just(f32::MAX),
                Just(f32::from_bits(0x7F7F_8000)),
                Just(f32::from_bits(0x3F80_8000)),
                Just(f32::from_bits(0x3F81_8000)),
                any::<u32>().prop_map(f32::from_bits),
            ], 80 * 36),
        ) {
            let split = [Split::Bf16, Split::Bf16x3, Split::Bf16x6][parts - 1];
            let n = cols + 3;
            let b = &vals[..k * n];
            let len = k_blocks(DotKind::Bf16, k) * split.parts() * BLOCK_BYTES;
            let (mut got, mut want) = (vec![0xAAu8; len], vec![0x55u8; len]);
            pack_b_f32_rows(&mut got, MatRef::row_major(b, k, n), 2, cols, split);
            pack_b_f32(&mut want, cols, k, split, |kk, j| b[kk * n + 2 + j]);
            prop_assert_eq!(got, want);
        }

        /// Ragged K (not a multiple of 4 or 64) and ragged columns.
        #[test]
        fn int8_b_panel_packed_by_quads_matches_the_layout(k in 1usize..200, cols in 1usize..=32, seed in any::<u32>()) {
            let n = cols + 3;
            let b: Vec<u8> = (0..k * n).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed).to_le_bytes()[3]).collect();
            let len = k_blocks(DotKind::I8 { a_signed: false, b_signed: false }, k) * BLOCK_BYTES;
            let (mut got, mut want) = (vec![0xAAu8; len], vec![0x55u8; len]);
            pack_b_i8(&mut got, cols, k, |kk| &b[kk * n + 1..]);
            pack_b_i8_reference(&mut want, cols, k, |kk, j| b[kk * n + 1 + j]);
            prop_assert_eq!(got, want);
        }
    }

    /// Round to nearest even, computed the slow way in f64.
    fn bf16_reference(x: f32) -> u16 {
        if x.is_nan() {
            return 0x7FC0 | ((x.to_bits() >> 16) as u16 & 0x8000);
        }
        half::bf16::from_f32(x).to_bits()
    }

    fn normal_or_special() -> impl Strategy<Value = f32> {
        prop_oneof![
            (-1e30f32..1e30f32),
            (-2.0f32..2.0f32),
            // Exact ties between two bf16 values, both parities.
            (0u32..1 << 15).prop_map(|m| f32::from_bits(0x3F80_8000 | (m << 16) & 0x007F_0000)),
            Just(f32::NAN),
            Just(-f32::NAN),
            Just(f32::from_bits(0x7F80_0001)),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(f32::MAX),
            Just(-0.0f32),
        ]
    }

    /// Whether a vector path runs here (`available`). It must where AMX
    /// does (`TESSERA_REQUIRE_AMX=1`, set by scripts/test on an AMX
    /// machine: every CPU with AMX has AVX-512 BF16); elsewhere only the
    /// portable forms are checked, and `skipped` says so once.
    fn vector_path_runs(available: bool, lacking: &str, said: &'static std::sync::Once, skipped: &str) -> bool {
        if !available {
            assert!(std::env::var("TESSERA_REQUIRE_AMX").as_deref() != Ok("1"), "AMX machine without {lacking}");
            said.call_once(|| eprintln!("SKIPPED {skipped}"));
        }
        available
    }

    /// The AVX-512 BF16 packers run here, or the test checks the portable
    /// ones only (see [`vector_path_runs`]).
    fn require_vector_packers() {
        #[cfg(target_arch = "x86_64")]
        let vector = avx512::usable();
        #[cfg(not(target_arch = "x86_64"))]
        let vector = false;
        static SAID: std::sync::Once = std::sync::Once::new();
        vector_path_runs(
            vector,
            "AVX-512 BF16",
            &SAID,
            "AVX-512 BF16 packers: the CPU lacks them (portable packers checked)",
        );
    }

    /// Values of every size, ties of the int8 rounding, infinities and NaN.
    fn quantizer_values() -> impl Strategy<Value = f32> {
        prop_oneof![
            1 => Just(f32::NAN),
            1 => Just(f32::from_bits(0x7F80_0001)),
            4 => -3.0f32..3.0f32,
            1 => -1e30f32..1e30f32,
            // Exact halves: rows whose max is 127 put them on ties.
            1 => (-254i32..=254).prop_map(|h| h as f32 * 0.5),
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::MIN_POSITIVE / 4.0),
        ]
    }

    fn fused_quantizer_runs() -> bool {
        #[cfg(target_arch = "x86_64")]
        let fused = avx512::quantizer_usable();
        #[cfg(not(target_arch = "x86_64"))]
        let fused = false;
        static SAID: std::sync::Once = std::sync::Once::new();
        vector_path_runs(fused, "AVX-512F", &SAID, "fused int8 quantizer: the CPU lacks AVX-512F (portable path only)")
    }

    #[test]
    fn amx_int8_quantizers_turn_nan_into_zero_and_skip_it_in_the_scale() {
        let mut row = vec![1.0f32; 70];
        row[3] = f32::NAN;
        row[4] = f32::from_bits(0x7F80_0001);
        row[69] = -2.0;
        let (mut dst, mut sums, mut scales) = (vec![0xAAu8; 2 * BLOCK_BYTES], vec![0i32; 1], vec![0f32; 1]);
        quantize_pack_a_i8(&mut dst, MatRef::row_major(&row, 1, 70), 0, 1, &mut sums, &mut scales);
        assert_eq!(scales[0], 2.0 / 127.0);
        let q = |dst: &[u8], kk: usize| dst[(kk / 64) * BLOCK_BYTES + a_offset(0, kk % 64)] as i8;
        fused_quantizer_runs();
        assert_eq!((q(&dst, 0), q(&dst, 3), q(&dst, 4), q(&dst, 68), q(&dst, 69)), (64, 0, 0, 64, -127));
        // 67 values of 1.0 (63.5 rounds to 64), two NaN (0).
        assert_eq!(sums[0], 67 * 64 - 127);
        // The portable path alike.
        dst.fill(0x55);
        quantize_pack_a_i8_portable(&mut dst, MatRef::row_major(&row, 1, 70), 0, 1, &mut sums, &mut scales);
        assert_eq!((scales[0], q(&dst, 3), q(&dst, 4), sums[0]), (2.0 / 127.0, 0, 0, 67 * 64 - 127));
    }

    /// Values for the split packers: those of [`normal_or_special`], tiny
    /// ones whose parts or residuals are subnormal, one whose residual
    /// rounds up to the smallest normal in the portable split, subnormals
    /// that do, and a NaN with payload bits.
    fn split_values() -> impl Strategy<Value = f32> {
        prop_oneof![
            6 => normal_or_special(),
            1 => Just(f32::MIN_POSITIVE / 4.0),
            1 => -1e-36f32..1e-36f32,
            1 => (-3.0f32..3.0f32).prop_map(|v| v * 1e-30),
            1 => Just(f32::from_bits(0x0480_7F80)),
            1 => (0x007F_8000u32..0x0080_0000).prop_map(f32::from_bits),
            1 => Just(f32::from_bits(0x7FA0_0000)),
        ]
    }

    /// The bf16 words of packed bytes with the differences the vector
    /// conversion may make told apart from errors: subnormal words, the
    /// smallest normal (the portable rounding reaches it from just below,
    /// where the instruction gives zero) and negative zero made +0, and
    /// every NaN made the quiet NaN of its sign.
    fn words_flushed(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .map(|w| match w & 0x7FFF {
                0..=0x0080 => 0,
                0x7F81.. => 0x7FC0 | (w & 0x8000),
                _ => w,
            })
            .collect()
    }

    /// Row 0 of a split k-block's part `p`, as words.
    fn split_row_words(dst: &[u8], p: usize) -> Vec<u16> {
        words_flushed(&dst[p * BLOCK_BYTES + a_offset(0, 0)..][..TILE_ROW_BYTES])
    }

    #[test]
    fn split_parts_end_at_an_infinity_or_nan() {
        let row = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, 1.5, 1.0 + 1.0 / 512.0 + 1.0 / 131072.0];
        // MAX rounds up to infinity; 1 + 2^-9 + 2^-17 needs all three parts.
        let want0 = [0x7F80, 0xFF80, 0x7FC0, 0x7F80, 0x3FC0, 0x3F80];
        let want1 = [0, 0, 0, 0, 0, 0x3B00];
        let want2 = [0, 0, 0, 0, 0, 0x3700];
        let check = |dst: &[u8], path: &str| {
            for (p, want) in [want0, want1, want2].iter().enumerate() {
                assert_eq!(&split_row_words(dst, p)[..6], want, "{path} part {p}");
                assert!(split_row_words(dst, p)[6..].iter().all(|&w| w == 0), "{path} part {p} past the row");
            }
        };
        let mut dst = vec![0xAAu8; 3 * BLOCK_BYTES];
        pack_a_row_parts_portable(&mut dst, Split::Bf16x6, 0, &row);
        check(&dst, "portable");
        require_vector_packers();
        dst.fill(0x55);
        pack_a_row_parts(&mut dst, Split::Bf16x6, 0, &row);
        check(&dst, "dispatched");
    }

    proptest! {
        /// The AVX-512 split packer (named for scripts/test's AMX check:
        /// every CPU with AMX has AVX-512 BF16) writes the portable
        /// split's parts, subnormal parts aside, over stale bytes, for
        /// ragged K and row counts and every kind of value; and a panel
        /// packed in two runs of k-blocks is the panel packed at once.
        #[test]
        fn amx_split_a_panel_matches_the_portable_split(
            k in 0usize..300,
            rows in 1usize..=32,
            three: bool,
            vals in proptest::collection::vec(split_values(), 1000),
            step in 1usize..1000,
            cut in 0usize..12,
        ) {
            let split = if three { Split::Bf16x6 } else { Split::Bf16x3 };
            let np = split.parts();
            let a: Vec<f32> = (0..rows * k).map(|i| vals[i * step % 1000]).collect();
            let view = MatRef::row_major(&a, rows, k);
            let kb = k_blocks(DotKind::Bf16, k);
            let len = kb * np * BLOCK_BYTES;
            let mut want = vec![0x55u8; len];
            for i in 0..32 {
                for b in 0..kb {
                    let src = if i < rows { &a[i * k + 32 * b..i * k + k.min(32 * b + 32)] } else { &[][..] };
                    pack_a_row_parts_portable(&mut want[b * np * BLOCK_BYTES..], split, i, src);
                }
            }
            require_vector_packers();
            let mut got = vec![0xAAu8; len];
            pack_a_f32(&mut got, view, split);
            prop_assert!(words_flushed(&got) == words_flushed(&want), "rows {} k {} parts {}", rows, k, np);
            let c = cut.min(kb);
            let mut ranged = vec![0x33u8; len];
            let (head, tail) = ranged.split_at_mut(c * np * BLOCK_BYTES);
            pack_a_f32_blocks(head, view, split, 0..c);
            pack_a_f32_blocks(tail, view, split, c..kb);
            prop_assert!(ranged == got, "k-blocks 0..{} and {}..{}", c, c, kb);
        }

        /// The fused AVX-512 quantizer (where the CPU has AVX-512 BW; named
        /// for scripts/test's AMX check) writes the bytes, row sums and
        /// scales of the portable quantize-then-pack path, over stale
        /// bytes, for row-major and strided A (NaN included).
        #[test]
        fn amx_int8_fused_quantizer_matches_the_portable_path(
            rows in 1usize..=32,
            k in 0usize..300,
            first_row in 0usize..3,
            strided: bool,
            zero_row in proptest::option::of(0usize..32),
            vals in proptest::collection::vec(quantizer_values(), 1000),
            step in 1usize..1000,
        ) {
            let total = rows + first_row;
            let mut a: Vec<f32> = (0..total * k).map(|i| vals[i * step % 1000]).collect();
            if let Some(z) = zero_row.filter(|&z| z < total) {
                a[z * k..(z + 1) * k].fill(0.0);
            }
            // Strided: the same matrix stored transposed, read as a view.
            let at: Vec<f32> = (0..total * k).map(|i| a[(i % total) * k + i / total]).collect();
            let view = if strided { MatRef::row_major(&at, k, total).t() } else { MatRef::row_major(&a, total, k) };
            let kb = k.div_ceil(64);
            fused_quantizer_runs();
            let (mut got, mut got_sums, mut got_scales) = (vec![0xAAu8; kb * BLOCK_BYTES], vec![7i32; 32], vec![7f32; 32]);
            quantize_pack_a_i8(&mut got, view, first_row, rows, &mut got_sums, &mut got_scales);
            let (mut want, mut want_sums, mut want_scales) = (vec![0x55u8; kb * BLOCK_BYTES], vec![7i32; 32], vec![7f32; 32]);
            quantize_pack_a_i8_portable(&mut want, view, first_row, rows, &mut want_sums, &mut want_scales);
            prop_assert!(got == want, "rows {} k {} strided {}", rows, k, strided);
            prop_assert_eq!(got_sums, want_sums);
            prop_assert_eq!(got_scales, want_scales);
        }

        /// The 8-bit A packer against a byte-by-byte placement, into a
        /// buffer full of stale bytes: every byte of the panel is written
        /// (rows past `rows` and the ragged k-block's tail as zeros), and
        /// the row sums are the plain sums.
        #[test]
        fn pack_a_i8_writes_every_byte(rows in 1usize..=32, k in 1usize..200, signed: bool, seed: u64) {
            let src: Vec<u8> = (0..rows * k).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 2_654_435_761) >> 7) as u8).collect();
            let kb = k.div_ceil(64);
            let mut got = vec![0xAAu8; kb * BLOCK_BYTES];
            let mut sums = vec![7i32; 32];
            pack_a_i8(&mut got, rows, k, signed, |i| &src[i * k..][..k], &mut sums);
            let mut want = vec![0u8; kb * BLOCK_BYTES];
            for i in 0..rows {
                for kk in 0..k {
                    want[(kk / 64) * BLOCK_BYTES + a_offset(i, kk % 64)] = src[i * k + kk];
                }
                let sum: i32 = src[i * k..][..k].iter().map(|&v| if signed { v as i8 as i32 } else { v as i32 }).sum();
                prop_assert_eq!(sums[i], sum, "row {}", i);
            }
            prop_assert!(got == want, "rows {} k {}", rows, k);
        }

        /// The two row-wise packers lay B out as the element-wise one does,
        /// portable and (named for scripts/test's AMX check: every CPU
        /// with AMX has AVX-512 BF16) vector forms alike.
        #[test]
        fn amx_bf16_panels_from_rows_and_columns_match_the_generic_packer(
            k in 1usize..100, cols in 1usize..=32, seed in any::<u32>(),
        ) {
            let val = |i: usize| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5;
            // B is k x cols, row-major; R = Bᵀ is cols x k.
            let b: Vec<f32> = (0..k * cols).map(val).collect();
            let r: Vec<f32> = (0..cols * k).map(|i| b[(i % k) * cols + i / k]).collect();
            let len = k_blocks(DotKind::Bf16, k) * BLOCK_BYTES;
            let mut want = vec![0xAAu8; len];
            pack_b_f32(&mut want, cols, k, Split::Bf16, |kk, j| b[kk * cols + j]);
            let kb = k_blocks(DotKind::Bf16, k);
            require_vector_packers();
            let mut from_rows = vec![0xAAu8; len];
            pack_b_bf16_from_rows(&mut from_rows, cols, k, |kk| &b[kk * cols..]);
            prop_assert_eq!(&from_rows, &want);
            from_rows.fill(0x55);
            pack_b_bf16_from_rows_portable(&mut from_rows, cols, k, kb, |kk| &b[kk * cols..]);
            prop_assert_eq!(&from_rows, &want);
            let mut from_cols = vec![0xAAu8; len];
            pack_b_bf16_from_columns(&mut from_cols, cols, k, |j| &r[j * k..]);
            prop_assert_eq!(&from_cols, &want);
            from_cols.fill(0x55);
            pack_b_bf16_from_columns_portable(&mut from_cols, cols, k, kb, |j| &r[j * k..]);
            prop_assert_eq!(&from_cols, &want);
        }

        /// A panel written row by row (rows past `rows` zeroed) is the
        /// panel the whole-panel packer writes, over stale bytes, by the
        /// portable and (on an AMX machine: AVX-512 BF16) vector forms.
        #[test]
        fn amx_bf16_a_panel_by_rows_matches_the_panel_packer(
            k in 0usize..700, rows in 1usize..=32, seed in any::<u32>(),
        ) {
            let val = |i: usize| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5;
            let a: Vec<f32> = (0..rows * k).map(val).collect();
            let kb = k_blocks(DotKind::Bf16, k);
            let mut want = vec![0xAAu8; kb * BLOCK_BYTES];
            pack_a_f32(&mut want, MatRef::row_major(&a, rows, k), Split::Bf16);
            require_vector_packers();
            let mut by_rows = vec![0xAAu8; kb * BLOCK_BYTES];
            for i in 0..32 {
                pack_a_row_bf16(&mut by_rows, kb, i, if i < rows { &a[i * k..(i + 1) * k] } else { &[] });
            }
            prop_assert_eq!(&by_rows, &want);
            by_rows.fill(0x55);
            for i in 0..32 {
                pack_a_row_bf16_portable(&mut by_rows, kb, i, if i < rows { &a[i * k..(i + 1) * k] } else { &[] });
            }
            prop_assert_eq!(&by_rows, &want);
        }

        /// Named for scripts/test's AMX check: every CPU with AMX has
        /// AVX-512 BF16, so there the conversion's vector path must run.
        #[test]
        fn amx_bf16_conversion_rounds_to_nearest_even(vals in proptest::collection::vec(normal_or_special(), 0..100)) {
            #[cfg(target_arch = "x86_64")]
            let fast = std::arch::is_x86_feature_detected!("avx512bf16");
            #[cfg(not(target_arch = "x86_64"))]
            let fast = false;
            if !fast {
                assert!(std::env::var("TESSERA_REQUIRE_AMX").as_deref() != Ok("1"), "AMX machine without AVX-512 BF16");
            }
            let mut out = vec![0u16; vals.len()];
            to_bf16(&vals, &mut out);
            for (&x, &got) in vals.iter().zip(&out) {
                prop_assert_eq!(got, bf16_reference(x), "{} ({:#x})", x, x.to_bits());
            }
        }
    }
}
