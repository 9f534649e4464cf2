//! x86-64 CPUID / XCR0 / Linux `arch_prctl` access for AMX.
//!
//! Split in two: pure decode functions that take raw register values (unit
//! tested on values recorded from real machines), and a thin reader that
//! executes CPUID and XGETBV. This module holds all of the crate's `unsafe`.
//!
//! Bit positions (Intel SDM vol. 2A, CPUID; vol. 1 ch. 13 for XCR0):
//! - CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE, bit 25 AMX-INT8
//! - CPUID.(7,1):EAX bit 21 AMX-FP16
//! - CPUID.(1):ECX bit 27 OSXSAVE (XGETBV usable)
//! - XCR0 bit 17 XTILECFG, bit 18 XTILEDATA
//! - CPUID.(0x1D,0):EAX max palette; CPUID.(0x1D,1) palette 1 geometry
//! - CPUID.(0x1E,0):EBX TMUL limits

#![deny(clippy::undocumented_unsafe_blocks)]

use core::arch::x86_64::{__cpuid_count, _xgetbv, CpuidResult};

use crate::AmxPalette;

pub(crate) const XCR0_XTILECFG: u64 = 1 << 17;
pub(crate) const XCR0_XTILEDATA: u64 = 1 << 18;
/// `XFEATURE_XTILEDATA` in Linux' `arch/x86/include/asm/fpu/types.h`.
#[cfg(target_os = "linux")]
const XFEATURE_XTILEDATA: u64 = 18;
#[cfg(target_os = "linux")]
const ARCH_GET_XCOMP_PERM: i32 = 0x1022;
#[cfg(target_os = "linux")]
const ARCH_REQ_XCOMP_PERM: i32 = 0x1023;

/// The CPUID/XCR0 values AMX detection needs, as read from the CPU. Leaves
/// beyond the CPU's maximum (or sub-leaves it does not enumerate) are 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCpuid {
    /// CPUID.(0,0):EAX, the highest standard leaf.
    pub max_leaf: u32,
    /// CPUID.(1,0):ECX.
    pub leaf1_ecx: u32,
    /// CPUID.(7,0): EAX, EBX, ECX, EDX.
    pub leaf7_0: [u32; 4],
    /// CPUID.(7,1):EAX (read only when CPUID.(7,0):EAX >= 1).
    pub leaf7_1_eax: u32,
    /// CPUID.(0x1D,0):EAX, the highest tile palette.
    pub leaf1d_0_eax: u32,
    /// CPUID.(0x1D,1): EAX, EBX, ECX (palette 1).
    pub leaf1d_1: [u32; 3],
    /// CPUID.(0x1E,0):EBX (TMUL information).
    pub leaf1e_0_ebx: u32,
    /// XCR0, or `None` when CPUID.1:ECX.OSXSAVE is clear (XGETBV would fault).
    pub xcr0: Option<u64>,
}

/// AMX instruction subsets the CPU reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmxCpuBits {
    pub tile: bool,
    pub bf16: bool,
    pub int8: bool,
    pub fp16: bool,
}

/// Whether the OS has turned on the AMX state components in XCR0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmxOsBits {
    pub osxsave: bool,
    pub xtilecfg: bool,
    pub xtiledata: bool,
    pub xcr0: Option<u64>,
}

impl AmxOsBits {
    pub fn enabled(&self) -> bool {
        self.osxsave && self.xtilecfg && self.xtiledata
    }
}

/// Everything the hardware and XCR0 say about AMX (no OS permission yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmxHw {
    pub cpu: AmxCpuBits,
    pub os: AmxOsBits,
    pub palette: Option<AmxPalette>,
}

fn bit(v: u32, n: u32) -> bool {
    (v >> n) & 1 == 1
}

/// Decodes CPUID.(7,0):EDX and CPUID.(7,1):EAX.
pub fn decode_amx_cpu(leaf7_0_edx: u32, leaf7_1_eax: u32) -> AmxCpuBits {
    AmxCpuBits {
        bf16: bit(leaf7_0_edx, 22),
        tile: bit(leaf7_0_edx, 24),
        int8: bit(leaf7_0_edx, 25),
        fp16: bit(leaf7_1_eax, 21),
    }
}

/// Decodes CPUID.1:ECX.OSXSAVE and XCR0 bits 17/18.
pub fn decode_os(leaf1_ecx: u32, xcr0: Option<u64>) -> AmxOsBits {
    let osxsave = bit(leaf1_ecx, 27);
    let x = if osxsave { xcr0.unwrap_or(0) } else { 0 };
    AmxOsBits {
        osxsave,
        xtilecfg: x & XCR0_XTILECFG != 0,
        xtiledata: x & XCR0_XTILEDATA != 0,
        xcr0: if osxsave { xcr0 } else { None },
    }
}

/// Decodes palette 1 (CPUID.(0x1D,1)) and the TMUL limits (CPUID.(0x1E,0)).
/// `None` when the CPU enumerates no palette 1.
pub fn decode_palette(leaf1d_0_eax: u32, leaf1d_1: [u32; 3], leaf1e_0_ebx: u32) -> Option<AmxPalette> {
    if leaf1d_0_eax < 1 {
        return None;
    }
    let [eax, ebx, ecx] = leaf1d_1;
    Some(AmxPalette {
        max_palette: leaf1d_0_eax,
        total_tile_bytes: eax as u16,
        bytes_per_tile: (eax >> 16) as u16,
        bytes_per_row: ebx as u16,
        max_names: (ebx >> 16) as u16,
        max_rows: ecx as u16,
        tmul_maxk: leaf1e_0_ebx as u8,
        tmul_maxn: (leaf1e_0_ebx >> 8) as u16,
    })
}

/// Decodes everything AMX-related from one set of raw registers.
pub fn decode_amx(raw: &RawCpuid) -> AmxHw {
    let cpu = if raw.max_leaf >= 7 { decode_amx_cpu(raw.leaf7_0[3], raw.leaf7_1_eax) } else { AmxCpuBits::default() };
    let palette = if cpu.tile && raw.max_leaf >= 0x1D {
        decode_palette(raw.leaf1d_0_eax, raw.leaf1d_1, if raw.max_leaf >= 0x1E { raw.leaf1e_0_ebx } else { 0 })
    } else {
        None
    };
    AmxHw { cpu, os: decode_os(raw.leaf1_ecx, raw.xcr0), palette }
}

/// The processor brand string from CPUID 0x80000002..=0x80000004 register
/// values (EAX, EBX, ECX, EDX of each leaf in order), trimmed.
pub fn decode_brand(regs: &[u32; 12]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

// ---- thin reader ----

fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

#[target_feature(enable = "xsave")]
fn xgetbv0() -> u64 {
    // SAFETY: XGETBV with ECX=0 reads XCR0; the enclosing function is compiled
    // with `xsave` and is only called once CPUID.1:ECX.OSXSAVE is set, which
    // is the architectural condition for XGETBV not to raise #UD.
    unsafe { _xgetbv(0) }
}

/// Executes CPUID (and XGETBV when OSXSAVE is set) on this CPU.
pub fn read_raw() -> RawCpuid {
    let mut raw = RawCpuid { max_leaf: cpuid(0, 0).eax, ..Default::default() };
    if raw.max_leaf >= 1 {
        raw.leaf1_ecx = cpuid(1, 0).ecx;
    }
    if raw.max_leaf >= 7 {
        let r = cpuid(7, 0);
        raw.leaf7_0 = [r.eax, r.ebx, r.ecx, r.edx];
        if r.eax >= 1 {
            raw.leaf7_1_eax = cpuid(7, 1).eax;
        }
    }
    if raw.max_leaf >= 0x1D {
        raw.leaf1d_0_eax = cpuid(0x1D, 0).eax;
        if raw.leaf1d_0_eax >= 1 {
            let r = cpuid(0x1D, 1);
            raw.leaf1d_1 = [r.eax, r.ebx, r.ecx];
        }
    }
    if raw.max_leaf >= 0x1E {
        raw.leaf1e_0_ebx = cpuid(0x1E, 0).ebx;
    }
    if bit(raw.leaf1_ecx, 27) {
        // SAFETY: OSXSAVE is set (checked just above), so XGETBV is enabled;
        // `xgetbv0` only needs the `xsave` target feature, which OSXSAVE implies.
        raw.xcr0 = Some(unsafe { xgetbv0() });
    }
    raw
}

/// The CPU's brand string, or `None` when CPUID does not provide one.
pub fn read_brand() -> Option<String> {
    if cpuid(0x8000_0000, 0).eax < 0x8000_0004 {
        return None;
    }
    let mut regs = [0u32; 12];
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = cpuid(leaf, 0);
        regs[i * 4..i * 4 + 4].copy_from_slice(&[r.eax, r.ebx, r.ecx, r.edx]);
    }
    Some(decode_brand(&regs)).filter(|s| !s.is_empty())
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: asks Linux for
/// permission to use AMX tile data in this process (all threads).
#[cfg(target_os = "linux")]
pub fn request_xtiledata_permission() -> std::io::Result<()> {
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integer arguments
    // and touches no memory of ours; failure is reported through the return
    // value and errno, which we read immediately after.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `arch_prctl(ARCH_GET_XCOMP_PERM, &mut mask)`: the xfeature bitmask this
/// process may use.
#[cfg(target_os = "linux")]
pub fn xcomp_permissions() -> std::io::Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: ARCH_GET_XCOMP_PERM writes one u64 through the pointer; `mask`
    // is a live, aligned u64 on our stack for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut mask as *mut u64) };
    if rc == 0 {
        Ok(mask)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a permission mask from `xcomp_permissions` includes XTILEDATA.
#[cfg(target_os = "linux")]
pub fn mask_has_xtiledata(mask: u64) -> bool {
    mask & (1 << XFEATURE_XTILEDATA) != 0
}

/// Loads a palette-1 tile config, zeroes tmm0, stores it and releases the
/// tiles; returns whether the stored 16x64-byte tile is all zeros. A missing
/// Linux permission makes the first tile instruction fault (SIGILL), so this
/// is the end-to-end check behind `AmxStatus::usable`. Only call it when
/// `amx().usable` is true.
#[cfg(test)]
pub(crate) fn tile_smoke_test() -> bool {
    let mut cfg = [0u8; 64];
    cfg[0] = 1; // palette 1
    cfg[16] = 64; // colsb[0] = 64 bytes (little-endian u16 at 16)
    cfg[48] = 16; // rows[0] = 16
    let mut buf = [0xffu8; 16 * 64];
    let stride: usize = 64;
    // SAFETY: only called after `amx()` confirmed AMX-TILE, XCR0 bits 17/18
    // and the Linux XTILEDATA permission. `cfg` is a valid 64-byte palette-1
    // config for tile 0 (16 rows x 64 bytes); TILESTORED writes exactly
    // 16 rows of 64 bytes at stride 64 into `buf` (1024 bytes); TILERELEASE
    // returns the tile state to init, so no tile register outlives the block.
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilestored [{buf} + {stride}*1], tmm0",
            "tilerelease",
            cfg = in(reg) cfg.as_ptr(),
            buf = in(reg) buf.as_mut_ptr(),
            stride = in(reg) stride,
            options(nostack),
        );
    }
    buf.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amx::{compose, Permission};

    /// AMD EPYC (Zen 3, family 0x19 model 0x01, KVM guest), recorded on the
    /// project's build machine: AVX2, no AVX-512, no AMX, max leaf 0x10.
    const ZEN3: RawCpuid = RawCpuid {
        max_leaf: 0x10,
        leaf1_ecx: 0xfffa_3203,
        leaf7_0: [0x0000_0000, 0x219c_07ab, 0x0040_069c, 0x8800_0010],
        leaf7_1_eax: 0,
        leaf1d_0_eax: 0,
        leaf1d_1: [0; 3],
        leaf1e_0_ebx: 0,
        xcr0: Some(0x207),
    };

    /// Intel Xeon, CPUID.1:EAX 0x000c06f2 (family 6 model 0xCF, Emerald
    /// Rapids, the Sapphire Rapids successor with the same AMX unit), KVM
    /// guest, Linux 6.18: recorded on the project's GPU box. AMX-TILE/BF16/
    /// INT8, no AMX-FP16 (CPUID.(7,1):EAX = 0x1c30), XCR0 0x602e7, palette 1
    /// 8192/1024/64/8/16 and TMUL 16/64, as on Sapphire Rapids.
    const SPR: RawCpuid = RawCpuid {
        max_leaf: 0x20,
        leaf1_ecx: 0xfffa_3203,
        leaf7_0: [0x0000_0002, 0xf1bf_27eb, 0x1b41_5fde, 0xbfd1_4410],
        leaf7_1_eax: 0x0000_1c30,
        leaf1d_0_eax: 1,
        leaf1d_1: [0x0400_2000, 0x0008_0040, 0x0000_0010],
        leaf1e_0_ebx: 0x0000_4010,
        xcr0: Some(0x602e7),
    };

    fn spr_palette() -> AmxPalette {
        AmxPalette {
            max_palette: 1,
            total_tile_bytes: 8192,
            bytes_per_tile: 1024,
            bytes_per_row: 64,
            max_names: 8,
            max_rows: 16,
            tmul_maxk: 16,
            tmul_maxn: 64,
        }
    }

    #[test]
    fn sapphire_rapids_decodes_tile_subsets_palette_and_xcr0() {
        let hw = decode_amx(&SPR);
        assert_eq!(hw.cpu, AmxCpuBits { tile: true, bf16: true, int8: true, fp16: false });
        assert!(hw.os.osxsave && hw.os.xtilecfg && hw.os.xtiledata && hw.os.enabled());
        assert_eq!(hw.palette, Some(spr_palette()));
        let s = compose(&hw, "Intel(R) Xeon(R) Processor", &Permission::Granted);
        assert!(s.usable && s.permission_granted && s.os_enabled, "{s:?}");
        assert_eq!(s.reason, None);
    }

    #[test]
    fn sapphire_rapids_without_linux_permission_is_unusable() {
        let hw = decode_amx(&SPR);
        let s = compose(&hw, "x", &Permission::Refused("Invalid argument (os error 22)".into()));
        assert!(!s.usable && !s.permission_granted && s.os_enabled && s.tile);
        assert_eq!(s.reason.as_deref(), Some("Linux refused ARCH_REQ_XCOMP_PERM: Invalid argument (os error 22)"));
        let s = compose(&hw, "x", &Permission::NotConfirmed("Linux accepted ... lacks bit 18".into()));
        assert!(!s.usable && s.reason.unwrap().contains("bit 18"));
        let s = compose(&hw, "x", &Permission::NonLinux("windows"));
        assert!(!s.usable && s.reason.unwrap().starts_with("non-Linux OS (windows)"));
    }

    #[test]
    fn zen3_has_no_amx() {
        let hw = decode_amx(&ZEN3);
        assert_eq!(hw.cpu, AmxCpuBits::default());
        assert!(hw.os.osxsave && !hw.os.xtilecfg && !hw.os.xtiledata);
        assert_eq!(hw.palette, None);
        let s = compose(&hw, "AMD EPYC", &Permission::NotAsked);
        assert!(!s.usable && !s.tile && !s.os_enabled && !s.permission_granted);
        assert_eq!(s.reason.as_deref(), Some("CPU has no AMX-TILE (AMD EPYC)"));
    }

    /// Sapphire Rapids CPUID under a kernel that does not enable the AMX
    /// state components (XCR0 without bits 17/18, as kernels before 5.16 set
    /// it on this CPU: x87, SSE, AVX, AVX-512 opmask/ZMM, PKRU).
    #[test]
    fn xcr0_without_tile_bits_is_os_not_enabled() {
        let raw = RawCpuid { xcr0: Some(0x2e7), ..SPR };
        let hw = decode_amx(&raw);
        assert!(hw.cpu.tile && hw.os.osxsave && !hw.os.xtilecfg && !hw.os.xtiledata && !hw.os.enabled());
        let s = compose(&hw, "x", &Permission::NotAsked);
        assert!(!s.usable && s.tile && !s.os_enabled);
        let r = s.reason.unwrap();
        assert!(r.starts_with("OS has not enabled XTILEDATA in XCR0 (XCR0 = 0x2e7"), "{r}");

        // Only XTILECFG set: still not enabled, and the reason names bit 18.
        let hw = decode_amx(&RawCpuid { xcr0: Some(0x2e7 | XCR0_XTILECFG), ..SPR });
        assert!(hw.os.xtilecfg && !hw.os.enabled());
        assert!(compose(&hw, "x", &Permission::NotAsked).reason.unwrap().contains("bit 18 XTILEDATA is clear"));
    }

    #[test]
    fn osxsave_clear_means_xcr0_is_ignored() {
        let raw = RawCpuid { leaf1_ecx: SPR.leaf1_ecx & !(1 << 27), ..SPR };
        let hw = decode_amx(&raw);
        assert!(!hw.os.osxsave && !hw.os.xtiledata && hw.os.xcr0.is_none());
        assert!(compose(&hw, "x", &Permission::NotAsked).reason.unwrap().contains("OSXSAVE"));
    }

    #[test]
    fn single_bits_and_fields() {
        assert_eq!(decode_amx_cpu(1 << 24, 0), AmxCpuBits { tile: true, ..Default::default() });
        assert_eq!(decode_amx_cpu(1 << 22, 0), AmxCpuBits { bf16: true, ..Default::default() });
        assert_eq!(decode_amx_cpu(1 << 25, 0), AmxCpuBits { int8: true, ..Default::default() });
        assert_eq!(decode_amx_cpu(0, 1 << 21), AmxCpuBits { fp16: true, ..Default::default() });
        assert_eq!(decode_palette(0, [0x0400_2000, 0x0008_0040, 0x10], 0x4010), None);
        let p = decode_palette(1, [0xBBBB_AAAA, 0xDDDD_CCCC, 0xFFFF_EEEE], 0xFF12_3456).unwrap();
        assert_eq!((p.total_tile_bytes, p.bytes_per_tile), (0xAAAA, 0xBBBB));
        assert_eq!((p.bytes_per_row, p.max_names, p.max_rows), (0xCCCC, 0xDDDD, 0xEEEE));
        assert_eq!((p.tmul_maxk, p.tmul_maxn), (0x56, 0x1234));
        // Below leaf 7 nothing is decoded, whatever the stale register copies say.
        let old = RawCpuid { max_leaf: 6, ..SPR };
        assert_eq!(decode_amx(&old).cpu, AmxCpuBits::default());
        // Tile bit without leaf 0x1D: no palette, so unusable.
        let hw = decode_amx(&RawCpuid { max_leaf: 0x1C, ..SPR });
        assert!(hw.cpu.tile && hw.palette.is_none());
        assert!(compose(&hw, "x", &Permission::NotAsked).reason.unwrap().contains("no tile palette 1"));
    }

    #[test]
    fn brand_string() {
        let mut regs = [0u32; 12];
        let text = b"AMD EPYC";
        let mut bytes = [0u8; 48];
        bytes[..text.len()].copy_from_slice(text);
        for (i, r) in regs.iter_mut().enumerate() {
            *r = u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        }
        assert_eq!(decode_brand(&regs), "AMD EPYC");
    }

    fn cpuinfo_has(flag: &str) -> bool {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split(':').nth(1).is_some_and(|v| v.split_whitespace().any(|f| f == flag)))
    }

    /// On a machine whose kernel lists `amx_tile`, AMX must come out usable
    /// (so broken permission handling fails here), the kernel must confirm
    /// the permission, and a real tile instruction sequence must run.
    /// Elsewhere it must come out unusable with a reason.
    #[test]
    fn this_machine_matches_proc_cpuinfo() {
        let s = crate::amx();
        let raw = read_raw();
        eprintln!("raw CPUID: {raw:x?}\nbrand: {:?}\nstatus: {s:?}", read_brand());
        if cpuinfo_has("amx_tile") {
            assert!(s.usable, "/proc/cpuinfo lists amx_tile but AMX is unusable: {:?}", s.reason);
            assert!(s.tile && s.os_enabled && s.permission_granted && s.reason.is_none());
            assert_eq!(s.bf16, cpuinfo_has("amx_bf16"));
            assert_eq!(s.int8, cpuinfo_has("amx_int8"));
            let p = s.palette.expect("palette");
            assert!(p.max_names >= 8 && p.max_rows >= 16 && p.bytes_per_row >= 64, "{p:?}");
            #[cfg(target_os = "linux")]
            {
                let mask = xcomp_permissions().expect("ARCH_GET_XCOMP_PERM");
                assert!(mask_has_xtiledata(mask), "permission mask {mask:#x}");
            }
            assert!(tile_smoke_test(), "TILEZERO + TILESTORED did not produce a zero tile");
        } else {
            assert!(!s.usable);
            assert!(s.reason.as_deref().is_some_and(|r| !r.is_empty()), "{s:?}");
        }
        assert_eq!(crate::amx_usable(), s.usable);
        // The status is computed once.
        assert!(std::ptr::eq(s, crate::amx()));
    }
}
