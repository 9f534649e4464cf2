//! macOS: the machine from `sysctl` values. The parser takes the text of
//! `sysctl -a` ("key: value" lines), so fixtures are plain text files; on a
//! live Mac, [`crate::macos_sysctl`] reads the same keys with
//! `sysctlbyname` and formats them the same way.
//!
//! Keys used (Apple's "Determining system capabilities" documents the
//! `hw.*` ones): `machdep.cpu.brand_string`, `machdep.cpu.vendor` (Intel
//! Macs), `hw.model`, `hw.memsize`, `hw.logicalcpu`, `hw.physicalcpu`,
//! `hw.nperflevels`, `hw.perflevelN.{name, physicalcpu, logicalcpu,
//! l1dcachesize, l2cachesize, l3cachesize, cpusperl2}`,
//! `hw.optional.neon`, `hw.optional.arm.FEAT_{DotProd, I8MM, BF16, FP16,
//! SME, SME2}`, `hw.optional.arm.sme_max_svl_b` (newer macOS only),
//! `kern.hv_vmm_present`, and on Intel Macs `hw.optional.{avx2_0, fma,
//! avx512f, ...}`, `machdep.cpu.{family, model, stepping}`, `hw.cpufrequency`.

use std::collections::BTreeMap;

use crate::machine::{CoreClass, CoreKind, Machine, X86Signature};
use crate::microarch::{apple_chip, x86_microarch, Microarch};

/// The SME streaming vector length of Apple M4, in bits. Older macOS
/// versions do not publish `hw.optional.arm.sme_max_svl_b`; the figure
/// comes from the Apple chip table of ../shared/README.md ("SME (512-bit
/// streaming vectors)") and is used only when FEAT_SME is 1 on an M4.
pub const M4_SME_VECTOR_BITS: u32 = 512;

/// `sysctl -a` text as a key -> value map. Lines without ": " are ignored;
/// the first occurrence of a key wins.
pub fn parse_sysctl_text(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if !k.is_empty() && !k.contains(' ') {
                out.entry(k.to_string()).or_insert_with(|| v.trim().to_string());
            }
        }
    }
    out
}

/// The machine from `sysctl -a` text.
pub fn parse_sysctl(text: &str) -> Machine {
    let kv = parse_sysctl_text(text);
    let s = |k: &str| kv.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let n = |k: &str| s(k).and_then(|v| v.parse::<u64>().ok());
    let flag = |k: &str| n(k) == Some(1);

    let mut m = Machine::unknown("macOS sysctl");
    if let Some(brand) = s("machdep.cpu.brand_string") {
        m.model = brand.to_string();
    }
    m.hw_model = s("hw.model").map(String::from);
    let apple = apple_chip(&m.model);
    if let Some((gen, _)) = apple {
        m.vendor = "Apple".into();
        m.microarchitecture = gen;
    } else if let Some(vendor) = s("machdep.cpu.vendor") {
        m.vendor = vendor.to_string();
        let num = |k: &str| n(k).and_then(|v| u32::try_from(v).ok());
        if let (Some(family), Some(model)) = (num("machdep.cpu.family"), num("machdep.cpu.model")) {
            let sig = X86Signature { family, model, stepping: num("machdep.cpu.stepping").unwrap_or(0) };
            m.microarchitecture = x86_microarch(vendor, family, model, sig.stepping);
            m.x86_signature = Some(sig);
        }
    }
    let count = |k: &str| n(k).and_then(|v| usize::try_from(v).ok());
    m.logical_cores = count("hw.logicalcpu").or_else(|| count("hw.ncpu")).unwrap_or(0);
    m.physical_cores = count("hw.physicalcpu");
    m.memory_bytes = n("hw.memsize");
    m.hypervisor = flag("kern.hv_vmm_present");
    if let Some(hz) = n("hw.cpufrequency").filter(|&hz| hz > 0) {
        m.nominal_clock_mhz = Some(hz as f64 / 1e6);
        m.nominal_clock_source = Some("hw.cpufrequency".into());
    }

    // Core classes: perflevel0 is the fastest.
    let levels = count("hw.nperflevels").unwrap_or_else(|| {
        (0..8).take_while(|i| kv.keys().any(|k| k.starts_with(&format!("hw.perflevel{i}.")))).count()
    });
    for i in 0..levels.min(8) {
        let key = |f: &str| format!("hw.perflevel{i}.{f}");
        let name = s(&key("name")).unwrap_or("").to_string();
        let kind = match name.as_str() {
            "Performance" => CoreKind::Performance,
            "Efficiency" => CoreKind::Efficiency,
            _ if levels == 1 => CoreKind::Uniform,
            _ if i == 0 => CoreKind::Performance,
            _ => CoreKind::Efficiency,
        };
        let physical = count(&key("physicalcpu"));
        m.core_classes.push(CoreClass {
            kind,
            name: if name.is_empty() { format!("perflevel{i}") } else { name },
            microarchitecture: (m.microarchitecture != Microarch::Unknown).then_some(m.microarchitecture),
            logical_cpus: count(&key("logicalcpu")).or(physical).unwrap_or(0),
            physical_cores: physical,
            cpu_list: None,
            capacity: None,
            l1d_bytes: n(&key("l1dcachesize")),
            l2_bytes: n(&key("l2cachesize")),
            l3_bytes: n(&key("l3cachesize")),
            cpus_per_l2: count(&key("cpusperl2")),
        });
    }
    if m.core_classes.is_empty() && m.logical_cores > 0 {
        // Intel Macs and old macOS: one class, caches from the hw.* aliases.
        m.core_classes.push(CoreClass {
            kind: CoreKind::Uniform,
            name: "all".into(),
            microarchitecture: (m.microarchitecture != Microarch::Unknown).then_some(m.microarchitecture),
            logical_cpus: m.logical_cores,
            physical_cores: m.physical_cores,
            l1d_bytes: n("hw.l1dcachesize"),
            l2_bytes: n("hw.l2cachesize"),
            l3_bytes: n("hw.l3cachesize"),
            ..Default::default()
        });
    }

    // Features.
    let f = &mut m.features;
    f.neon = flag("hw.optional.neon") || flag("hw.optional.AdvSIMD");
    f.dotprod = flag("hw.optional.arm.FEAT_DotProd");
    f.i8mm = flag("hw.optional.arm.FEAT_I8MM");
    f.bf16 = flag("hw.optional.arm.FEAT_BF16");
    f.fp16 = flag("hw.optional.arm.FEAT_FP16") || flag("hw.optional.neon_fp16");
    f.sme = flag("hw.optional.arm.FEAT_SME");
    f.sme2 = flag("hw.optional.arm.FEAT_SME2");
    for (key, name) in [
        ("hw.optional.avx2_0", "avx2"),
        ("hw.optional.fma", "fma"),
        ("hw.optional.f16c", "f16c"),
        ("hw.optional.avx512f", "avx512f"),
        ("hw.optional.avx512cd", "avx512cd"),
        ("hw.optional.avx512dq", "avx512dq"),
        ("hw.optional.avx512bw", "avx512bw"),
        ("hw.optional.avx512vl", "avx512vl"),
        ("hw.optional.avx512ifma", "avx512ifma"),
        ("hw.optional.avx512vbmi", "avx512vbmi"),
    ] {
        if flag(key) {
            if let Some(b) = f.flag_mut(name) {
                *b = true;
            }
        }
    }
    if f.sme {
        if let Some(bytes) = n("hw.optional.arm.sme_max_svl_b").filter(|&b| b > 0 && b <= 256) {
            f.sme_vector_bits = Some(bytes as u32 * 8);
            f.sme_vector_bits_source = Some("hw.optional.arm.sme_max_svl_b".into());
        } else if m.microarchitecture == Microarch::AppleM4 {
            f.sme_vector_bits = Some(M4_SME_VECTOR_BITS);
            f.sme_vector_bits_source = Some(
                "derived: Apple M4 with FEAT_SME = 1 has 512-bit streaming vectors (shared/README.md chip table); \
                 this macOS does not publish hw.optional.arm.sme_max_svl_b"
                    .into(),
            );
        }
    }

    m.unified_memory = apple.is_some();
    m.attach_atlas_facts();
    m
}
