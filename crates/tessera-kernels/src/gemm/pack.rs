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
//! holds all 24 bits of an fp32 significand). A [`Split`] mode lists which
//! part of A meets which part of B; each product becomes its own k-block, so
//! the microkernel needs no change: the product sum is one longer GEMM.

use half::bf16;

use super::ukernel::{DotKind, BLOCK_BYTES, TILE_BYTES, TILE_ROWS, TILE_ROW_BYTES};
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
    /// (part of A, part of B) per product, smallest terms first so that
    /// they are added while the accumulator is still small.
    pub fn products(self) -> &'static [(usize, usize)] {
        match self {
            Split::Bf16 => &[(0, 0)],
            Split::Bf16x3 => &[(1, 0), (0, 1), (0, 0)],
            Split::Bf16x6 => &[(2, 0), (1, 1), (0, 2), (1, 0), (0, 1), (0, 0)],
        }
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
/// it vectorize; NaN payloads are not preserved, which no GEMM needs).
#[inline(always)]
fn bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// Splits 32 values into `parts` bf16 planes (hi, mid, lo).
#[inline(always)]
fn split_block(src: &[f32; 32], parts: usize, out: &mut [[u16; 32]; 3]) {
    let mut rest = *src;
    for plane in out.iter_mut().take(parts) {
        for (h, r) in plane.iter_mut().zip(rest.iter_mut()) {
            *h = bf16_rne(*r);
            *r -= f32::from_bits((*h as u32) << 16);
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
fn pack_a_f32_body<const FMA: bool>(dst: &mut [u8], a: MatRef<f32>, split: Split) {
    let (rows, k) = (a.rows, a.cols);
    let kb = k_blocks(DotKind::Bf16, k);
    let prods = split.products();
    let np = prods.len();
    assert!(dst.len() >= kb * np * BLOCK_BYTES && rows <= 32);
    let mut gathered = Vec::new();
    let mut converted: Vec<u16> = Vec::with_capacity(kb * 32);
    let mut planes = [[0u16; 32]; 3];
    for i in 0..32 {
        if i >= rows {
            for blk in 0..kb * np {
                dst[blk * BLOCK_BYTES + a_offset(i, 0)..][..TILE_ROW_BYTES].fill(0);
            }
            continue;
        }
        let base = i * a.row_stride;
        let src: &[f32] = if a.col_stride == 1 {
            &a.data[base..base + k]
        } else {
            gathered.clear();
            gathered.extend((0..k).map(|kk| a.data[base + kk * a.col_stride]));
            &gathered
        };
        if split == Split::Bf16 {
            // The common case: one pass over the row (a loop the compiler
            // vectorizes), then whole tile rows copied out.
            converted.clear();
            converted.extend(src.iter().map(|&x| bf16_rne(x)));
            converted.resize(kb * 32, 0);
            for (b, vals) in converted.chunks_exact(32).enumerate() {
                let vals: &[u16; 32] = vals.try_into().expect("32 values");
                put_tile_row(&mut dst[b * BLOCK_BYTES + a_offset(i, 0)..], vals);
            }
            continue;
        }
        for b in 0..kb {
            let part = &src[b * 32..k.min(b * 32 + 32)];
            let mut chunk = [0f32; 32];
            chunk[..part.len()].copy_from_slice(part);
            split_block(&chunk, split.parts(), &mut planes);
            for (p, &(pa, _)) in prods.iter().enumerate() {
                put_tile_row(&mut dst[(b * np + p) * BLOCK_BYTES + a_offset(i, 0)..], &planes[pa]);
            }
        }
    }
}

/// Packs the rows of `a` (at most 32: one panel) into `dst`, k-blocks for
/// every product of `split`, zero padded to 32 rows and whole k-blocks.
pub fn pack_a_f32(dst: &mut [u8], a: MatRef<f32>, split: Split) {
    with_vector_features!(pack_a_f32_body(dst: &mut [u8], a: MatRef<f32>, split: Split))
}

/// Packs columns `0..cols` (at most 32) of an fp32 B panel, `get(k, j)`
/// giving B[k][j].
pub fn pack_b_f32(dst: &mut [u8], cols: usize, k: usize, split: Split, get: impl Fn(usize, usize) -> f32) {
    let kb = k_blocks(DotKind::Bf16, k);
    let prods = split.products();
    assert!(dst.len() >= kb * prods.len() * BLOCK_BYTES && cols <= 32);
    dst[..kb * prods.len() * BLOCK_BYTES].fill(0);
    for kk in 0..k {
        let (blk, pos) = (kk / 32, kk % 32);
        for j in 0..cols {
            let parts = split_f32(get(kk, j), split.parts());
            for (p, &(_, pb)) in prods.iter().enumerate() {
                let off = (blk * prods.len() + p) * BLOCK_BYTES + b_offset(j, pos, 2, 2);
                dst[off..off + 2].copy_from_slice(&parts[pb].to_le_bytes());
            }
        }
    }
}

/// Packs rows `0..rows` of an 8-bit A panel; `row(i)` is row `i`'s `k` bytes.
pub fn pack_a_i8<'a>(dst: &mut [u8], rows: usize, k: usize, row: impl Fn(usize) -> &'a [u8]) {
    let kind = DotKind::I8 { a_signed: false, b_signed: false };
    let kb = k_blocks(kind, k);
    assert!(dst.len() >= kb * BLOCK_BYTES && rows <= 32);
    dst[..kb * BLOCK_BYTES].fill(0);
    for i in 0..rows {
        let src = &row(i)[..k];
        for (b, chunk) in src.chunks(64).enumerate() {
            let off = b * BLOCK_BYTES + a_offset(i, 0);
            dst[off..off + chunk.len()].copy_from_slice(chunk);
        }
    }
}

/// Packs columns `0..cols` of an 8-bit B panel (`get(k, j)` the raw byte).
pub fn pack_b_i8(dst: &mut [u8], cols: usize, k: usize, get: impl Fn(usize, usize) -> u8) {
    let kind = DotKind::I8 { a_signed: false, b_signed: false };
    let kb = k_blocks(kind, k);
    assert!(dst.len() >= kb * BLOCK_BYTES && cols <= 32);
    dst[..kb * BLOCK_BYTES].fill(0);
    for kk in 0..k {
        for j in 0..cols {
            dst[(kk / 64) * BLOCK_BYTES + b_offset(j, kk % 64, 4, 1)] = get(kk, j);
        }
    }
}
