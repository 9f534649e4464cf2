//! Intel AMX status: CPU support, OS (XCR0) support and, on Linux, the
//! per-process XTILEDATA permission. Computed once per process.

use std::sync::OnceLock;

use serde::Serialize;

/// Tile palette 1 geometry (CPUID leaf 0x1D) and TMUL limits (leaf 0x1E).
/// On Sapphire Rapids: 8192 / 1024 / 64 / 8 / 16, tmul_maxk 16, tmul_maxn 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AmxPalette {
    /// Highest palette the CPU supports (CPUID.(0x1D,0):EAX).
    pub max_palette: u32,
    pub total_tile_bytes: u16,
    pub bytes_per_tile: u16,
    pub bytes_per_row: u16,
    /// Number of tile registers.
    pub max_names: u16,
    pub max_rows: u16,
    /// TMUL K limit (CPUID.(0x1E,0):EBX[7:0]); 0 if the CPU has no leaf 0x1E.
    pub tmul_maxk: u8,
    /// TMUL N limit in bytes (CPUID.(0x1E,0):EBX[23:8]); 0 if no leaf 0x1E.
    pub tmul_maxn: u16,
}

/// What this machine and OS allow for AMX. `usable` means tile instructions
/// can run in this process now; it says nothing about the user switch (see
/// [`crate::amx_enabled`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AmxStatus {
    /// CPU reports AMX-TILE / AMX-BF16 / AMX-INT8 / AMX-FP16.
    pub tile: bool,
    pub bf16: bool,
    pub int8: bool,
    pub fp16: bool,
    /// OSXSAVE is set and XCR0 has XTILECFG (bit 17) and XTILEDATA (bit 18).
    pub os_enabled: bool,
    /// Linux granted (and ARCH_GET_XCOMP_PERM confirms) XTILEDATA for this process.
    pub permission_granted: bool,
    pub palette: Option<AmxPalette>,
    pub usable: bool,
    /// Why `usable` is false (always set then); `None` when usable.
    pub reason: Option<String>,
}

#[cfg(not(target_arch = "x86_64"))]
impl AmxStatus {
    fn unusable(reason: impl Into<String>) -> AmxStatus {
        AmxStatus {
            tile: false,
            bf16: false,
            int8: false,
            fp16: false,
            os_enabled: false,
            permission_granted: false,
            palette: None,
            usable: false,
            reason: Some(reason.into()),
        }
    }
}

/// The outcome of asking the OS for tile-data permission.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg(target_arch = "x86_64")]
#[allow(dead_code)] // each OS constructs only some variants; tests use all of them
pub(crate) enum Permission {
    /// Not asked, because the CPU or XCR0 already rule AMX out.
    NotAsked,
    Granted,
    /// ARCH_REQ_XCOMP_PERM failed; the OS error text.
    Refused(String),
    /// The request succeeded but ARCH_GET_XCOMP_PERM does not show bit 18
    /// (or could not be read); the explanation.
    NotConfirmed(String),
    /// Not Linux; the OS name.
    NonLinux(&'static str),
}

/// Combines the hardware/XCR0 decode with the permission outcome. Pure.
#[cfg(target_arch = "x86_64")]
pub(crate) fn compose(hw: &crate::x86::AmxHw, cpu_name: &str, perm: &Permission) -> AmxStatus {
    let os_enabled = hw.os.enabled();
    let granted = *perm == Permission::Granted;
    let reason = if !hw.cpu.tile {
        Some(format!("CPU has no AMX-TILE ({cpu_name})"))
    } else if !hw.os.osxsave {
        Some("OS has not enabled XSAVE (CPUID.1:ECX.OSXSAVE = 0), so AMX state is not managed".to_string())
    } else if !os_enabled {
        let missing = match (hw.os.xtilecfg, hw.os.xtiledata) {
            (false, false) => "bits 17 XTILECFG and 18 XTILEDATA are clear",
            (true, false) => "bit 18 XTILEDATA is clear",
            _ => "bit 17 XTILECFG is clear",
        };
        let hint = if cfg!(target_os = "linux") { "; Linux enables them from 5.16 on" } else { "" };
        Some(format!("OS has not enabled XTILEDATA in XCR0 (XCR0 = {:#x}: {missing}{hint})", hw.os.xcr0.unwrap_or(0)))
    } else if hw.palette.is_none() {
        Some("CPU reports AMX-TILE but CPUID leaf 0x1D lists no tile palette 1".to_string())
    } else {
        match perm {
            Permission::Granted => None,
            Permission::NotAsked => Some("tile-data permission was not requested".to_string()),
            Permission::Refused(e) => Some(format!("Linux refused ARCH_REQ_XCOMP_PERM: {e}")),
            Permission::NotConfirmed(e) => Some(e.clone()),
            Permission::NonLinux(os) => Some(format!(
                "non-Linux OS ({os}): tessera requests AMX tile-data permission only on Linux, so AMX is not used"
            )),
        }
    };
    AmxStatus {
        tile: hw.cpu.tile,
        bf16: hw.cpu.bf16,
        int8: hw.cpu.int8,
        fp16: hw.cpu.fp16,
        os_enabled,
        permission_granted: granted,
        palette: hw.palette,
        usable: reason.is_none(),
        reason,
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_permission() -> Permission {
    use crate::x86;
    if let Err(e) = x86::request_xtiledata_permission() {
        let hint = if e.raw_os_error() == Some(libc::EINVAL) { " (Linux older than 5.16?)" } else { "" };
        return Permission::Refused(format!("{e}{hint}"));
    }
    match x86::xcomp_permissions() {
        Ok(mask) if x86::mask_has_xtiledata(mask) => Permission::Granted,
        Ok(mask) => Permission::NotConfirmed(format!(
            "Linux accepted ARCH_REQ_XCOMP_PERM but ARCH_GET_XCOMP_PERM = {mask:#x} lacks bit 18 (XTILEDATA)"
        )),
        Err(e) => {
            Permission::NotConfirmed(format!("Linux accepted ARCH_REQ_XCOMP_PERM but ARCH_GET_XCOMP_PERM failed: {e}"))
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_permission() -> Permission {
    Permission::NonLinux(std::env::consts::OS)
}

#[cfg(target_arch = "x86_64")]
fn compute() -> AmxStatus {
    let hw = crate::x86::decode_amx(&crate::x86::read_raw());
    let name = crate::x86::read_brand().unwrap_or_else(|| "unknown CPU".to_string());
    let perm = if hw.cpu.tile && hw.os.enabled() && hw.palette.is_some() {
        request_permission()
    } else {
        Permission::NotAsked
    };
    compose(&hw, &name, &perm)
}

#[cfg(not(target_arch = "x86_64"))]
fn compute() -> AmxStatus {
    AmxStatus::unusable("not an x86-64 CPU")
}

/// The AMX status of this machine and process, computed on first call. On
/// Linux with a capable CPU and OS, the first call asks the kernel for
/// XTILEDATA permission (process-wide, all threads) via
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, 18)` and confirms it with
/// `ARCH_GET_XCOMP_PERM`; call it before the first tile instruction.
pub fn amx() -> &'static AmxStatus {
    static STATUS: OnceLock<AmxStatus> = OnceLock::new();
    STATUS.get_or_init(compute)
}

/// `amx().usable`: tile instructions can run in this process.
pub fn amx_usable() -> bool {
    amx().usable
}

/// Whether AMX kernels may be used: `Ok` when the hardware, the OS and the
/// user switch all allow it. The user switch is checked first, so
/// `--disable amx` / `TESSERA_DISABLE=amx` avoids the permission request.
pub fn amx_enabled() -> Result<(), String> {
    if crate::disabled_by_user("amx") {
        return Err(crate::switch::DISABLED_AMX.to_string());
    }
    let s = amx();
    if s.usable {
        Ok(())
    } else {
        Err(s.reason.clone().unwrap_or_else(|| "AMX is not usable".to_string()))
    }
}
