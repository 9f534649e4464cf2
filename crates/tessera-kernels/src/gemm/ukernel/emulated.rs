//! The tile microkernel contract in portable Rust: same packed layouts,
//! same accumulator block, arithmetic as the AMX instructions define it
//! (bf16 pairs multiplied in fp32 and summed into fp32; int8 quadruples into
//! i32 with wrap-around). It checks the packing and the driver on machines
//! without a tile unit, and is the reference the AMX kernel is tested against.

use super::{split_products, AccBlock, DotKind, BLOCK_BYTES, MR, NR, TILE_BYTES, TILE_ROWS, TILE_ROW_BYTES};

/// `ksteps` k-steps of `parts`-part operands (see the module contract in
/// [`super`]), products in the order [`split_products`] gives.
pub fn run(kind: DotKind, parts: usize, a: &[u8], b: &[u8], ksteps: usize, acc: &mut AccBlock, accumulate: bool) {
    if !accumulate {
        acc.0.fill(0);
    }
    for step in 0..ksteps {
        for &(pa, pb) in split_products(parts) {
            let (ka, kb) = (step * parts + pa, step * parts + pb);
            dot_block(kind, &a[ka * BLOCK_BYTES..][..BLOCK_BYTES], &b[kb * BLOCK_BYTES..][..BLOCK_BYTES], acc);
        }
    }
}

/// `acc += ` one k-block of A times one k-block of B.
fn dot_block(kind: DotKind, ab: &[u8], bb: &[u8], acc: &mut AccBlock) {
    for i in 0..MR {
        // Row i of A: tile i / 16, row i % 16, 64 bytes.
        let arow = &ab[(i / TILE_ROWS) * TILE_BYTES + (i % TILE_ROWS) * TILE_ROW_BYTES..][..TILE_ROW_BYTES];
        for j in 0..NR {
            let btile = &bb[(j / 16) * TILE_BYTES..][..TILE_BYTES];
            let col = j % 16;
            let out = &mut acc.0[i * NR + j];
            match kind {
                DotKind::Bf16 => {
                    let mut s = f32::from_bits(*out);
                    for r in 0..TILE_ROWS {
                        // B tile row r holds K pair (2r, 2r+1) of each column.
                        let bo = r * TILE_ROW_BYTES + col * 4;
                        let (a0, a1) = (bf16_at(arow, 4 * r), bf16_at(arow, 4 * r + 2));
                        let (b0, b1) = (bf16_at(btile, bo), bf16_at(btile, bo + 2));
                        s += a0 * b0 + a1 * b1;
                    }
                    *out = s.to_bits();
                }
                DotKind::I8 { a_signed, b_signed } => {
                    let mut s = *out as i32;
                    for r in 0..TILE_ROWS {
                        let bo = r * TILE_ROW_BYTES + col * 4;
                        for q in 0..4 {
                            let av = int8(arow[4 * r + q], a_signed);
                            let bv = int8(btile[bo + q], b_signed);
                            s = s.wrapping_add(av * bv);
                        }
                    }
                    *out = s as u32;
                }
            }
        }
    }
}

fn bf16_at(bytes: &[u8], at: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([bytes[at], bytes[at + 1]]) as u32) << 16)
}

fn int8(v: u8, signed: bool) -> i32 {
    if signed {
        v as i8 as i32
    } else {
        v as i32
    }
}
