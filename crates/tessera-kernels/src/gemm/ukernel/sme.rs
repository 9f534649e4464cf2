//! Arm SME microkernels (Apple M4 and later): outer products into the ZA
//! array, fp32 (`fmopa`) and bf16 with fp32 accumulation (`bfmopa`).
//!
//! With S = streaming vector length / 32 bits (16 at the M4's 512 bits)
//! the four 32-bit ZA tiles form a 2S x 2S accumulator block: za0 = rows
//! 0..S x columns 0..S, za1 = rows 0..S x S..2S, za2 and za3 the lower
//! half. Per K group each kernel loads two A vectors (2S rows) and two B
//! vectors (2S columns) and issues four outer products: 4 S² multiply-adds
//! per 4 loads. The tile size therefore follows the vector length, read at
//! run time (`rdsvl`), so the same code runs at 256 bits (qemu's default)
//! and 512 bits (M4).
//!
//! Stable Rust has no SME target feature, so the kernels are `asm!` with
//! `.arch_extension sme`. Each call enters streaming mode (`smstart`) and
//! leaves it (`smstop`) before returning, which zeroes all vector
//! registers: every v register is declared clobbered.

use core::arch::asm;

use half::bf16;

use crate::gemm::vector::VectorKernel;

/// Whether the CPU has FEAT_SME (Linux: `HWCAP2_SME`, bit 23 of
/// `AT_HWCAP2`, per the kernel's arm64 `hwcap.h`; macOS: the
/// `hw.optional.arm.FEAT_SME` sysctl).
pub fn has_sme() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(detect_sme)
}

#[cfg(target_os = "linux")]
fn detect_sme() -> bool {
    const AT_HWCAP2: libc::c_ulong = 26;
    const HWCAP2_SME: libc::c_ulong = 1 << 23;
    // SAFETY: getauxval only reads the process's auxiliary vector.
    let caps = unsafe { libc::getauxval(AT_HWCAP2) };
    caps & HWCAP2_SME != 0
}

#[cfg(target_os = "macos")]
fn detect_sme() -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>();
    let name = c"hw.optional.arm.FEAT_SME";
    // SAFETY: the name is NUL-terminated, `value` and `len` are valid for
    // writes and `len` holds the size of `value`; no new value is set.
    let rc = unsafe {
        libc::sysctlbyname(name.as_ptr(), (&mut value as *mut libc::c_int).cast(), &mut len, std::ptr::null_mut(), 0)
    };
    rc == 0 && value == 1
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn detect_sme() -> bool {
    false
}

/// The streaming vector length in bytes, or None without SME.
pub fn streaming_vector_bytes() -> Option<usize> {
    if !has_sme() {
        return None;
    }
    let svl: usize;
    // SAFETY: `rdsvl` only reads the streaming vector length (FEAT_SME was
    // checked above) and is valid outside streaming mode.
    unsafe { asm!(".arch_extension sme", "rdsvl {0}, #1", out(reg) svl, options(nomem, nostack, preserves_flags)) };
    Some(svl)
}

/// Words per streaming vector (S in the module doc).
fn words() -> usize {
    streaming_vector_bytes().expect("SME kernel used on a CPU without SME") / 4
}

/// fp32 outer products, 2S x 2S.
pub struct SmeF32 {
    s: usize,
}

/// bf16 pairs into fp32 accumulators (`bfmopa`), 2S x 2S.
pub struct SmeBf16 {
    s: usize,
}

impl SmeF32 {
    /// The kernel, or None without SME.
    pub fn new() -> Option<SmeF32> {
        has_sme().then(|| SmeF32 { s: words() })
    }
}

impl SmeBf16 {
    pub fn new() -> Option<SmeBf16> {
        has_sme().then(|| SmeBf16 { s: words() })
    }
}

/// Runs the shared loop: `$op` is the outer-product mnemonic with its
/// element suffix, `$ld` the load of one panel vector.
macro_rules! sme_kernel {
    ($groups:expr, $a:expr, $b:expr, $tile:expr, $op:literal, $sfx:literal, $ld:literal) => {
        asm!(
            ".arch_extension sme",
            "smstart",
            "ptrue p0.b",
            "zero {{za}}",
            "cntw {s}",
            "cbz {n}, 2f",
            "1:",
            concat!($ld, " {{z0.", $sfx, "}}, p0/z, [{a}]"),
            concat!($ld, " {{z1.", $sfx, "}}, p0/z, [{a}, #1, mul vl]"),
            concat!($ld, " {{z2.", $sfx, "}}, p0/z, [{b}]"),
            concat!($ld, " {{z3.", $sfx, "}}, p0/z, [{b}, #1, mul vl]"),
            "addvl {a}, {a}, #2",
            "addvl {b}, {b}, #2",
            concat!($op, " za0.s, p0/m, p0/m, z0.", $sfx, ", z2.", $sfx),
            concat!($op, " za1.s, p0/m, p0/m, z0.", $sfx, ", z3.", $sfx),
            concat!($op, " za2.s, p0/m, p0/m, z1.", $sfx, ", z2.", $sfx),
            concat!($op, " za3.s, p0/m, p0/m, z1.", $sfx, ", z3.", $sfx),
            "subs {n}, {n}, #1",
            "b.ne 1b",
            "2:",
            // Rows 0..S: za0 then za1 side by side (a tile row is 2S words).
            "mov w12, #0",
            "3:",
            "st1w {{za0h.s[w12, 0]}}, p0, [{t}]",
            "st1w {{za1h.s[w12, 0]}}, p0, [{t}, {s}, lsl #2]",
            "addvl {t}, {t}, #2",
            "add w12, w12, #1",
            "cmp x12, {s}",
            "b.lt 3b",
            "mov w12, #0",
            "4:",
            "st1w {{za2h.s[w12, 0]}}, p0, [{t}]",
            "st1w {{za3h.s[w12, 0]}}, p0, [{t}, {s}, lsl #2]",
            "addvl {t}, {t}, #2",
            "add w12, w12, #1",
            "cmp x12, {s}",
            "b.lt 4b",
            "smstop",
            n = inout(reg) $groups => _,
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            t = inout(reg) $tile => _,
            s = out(reg) _,
            out("x12") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _, out("v13") _, out("v14") _,
            out("v15") _, out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _, out("v21") _,
            out("v22") _, out("v23") _, out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _,
            out("v29") _, out("v30") _, out("v31") _,
            options(nostack),
        )
    };
}

impl VectorKernel for SmeF32 {
    type In = f32;
    type Acc = f32;
    fn name(&self) -> &'static str {
        "sme-fp32"
    }
    fn mr(&self) -> usize {
        2 * self.s
    }
    fn nr(&self) -> usize {
        2 * self.s
    }
    fn kgroup(&self) -> usize {
        1
    }
    fn run(&self, groups: usize, a: &[f32], b: &[f32], tile: &mut [f32]) {
        let w = 2 * self.s;
        assert!(a.len() >= groups * w && b.len() >= groups * w && tile.len() >= w * w, "panel or tile too short");
        // SAFETY: `self.s` is the streaming vector length in words (read at
        // construction, which required FEAT_SME), so each K group loads 2S
        // values of `a` and of `b` and the stores write 2S rows of 2S
        // values: within the lengths asserted above. Streaming mode is
        // entered and left inside the block.
        unsafe { sme_kernel!(groups, a.as_ptr(), b.as_ptr(), tile.as_mut_ptr(), "fmopa", "s", "ld1w") }
    }
}

impl VectorKernel for SmeBf16 {
    type In = bf16;
    type Acc = f32;
    fn name(&self) -> &'static str {
        "sme-bf16"
    }
    fn mr(&self) -> usize {
        2 * self.s
    }
    fn nr(&self) -> usize {
        2 * self.s
    }
    fn kgroup(&self) -> usize {
        2
    }
    fn run(&self, groups: usize, a: &[bf16], b: &[bf16], tile: &mut [f32]) {
        let w = 2 * self.s;
        assert!(
            a.len() >= groups * w * 2 && b.len() >= groups * w * 2 && tile.len() >= w * w,
            "panel or tile too short"
        );
        // SAFETY: as for `SmeF32`, with 2S rows x 2 bf16 values (two
        // vectors) of `a` and of `b` per K group.
        unsafe { sme_kernel!(groups, a.as_ptr(), b.as_ptr(), tile.as_mut_ptr(), "bfmopa", "h", "ld1h") }
    }
}
