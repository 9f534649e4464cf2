//! Microkernels: the only ISA-specific code of the GEMMs. The tile kernels
//! below feed the tile driver ([`super::tile`]); [`neon`] and [`sme`]
//! implement [`super::vector::VectorKernel`] for the vector driver.
//!
//! Tile microkernels:
//!
//! Every kernel computes one 32x32 block of accumulators from packed
//! panels (see [`super::pack`] for the layouts):
//! `acc = (accumulate ? acc : 0) + sum over k-blocks of A_blk · B_blk`.
//! A k-block is one 16-row x 64-byte tile per 16 rows of A and per 16
//! columns of B, so a block covers 32 bf16 or 64 int8 values of K. The
//! accumulator block is row-major with 32 elements (128 bytes) per row.
//!
//! Split calls: an fp32 operand split into `parts` bf16 parts (see
//! [`super::pack::Split`]) is packed with the parts of each k-block side by
//! side (`parts` blocks of [`BLOCK_BYTES`], hi first), and one k-step runs
//! the products [`split_products`] lists, each a bf16 dot of one part of A
//! with one part of B into the same accumulators. Each part is read once per
//! k-step, and the AMX kernel reloads a tile only when the next product
//! needs another part.
//!
//! Three implementations share that contract: [`amx`] (Intel AMX through
//! `asm!`), [`avx512`] (the AVX-512 BF16 and VNNI dot products, for CPUs
//! without a tile unit) and [`emulated`] (portable Rust with the same
//! arithmetic, used as the reference for the packed layouts and where
//! neither exists).

pub mod amx;
#[cfg(all(test, target_arch = "aarch64"))]
mod arm_tests;
pub mod avx512;
pub mod emulated;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(target_arch = "aarch64")]
pub mod sme;

/// Rows and columns of the accumulator block one microkernel call produces.
pub const MR: usize = 32;
pub const NR: usize = 32;
/// Bytes in one row of a tile, and rows per tile (AMX palette 1).
pub const TILE_ROW_BYTES: usize = 64;
pub const TILE_ROWS: usize = 16;
pub const TILE_BYTES: usize = TILE_ROW_BYTES * TILE_ROWS;
/// Bytes of one packed k-block of a 32-row A panel or 32-column B panel.
pub const BLOCK_BYTES: usize = 2 * TILE_BYTES;

/// The dot-product flavour of a kernel: what the packed bytes hold.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DotKind {
    /// bf16 pairs, fp32 accumulators (`tdpbf16ps`).
    Bf16,
    /// Quadruples of 8-bit integers, i32 accumulators; the flags say whether
    /// A and B are signed (`tdpbssd`, `tdpbsud`, `tdpbusd`, `tdpbuud`).
    I8 { a_signed: bool, b_signed: bool },
}

impl DotKind {
    /// Values of K in one k-block.
    pub fn k_per_block(self) -> usize {
        match self {
            DotKind::Bf16 => 32,
            DotKind::I8 { .. } => 64,
        }
    }
    /// Values of K packed side by side in one B tile row entry (VNNI group).
    pub fn group(self) -> usize {
        match self {
            DotKind::Bf16 => 2,
            DotKind::I8 { .. } => 4,
        }
    }
}

/// The (part of A, part of B) products a split k-step runs, in order, for
/// operands split into `parts` bf16 parts: every product above 2^-8
/// (2 parts) or 2^-16 (3 parts) relative to the leading one. Ordered so that
/// consecutive products share a part of A or of B (the AMX kernel keeps
/// that one in its tiles), the largest not first.
pub fn split_products(parts: usize) -> &'static [(usize, usize)] {
    match parts {
        1 => &[(0, 0)],
        2 => &[(1, 0), (0, 0), (0, 1)],
        3 => &[(2, 0), (1, 0), (1, 1), (0, 1), (0, 2), (0, 0)],
        _ => panic!("operands split into {parts} bf16 parts: 1, 2 or 3 supported"),
    }
}

/// A 32x32 accumulator block, 64-byte aligned so tile stores hit whole lines.
#[repr(C, align(64))]
pub struct AccBlock(pub [u32; MR * NR]);

impl AccBlock {
    pub fn new() -> Self {
        AccBlock([0; MR * NR])
    }
    pub fn as_f32(&self) -> &[f32; MR * NR] {
        bytemuck_cast(&self.0)
    }
    pub fn as_i32(&self) -> &[i32; MR * NR] {
        bytemuck_cast(&self.0)
    }
}

impl Default for AccBlock {
    fn default() -> Self {
        Self::new()
    }
}

fn bytemuck_cast<T>(v: &[u32; MR * NR]) -> &[T; MR * NR] {
    const { assert!(std::mem::size_of::<T>() == 4 && std::mem::align_of::<T>() <= 4) };
    // SAFETY: T is a 4-byte plain number type (f32 or i32, checked above for
    // size and alignment) for which every bit pattern is valid.
    unsafe { &*(v as *const [u32; MR * NR] as *const [T; MR * NR]) }
}

/// Which implementation runs the microkernel.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TileIsa {
    Amx,
    /// AVX-512 BF16 / VNNI dot products on vector registers ([`avx512`]).
    Avx512Dot,
    Emulated,
}

impl TileIsa {
    /// AMX when the CPU and OS allow it, else the AVX-512 dot products where
    /// the CPU has them, else the portable emulation.
    pub fn best() -> TileIsa {
        if tessera_hw::amx_usable() {
            TileIsa::Amx
        } else if avx512::usable() {
            TileIsa::Avx512Dot
        } else {
            TileIsa::Emulated
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            TileIsa::Amx => "amx",
            TileIsa::Avx512Dot => "avx512-dot",
            TileIsa::Emulated => "emulated",
        }
    }
    /// Whether the ISA may run here, or why not: the hardware is there and
    /// the user did not turn it off (`--disable amx`, `--disable avx512`).
    pub fn enabled(self) -> Result<(), String> {
        match self {
            TileIsa::Amx => tessera_hw::amx_enabled(),
            TileIsa::Avx512Dot => avx512::unusable_reason().map_or(Ok(()), Err),
            TileIsa::Emulated => Ok(()),
        }
    }

    /// Whether this machine can execute the ISA (the emulation runs
    /// anywhere). The user's `--disable avx512` switch steers
    /// [`TileIsa::best`] and the providers, not this.
    pub fn usable(self) -> bool {
        match self {
            TileIsa::Amx => tessera_hw::amx_usable(),
            TileIsa::Avx512Dot => avx512::cpu_has(),
            TileIsa::Emulated => true,
        }
    }
}

/// The ISAs the test suites run the tile code on: the emulation always, and
/// each hardware ISA this machine runs. Where `scripts/test` found the
/// hardware in /proc/cpuinfo it sets `TESSERA_REQUIRE_AMX=1` (amx_tile) and
/// `TESSERA_REQUIRE_AVX512_DOT=1` (avx512_bf16 and avx512_vnni): a required
/// ISA that is not usable fails the calling test instead of being skipped.
/// Skips are written to stderr (shown with `--nocapture` or when a test
/// fails); scripts/test's hardware stages say what the machine did not run.
#[doc(hidden)]
pub fn isas_under_test() -> Vec<TileIsa> {
    let mut out = vec![TileIsa::Emulated];
    let amx_reason = tessera_hw::amx().reason.clone().unwrap_or_default();
    for (isa, env, reason) in [
        (TileIsa::Amx, "TESSERA_REQUIRE_AMX", amx_reason),
        (TileIsa::Avx512Dot, "TESSERA_REQUIRE_AVX512_DOT", avx512::missing_features()),
    ] {
        if isa.usable() {
            out.push(isa);
        } else {
            assert!(
                std::env::var(env).as_deref() != Ok("1"),
                "{} required ({env}=1) but unusable: {reason}",
                isa.name()
            );
            eprintln!("SKIPPED {} kernel: {reason}", isa.name());
        }
    }
    out
}

/// Per-thread state a kernel needs across calls (AMX: the tile
/// configuration). Created at the start of a task, dropped at its end.
pub struct TileSession {
    isa: TileIsa,
    prefetch: amx::Prefetch,
    // Tile configuration is per thread: keep the session on its thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl TileSession {
    /// Prepares this thread for `isa`, with the microkernel's prefetch
    /// choice (AMX only; the emulation ignores it). Panics if `isa` is AMX
    /// and the tile unit is not usable, or the AVX-512 dot products and the
    /// CPU lacks them (callers choose the ISA with [`TileIsa::best`]).
    pub fn begin(isa: TileIsa, prefetch: amx::Prefetch) -> Self {
        if isa == TileIsa::Amx {
            assert!(tessera_hw::amx_usable(), "AMX microkernel requested but AMX is not usable");
            amx::configure_thread();
        }
        assert!(isa != TileIsa::Avx512Dot || avx512::cpu_has(), "AVX-512 dot-product microkernel on a CPU without it");
        TileSession { isa, prefetch, _not_send: std::marker::PhantomData }
    }

    /// Runs one microkernel call over `kblocks` packed k-blocks.
    ///
    /// `a` and `b` must hold at least `kblocks * BLOCK_BYTES` bytes each.
    pub fn run(&self, kind: DotKind, a: &[u8], b: &[u8], kblocks: usize, acc: &mut AccBlock, accumulate: bool) {
        self.run_streaming(kind, 1, a, b, kblocks, acc, accumulate, &[])
    }

    /// One microkernel call over `ksteps` k-steps of operands split into
    /// `parts` bf16 parts (1 for plain operands; more only for
    /// [`DotKind::Bf16`]), which also pulls `next` (memory the caller reads
    /// soon, such as the next weight panel) into L2, a few lines per k-step,
    /// so that its trip from DRAM overlaps the multiplication.
    ///
    /// `a` and `b` must hold at least `ksteps * parts * BLOCK_BYTES` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn run_streaming(
        &self,
        kind: DotKind,
        parts: usize,
        a: &[u8],
        b: &[u8],
        ksteps: usize,
        acc: &mut AccBlock,
        accumulate: bool,
        next: &[u8],
    ) {
        assert!(parts == 1 || (kind == DotKind::Bf16 && parts <= 3), "{kind:?} operands in {parts} parts");
        let need = ksteps.checked_mul(parts * BLOCK_BYTES).expect("packed panel length overflows usize");
        assert!(a.len() >= need && b.len() >= need, "packed panels shorter than {ksteps} k-steps of {parts} parts");
        match self.isa {
            TileIsa::Amx => {
                let l2_lines = if ksteps == 0 { 0 } else { next.len().div_ceil(64).div_ceil(ksteps) };
                // SAFETY: lengths checked above (and `parts` is one the
                // kernels exist for); `begin` configured the tiles on this
                // thread (a TileSession is !Send, so we are still on it). The
                // stream is only prefetched (it may run up to one k-step's
                // share past `next`: a hint, never a fault).
                unsafe {
                    amx::run(
                        kind,
                        parts,
                        self.prefetch,
                        a.as_ptr(),
                        b.as_ptr(),
                        ksteps,
                        acc,
                        accumulate,
                        next.as_ptr(),
                        l2_lines,
                    )
                }
            }
            TileIsa::Avx512Dot => {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `begin` checked the features (a TileSession is
                // made only there, and its ISA never changes); lengths and
                // `parts` checked at the top of this function. The stream
                // is only prefetched (a hint, never a fault).
                unsafe {
                    avx512::run(kind, parts, a.as_ptr(), b.as_ptr(), ksteps, acc, accumulate, next)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("`begin` refuses the AVX-512 dot products off x86-64")
            }
            TileIsa::Emulated => emulated::run(kind, parts, a, b, ksteps, acc, accumulate),
        }
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        if self.isa == TileIsa::Amx {
            amx::release_thread();
        }
    }
}
