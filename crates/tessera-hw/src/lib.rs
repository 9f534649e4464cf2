//! Hardware detection. This first version reads what Linux and macOS expose
//! without special instructions (core count, CPU model, feature flags); the
//! AMX and atlas issues extend it with CPUID/XCR0 checks and a chip table.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct CpuInfo {
    pub vendor: String,
    pub model: String,
    pub arch: String,
    pub logical_cores: usize,
    /// Feature flags relevant to kernel choice, as the OS reports them.
    pub features: Vec<String>,
}

/// Flags we look for in /proc/cpuinfo (x86) or `Features` (Arm).
const INTERESTING: &[&str] = &[
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "fphp",
    "sve",
    "sme",
];

pub fn detect_cpu() -> CpuInfo {
    let logical_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let arch = std::env::consts::ARCH.to_string();
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    parse_cpuinfo(&text, arch, logical_cores)
}

/// Parses Linux `/proc/cpuinfo` text (kept separate for fixture tests).
pub fn parse_cpuinfo(text: &str, arch: String, logical_cores: usize) -> CpuInfo {
    let field = |key: &str| {
        text.lines()
            .find(|l| l.split(':').next().map(|k| k.trim()) == Some(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
    let present: Vec<&str> = flags.split_whitespace().collect();
    let features = INTERESTING.iter().filter(|f| present.contains(f)).map(|f| f.to_string()).collect();
    CpuInfo {
        vendor: field("vendor_id").or_else(|| field("CPU implementer")).unwrap_or_else(|| "unknown".into()),
        model: field("model name").unwrap_or_else(|| "unknown".into()),
        arch,
        logical_cores,
        features,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_x86_flags() {
        let t = "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n";
        let c = parse_cpuinfo(t, "x86_64".into(), 2);
        assert_eq!(c.vendor, "GenuineIntel");
        assert_eq!(c.model, "Intel(R) Xeon(R) Platinum 8488C");
        assert_eq!(c.features, vec!["avx2", "avx512f", "amx_tile", "amx_bf16"]);
    }
}
