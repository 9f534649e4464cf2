//! Hardware detection: one typed description of the machine ([`Machine`]:
//! CPU identity and microarchitecture, core classes and caches, SIMD and
//! matrix features, memory, Neural Engine, power sensors) from what Linux
//! and macOS expose, runtime x86 feature detection, Intel AMX status (CPUID,
//! XCR0 and the Linux tile-data permission), a user switch to turn features
//! off, the chip atlas with expected peaks (or a cached calibration), and
//! the kernel choice that follows from all of it.
//!
//! Every parser is a pure function over text or over a directory root, so
//! it runs on the fixtures in `fixtures/`; the live readers only feed them.
//! `unsafe` is confined to the FFI modules `x86` and `macos_sysctl`.

#![deny(unsafe_code)]

mod amx;
pub mod atlas;
pub mod calibration;
pub mod linux;
pub mod machine;
pub mod macos;
#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod macos_sysctl;
pub mod microarch;
mod power;
mod switch;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod x86;

use serde::Serialize;

pub use amx::{amx, amx_enabled, amx_usable, AmxPalette, AmxStatus};
pub use atlas::ChipRow;
pub use calibration::{expected_peaks, Calibration, PeakSource, Peaks};
pub use machine::{CoreClass, CoreKind, CpuFeatures, Machine};
pub use microarch::Microarch;
pub use power::{find_power_sensors, find_power_sensors_in};
pub use switch::{disabled_by_user, disabled_features, parse_disable_list, set_disabled, DISABLE_ENV, KNOWN_SWITCHES};

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
    #[allow(unused_mut)]
    let mut cpu = parse_cpuinfo(&text, arch, logical_cores);
    #[cfg(target_arch = "x86_64")]
    if cpu.model == "unknown" {
        // No /proc/cpuinfo (macOS, Windows): take the CPUID brand string.
        if let Some(brand) = x86::read_brand() {
            cpu.model = brand;
        }
    }
    cpu
}

/// x86-64 SIMD features as the Rust runtime detects them (CPUID and OS
/// support for the register state), plus the AMX status.
#[derive(Clone, Debug, Serialize)]
pub struct X86Features {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    pub avx512_fp16: bool,
    pub amx: AmxStatus,
}

#[cfg(target_arch = "x86_64")]
fn detect_x86() -> Option<X86Features> {
    use std::arch::is_x86_feature_detected as has;
    Some(X86Features {
        avx2: has!("avx2"),
        fma: has!("fma"),
        f16c: has!("f16c"),
        avx512f: has!("avx512f"),
        avx512bw: has!("avx512bw"),
        avx512vl: has!("avx512vl"),
        avx512_vnni: has!("avx512vnni"),
        avx512_bf16: has!("avx512bf16"),
        avx512_fp16: has!("avx512fp16"),
        amx: amx().clone(),
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_x86() -> Option<X86Features> {
    None
}

/// Everything `tessera detect` reports. Hardware facts (`machine`, `cpu`,
/// `x86`) are kept apart from the user's switch (`user_disabled`).
#[derive(Clone, Debug, Serialize)]
pub struct MachineReport {
    /// The typed description of the machine.
    pub machine: Machine,
    /// The flag summary kept for existing callers (see [`detect_cpu`]).
    pub cpu: CpuInfo,
    /// `std::env::consts::OS`.
    pub os: String,
    /// `None` on CPUs that are not x86-64.
    pub x86: Option<X86Features>,
    /// Power/energy sensor files found in sysfs (see [`find_power_sensors_in`]);
    /// empty when there are none.
    pub power_sensors: Vec<String>,
    /// Features turned off by `TESSERA_DISABLE` / `--disable` / [`set_disabled`].
    pub user_disabled: Vec<String>,
}

/// Detects the machine. The first call on an AMX-capable Linux machine
/// requests the tile-data permission (see [`amx`]).
pub fn detect() -> MachineReport {
    let machine = detect_machine();
    MachineReport {
        power_sensors: machine.power_sensors.clone(),
        machine,
        cpu: detect_cpu(),
        os: std::env::consts::OS.to_string(),
        x86: detect_x86(),
        user_disabled: disabled_features(),
    }
}

/// The [`Machine`] of this computer: the Linux or macOS parser fed from
/// the live system, then gaps filled from the runtime (CPU count, and on
/// x86-64 the CPUID brand string and features when the OS gave none).
pub fn detect_machine() -> Machine {
    #[cfg(target_os = "linux")]
    #[allow(unused_mut)]
    let mut m = linux::read_machine(std::path::Path::new("/"));
    #[cfg(target_os = "macos")]
    #[allow(unused_mut)]
    let mut m = {
        let mut m = macos::parse_sysctl(&macos_sysctl::sysctl_text());
        m.power_sensors = find_power_sensors();
        m
    };
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    #[allow(unused_mut)]
    let mut m = Machine::unknown(std::env::consts::OS);
    if m.logical_cores == 0 {
        m.logical_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if m.model == "unknown" {
            if let Some(brand) = x86::read_brand() {
                m.model = brand;
            }
        }
        if m.features.present().is_empty() {
            if let Some(x) = detect_x86() {
                let f = &mut m.features;
                (f.avx2, f.fma, f.f16c, f.avx512f, f.avx512bw, f.avx512vl) =
                    (x.avx2, x.fma, x.f16c, x.avx512f, x.avx512bw, x.avx512vl);
                (f.avx512_vnni, f.avx512_bf16, f.avx512_fp16) = (x.avx512_vnni, x.avx512_bf16, x.avx512_fp16);
                (f.amx_tile, f.amx_bf16, f.amx_int8, f.amx_fp16) = (x.amx.tile, x.amx.bf16, x.amx.int8, x.amx.fp16);
            }
        }
    }
    m
}

/// Which kernel family handles one precision, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelChoice {
    /// "fp32", "bf16", "int8" or "fp16".
    pub precision: &'static str,
    pub kernel: String,
    pub why: String,
}

/// The kernel-selection policy applied to a report: one entry each for
/// fp32, bf16, int8 and fp16, in that order. The choice follows detected
/// features only; a chip's name may tune block sizes but never picks a
/// kernel. This is the policy the providers follow; it does not by itself
/// mean the named kernel is implemented.
pub fn kernel_choices(report: &MachineReport) -> Vec<KernelChoice> {
    if report.x86.is_none() && report.machine.features.neon {
        return arm_kernel_choices(report);
    }
    let off = |f: &str| report.user_disabled.iter().any(|d| d == f);
    let x = report.x86.as_ref();
    let mut out = Vec::new();

    let (kernel, mut why) = match x {
        Some(x) if x.avx512f => {
            ("avx512 (gemm crate)", "AVX-512F present; the gemm crate dispatches to AVX-512".to_string())
        }
        Some(x) if x.avx2 && x.fma => ("avx2+fma (gemm crate)", "AVX2 and FMA present, no AVX-512F".to_string()),
        Some(_) => ("portable", "no AVX2+FMA".to_string()),
        None => ("portable", format!("no x86-64 SIMD detection and no NEON on {}", report.cpu.arch)),
    };
    if x.is_some_and(|x| x.amx.usable) {
        // Measured on a Xeon with AMX (AMX issue's closing note): six bf16
        // products per fp32 product run slower than the vector path.
        why.push_str(
            "; the fp32-accurate tile split (--precision fp32-tiles) measured slower here, so not the default",
        );
    }
    if off("avx512") && x.is_some_and(|x| x.avx512f) {
        why.push_str(
            "; note: avx512 is disabled by the user, but the gemm crate picks its ISA itself and ignores that",
        );
    }
    out.push(KernelChoice { precision: "fp32", kernel: kernel.to_string(), why });

    let amx_block = |subset: &str, has_subset: bool| -> Option<String> {
        match x {
            None => Some(format!("not an x86-64 CPU ({})", report.cpu.arch)),
            Some(_) if off("amx") => Some(switch::DISABLED_AMX.to_string()),
            Some(x) if !x.amx.usable => Some(x.amx.reason.clone().unwrap_or_else(|| "AMX is not usable".into())),
            Some(_) if !has_subset => Some(format!("CPU has AMX-TILE but not {subset}")),
            Some(_) => None,
        }
    };
    // Without AMX, the tile driver's AVX-512 dot-product kernels (both
    // precisions from one ISA: F, BW, BF16 and VNNI).
    let dot_cpu = x.is_some_and(|x| x.avx512f && x.avx512bw && x.avx512_bf16 && x.avx512_vnni);
    let dot_products = dot_cpu && !off("avx512");
    let dot_missing = match x {
        Some(_) if dot_cpu => "; AVX-512 dot products disabled by the user",
        Some(_) => "; no AVX-512 BF16 and VNNI either",
        None => "",
    };
    let geometry = x
        .and_then(|x| x.amx.palette)
        .map(|p| format!(" ({} tiles of {} rows x {} bytes)", p.max_names, p.max_rows, p.bytes_per_row))
        .unwrap_or_default();

    // AMX with its `subset` where usable, else the dot-product
    // instruction `dot`, else `fallback`.
    let tile_choice = |precision, subset: &str, has_subset, amx_kernel: &str, dot: &str, fallback: &str| {
        let (kernel, why) = match amx_block(subset, has_subset) {
            None => (
                amx_kernel.to_string(),
                format!("AMX-TILE and {subset} usable: XCR0 and Linux permission in place{geometry}"),
            ),
            Some(r) if dot_products => (
                format!("avx512-dot ({dot})"),
                format!("no AMX ({r}); AVX-512 BF16 and VNNI present: the tile driver runs on {dot}"),
            ),
            Some(r) => (fallback.to_string(), format!("no AMX: {r}{dot_missing}")),
        };
        KernelChoice { precision, kernel, why }
    };
    out.push(tile_choice(
        "bf16",
        "AMX-BF16",
        x.is_some_and(|x| x.amx.bf16),
        "amx-bf16",
        "vdpbf16ps",
        "fp32 vector path",
    ));
    out.push(tile_choice(
        "int8",
        "AMX-INT8",
        x.is_some_and(|x| x.amx.int8),
        "amx-int8 (tdpbusd/tdpbssd)",
        "vpdpbusd",
        "scalar/vector int8 fallback",
    ));
    let fp16_why = match x {
        Some(x) if x.avx512_fp16 => "tessera has no fp16 GEMM on x86 (AVX512-FP16 is present but unused)",
        Some(_) => "tessera has no fp16 GEMM on x86 (and this CPU has no AVX512-FP16)",
        None => "no fp16 arithmetic detected",
    };
    out.push(KernelChoice { precision: "fp16", kernel: "fp32 vector path".into(), why: fp16_why.to_string() });
    out
}

/// The Arm policy: SME (outer products into ZA) for fp32 and bf16 where
/// FEAT_SME is present, NEON otherwise; fp16 on NEON with FEAT_FP16; int8
/// through I8MM, else DotProd, else widening NEON multiplies.
fn arm_kernel_choices(report: &MachineReport) -> Vec<KernelChoice> {
    let f = &report.machine.features;
    let off = |name: &str| report.user_disabled.iter().any(|d| d == name);
    let sme = f.sme && !off("sme");
    let svl = f.sme_vector_bits.map(|b| format!(", {b}-bit streaming vectors")).unwrap_or_default();
    let sme_off = if f.sme && off("sme") { "FEAT_SME present but disabled by the user" } else { "no FEAT_SME" };
    let choice = |precision, kernel: &str, why: String| KernelChoice { precision, kernel: kernel.into(), why };
    let mut out = Vec::new();
    out.push(if sme {
        choice("fp32", "sme-fp32 (FMOPA into ZA)", format!("FEAT_SME present{svl}: fp32 outer products into ZA"))
    } else {
        choice("fp32", "neon-fp32", format!("NEON present, {sme_off}"))
    });
    out.push(if sme {
        choice(
            "bf16",
            "sme-bf16 (BFMOPA into ZA)",
            format!("FEAT_SME present{svl}: bf16 pairs widened into fp32 ZA tiles"),
        )
    } else {
        choice("bf16", "fp32 vector path", format!("{sme_off}: bf16 products run as fp32 on NEON"))
    });
    out.push(if f.i8mm {
        choice(
            "int8",
            "neon-i8mm (SMMLA/UMMLA)",
            "FEAT_I8MM present (preferred over DotProd: 2x8 by 8x2 blocks per instruction)".into(),
        )
    } else if f.dotprod {
        choice("int8", "neon-dotprod (SDOT/UDOT)", "FEAT_DotProd present, no FEAT_I8MM".into())
    } else {
        choice(
            "int8",
            "neon-int8 (widening multiply-add)",
            "no FEAT_DotProd or FEAT_I8MM: plain NEON widening multiplies".into(),
        )
    });
    out.push(if f.fp16 {
        choice("fp16", "neon-fp16 (FMLA .8h)", "FEAT_FP16 present: half-precision NEON arithmetic".into())
    } else {
        choice("fp16", "fp32 vector path", "no FEAT_FP16: fp16 values are widened to fp32".into())
    });
    out
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

    fn amx_status(usable: bool, reason: Option<&str>) -> AmxStatus {
        AmxStatus {
            tile: usable,
            bf16: usable,
            int8: usable,
            fp16: false,
            os_enabled: usable,
            permission_granted: usable,
            palette: usable.then_some(AmxPalette {
                max_palette: 1,
                total_tile_bytes: 8192,
                bytes_per_tile: 1024,
                bytes_per_row: 64,
                max_names: 8,
                max_rows: 16,
                tmul_maxk: 16,
                tmul_maxn: 64,
            }),
            usable,
            reason: reason.map(String::from),
        }
    }

    fn report(avx512: bool, amx: AmxStatus, user_disabled: &[&str]) -> MachineReport {
        MachineReport {
            machine: Machine::unknown("test"),
            cpu: parse_cpuinfo("", "x86_64".into(), 2),
            os: "linux".into(),
            x86: Some(X86Features {
                avx2: true,
                fma: true,
                f16c: true,
                avx512f: avx512,
                avx512bw: avx512,
                avx512vl: avx512,
                avx512_vnni: avx512,
                avx512_bf16: avx512,
                avx512_fp16: avx512,
                amx,
            }),
            power_sensors: vec![],
            user_disabled: user_disabled.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn kernels(r: &MachineReport) -> Vec<(&'static str, String)> {
        kernel_choices(r).into_iter().map(|k| (k.precision, k.kernel)).collect()
    }

    #[test]
    fn kernel_choice_sapphire_rapids() {
        let r = report(true, amx_status(true, None), &[]);
        assert_eq!(
            kernels(&r),
            vec![
                ("fp32", "avx512 (gemm crate)".to_string()),
                ("bf16", "amx-bf16".to_string()),
                ("int8", "amx-int8 (tdpbusd/tdpbssd)".to_string()),
                ("fp16", "fp32 vector path".to_string()),
            ]
        );
        assert!(kernel_choices(&r)[1].why.contains("8 tiles of 16 rows x 64 bytes"));
    }

    #[test]
    fn kernel_choice_zen3_gives_reasons() {
        let r = report(false, amx_status(false, Some("CPU has no AMX-TILE (AMD EPYC)")), &[]);
        let k = kernel_choices(&r);
        assert_eq!(k[0].kernel, "avx2+fma (gemm crate)");
        assert_eq!(k[1].kernel, "fp32 vector path");
        assert_eq!(k[1].why, "no AMX: CPU has no AMX-TILE (AMD EPYC); no AVX-512 BF16 and VNNI either");
        assert_eq!(k[2].kernel, "scalar/vector int8 fallback");
        assert_eq!(k[2].why, "no AMX: CPU has no AMX-TILE (AMD EPYC); no AVX-512 BF16 and VNNI either");
    }

    #[test]
    fn kernel_choice_zen4_takes_the_dot_products() {
        let r = report(true, amx_status(false, Some("CPU has no AMX-TILE (AMD EPYC)")), &[]);
        let k = kernel_choices(&r);
        assert_eq!(k[1].kernel, "avx512-dot (vdpbf16ps)");
        assert!(k[1].why.starts_with("no AMX (CPU has no AMX-TILE (AMD EPYC))"), "{}", k[1].why);
        assert_eq!(k[2].kernel, "avx512-dot (vpdpbusd)");
        let k = kernel_choices(&report(true, amx_status(false, Some("x")), &["avx512"]));
        assert_eq!(k[1].kernel, "fp32 vector path");
        assert_eq!(k[1].why, "no AMX: x; AVX-512 dot products disabled by the user");
        assert_eq!(k[2].kernel, "scalar/vector int8 fallback");
    }

    #[test]
    fn kernel_choice_respects_user_switch_and_missing_subsets() {
        let r = report(true, amx_status(true, None), &["amx"]);
        let k = kernel_choices(&r);
        assert_eq!(k[1].kernel, "avx512-dot (vdpbf16ps)");
        assert_eq!(k[2].kernel, "avx512-dot (vpdpbusd)");
        let r = report(true, amx_status(true, None), &["amx", "avx512"]);
        let k = kernel_choices(&r);
        assert_eq!(k[1].kernel, "fp32 vector path");
        assert_eq!(
            k[1].why,
            "no AMX: disabled by the user (--disable amx / TESSERA_DISABLE); AVX-512 dot products disabled by the user"
        );
        assert_eq!(k[2].kernel, "scalar/vector int8 fallback");

        let mut a = amx_status(true, None);
        a.int8 = false;
        let k = kernel_choices(&report(true, a, &[]));
        assert_eq!(k[1].kernel, "amx-bf16");
        assert_eq!(k[2].kernel, "avx512-dot (vpdpbusd)");
        assert!(k[2].why.starts_with("no AMX (CPU has AMX-TILE but not AMX-INT8)"), "{}", k[2].why);

        let mut r = report(false, amx_status(false, Some("x")), &[]);
        r.x86 = None;
        r.cpu.arch = "aarch64".into();
        let k = kernel_choices(&r);
        assert_eq!(k[0].kernel, "portable");
        assert_eq!(k[1].why, "no AMX: not an x86-64 CPU (aarch64)");

        let k = kernel_choices(&report(true, amx_status(true, None), &["avx512"]));
        assert_eq!(k[0].kernel, "avx512 (gemm crate)");
        assert!(k[0].why.contains("ignores that"), "{}", k[0].why);
    }

    #[test]
    fn disable_list_parsing() {
        assert_eq!(parse_disable_list("amx,avx512"), vec!["amx", "avx512"]);
        assert_eq!(parse_disable_list(" AMX , ,avx512,amx,"), vec!["amx", "avx512"]);
        assert!(parse_disable_list("").is_empty());
        assert!(parse_disable_list(" , ").is_empty());
    }

    #[test]
    fn set_disabled_is_process_global() {
        // A name no other test uses: the switch is process-wide and one-way.
        assert!(!disabled_by_user("test-only-feature"));
        let t = std::thread::spawn(|| set_disabled("Test-Only-Feature"));
        t.join().unwrap();
        assert!(disabled_by_user("test-only-feature"));
        assert!(disabled_by_user(" TEST-ONLY-FEATURE "));
        assert!(disabled_features().contains(&"test-only-feature".to_string()));
    }

    #[test]
    fn amx_enabled_reports_user_switch_or_hardware_reason() {
        match amx_enabled() {
            Ok(()) => assert!(amx_usable()),
            Err(e) => assert!(!e.is_empty()),
        }
        set_disabled("amx");
        assert_eq!(amx_enabled(), Err("disabled by the user (--disable amx / TESSERA_DISABLE)".to_string()));
        // The hardware status is unaffected by the switch.
        assert_eq!(amx_usable(), amx().usable);
    }

    #[test]
    fn power_sensors_from_a_sysfs_fixture() {
        let root = std::env::temp_dir().join(format!("tessera-hw-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |p: &str, v: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        assert!(find_power_sensors_in(&root).is_empty());
        mk("powercap/intel-rapl:0/name", "package-0\n");
        mk("powercap/intel-rapl:0/energy_uj", "123\n");
        mk("powercap/dtpm/name", "x");
        mk("hwmon/hwmon0/name", "acpi_power_meter\n");
        mk("hwmon/hwmon0/power1_input", "250000000\n");
        mk("hwmon/hwmon1/name", "k10temp\n");
        mk("hwmon/hwmon1/temp1_input", "40000\n");
        mk("power_supply/AC/type", "Mains\n");
        mk("power_supply/AC/online", "1\n");
        mk("power_supply/BAT0/type", "Battery\n");
        mk("power_supply/BAT0/power_now", "9000000\n");
        let s = find_power_sensors_in(&root);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].ends_with("intel-rapl:0/energy_uj (RAPL package-0, readable)"), "{}", s[0]);
        assert!(s[1].ends_with("hwmon0/power1_input (hwmon acpi_power_meter, readable)"), "{}", s[1]);
        assert!(s[2].ends_with("BAT0/power_now (power_supply Battery, readable)"), "{}", s[2]);
    }

    #[test]
    fn detect_serializes() {
        let r = detect();
        assert!(r.cpu.logical_cores >= 1);
        assert_eq!(r.x86.is_some(), cfg!(target_arch = "x86_64"));
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["power_sensors"].is_array());
        if let Some(x) = &r.x86 {
            assert_eq!(&x.amx, amx());
            assert_eq!(v["x86"]["amx"]["usable"], serde_json::Value::Bool(x.amx.usable));
            // Runtime detection agrees with what the Linux kernel reports.
            if !r.cpu.features.is_empty() {
                assert_eq!(x.avx2, r.cpu.features.iter().any(|f| f == "avx2"));
                assert_eq!(x.avx512f, r.cpu.features.iter().any(|f| f == "avx512f"));
            }
        }
        assert_eq!(kernel_choices(&r).len(), 4);
        // The typed machine agrees with the flag summary read from the same OS.
        assert!(r.machine.logical_cores >= 1);
        for f in &r.cpu.features {
            if let Some(present) = r.machine.features.get(f) {
                assert!(present, "{f} is in /proc/cpuinfo but not in the typed features");
            }
        }
        assert_eq!(v["machine"]["gpus_note"], machine::GPUS_NOTE);
    }

    #[test]
    fn parses_x86_flags() {
        let t = "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n";
        let c = parse_cpuinfo(t, "x86_64".into(), 2);
        assert_eq!(c.vendor, "GenuineIntel");
        assert_eq!(c.model, "Intel(R) Xeon(R) Platinum 8488C");
        assert_eq!(c.features, vec!["avx2", "avx512f", "amx_tile", "amx_bf16"]);
    }
}
