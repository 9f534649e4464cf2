//! Intel AMX microkernels (`asm!`: the tile intrinsics are unstable in
//! Rust 1.95). A 2x2 arrangement of 16x16 accumulator tiles uses all eight
//! tile registers: tmm0-3 accumulate, tmm4-5 hold two 16-row A tiles, tmm6-7
//! two 16-column B tiles, so each A and B tile loaded feeds two products.

use super::{AccBlock, DotKind, TILE_ROWS, TILE_ROW_BYTES};

/// The 64-byte operand of `ldtilecfg` (Intel SDM vol. 2, LDTILECFG).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Loads the tile configuration (8 tiles of 16 rows x 64 bytes) on the
/// calling thread.
pub fn configure_thread() {
    let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for t in 0..8 {
        cfg.colsb[t] = TILE_ROW_BYTES as u16;
        cfg.rows[t] = TILE_ROWS as u8;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only reached after `tessera_hw::amx_usable()` (checked by
    // `TileSession::begin`), so the instruction exists and Linux granted the
    // tile state; `cfg` is a valid palette-1 configuration, 64-byte aligned.
    unsafe {
        std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = cfg;
}

/// Returns the tile registers to their initial state, so context switches
/// stop saving 8 KiB of tile data for this thread.
pub fn release_thread() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `configure_thread`; `tilerelease` touches tile state only.
    unsafe {
        std::arch::asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
}

/// Software prefetch into L1 inside the k-loop: tile loads that miss L1
/// stall the tile unit, and the streaming operand's next k-block is not in
/// L1 when it comes from L2 (hardware prefetchers follow tile rows poorly).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Prefetch {
    None,
    /// The A panel's k-block `PREFETCH_DISTANCE` ahead.
    A,
    /// Both panels' k-blocks `PREFETCH_DISTANCE` ahead.
    Ab,
}

/// Bytes ahead of the current k-block that `Prefetch` reaches (two k-blocks).
pub const PREFETCH_DISTANCE: usize = 2 * super::BLOCK_BYTES;

/// `n` prefetch lines of each prefetched panel, continuing at the running
/// offset `pfo` (one product's share of a k-block's or k-step's lines).
#[cfg(target_arch = "x86_64")]
macro_rules! prefetch_lines {
    ($n:literal, $pfa:literal, $pfb:literal) => {
        concat!(
            ".rept ",
            $n,
            "\n",
            $pfa,
            " [{a} + {pd} + pfo]\n",
            $pfb,
            " [{b} + {pd} + pfo]\n",
            ".set pfo, pfo + 64\n",
            ".endr"
        )
    };
}

/// The accumulator tiles tmm0-3 at the start of a call: the 32x32 block at
/// `{c}` (row stride `{sc}`) when `{acc}` is set, else zero.
#[cfg(target_arch = "x86_64")]
macro_rules! accumulators_in {
    () => {
        concat!(
            "test {acc}, {acc}\n",
            "jz 2f\n",
            "tileloadd tmm0, [{c} + {sc}*1]\n",
            "tileloadd tmm1, [{c} + {sc}*1 + 64]\n",
            "tileloadd tmm2, [{c} + {sc}*1 + 2048]\n",
            "tileloadd tmm3, [{c} + {sc}*1 + 2112]\n",
            "jmp 3f\n",
            "2:\n",
            "tilezero tmm0\n",
            "tilezero tmm1\n",
            "tilezero tmm2\n",
            "tilezero tmm3\n",
            "3:"
        )
    };
}

/// The accumulator tiles back to the block at `{c}`.
#[cfg(target_arch = "x86_64")]
macro_rules! accumulators_out {
    () => {
        concat!(
            "tilestored [{c} + {sc}*1], tmm0\n",
            "tilestored [{c} + {sc}*1 + 64], tmm1\n",
            "tilestored [{c} + {sc}*1 + 2048], tmm2\n",
            "tilestored [{c} + {sc}*1 + 2112], tmm3"
        )
    };
}

/// `{l2n}` lines of the L2 stream from `{l2}` onwards (advancing it), with
/// `{t}` as the counter: once per k-block or k-step.
#[cfg(target_arch = "x86_64")]
macro_rules! l2_stream {
    () => {
        concat!(
            "mov {t}, {l2n}\n",
            "test {t}, {t}\n",
            "jz 7f\n",
            "6:\n",
            "prefetcht1 [{l2}]\n",
            "add {l2}, 64\n",
            "dec {t}\n",
            "jnz 6b\n",
            "7:"
        )
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_kernel {
    ($name:ident, $insn:literal, $pfa:literal, $pfb:literal) => {
        /// # Safety
        /// Tiles configured on this thread; `a` and `b` valid for
        /// `kblocks * BLOCK_BYTES` bytes; `c` valid for 4 KiB.
        #[inline(never)]
        unsafe fn $name(
            a: *const u8,
            b: *const u8,
            kblocks: usize,
            c: *mut u32,
            accumulate: bool,
            l2: *const u8,
            l2_lines: usize,
        ) {
            // SAFETY: the caller's contract above; every address loaded or
            // stored is inside the panels (2 tiles of 1 KiB per k-block) or
            // the 32x32x4-byte accumulator block. Prefetches may point past
            // the panels (and `l2` anywhere): a prefetch is a hint and never
            // faults.
            unsafe {
                std::arch::asm!(
                    accumulators_in!(),
                    "test {k}, {k}",
                    "jz 5f",
                    "4:",
                    "tileloadd tmm4, [{a} + {s}*1]",
                    "tileloadd tmm6, [{b} + {s}*1]",
                    "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                    "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                    // One quarter of the prefetch lines after each product,
                    // so that they spread over the k-block's cycles.
                    ".set pfo, 0",
                    concat!($insn, " tmm0, tmm4, tmm6"),
                    prefetch_lines!(8, $pfa, $pfb),
                    // `l2_lines` lines of the L2 stream per k-block.
                    l2_stream!(),
                    concat!($insn, " tmm1, tmm4, tmm7"),
                    prefetch_lines!(8, $pfa, $pfb),
                    concat!($insn, " tmm2, tmm5, tmm6"),
                    prefetch_lines!(8, $pfa, $pfb),
                    concat!($insn, " tmm3, tmm5, tmm7"),
                    prefetch_lines!(8, $pfa, $pfb),
                    "add {a}, 2048",
                    "add {b}, 2048",
                    "dec {k}",
                    "jnz 4b",
                    "5:",
                    accumulators_out!(),
                    a = inout(reg) a => _,
                    b = inout(reg) b => _,
                    k = inout(reg) kblocks => _,
                    c = in(reg) c,
                    acc = in(reg) accumulate as usize,
                    s = in(reg) TILE_ROW_BYTES,
                    sc = in(reg) 128usize,
                    pd = in(reg) PREFETCH_DISTANCE,
                    l2 = inout(reg) l2 => _,
                    l2n = in(reg) l2_lines,
                    t = out(reg) _,
                    options(nostack)
                );
            }
        }
    };
}

/// One kernel per dot kind and prefetch choice; "#" comments a prefetch
/// line out, so the three variants share one template.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_kernels {
    ($none:ident, $a:ident, $ab:ident, $insn:literal) => {
        tile_kernel!($none, $insn, "#", "#");
        tile_kernel!($a, $insn, "prefetcht0", "#");
        tile_kernel!($ab, $insn, "prefetcht0", "prefetcht0");
    };
}

#[cfg(target_arch = "x86_64")]
tile_kernels!(bf16_n, bf16_a, bf16_ab, "tdpbf16ps");
#[cfg(target_arch = "x86_64")]
tile_kernels!(ss_n, ss_a, ss_ab, "tdpbssd");
#[cfg(target_arch = "x86_64")]
tile_kernels!(su_n, su_a, su_ab, "tdpbsud");
#[cfg(target_arch = "x86_64")]
tile_kernels!(us_n, us_a, us_ab, "tdpbusd");
#[cfg(target_arch = "x86_64")]
tile_kernels!(uu_n, uu_a, uu_ab, "tdpbuud");

/// Loads part `p` of the current k-step of a panel (`{a}` or `{b}`) into a
/// tile pair: rows 0-15 (or columns 0-15) and 16-31.
#[cfg(target_arch = "x86_64")]
macro_rules! load_part {
    ($t0:literal, $t1:literal, $panel:literal, $off0:literal, $off1:literal) => {
        concat!(
            "tileloadd ",
            $t0,
            ", [{",
            $panel,
            "} + {s}*1 + ",
            $off0,
            "]\n",
            "tileloadd ",
            $t1,
            ", [{",
            $panel,
            "} + {s}*1 + ",
            $off1,
            "]"
        )
    };
}

/// The four products of the loaded A pair (tmm4-5) and B pair (tmm6-7).
#[cfg(target_arch = "x86_64")]
macro_rules! four_products {
    () => {
        concat!(
            "tdpbf16ps tmm0, tmm4, tmm6\n",
            "tdpbf16ps tmm1, tmm4, tmm7\n",
            "tdpbf16ps tmm2, tmm5, tmm6\n",
            "tdpbf16ps tmm3, tmm5, tmm7"
        )
    };
}

/// A bf16 kernel over split operands (see [`super::split_products`]): one
/// k-step is `$step` bytes of each panel, its products given as asm lines
/// (part loads, `four_products!` and each product's share of prefetches,
/// which reach two k-steps ahead).
#[cfg(target_arch = "x86_64")]
macro_rules! split_kernel {
    ($name:ident, $step:literal, $pfa:literal, $pfb:literal, [$($body:expr),* $(,)?]) => {
        /// # Safety
        /// Tiles configured on this thread; `a` and `b` valid for
        /// `ksteps` k-steps (`$step` bytes each); `c` valid for 4 KiB.
        #[inline(never)]
        unsafe fn $name(
            a: *const u8,
            b: *const u8,
            ksteps: usize,
            c: *mut u32,
            accumulate: bool,
            l2: *const u8,
            l2_lines: usize,
        ) {
            // SAFETY: the caller's contract above; every tile load reads one
            // of the k-step's parts (inside `$step` bytes of each panel) and
            // stores and loads of C stay in the 32x32x4-byte block.
            // Prefetches may point past the panels (and `l2` anywhere): a
            // prefetch is a hint and never faults.
            unsafe {
                std::arch::asm!(
                    accumulators_in!(),
                    "test {k}, {k}",
                    "jz 5f",
                    "4:",
                    ".set pfo, 0",
                    // `l2_lines` lines of the L2 stream per k-step.
                    l2_stream!(),
                    $($body,)*
                    concat!("add {a}, ", $step),
                    concat!("add {b}, ", $step),
                    "dec {k}",
                    "jnz 4b",
                    "5:",
                    accumulators_out!(),
                    a = inout(reg) a => _,
                    b = inout(reg) b => _,
                    k = inout(reg) ksteps => _,
                    c = in(reg) c,
                    acc = in(reg) accumulate as usize,
                    s = in(reg) TILE_ROW_BYTES,
                    sc = in(reg) 128usize,
                    pd = in(reg) 2usize * $step,
                    l2 = inout(reg) l2 => _,
                    l2n = in(reg) l2_lines,
                    t = out(reg) _,
                    options(nostack)
                );
            }
        }
    };
}

/// Two parts (hi, lo; 4096-byte k-steps): products lo·hi, hi·hi, hi·lo,
/// 8 tile loads for 12 products; 64 lines of each panel prefetched per step.
#[cfg(target_arch = "x86_64")]
macro_rules! split2_kernel {
    ($name:ident, $pfa:literal, $pfb:literal) => {
        split_kernel!(
            $name,
            4096,
            $pfa,
            $pfb,
            [
                load_part!("tmm4", "tmm5", "a", "2048", "3072"),
                load_part!("tmm6", "tmm7", "b", "0", "1024"),
                four_products!(),
                prefetch_lines!(24, $pfa, $pfb),
                load_part!("tmm4", "tmm5", "a", "0", "1024"),
                four_products!(),
                prefetch_lines!(24, $pfa, $pfb),
                load_part!("tmm6", "tmm7", "b", "2048", "3072"),
                four_products!(),
                prefetch_lines!(16, $pfa, $pfb),
            ]
        );
    };
}

/// Three parts (hi, mid, lo; 6144-byte k-steps): products in the order of
/// `split_products(3)`, 14 tile loads for 24 products; 96 lines of each
/// panel prefetched per step.
#[cfg(target_arch = "x86_64")]
macro_rules! split3_kernel {
    ($name:ident, $pfa:literal, $pfb:literal) => {
        split_kernel!(
            $name,
            6144,
            $pfa,
            $pfb,
            [
                // lo(A) · hi(B)
                load_part!("tmm4", "tmm5", "a", "4096", "5120"),
                load_part!("tmm6", "tmm7", "b", "0", "1024"),
                four_products!(),
                prefetch_lines!(16, $pfa, $pfb),
                // mid · hi
                load_part!("tmm4", "tmm5", "a", "2048", "3072"),
                four_products!(),
                prefetch_lines!(16, $pfa, $pfb),
                // mid · mid
                load_part!("tmm6", "tmm7", "b", "2048", "3072"),
                four_products!(),
                prefetch_lines!(16, $pfa, $pfb),
                // hi · mid
                load_part!("tmm4", "tmm5", "a", "0", "1024"),
                four_products!(),
                prefetch_lines!(16, $pfa, $pfb),
                // hi · lo
                load_part!("tmm6", "tmm7", "b", "4096", "5120"),
                four_products!(),
                prefetch_lines!(16, $pfa, $pfb),
                // hi · hi
                load_part!("tmm6", "tmm7", "b", "0", "1024"),
                four_products!(),
                prefetch_lines!(16, $pfa, $pfb),
            ]
        );
    };
}

#[cfg(target_arch = "x86_64")]
split2_kernel!(split2_n, "#", "#");
#[cfg(target_arch = "x86_64")]
split2_kernel!(split2_a, "prefetcht0", "#");
#[cfg(target_arch = "x86_64")]
split2_kernel!(split2_ab, "prefetcht0", "prefetcht0");
#[cfg(target_arch = "x86_64")]
split3_kernel!(split3_n, "#", "#");
#[cfg(target_arch = "x86_64")]
split3_kernel!(split3_a, "prefetcht0", "#");
#[cfg(target_arch = "x86_64")]
split3_kernel!(split3_ab, "prefetcht0", "prefetcht0");

/// `acc (+)= A · B` over `ksteps` k-steps of `parts`-part operands (1 for
/// plain operands; 2 or 3 for bf16 splits); `l2` (any address: only
/// prefetched) gets `l2_lines` consecutive lines prefetched into L2 per
/// k-step.
///
/// # Safety
/// Tiles configured on this thread ([`configure_thread`]); `a` and `b`
/// valid for `ksteps * parts * BLOCK_BYTES` bytes; `parts` is 1, or 2 or 3
/// with `kind` bf16 (else this panics).
#[allow(clippy::too_many_arguments)]
pub unsafe fn run(
    kind: DotKind,
    parts: usize,
    prefetch: Prefetch,
    a: *const u8,
    b: *const u8,
    ksteps: usize,
    acc: &mut AccBlock,
    accumulate: bool,
    l2: *const u8,
    l2_lines: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        type Kernel = unsafe fn(*const u8, *const u8, usize, *mut u32, bool, *const u8, usize);
        let variants: [Kernel; 3] = match (kind, parts) {
            (DotKind::Bf16, 1) => [bf16_n, bf16_a, bf16_ab],
            (DotKind::Bf16, 2) => [split2_n, split2_a, split2_ab],
            (DotKind::Bf16, 3) => [split3_n, split3_a, split3_ab],
            (DotKind::I8 { a_signed: true, b_signed: true }, 1) => [ss_n, ss_a, ss_ab],
            (DotKind::I8 { a_signed: true, b_signed: false }, 1) => [su_n, su_a, su_ab],
            (DotKind::I8 { a_signed: false, b_signed: true }, 1) => [us_n, us_a, us_ab],
            (DotKind::I8 { a_signed: false, b_signed: false }, 1) => [uu_n, uu_a, uu_ab],
            _ => panic!("{kind:?} operands in {parts} parts: no kernel"),
        };
        let kernel = variants[prefetch as usize];
        // SAFETY: forwarded from this function's contract; `c` points at
        // the 4 KiB accumulator block.
        unsafe { kernel(a, b, ksteps, acc.0.as_mut_ptr(), accumulate, l2, l2_lines) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, parts, prefetch, a, b, ksteps, acc, accumulate, l2, l2_lines);
        unreachable!("AMX exists only on x86-64");
    }
}

/// Measures the tile unit's peak on this core: back-to-back dot products on
/// register-resident tiles, no memory traffic. Returns operations per second
/// (2 per multiply-add) for `kind`. The operand tiles hold zeros; see
/// [`probe_peak_on`] for operands with data in them.
pub fn probe_peak(kind: DotKind, iterations: usize) -> f64 {
    probe_peak_on(kind, iterations, None)
}

/// [`probe_peak`] on operand tiles of pseudo-random values ([`probe_operands`]):
/// the rate the unit keeps on real data. On the lent Xeon it read 1.2-1.4x
/// below the zero-tile probe at full speed and 2.4-2.8x below in its slow
/// phases, while the zero-tile probe did not slow down at all
/// (`benches/results/2026-12-01-big-gemm/`): a GEMM's share of the
/// zero-tile probe mixes its own losses with the clock's.
pub fn probe_peak_data(kind: DotKind, iterations: usize) -> f64 {
    probe_peak_on(kind, iterations, Some(&probe_operands(kind)))
}

/// Four operand tiles of pseudo-random values for `kind` (a fixed
/// sequence): bf16 values spread over [-1, 1], or bytes spread over all
/// 256 values for int8.
pub fn probe_operands(kind: DotKind) -> [u8; 4 * 1024] {
    let mut tiles = [0u8; 4 * 1024];
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    match kind {
        DotKind::Bf16 => {
            for pair in tiles.chunks_exact_mut(2) {
                let v = (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                pair.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        DotKind::I8 { .. } => tiles.iter_mut().for_each(|b| *b = (next() >> 56) as u8),
    }
    tiles
}

/// [`probe_peak`] with the four operand tiles loaded from `operands` (4 KiB:
/// two A tiles, then two B tiles) instead of zeroed: the multipliers then
/// switch as they do on real data, which may draw more power and so run
/// at another clock than all-zero tiles.
pub fn probe_peak_on(kind: DotKind, iterations: usize, operands: Option<&[u8; 4 * 1024]>) -> f64 {
    let secs = probe_loop(kind, iterations, operands, None);
    // Each instruction: 16x16 outputs, each a dot product over one tile row
    // of A (32 bf16 or 64 int8 values), i.e. 2 ops per value.
    let per_insn = 16.0 * 16.0 * kind.k_per_block() as f64 * 2.0;
    4.0 * iterations.max(1) as f64 * per_insn / secs
}

/// The probe's loop: `iterations` rounds of four tile products on the
/// operand tiles (zeroed, or loaded from `operands`), then the four
/// accumulator tiles into `acc` when given (for tests: its 32x32 block is
/// the two A tiles times the two B tiles, `iterations` times). Returns the
/// seconds the loop took (the tile configuration and operand loads
/// outside them).
fn probe_loop(kind: DotKind, iterations: usize, operands: Option<&[u8; 4 * 1024]>, acc: Option<&mut AccBlock>) -> f64 {
    assert!(tessera_hw::amx_usable(), "AMX peak probe needs a usable tile unit");
    configure_thread();
    #[cfg(target_arch = "x86_64")]
    let secs = {
        let (load, src) = match operands {
            Some(t) => (1usize, t.as_ptr()),
            None => (0, std::ptr::null()),
        };
        let out = acc.map_or(std::ptr::null_mut(), |acc| acc.0.as_mut_ptr());
        // SAFETY: tiles configured just above (callers check `amx_usable`
        // first); the only memory read is the 4 KiB of `operands` (four
        // 1 KiB tiles of 16 rows x 64 bytes), and only when it was given.
        unsafe {
            std::arch::asm!(
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "test {load}, {load}",
                "jz 3f",
                "tileloadd tmm4, [{src} + {s}*1]",
                "tileloadd tmm5, [{src} + {s}*1 + 1024]",
                "tileloadd tmm6, [{src} + {s}*1 + 2048]",
                "tileloadd tmm7, [{src} + {s}*1 + 3072]",
                "jmp 2f",
                "3:",
                "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                "2:",
                load = in(reg) load,
                src = in(reg) src,
                s = in(reg) TILE_ROW_BYTES,
                options(nostack, readonly)
            );
        }
        // The tiles live on across the `asm!` blocks: what runs between
        // them (reading the clock) executes no tile instruction, and the
        // kernel saves tile state across context switches.
        let start = std::time::Instant::now();
        macro_rules! probe {
            ($insn:literal) => {
                // SAFETY: tiles configured and loaded just above; the loop
                // touches no memory.
                unsafe {
                    std::arch::asm!(
                        "2:",
                        concat!($insn, " tmm0, tmm4, tmm6"),
                        concat!($insn, " tmm1, tmm4, tmm7"),
                        concat!($insn, " tmm2, tmm5, tmm6"),
                        concat!($insn, " tmm3, tmm5, tmm7"),
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iterations.max(1) => _,
                        options(nostack, nomem)
                    );
                }
            };
        }
        match kind {
            DotKind::Bf16 => probe!("tdpbf16ps"),
            DotKind::I8 { .. } => probe!("tdpbssd"),
        }
        let secs = start.elapsed().as_secs_f64();
        if !out.is_null() {
            // SAFETY: tiles configured above; `out` is the 32x32 u32 block
            // of `acc` (rows of 128 bytes): each tile store writes 16 rows
            // of 64 bytes inside it, as `accumulators_out!` does.
            unsafe {
                std::arch::asm!(
                    accumulators_out!(),
                    c = in(reg) out,
                    sc = in(reg) 128usize,
                    options(nostack)
                );
            }
        }
        secs
    };
    #[cfg(not(target_arch = "x86_64"))]
    let secs = {
        let _ = (kind, iterations, operands, acc);
        0.0
    };
    release_thread();
    secs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::ukernel::{isas_under_test, TileIsa};

    #[test]
    fn probe_operands_are_finite_varied_and_within_range() {
        let bf = probe_operands(DotKind::Bf16);
        let values: Vec<f32> =
            bf.chunks_exact(2).map(|p| half::bf16::from_bits(u16::from_le_bytes([p[0], p[1]])).to_f32()).collect();
        assert!(values.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)), "bf16 operands outside [-1, 1]");
        let mut bits: Vec<u16> = bf.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
        bits.sort_unstable();
        bits.dedup();
        assert!(bits.len() > 500, "only {} distinct bf16 operands of 2048", bits.len());
        assert!(values.iter().filter(|v| **v < 0.0).count() > 800, "too few negative operands");
        let i8s = probe_operands(DotKind::I8 { a_signed: true, b_signed: true });
        let mut seen = [false; 256];
        i8s.iter().for_each(|b| seen[*b as usize] = true);
        assert!(seen.iter().filter(|s| **s).count() > 240, "int8 operands cover too few byte values");
    }

    /// The data probe multiplies the tiles it loaded: after `n` rounds its
    /// four accumulators are `n` times each A tile times each B tile (B in
    /// the tile unit's pair or quad layout).
    #[test]
    fn amx_data_probe_multiplies_the_loaded_tiles() {
        if !isas_under_test().contains(&TileIsa::Amx) {
            return;
        }
        const ROUNDS: usize = 3;
        for kind in [DotKind::Bf16, DotKind::I8 { a_signed: true, b_signed: true }] {
            let tiles = probe_operands(kind);
            let mut acc = AccBlock::new();
            probe_loop(kind, ROUNDS, Some(&tiles), Some(&mut acc));
            for (i, j) in (0..32).flat_map(|i| (0..32).map(move |j| (i, j))) {
                // Output (i, j): row i % 16 of A tile i / 16 times column
                // j % 16 of B tile j / 16.
                let a = &tiles[(i / 16) * 1024..][..1024];
                let b = &tiles[2048 + (j / 16) * 1024..][..1024];
                let (ii, jj) = (i % 16, j % 16);
                match kind {
                    DotKind::Bf16 => {
                        let v = |bytes: &[u8], at: usize| {
                            half::bf16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
                        };
                        // Row i of A holds k = 0..32; row p of B holds
                        // k = 2p, 2p + 1 for each column j.
                        let (mut sum, mut size) = (0f64, 0f64);
                        for k in 0..32 {
                            let t = v(a, ii * 64 + 2 * k) as f64 * v(b, (k / 2) * 64 + 4 * jj + 2 * (k % 2)) as f64;
                            sum += t;
                            size += t.abs();
                        }
                        let want = ROUNDS as f64 * sum;
                        let got = acc.as_f32()[i * 32 + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * ROUNDS as f64 * size + 1e-30,
                            "bf16 C[{i}][{j}] = {got}, want {want}"
                        );
                    }
                    DotKind::I8 { .. } => {
                        let mut sum = 0i64;
                        for k in 0..64 {
                            sum += (a[ii * 64 + k] as i8 as i64) * (b[(k / 4) * 64 + 4 * jj + (k % 4)] as i8 as i64);
                        }
                        assert_eq!(acc.as_i32()[i * 32 + j] as i64, ROUNDS as i64 * sum, "int8 C[{i}][{j}]");
                    }
                }
            }
        }
    }
}
