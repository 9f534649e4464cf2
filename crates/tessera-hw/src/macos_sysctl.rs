//! The live macOS reader: `sysctlbyname` for the keys [`crate::macos`]
//! parses, formatted as `sysctl -a` prints them ("key: value" lines), so the
//! live path and the fixtures share one parser. This module and `x86` hold
//! the crate's `unsafe`.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::CString;

/// Keys whose value is a C string; every other key is an integer.
const STRING_KEYS: &[&str] = &["machdep.cpu.brand_string", "machdep.cpu.vendor", "hw.model"];

const FIXED_KEYS: &[&str] = &[
    "machdep.cpu.brand_string",
    "machdep.cpu.vendor",
    "machdep.cpu.family",
    "machdep.cpu.model",
    "machdep.cpu.stepping",
    "hw.model",
    "hw.memsize",
    "hw.ncpu",
    "hw.logicalcpu",
    "hw.physicalcpu",
    "hw.nperflevels",
    "hw.l1dcachesize",
    "hw.l2cachesize",
    "hw.l3cachesize",
    "hw.cpufrequency",
    "hw.optional.neon",
    "hw.optional.AdvSIMD",
    "hw.optional.neon_fp16",
    "hw.optional.arm.FEAT_DotProd",
    "hw.optional.arm.FEAT_I8MM",
    "hw.optional.arm.FEAT_BF16",
    "hw.optional.arm.FEAT_FP16",
    "hw.optional.arm.FEAT_SME",
    "hw.optional.arm.FEAT_SME2",
    "hw.optional.arm.sme_max_svl_b",
    "hw.optional.avx2_0",
    "hw.optional.fma",
    "hw.optional.f16c",
    "hw.optional.avx512f",
    "hw.optional.avx512cd",
    "hw.optional.avx512dq",
    "hw.optional.avx512bw",
    "hw.optional.avx512vl",
    "hw.optional.avx512ifma",
    "hw.optional.avx512vbmi",
    "kern.hv_vmm_present",
];

const PERFLEVEL_FIELDS: &[&str] =
    &["name", "physicalcpu", "logicalcpu", "l1dcachesize", "l2cachesize", "l3cachesize", "cpusperl2"];

/// The raw bytes of one sysctl value, or `None` when the key does not exist.
fn raw(name: &str) -> Option<Vec<u8>> {
    let cname = CString::new(name).ok()?;
    let mut len: libc::size_t = 0;
    // SAFETY: `cname` is a NUL-terminated string that outlives the call; a
    // null `oldp` asks only for the value's size, written to `len` (a live
    // size_t on our stack); no new value is set (null `newp`, length 0).
    let rc = unsafe { libc::sysctlbyname(cname.as_ptr(), std::ptr::null_mut(), &mut len, std::ptr::null_mut(), 0) };
    if rc != 0 || len == 0 || len > 4096 {
        return None;
    }
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has `len` writable bytes and `len` tells sysctlbyname
    // so; it writes at most that many and stores the count back in `len`.
    let rc = unsafe { libc::sysctlbyname(cname.as_ptr(), buf.as_mut_ptr().cast(), &mut len, std::ptr::null_mut(), 0) };
    if rc != 0 {
        return None;
    }
    buf.truncate(len);
    Some(buf)
}

/// One value as `sysctl` prints it.
fn value_text(name: &str) -> Option<String> {
    let bytes = raw(name)?;
    let is_string = STRING_KEYS.contains(&name) || name.ends_with(".name");
    if is_string {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        return Some(String::from_utf8_lossy(&bytes[..end]).trim().to_string());
    }
    match bytes.len() {
        4 => Some(i32::from_ne_bytes(bytes[..4].try_into().ok()?).to_string()),
        8 => Some(i64::from_ne_bytes(bytes[..8].try_into().ok()?).to_string()),
        _ => None,
    }
}

/// The keys tessera uses, in `sysctl -a` format.
pub fn sysctl_text() -> String {
    let mut keys: Vec<String> = FIXED_KEYS.iter().map(|k| k.to_string()).collect();
    for level in 0..4 {
        for field in PERFLEVEL_FIELDS {
            keys.push(format!("hw.perflevel{level}.{field}"));
        }
    }
    let mut out = String::new();
    for key in keys {
        if let Some(v) = value_text(&key) {
            out.push_str(&format!("{key}: {v}\n"));
        }
    }
    out
}
