//! The tile microkernel contract on AVX-512 vector registers, for CPUs with
//! the AVX-512 BF16 and VNNI dot products but no tile unit (AMD Zen 4 and
//! Zen 5, Intel Cooper Lake; Ice and Cascade Lake lack BF16 and are not
//! served, int8 included).
//!
//! The packed layouts are AMX's, unchanged: a row of a B tile holds one K
//! pair (bf16) or quadruple (int8) of 16 columns, which is exactly one zmm
//! register, and a row of an A tile holds a row's pairs or quadruples one
//! dword each, ready to broadcast. So `vdpbf16ps` / `vpdpbusd` with a
//! broadcast A dword against a B tile row computes what one tile-row step of
//! `tdpbf16ps` / `tdpb*d` computes, and the whole tile driver (packing,
//! blocking, epilogues, attention) runs on these kernels as it runs on AMX.
//!
//! A 32x32 accumulator block is 64 zmm registers, twice what the ISA has,
//! so a call runs four passes of 8 rows x 32 columns (16 accumulators, two
//! B registers, one broadcast), each over the whole K range: B is read four
//! times per call, from L1 or L2, which the FMA rate hides (two 64-byte
//! loads per 16 dot products).
//!
//! `vpdpbusd` multiplies unsigned bytes of its first source by signed bytes
//! of its second. The other sign pairs are mapped onto it exactly (mod 2^32,
//! as the tile instructions wrap), flipping B's top bit (two XORs per k
//! quadruple, shared by the pass's rows) rather than A's (one per row):
//! * s8 x u8: operands swapped (B's bytes unsigned, A's signed);
//! * s8 x s8: `(b + 128)·a - 128·Σa`, B flipped to unsigned, swapped;
//! * u8 x u8: `a·(b - 128) + 128·Σa`, B flipped to signed.
//!
//! Σa per row is summed from A's bytes (`vpsadbw`, one per 64 bytes).

#[cfg(target_arch = "x86_64")]
use super::{split_products, AccBlock, BLOCK_BYTES, TILE_BYTES, TILE_ROW_BYTES};
use super::{DotKind, MR, NR, TILE_ROWS};

/// Rows of the accumulator block one pass keeps in registers.
const PASS_ROWS: usize = 8;
const _: () = assert!(MR.is_multiple_of(PASS_ROWS) && TILE_ROWS.is_multiple_of(PASS_ROWS) && NR == 32);

/// Whether this CPU (and OS) has what the kernels execute: AVX-512 F, BW,
/// BF16 and VNNI. The safety condition of [`run`].
pub fn cpu_has() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the kernels are to be used: the CPU has them and the user did
/// not turn AVX-512 off (`--disable avx512`, `TESSERA_DISABLE`).
pub fn usable() -> bool {
    cpu_has() && !tessera_hw::disabled_by_user("avx512")
}

/// Why [`usable`] is false (None when it is true).
pub fn unusable_reason() -> Option<String> {
    if usable() {
        return None;
    }
    if cpu_has() {
        return Some("disabled by the user (--disable avx512 / TESSERA_DISABLE)".into());
    }
    Some(missing_features())
}

/// The features [`cpu_has`] wants that this CPU lacks ("" when none).
pub fn missing_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        if cpu_has() {
            return String::new();
        }
        let missing: Vec<&str> = [
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::is_x86_feature_detected!("avx512bw")),
            ("avx512_bf16", std::is_x86_feature_detected!("avx512bf16")),
            ("avx512_vnni", std::is_x86_feature_detected!("avx512vnni")),
        ]
        .iter()
        .filter(|(_, has)| !has)
        .map(|(name, _)| *name)
        .collect();
        format!("CPU lacks {}", missing.join(", "))
    }
    #[cfg(not(target_arch = "x86_64"))]
    "not an x86-64 CPU".into()
}

/// `ksteps` k-steps of `parts`-part operands into the 32x32 block (the
/// contract of [`super`]).
///
/// `next` (memory read soon, such as the next weight panel's share) is
/// prefetched towards L2, a share per k-step of the first 8-row pass
/// (nothing when `ksteps` is 0).
///
/// # Safety
/// [`cpu_has`] is true; `a` and `b` are valid for `ksteps * parts *
/// BLOCK_BYTES` bytes; `parts` is 1 for integer kinds and at most 3.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn run(
    kind: DotKind,
    parts: usize,
    a: *const u8,
    b: *const u8,
    ksteps: usize,
    acc: &mut AccBlock,
    accumulate: bool,
    next: &[u8],
) {
    let c = acc.0.as_mut_ptr();
    for row0 in (0..MR).step_by(PASS_ROWS) {
        // The next weight panel's share towards L2 (see
        // `TileSession::run_streaming`), spread over the first pass's
        // k-steps: the hardware prefetchers follow the panel being read,
        // not the one after it.
        let stream = if row0 == 0 { Stream::new(next, ksteps) } else { Stream::new(&[], 0) };
        // SAFETY: forwarded from the caller (features present, panels long
        // enough); `row0 + PASS_ROWS <= MR`, so the pass's accumulator rows
        // are inside the block.
        unsafe {
            match kind {
                DotKind::Bf16 => bf16_pass(a, b, ksteps, parts, c, accumulate, row0, stream),
                DotKind::I8 { a_signed, b_signed } => {
                    i8_pass(a, b, ksteps, a_signed, b_signed, c, accumulate, row0, stream)
                }
            }
        }
    }
}

/// Lines of memory to prefetch towards L2, a share per k-step.
#[cfg(target_arch = "x86_64")]
#[derive(Copy, Clone)]
struct Stream<'a> {
    bytes: &'a [u8],
    per_step: usize,
}

#[cfg(target_arch = "x86_64")]
impl<'a> Stream<'a> {
    fn new(bytes: &'a [u8], ksteps: usize) -> Self {
        Stream { bytes, per_step: bytes.len().div_ceil(64).div_ceil(ksteps.max(1)) }
    }

    /// The lines of k-step `step`'s share.
    #[inline(always)]
    fn step(self, step: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let lines = self.bytes.len().div_ceil(64);
        for l in (step * self.per_step).min(lines)..((step + 1) * self.per_step).min(lines) {
            // SAFETY: a prefetch of an address inside `bytes`: a hint.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.bytes.as_ptr().add(l * 64) as *const i8) };
        }
    }
}

/// Byte offset, inside a k-block of an A panel, of row `row0`'s tile row.
#[cfg(target_arch = "x86_64")]
fn a_row_offset(row0: usize) -> usize {
    (row0 / TILE_ROWS) * TILE_BYTES + (row0 % TILE_ROWS) * TILE_ROW_BYTES
}

/// Rows `row0..row0 + PASS_ROWS` of the block over every k-step.
///
/// # Safety
/// As [`run`], and `row0 + PASS_ROWS <= MR`; `c` is the 32x32 block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_pass(
    a: *const u8,
    b: *const u8,
    ksteps: usize,
    parts: usize,
    c: *mut u32,
    accumulate: bool,
    row0: usize,
    stream: Stream,
) {
    use std::arch::x86_64::*;
    // SAFETY: every load is inside the panels (k-block `step * parts + p`
    // with p < parts, B tile rows 0..16 of both column tiles, A rows
    // row0..row0 + 8 of one tile, dword kp < 16 of each 64-byte row) or the
    // accumulator rows row0..row0 + 8 of the 4 KiB block; the transmutes
    // reinterpret 512-bit vectors as 512-bit vectors of bf16 pairs.
    unsafe {
        let c = c as *mut f32;
        let mut acc = [[_mm512_setzero_ps(); 2]; PASS_ROWS];
        if accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                row[0] = _mm512_loadu_ps(c.add((row0 + i) * NR));
                row[1] = _mm512_loadu_ps(c.add((row0 + i) * NR + 16));
            }
        }
        let a_off = a_row_offset(row0);
        for step in 0..ksteps {
            stream.step(step);
            for &(pa, pb) in split_products(parts) {
                let ab = a.add((step * parts + pa) * BLOCK_BYTES + a_off);
                let bb = b.add((step * parts + pb) * BLOCK_BYTES);
                for kp in 0..TILE_ROWS {
                    let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bb.add(kp * TILE_ROW_BYTES) as *const _));
                    let b1: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(bb.add(TILE_BYTES + kp * TILE_ROW_BYTES) as *const _));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let pair = (ab.add(i * TILE_ROW_BYTES + kp * 4) as *const i32).read_unaligned();
                        let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                        row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                        row[1] = _mm512_dpbf16_ps(row[1], av, b1);
                    }
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add((row0 + i) * NR), row[0]);
            _mm512_storeu_ps(c.add((row0 + i) * NR + 16), row[1]);
        }
    }
}

/// The integer pass: i32 accumulators, one k-block of 64 values per k-step.
///
/// # Safety
/// As [`bf16_pass`] with `parts == 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn i8_pass(
    a: *const u8,
    b: *const u8,
    ksteps: usize,
    a_signed: bool,
    b_signed: bool,
    c: *mut u32,
    accumulate: bool,
    row0: usize,
    stream: Stream,
) {
    use std::arch::x86_64::*;
    // SAFETY: the loads are those of `bf16_pass` with one part (quadruples
    // in place of pairs), plus whole 64-byte A rows inside the same tile
    // rows for the row sums; the stores are the pass's accumulator rows.
    unsafe {
        let c = c as *mut i32;
        let mut acc = [[_mm512_setzero_si512(); 2]; PASS_ROWS];
        let flip = _mm512_set1_epi8(-128);
        // Same signedness: B's top bit flipped, and Σa corrects the sums.
        let flip_b = a_signed == b_signed;
        // Per row, Σ over this call's bytes of A (XORed with 0x80 first when
        // signed, which adds 128 per byte: taken off at the end).
        let mut row_sums = [_mm512_setzero_si512(); PASS_ROWS];
        let a_off = a_row_offset(row0);
        for step in 0..ksteps {
            stream.step(step);
            let ab = a.add(step * BLOCK_BYTES + a_off);
            let bb = b.add(step * BLOCK_BYTES);
            for kq in 0..TILE_ROWS {
                let mut b0 = _mm512_loadu_si512(bb.add(kq * TILE_ROW_BYTES) as *const _);
                let mut b1 = _mm512_loadu_si512(bb.add(TILE_BYTES + kq * TILE_ROW_BYTES) as *const _);
                if flip_b {
                    b0 = _mm512_xor_si512(b0, flip);
                    b1 = _mm512_xor_si512(b1, flip);
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let quad = (ab.add(i * TILE_ROW_BYTES + kq * 4) as *const i32).read_unaligned();
                    let av = _mm512_set1_epi32(quad);
                    if a_signed {
                        // B's bytes unsigned (as given, or flipped), A's signed.
                        row[0] = _mm512_dpbusd_epi32(row[0], b0, av);
                        row[1] = _mm512_dpbusd_epi32(row[1], b1, av);
                    } else {
                        // A's bytes unsigned, B's signed (as given, or flipped).
                        row[0] = _mm512_dpbusd_epi32(row[0], av, b0);
                        row[1] = _mm512_dpbusd_epi32(row[1], av, b1);
                    }
                }
            }
            if flip_b {
                for (i, sum) in row_sums.iter_mut().enumerate() {
                    let mut bytes = _mm512_loadu_si512(ab.add(i * TILE_ROW_BYTES) as *const _);
                    if a_signed {
                        bytes = _mm512_xor_si512(bytes, flip);
                    }
                    *sum = _mm512_add_epi64(*sum, _mm512_sad_epu8(bytes, _mm512_setzero_si512()));
                }
            }
        }
        for (i, row) in acc.iter_mut().enumerate() {
            if flip_b {
                // Σa, wrapped to 32 bits as the tile unit's sums are; a
                // signed A's bytes were summed 128 too high each.
                let mut sum_a = _mm512_reduce_add_epi64(row_sums[i]) as i32;
                if a_signed {
                    sum_a = sum_a.wrapping_sub((ksteps * TILE_ROW_BYTES * 128) as i32);
                }
                // s8 x s8 summed (b + 128)·a: take 128·Σa off; u8 x u8
                // summed a·(b - 128): put it back.
                let fix = sum_a.wrapping_mul(128);
                let fix = _mm512_set1_epi32(if a_signed { fix.wrapping_neg() } else { fix });
                row[0] = _mm512_add_epi32(row[0], fix);
                row[1] = _mm512_add_epi32(row[1], fix);
            }
            let out = c.add((row0 + i) * NR);
            if accumulate {
                row[0] = _mm512_add_epi32(row[0], _mm512_loadu_si512(out as *const _));
                row[1] = _mm512_add_epi32(row[1], _mm512_loadu_si512(out.add(16) as *const _));
            }
            _mm512_storeu_si512(out as *mut _, row[0]);
            _mm512_storeu_si512(out.add(16) as *mut _, row[1]);
        }
    }
}

/// Register-only rates of this core's bf16 dot products and fp32 FMAs, in
/// GFLOP/s, measured once per process (about a millisecond). Cores differ
/// more than their feature flags say: a Zen 4 core runs `vdpbf16ps` at twice
/// its fp32 FMA rate, an Emerald Rapids core (the lent machine's Xeon) at
/// about half of it (`benches/results/2026-11-28-avx512-dot/`), so whether
/// bf16 products belong on these kernels is measured, not inferred.
pub fn bf16_and_fp32_rates() -> Option<(f64, f64)> {
    static RATES: std::sync::OnceLock<Option<(f64, f64)>> = std::sync::OnceLock::new();
    *RATES.get_or_init(|| {
        if !cpu_has() {
            return None;
        }
        // Warm the vector units (frequency and power states) before timing.
        probe_peak(DotKind::Bf16, 20_000);
        probe_fp32_fma(20_000);
        let (mut bf16, mut fp32) = (0f64, 0f64);
        for _ in 0..3 {
            bf16 = bf16.max(probe_peak(DotKind::Bf16, 20_000) / 1e9);
            fp32 = fp32.max(probe_fp32_fma(20_000) / 1e9);
        }
        Some((bf16, fp32))
    })
}

/// Why bf16 products do not belong on these kernels on this core (None:
/// they do): they must run at least 1.25x the fp32 FMA rate, the margin
/// that pays for converting activations to bf16. `TESSERA_AVX512_BF16=on`
/// or `off` replaces the measurement, for reproducible placements and A/B
/// runs.
pub fn bf16_refusal() -> Option<String> {
    if !cpu_has() {
        return Some("CPU lacks the AVX-512 dot products".into());
    }
    gate_override(std::env::var("TESSERA_AVX512_BF16").ok().as_deref()).unwrap_or_else(|| match bf16_and_fp32_rates() {
        None => Some("CPU lacks the AVX-512 dot products".into()),
        Some((bf16, fp32)) => refusal_for(bf16, fp32),
    })
}

/// The decision `TESSERA_AVX512_BF16` forces (None: measure), or why its
/// value is not understood (refused, so that a typo is seen).
fn gate_override(value: Option<&str>) -> Option<Option<String>> {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) if v == "on" => Some(None),
        Some(v) if v == "off" => Some(Some("bf16 products turned off by TESSERA_AVX512_BF16=off".into())),
        Some(v) => Some(Some(format!("TESSERA_AVX512_BF16={v} is not on or off"))),
    }
}

/// The gate of [`bf16_refusal`] on given rates (GFLOP/s).
pub fn refusal_for(bf16: f64, fp32: f64) -> Option<String> {
    (bf16 < 1.25 * fp32).then(|| {
        format!(
            "bf16 dot products measured {bf16:.0} GFLOP/s on this core against {fp32:.0} for fp32 FMAs, \
             below the 1.25x that pays for converting to bf16"
        )
    })
}

/// Sustained rate of `vfmadd231ps` on 512-bit registers on the calling
/// thread, in FLOP per second. Panics where [`cpu_has`] is false.
pub fn probe_fp32_fma(iterations: usize) -> f64 {
    assert!(cpu_has(), "AVX-512 FMA probe on a CPU without it");
    #[cfg(target_arch = "x86_64")]
    {
        let t = std::time::Instant::now();
        // SAFETY: the features were checked above; the loop touches no memory.
        unsafe { peak_loop_fp32(iterations) };
        (iterations * 16 * 16 * 2) as f64 / t.elapsed().as_secs_f64()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = iterations;
        unreachable!()
    }
}

/// Sustained rate of `vdpbf16ps` (bf16) or `vpdpbusd` (int8) in a
/// register-resident loop on the calling thread, in operations per second
/// (2 per multiply-add): the ceiling the kernels are measured against.
/// Panics where [`cpu_has`] is false.
pub fn probe_peak(kind: DotKind, iterations: usize) -> f64 {
    assert!(cpu_has(), "AVX-512 dot-product peak probe on a CPU without it");
    #[cfg(target_arch = "x86_64")]
    {
        let t = std::time::Instant::now();
        // SAFETY: the features were checked above; the loops touch no memory.
        unsafe {
            match kind {
                DotKind::Bf16 => peak_loop_bf16(iterations),
                DotKind::I8 { .. } => peak_loop_i8(iterations),
            }
        }
        let secs = t.elapsed().as_secs_f64();
        // 16 instructions per iteration, each 16 lanes of `group` products.
        (iterations * 16 * 16 * kind.group() * 2) as f64 / secs
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, iterations);
        unreachable!()
    }
}

/// `iterations` rounds of 16 independent `$insn zmmN, zmm16, zmm17` on
/// zeroed accumulators: written in `asm!` so that the compiler can neither
/// fold the loop nor shuffle the accumulators through memory.
#[cfg(target_arch = "x86_64")]
macro_rules! peak_loop {
    ($name:ident, $features:literal, $insn:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(iterations: usize) {
            // SAFETY: register-only arithmetic on features the caller
            // checked; every register written is declared clobbered.
            unsafe {
                std::arch::asm!(
                    "vpxord zmm16, zmm16, zmm16",
                    "vpxord zmm17, zmm17, zmm17",
                    "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "vpxord zmm2, zmm2, zmm2",
                    "vpxord zmm3, zmm3, zmm3", "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
                    "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7", "vpxord zmm8, zmm8, zmm8",
                    "vpxord zmm9, zmm9, zmm9", "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11",
                    "vpxord zmm12, zmm12, zmm12", "vpxord zmm13, zmm13, zmm13", "vpxord zmm14, zmm14, zmm14",
                    "vpxord zmm15, zmm15, zmm15",
                    "2:",
                    concat!($insn, " zmm0, zmm16, zmm17"), concat!($insn, " zmm1, zmm16, zmm17"),
                    concat!($insn, " zmm2, zmm16, zmm17"), concat!($insn, " zmm3, zmm16, zmm17"),
                    concat!($insn, " zmm4, zmm16, zmm17"), concat!($insn, " zmm5, zmm16, zmm17"),
                    concat!($insn, " zmm6, zmm16, zmm17"), concat!($insn, " zmm7, zmm16, zmm17"),
                    concat!($insn, " zmm8, zmm16, zmm17"), concat!($insn, " zmm9, zmm16, zmm17"),
                    concat!($insn, " zmm10, zmm16, zmm17"), concat!($insn, " zmm11, zmm16, zmm17"),
                    concat!($insn, " zmm12, zmm16, zmm17"), concat!($insn, " zmm13, zmm16, zmm17"),
                    concat!($insn, " zmm14, zmm16, zmm17"), concat!($insn, " zmm15, zmm16, zmm17"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iterations.max(1) => _,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                    out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                    out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                    out("zmm16") _, out("zmm17") _,
                    options(nostack, nomem)
                );
            }
        }
    };
}

// The operands are zeros: normal numbers for every unit (never the
// denormal slow path), and the accumulators stay zero.
#[cfg(target_arch = "x86_64")]
peak_loop!(peak_loop_fp32, "avx512f", "vfmadd231ps");
#[cfg(target_arch = "x86_64")]
peak_loop!(peak_loop_bf16, "avx512f,avx512bw,avx512bf16", "vdpbf16ps");
#[cfg(target_arch = "x86_64")]
peak_loop!(peak_loop_i8, "avx512f,avx512bw,avx512vnni", "vpdpbusd");

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment's override of the gate: on, off, unset or empty
    /// (measure), and anything else refused with the value named.
    #[test]
    fn bf16_gate_override() {
        assert_eq!(gate_override(None), None);
        assert_eq!(gate_override(Some(" ")), None);
        assert_eq!(gate_override(Some("ON")), Some(None));
        let off = gate_override(Some("off")).expect("forced").expect("refused");
        assert!(off.contains("TESSERA_AVX512_BF16=off"), "{off}");
        let typo = gate_override(Some("yes")).expect("forced").expect("refused");
        assert!(typo.contains("yes"), "{typo}");
    }

    /// bf16 products go on these kernels from 1.25x the fp32 FMA rate,
    /// with the measured rates in the reason when they do not.
    #[test]
    fn bf16_gate_at_one_and_a_quarter() {
        assert_eq!(refusal_for(236.0, 118.0), None);
        assert_eq!(refusal_for(125.0, 100.0), None);
        let why = refusal_for(86.0, 157.0).expect("half the FMA rate is refused");
        assert!(why.contains("86 GFLOP/s") && why.contains("157"), "{why}");
        assert!(refusal_for(124.0, 100.0).is_some());
    }
}
