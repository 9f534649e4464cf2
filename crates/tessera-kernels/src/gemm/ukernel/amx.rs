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

#[cfg(target_arch = "x86_64")]
macro_rules! tile_kernel {
    ($name:ident, $insn:literal) => {
        /// # Safety
        /// Tiles configured on this thread; `a` and `b` valid for
        /// `kblocks * BLOCK_BYTES` bytes; `c` valid for 4 KiB.
        #[inline(never)]
        unsafe fn $name(a: *const u8, b: *const u8, kblocks: usize, c: *mut u32, accumulate: bool) {
            // SAFETY: the caller's contract above; every address formed is
            // inside the panels (2 tiles of 1 KiB per k-block) or the
            // 32x32x4-byte accumulator block.
            unsafe {
                std::arch::asm!(
                    "test {acc}, {acc}",
                    "jz 2f",
                    "tileloadd tmm0, [{c} + {sc}*1]",
                    "tileloadd tmm1, [{c} + {sc}*1 + 64]",
                    "tileloadd tmm2, [{c} + {sc}*1 + 2048]",
                    "tileloadd tmm3, [{c} + {sc}*1 + 2112]",
                    "jmp 3f",
                    "2:",
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "3:",
                    "test {k}, {k}",
                    "jz 5f",
                    "4:",
                    "tileloadd tmm4, [{a} + {s}*1]",
                    "tileloadd tmm6, [{b} + {s}*1]",
                    "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                    "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                    concat!($insn, " tmm0, tmm4, tmm6"),
                    concat!($insn, " tmm1, tmm4, tmm7"),
                    concat!($insn, " tmm2, tmm5, tmm6"),
                    concat!($insn, " tmm3, tmm5, tmm7"),
                    "add {a}, 2048",
                    "add {b}, 2048",
                    "dec {k}",
                    "jnz 4b",
                    "5:",
                    "tilestored [{c} + {sc}*1], tmm0",
                    "tilestored [{c} + {sc}*1 + 64], tmm1",
                    "tilestored [{c} + {sc}*1 + 2048], tmm2",
                    "tilestored [{c} + {sc}*1 + 2112], tmm3",
                    a = inout(reg) a => _,
                    b = inout(reg) b => _,
                    k = inout(reg) kblocks => _,
                    c = in(reg) c,
                    acc = in(reg) accumulate as usize,
                    s = in(reg) TILE_ROW_BYTES,
                    sc = in(reg) 128usize,
                    options(nostack)
                );
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
tile_kernel!(kernel_bf16, "tdpbf16ps");
#[cfg(target_arch = "x86_64")]
tile_kernel!(kernel_ss, "tdpbssd");
#[cfg(target_arch = "x86_64")]
tile_kernel!(kernel_su, "tdpbsud");
#[cfg(target_arch = "x86_64")]
tile_kernel!(kernel_us, "tdpbusd");
#[cfg(target_arch = "x86_64")]
tile_kernel!(kernel_uu, "tdpbuud");

/// # Safety
/// Tiles configured on this thread ([`configure_thread`]); `a` and `b`
/// valid for `kblocks * BLOCK_BYTES` bytes.
pub unsafe fn run(kind: DotKind, a: *const u8, b: *const u8, kblocks: usize, acc: &mut AccBlock, accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let c = acc.0.as_mut_ptr();
        // SAFETY: forwarded from this function's contract; `c` points at
        // the 4 KiB accumulator block.
        unsafe {
            match kind {
                DotKind::Bf16 => kernel_bf16(a, b, kblocks, c, accumulate),
                DotKind::I8 { a_signed: true, b_signed: true } => kernel_ss(a, b, kblocks, c, accumulate),
                DotKind::I8 { a_signed: true, b_signed: false } => kernel_su(a, b, kblocks, c, accumulate),
                DotKind::I8 { a_signed: false, b_signed: true } => kernel_us(a, b, kblocks, c, accumulate),
                DotKind::I8 { a_signed: false, b_signed: false } => kernel_uu(a, b, kblocks, c, accumulate),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, a, b, kblocks, acc, accumulate);
        unreachable!("AMX exists only on x86-64");
    }
}

/// Measures the tile unit's peak on this core: back-to-back dot products on
/// register-resident tiles, no memory traffic. Returns operations per second
/// (2 per multiply-add) for `kind`.
pub fn probe_peak(kind: DotKind, iterations: usize) -> f64 {
    assert!(tessera_hw::amx_usable(), "AMX peak probe needs a usable tile unit");
    configure_thread();
    let start = std::time::Instant::now();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($insn:literal) => {
                // SAFETY: tiles configured just above (callers check
                // `amx_usable` first); the loop touches no memory.
                unsafe {
                    std::arch::asm!(
                        "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                        "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
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
    }
    let secs = start.elapsed().as_secs_f64();
    release_thread();
    // Each instruction: 16x16 outputs, each a dot product over one tile row
    // of A (32 bf16 or 64 int8 values), i.e. 2 ops per value.
    let per_insn = 16.0 * 16.0 * kind.k_per_block() as f64 * 2.0;
    4.0 * iterations.max(1) as f64 * per_insn / secs
}
