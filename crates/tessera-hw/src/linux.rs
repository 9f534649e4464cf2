//! Linux: the machine from `/proc/cpuinfo`, `/proc/meminfo` and
//! `/sys/devices/system/cpu`. Every reader here takes a root directory, so
//! the same code runs on `/` and on a fixture tree
//! (`fixtures/linux/<machine>/{proc,sys}/...`). Missing or malformed files
//! leave the corresponding fields `None`; nothing here panics on odd input.
//!
//! Core classes, in order of preference:
//! 1. Intel hybrid: `/sys/devices/cpu_core/cpus` (P-cores) and
//!    `/sys/devices/cpu_atom/cpus` (E-cores), cpulist format.
//! 2. Arm big.LITTLE: `/sys/devices/system/cpu/cpuN/cpu_capacity`; CPUs
//!    with the highest capacity are the performance class.
//! 3. Otherwise one uniform class of all online CPUs.
//!
//! A class's caches and SMT width are read from its first CPU
//! (`cpuN/cache/index*/{level,type,size,shared_cpu_list}`,
//! `cpuN/topology/thread_siblings_list`): cores of one class are alike.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::machine::{ArmCpuId, CoreClass, CoreKind, CpuFeatures, Machine, X86Signature};
use crate::microarch::{arm_microarch, x86_microarch, Microarch};

/// Upper bound on CPUs a cpulist may name, so a garbage range such as
/// "0-4294967295" cannot allocate without limit (Linux' NR_CPUS is at most 8192).
const MAX_CPUS: usize = 1 << 14;

/// One `/proc/cpuinfo` block (the lines between blank lines) as key/value pairs.
pub type CpuinfoBlock = Vec<(String, String)>;

/// Splits `/proc/cpuinfo` text into blocks of `key : value` pairs. Lines
/// without a colon are ignored.
pub fn parse_cpuinfo_blocks(text: &str) -> Vec<CpuinfoBlock> {
    let mut blocks = Vec::new();
    let mut cur: CpuinfoBlock = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    blocks
}

fn block_get<'a>(block: &'a CpuinfoBlock, key: &str) -> Option<&'a str> {
    block.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The first value of `key` in any block.
fn first_value<'a>(blocks: &'a [CpuinfoBlock], key: &str) -> Option<&'a str> {
    blocks.iter().find_map(|b| block_get(b, key))
}

/// Decimal, or hexadecimal with a `0x` prefix (Arm `CPU part : 0xd0b`).
pub fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A Linux cpulist ("0-3,8,10-11") as CPU numbers, ascending and without
/// duplicates. Malformed entries are skipped; at most [`MAX_CPUS`] entries.
pub fn parse_cpulist(s: &str) -> Vec<usize> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
            None => (part.parse::<usize>(), part.parse::<usize>()),
        };
        if let (Ok(lo), Ok(hi)) = (lo, hi) {
            if lo <= hi && hi < MAX_CPUS {
                out.extend(lo..=hi);
            }
        }
    }
    out.into_iter().collect()
}

/// A sysfs cache size ("48K", "2048K", "32M", "1024") in bytes.
pub fn parse_cache_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// x86 features from the `flags` line: every flag with a field of the same
/// name in [`CpuFeatures`] sets it.
pub fn features_from_x86_flags(flags: &str) -> CpuFeatures {
    let mut f = CpuFeatures::default();
    for flag in flags.split_whitespace() {
        if let Some(b) = f.flag_mut(flag) {
            *b = true;
        }
    }
    f
}

/// Arm features from the `Features` line (Linux hwcap names).
pub fn features_from_arm_hwcaps(features: &str) -> CpuFeatures {
    let mut f = CpuFeatures::default();
    for cap in features.split_whitespace() {
        match cap {
            "asimd" => f.neon = true,
            "asimddp" => f.dotprod = true,
            "i8mm" => f.i8mm = true,
            "bf16" => f.bf16 = true,
            // FEAT_FP16 shows as both; either means half-precision arithmetic.
            "fphp" | "asimdhp" => f.fp16 = true,
            "sve" => f.sve = true,
            "sve2" => f.sve2 = true,
            "sme" => f.sme = true,
            "sme2" => f.sme2 = true,
            _ => {}
        }
    }
    f
}

fn arm_vendor(implementer: u32) -> String {
    match implementer {
        0x41 => "ARM".into(),
        0x42 => "Broadcom".into(),
        0x48 => "HiSilicon".into(),
        0x4e => "NVIDIA".into(),
        0x51 => "Qualcomm".into(),
        0x61 => "Apple".into(),
        0x6d => "Microsoft".into(),
        0xc0 => "Ampere".into(),
        other => format!("Arm implementer {other:#x}"),
    }
}

/// A clock in the brand string ("... CPU @ 2.10GHz"), in MHz.
fn clock_from_brand(brand: &str) -> Option<f64> {
    let at = brand.rfind('@')?;
    let rest = brand[at + 1..].trim();
    let ghz = rest.strip_suffix("GHz").or_else(|| rest.strip_suffix("Ghz"))?;
    ghz.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0).map(|g| g * 1000.0)
}

struct Sysfs {
    cpu_dir: PathBuf,
}

impl Sysfs {
    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.cpu_dir.join(rel)).ok().map(|s| s.trim().to_string())
    }

    /// CPUs sharing cpu `n`'s core (SMT width), when topology is present.
    fn smt_width(&self, n: usize) -> Option<usize> {
        ["thread_siblings_list", "core_cpus_list"]
            .iter()
            .find_map(|f| self.read(&format!("cpu{n}/topology/{f}")))
            .map(|s| parse_cpulist(&s).len())
            .filter(|&w| w >= 1)
    }

    /// (L1d, L2, L3 bytes, CPUs sharing the L2) of cpu `n`.
    fn caches(&self, n: usize) -> (Option<u64>, Option<u64>, Option<u64>, Option<usize>) {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.cpu_dir.join(format!("cpu{n}/cache")))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with("index")))
            .collect();
        dirs.sort();
        let (mut l1d, mut l2, mut l3, mut per_l2) = (None, None, None, None);
        for d in dirs {
            let get = |f: &str| fs::read_to_string(d.join(f)).ok().map(|s| s.trim().to_string());
            let level = get("level").and_then(|s| s.parse::<u32>().ok());
            let kind = get("type").unwrap_or_default();
            let size = get("size").and_then(|s| parse_cache_size(&s));
            match (level, kind.as_str()) {
                (Some(1), "Data") => l1d = l1d.or(size),
                (Some(2), "Unified" | "Data") => {
                    l2 = l2.or(size);
                    per_l2 = per_l2.or(get("shared_cpu_list").map(|s| parse_cpulist(&s).len()).filter(|&c| c > 0));
                }
                (Some(3), _) => l3 = l3.or(size),
                _ => {}
            }
        }
        (l1d, l2, l3, per_l2)
    }
}

/// Compact cpulist text for a sorted CPU list ("0-3,8").
fn cpulist_text(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// Reads the machine from `root` (`/` on a live system, or a fixture
/// tree with the same layout). Power sensors come from `root/sys/class`.
pub fn read_machine(root: &Path) -> Machine {
    let read = |rel: &str| fs::read_to_string(root.join(rel)).ok();
    let mut m = Machine::unknown(&if root == Path::new("/") {
        "linux: /proc/cpuinfo, /proc/meminfo, /sys/devices".to_string()
    } else {
        format!("linux tree at {}", root.display())
    });
    let blocks = parse_cpuinfo_blocks(&read("proc/cpuinfo").unwrap_or_default());
    let sys = Sysfs { cpu_dir: root.join("sys/devices/system/cpu") };

    // Processor number -> its cpuinfo block.
    let by_cpu: BTreeMap<usize, &CpuinfoBlock> =
        blocks.iter().filter_map(|b| Some((block_get(b, "processor")?.parse::<usize>().ok()?, b))).collect();

    // ---- identity ----
    let x86_flags = first_value(&blocks, "flags");
    let arm_hwcaps = first_value(&blocks, "Features");
    if let Some(vendor) = first_value(&blocks, "vendor_id") {
        m.vendor = vendor.to_string();
        let num = |k| first_value(&blocks, k).and_then(parse_number);
        if let (Some(family), Some(model)) = (num("cpu family"), num("model")) {
            let sig = X86Signature { family, model, stepping: num("stepping").unwrap_or(0) };
            m.microarchitecture = x86_microarch(vendor, sig.family, sig.model, sig.stepping);
            m.x86_signature = Some(sig);
        }
    }
    let arm_id_of = |b: &CpuinfoBlock| {
        Some(ArmCpuId {
            implementer: parse_number(block_get(b, "CPU implementer")?)?,
            part: parse_number(block_get(b, "CPU part")?)?,
        })
    };
    if let Some(model) = first_value(&blocks, "model name") {
        m.model = model.to_string();
    }
    m.features = match (x86_flags, arm_hwcaps) {
        (Some(flags), _) => features_from_x86_flags(flags),
        (None, Some(caps)) => features_from_arm_hwcaps(caps),
        (None, None) => CpuFeatures::default(),
    };
    m.hypervisor = x86_flags.is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor"));

    // ---- CPUs and classes ----
    let online = sys
        .read("online")
        .map(|s| parse_cpulist(&s))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| by_cpu.keys().copied().collect());
    m.logical_cores = online.len();
    let only_online = |cpus: Vec<usize>| -> Vec<usize> { cpus.into_iter().filter(|c| online.contains(c)).collect() };

    let hybrid = |dev: &str| {
        fs::read_to_string(root.join(format!("sys/devices/{dev}/cpus")))
            .ok()
            .map(|s| only_online(parse_cpulist(&s)))
            .filter(|v| !v.is_empty())
    };
    let mut groups: Vec<(CoreKind, String, Vec<usize>, Option<u32>)> = Vec::new();
    if let (Some(p), Some(e)) = (hybrid("cpu_core"), hybrid("cpu_atom")) {
        groups.push((CoreKind::Performance, "cpu_core".into(), p, None));
        groups.push((CoreKind::Efficiency, "cpu_atom".into(), e, None));
    } else {
        let mut by_capacity: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &c in &online {
            if let Some(cap) = sys.read(&format!("cpu{c}/cpu_capacity")).and_then(|s| s.parse::<u32>().ok()) {
                by_capacity.entry(cap).or_default().push(c);
            }
        }
        if by_capacity.len() >= 2 {
            for (i, (cap, cpus)) in by_capacity.into_iter().rev().enumerate() {
                let kind = if i == 0 { CoreKind::Performance } else { CoreKind::Efficiency };
                groups.push((kind, format!("capacity {cap}"), cpus, Some(cap)));
            }
        } else if !online.is_empty() {
            let cap = by_capacity.keys().next().copied();
            groups.push((CoreKind::Uniform, "all".into(), online.clone(), cap));
        }
    }

    // SMT width from cpuinfo (siblings / cpu cores), for machines without
    // sysfs topology; only meaningful when all cores are alike.
    let cpuinfo_smt = || {
        let siblings = first_value(&blocks, "siblings").and_then(parse_number)?;
        let cores = first_value(&blocks, "cpu cores").and_then(parse_number)?;
        (cores > 0 && siblings >= cores && siblings % cores == 0).then_some((siblings / cores) as usize)
    };
    for (kind, name, cpus, capacity) in groups {
        let first = cpus[0];
        let smt = sys.smt_width(first).or_else(|| if kind == CoreKind::Uniform { cpuinfo_smt() } else { None });
        let (l1d, l2, l3, per_l2) = sys.caches(first);
        let arch = match by_cpu.get(&first).and_then(|b| arm_id_of(b)) {
            Some(id) => Some(arm_microarch(id.implementer, id.part)),
            None => (m.microarchitecture != Microarch::Unknown).then_some(m.microarchitecture),
        };
        m.core_classes.push(CoreClass {
            kind,
            name,
            microarchitecture: arch,
            logical_cpus: cpus.len(),
            physical_cores: smt.map(|w| cpus.len().div_ceil(w)),
            cpu_list: Some(cpulist_text(&cpus)),
            capacity,
            l1d_bytes: l1d,
            l2_bytes: l2,
            l3_bytes: l3,
            cpus_per_l2: per_l2,
        });
    }
    m.physical_cores = m.core_classes.iter().map(|c| c.physical_cores).sum::<Option<usize>>().filter(|&n| n > 0);

    // Arm: the implementer/part of the performance class names the chip.
    let perf_cpu = m.core_classes.first().and_then(|c| c.cpu_list.as_deref()).map(parse_cpulist);
    let perf_block = perf_cpu.and_then(|v| v.first().and_then(|c| by_cpu.get(c).copied()));
    if let Some(id) = perf_block.or(blocks.first()).and_then(arm_id_of) {
        m.arm_id = Some(id);
        m.vendor = arm_vendor(id.implementer);
        m.microarchitecture = arm_microarch(id.implementer, id.part);
        if m.model == "unknown" {
            let names: Vec<String> = m
                .core_classes
                .iter()
                .filter_map(|c| c.microarchitecture.filter(|a| *a != Microarch::Unknown).map(|a| a.to_string()))
                .collect();
            if !names.is_empty() {
                m.model = format!("{} {}", m.vendor, names.join(" + "));
            }
        }
    }

    // Sockets: cores per package ("cpu cores") divides the physical count.
    m.sockets = match (m.physical_cores, first_value(&blocks, "cpu cores").and_then(parse_number)) {
        (Some(p), Some(per)) if per > 0 && p % per as usize == 0 => Some(p / per as usize),
        _ => None,
    };

    // ---- clock for peak formulas ----
    let first_cpu = online.first().copied().unwrap_or(0);
    let khz = |f: &str| {
        sys.read(&format!("cpu{first_cpu}/cpufreq/{f}"))
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let cpu_mhz =
        first_value(&blocks, "cpu MHz").and_then(|s| s.parse::<f64>().ok()).filter(|v| v.is_finite() && *v > 0.0);
    let clock = if let Some(k) = khz("base_frequency") {
        Some((k / 1000.0, "cpufreq base_frequency"))
    } else if let Some(mhz) = clock_from_brand(&m.model) {
        Some((mhz, "the brand string"))
    } else if let (Some(k), true) = (khz("cpuinfo_max_freq"), m.arm_id.is_some()) {
        Some((k / 1000.0, "cpufreq cpuinfo_max_freq"))
    } else {
        cpu_mhz.map(|mhz| (mhz, "/proc/cpuinfo 'cpu MHz' when read"))
    };
    if let Some((mhz, src)) = clock {
        m.nominal_clock_mhz = Some(mhz);
        m.nominal_clock_source = Some(src.to_string());
    }

    // ---- SME vector length (the kernel's default for new threads) ----
    if m.features.sme {
        if let Some(bytes) = read("proc/sys/abi/sme_default_vector_length").and_then(|s| s.trim().parse::<u32>().ok()) {
            m.features.sme_vector_bits = bytes.checked_mul(8);
            m.features.sme_vector_bits_source = Some("/proc/sys/abi/sme_default_vector_length".into());
        }
    }

    m.memory_bytes = read("proc/meminfo").and_then(|t| parse_meminfo_total(&t));
    m.unified_memory = m.microarchitecture.is_apple_m();
    m.power_sensors = crate::find_power_sensors_in(&root.join("sys/class"));
    m.attach_atlas_facts();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpulist("0-1\n"), vec![0, 1]);
        assert_eq!(parse_cpulist(""), Vec::<usize>::new());
        assert_eq!(parse_cpulist("3-1,x,-,5-"), Vec::<usize>::new());
        assert_eq!(parse_cpulist("0-4294967295"), Vec::<usize>::new());
        assert_eq!(cpulist_text(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cpulist_text(&[]), "");
    }

    #[test]
    fn sizes_and_meminfo() {
        assert_eq!(parse_cache_size("48K"), Some(48 << 10));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("99999999999999999999K"), None);
        assert_eq!(parse_cache_size("18446744073709551615G"), None);
        assert_eq!(parse_meminfo_total("MemTotal:       24683656 kB\n"), Some(24683656 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: lots\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: 18446744073709551615 kB\n"), None);
        assert_eq!(clock_from_brand("Intel(R) Xeon(R) CPU E5-2695 v4 @ 2.10GHz"), Some(2100.0));
        assert_eq!(clock_from_brand("AMD EPYC 9654 96-Core Processor"), None);
        assert_eq!(parse_number("0xd0b"), Some(0xd0b));
        assert_eq!(parse_number("207"), Some(207));
        assert_eq!(parse_number("0xzz"), None);
    }

    #[test]
    fn hwcaps_and_flags() {
        let f = features_from_arm_hwcaps("fp asimd evtstrm aes asimdhp cpuid asimddp i8mm bf16 sve sme");
        assert!(f.neon && f.fp16 && f.dotprod && f.i8mm && f.bf16 && f.sve && f.sme && !f.sme2);
        let f = features_from_x86_flags("fpu avx2 fma avx512f avx512_fp16 amx_tile hypervisor unknownflag");
        assert_eq!(f.present(), vec!["avx2", "fma", "avx512f", "avx512_fp16", "amx_tile"]);
        assert!(!f.neon);
    }
}
