//! The parsers on recorded and reconstructed machines (see
//! `fixtures/README.md` for which is which): one test per fixture, each
//! asserting the concrete fields, plus the atlas match, expected peaks and
//! kernel choices that follow, and garbage input.

use std::path::{Path, PathBuf};

use tessera_hw::atlas;
use tessera_hw::calibration::{self, Calibration, MeasuredPeaks, PeakSource};
use tessera_hw::machine::{CoreClass, CoreKind, Machine, GPUS_NOTE};
use tessera_hw::{kernel_choices, linux, macos, CpuInfo, MachineReport, Microarch};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

fn mac(name: &str) -> Machine {
    let text = std::fs::read_to_string(fixture(&format!("macos/{name}.sysctl"))).expect("fixture");
    macos::parse_sysctl(&text)
}

fn lin(name: &str) -> Machine {
    let root = fixture(&format!("linux/{name}"));
    assert!(root.is_dir(), "{}", root.display());
    linux::read_machine(&root)
}

/// A report around a parsed machine, as `detect` would build it on that
/// machine (runtime x86 detection left out: the fixtures are the facts).
fn report(m: Machine) -> MachineReport {
    MachineReport {
        cpu: CpuInfo {
            vendor: m.vendor.clone(),
            model: m.model.clone(),
            arch: if m.x86_signature.is_some() { "x86_64".into() } else { "aarch64".into() },
            logical_cores: m.logical_cores,
            features: m.features.present().iter().map(|s| s.to_string()).collect(),
        },
        os: if m.source.starts_with("macOS") { "macos".into() } else { "linux".into() },
        x86: None,
        power_sensors: m.power_sensors.clone(),
        user_disabled: vec![],
        machine: m,
    }
}

fn class(m: &Machine, kind: CoreKind) -> &CoreClass {
    m.core_classes
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} class in {:?}", m.core_classes))
}

fn kernels(m: Machine) -> Vec<(&'static str, String)> {
    kernel_choices(&report(m)).into_iter().map(|k| (k.precision, k.kernel)).collect()
}

/// Fields every Apple fixture shares.
fn assert_apple_common(m: &Machine) {
    assert_eq!(m.vendor, "Apple");
    assert!(m.unified_memory);
    assert!(m.features.neon && m.features.fp16 && m.features.dotprod);
    assert!(!m.features.avx2 && !m.features.amx_tile && !m.hypervisor);
    assert!(m.gpus.is_empty());
    assert_eq!(m.gpus_note, GPUS_NOTE);
    assert!(m.power_sensors.is_empty());
    assert_eq!(m.core_classes.len(), 2);
    assert_eq!(class(m, CoreKind::Performance).l1d_bytes, Some(128 * KIB));
    assert_eq!(class(m, CoreKind::Efficiency).l1d_bytes, Some(64 * KIB));
    assert_eq!(class(m, CoreKind::Efficiency).name, "Efficiency");
}

#[test]
fn apple_m1() {
    let m = mac("m1");
    assert_apple_common(&m);
    assert_eq!(m.model, "Apple M1");
    assert_eq!(m.hw_model.as_deref(), Some("MacBookAir10,1"));
    assert_eq!(m.microarchitecture, Microarch::AppleM1);
    assert_eq!((m.performance_cores(), m.efficiency_cores()), (Some(4), Some(4)));
    assert_eq!((m.logical_cores, m.physical_cores), (8, Some(8)));
    let p = class(&m, CoreKind::Performance);
    assert_eq!((p.l2_bytes, p.cpus_per_l2), (Some(12 * MIB), Some(4)));
    assert_eq!(class(&m, CoreKind::Efficiency).l2_bytes, Some(4 * MIB));
    assert!(!m.features.bf16 && !m.features.i8mm && !m.features.sme && !m.features.sme2);
    assert_eq!(m.features.sme_vector_bits, None);
    assert_eq!(m.memory_bytes, Some(8 * GIB));
    let ne = m.neural_engine.as_ref().expect("neural engine");
    assert_eq!((ne.cores, ne.tops), (Some(16), Some(11.0)));
    assert_eq!(atlas::lookup_machine(&m).map(|r| r.name), Some("Apple M1"));
    assert_eq!(
        kernels(m),
        vec![
            ("fp32", "neon-fp32".to_string()),
            ("bf16", "fp32 vector path".to_string()),
            ("int8", "neon-dotprod (SDOT/UDOT)".to_string()),
            ("fp16", "neon-fp16 (FMLA .8h)".to_string()),
        ]
    );
}

#[test]
fn apple_m2_pro() {
    let m = mac("m2-pro");
    assert_apple_common(&m);
    assert_eq!(m.model, "Apple M2 Pro");
    assert_eq!(m.microarchitecture, Microarch::AppleM2);
    assert_eq!((m.performance_cores(), m.efficiency_cores()), (Some(8), Some(4)));
    assert_eq!(m.logical_cores, 12);
    assert_eq!(class(&m, CoreKind::Performance).l2_bytes, Some(16 * MIB));
    assert_eq!(class(&m, CoreKind::Efficiency).l2_bytes, Some(4 * MIB));
    assert!(m.features.bf16 && m.features.i8mm && !m.features.sme);
    assert_eq!(m.memory_bytes, Some(32 * GIB));
    assert_eq!(m.neural_engine.as_ref().and_then(|n| n.tops), Some(15.8));
    let row = atlas::lookup_machine(&m).expect("atlas row");
    assert_eq!(row.name, "Apple M2 Pro 12-core CPU");
    assert_eq!(row.memory_bandwidth_gb_s, Some(200.0));
    let k = kernel_choices(&report(m));
    assert_eq!(k[2].kernel, "neon-i8mm (SMMLA/UMMLA)");
    assert!(k[2].why.contains("FEAT_I8MM"), "{}", k[2].why);
}

#[test]
fn apple_m3_max_lower_bin() {
    let m = mac("m3-max-14core");
    assert_apple_common(&m);
    assert_eq!(m.model, "Apple M3 Max");
    assert_eq!(m.microarchitecture, Microarch::AppleM3);
    assert_eq!((m.performance_cores(), m.efficiency_cores()), (Some(10), Some(4)));
    assert_eq!(class(&m, CoreKind::Performance).cpus_per_l2, Some(5));
    assert_eq!(class(&m, CoreKind::Performance).l2_bytes, Some(16 * MIB));
    assert!(m.features.bf16 && m.features.i8mm && !m.features.sme);
    assert_eq!(m.memory_bytes, Some(36 * GIB));
    assert_eq!(m.neural_engine.as_ref().and_then(|n| n.tops), Some(18.0));
    // The 14-core bin, not the 16-core top bin: 300 GB/s, 30-core GPU.
    let row = atlas::lookup_machine(&m).expect("atlas row");
    assert_eq!(row.name, "Apple M3 Max 14-core CPU");
    assert_eq!(row.memory_bandwidth_gb_s, Some(300.0));
    assert_eq!(row.gpu_cores, &[30]);
    // Apple publishes no AMX throughput: no peak claimed, calibration asked for.
    let peaks = calibration::expected_peaks_in(&report(m), None);
    assert_eq!(peaks.source, PeakSource::Unknown);
    assert_eq!(peaks.fp32, None);
    assert!(peaks.note.contains("tessera calibrate"), "{}", peaks.note);
}

#[test]
fn apple_m4_derives_the_sme_vector_length() {
    let m = mac("m4");
    assert_apple_common(&m);
    assert_eq!(m.model, "Apple M4");
    assert_eq!(m.microarchitecture, Microarch::AppleM4);
    assert_eq!((m.performance_cores(), m.efficiency_cores()), (Some(4), Some(6)));
    assert_eq!(class(&m, CoreKind::Efficiency).cpus_per_l2, Some(6));
    assert!(m.features.sme && m.features.sme2 && m.features.bf16 && m.features.i8mm);
    assert_eq!(m.features.sme_vector_bits, Some(512));
    assert!(m.features.sme_vector_bits_source.as_deref().unwrap().starts_with("derived"));
    assert_eq!(m.memory_bytes, Some(16 * GIB));
    let ne = m.neural_engine.as_ref().unwrap();
    assert_eq!((ne.cores, ne.tops), (Some(16), Some(38.0)));
    assert_eq!(atlas::lookup_machine(&m).map(|r| r.name), Some("Apple M4 10-core CPU"));
    let peaks = calibration::expected_peaks_in(&report(m.clone()), None);
    assert_eq!(peaks.source, PeakSource::Atlas("Apple M4 10-core CPU".into()));
    assert_eq!((peaks.fp32, peaks.bf16), (Some(2300.0), None));
    let k = kernel_choices(&report(m));
    assert_eq!(k[0].kernel, "sme-fp32 (FMOPA into ZA)");
    assert!(k[0].why.contains("512-bit streaming vectors"), "{}", k[0].why);
    assert_eq!(k[1].kernel, "sme-bf16 (BFMOPA into ZA)");
    assert_eq!(k[2].kernel, "neon-i8mm (SMMLA/UMMLA)");
    assert_eq!(k[3].kernel, "neon-fp16 (FMLA .8h)");
}

#[test]
fn apple_m4_max_reads_the_sme_vector_length() {
    let m = mac("m4-max");
    assert_apple_common(&m);
    assert_eq!(m.model, "Apple M4 Max");
    assert_eq!(m.hw_model.as_deref(), Some("Mac16,5"));
    assert_eq!((m.performance_cores(), m.efficiency_cores()), (Some(12), Some(4)));
    assert_eq!(class(&m, CoreKind::Performance).cpus_per_l2, Some(6));
    assert_eq!(m.features.sme_vector_bits, Some(512));
    assert_eq!(m.features.sme_vector_bits_source.as_deref(), Some("hw.optional.arm.sme_max_svl_b"));
    assert_eq!(m.memory_bytes, Some(48 * GIB));
    assert_eq!(m.neural_engine.as_ref().and_then(|n| n.tops), Some(38.0));
    let row = atlas::lookup_machine(&m).unwrap();
    assert_eq!((row.name, row.memory_bandwidth_gb_s), ("Apple M4 Max 16-core CPU", Some(546.0)));
    // The user switch turns SME off; dispatch then falls back to NEON.
    let mut r = report(m);
    r.user_disabled = vec!["sme".into()];
    let k = kernel_choices(&r);
    assert_eq!(k[0].kernel, "neon-fp32");
    assert!(k[0].why.contains("disabled by the user"), "{}", k[0].why);
}

#[test]
fn apple_bin_not_in_the_atlas_gets_no_row() {
    let text = std::fs::read_to_string(fixture("macos/m4-max.sysctl")).unwrap();
    let text = text.replace("hw.perflevel0.physicalcpu: 12", "hw.perflevel0.physicalcpu: 11");
    let m = macos::parse_sysctl(&text);
    assert_eq!(m.performance_cores(), Some(11));
    assert!(atlas::lookup_machine(&m).is_none());
    // Still an M4: the Neural Engine is there, its TOPS not claimed.
    assert_eq!(m.neural_engine.as_ref().map(|n| n.tops), Some(None));
}

#[test]
fn intel_hybrid_laptop_alder_lake() {
    let m = lin("intel-i7-1260p");
    assert_eq!(m.vendor, "GenuineIntel");
    assert_eq!(m.model, "12th Gen Intel(R) Core(TM) i7-1260P");
    assert_eq!(m.microarchitecture, Microarch::AlderLake);
    assert_eq!(m.x86_signature.map(|s| (s.family, s.model, s.stepping)), Some((6, 154, 3)));
    assert_eq!(m.logical_cores, 16);
    let (p, e) = (class(&m, CoreKind::Performance), class(&m, CoreKind::Efficiency));
    assert_eq!(
        (p.name.as_str(), p.cpu_list.as_deref(), p.logical_cpus, p.physical_cores),
        ("cpu_core", Some("0-7"), 8, Some(4))
    );
    assert_eq!(
        (e.name.as_str(), e.cpu_list.as_deref(), e.logical_cpus, e.physical_cores),
        ("cpu_atom", Some("8-15"), 8, Some(8))
    );
    assert_eq!((p.l1d_bytes, p.l2_bytes, p.l3_bytes), (Some(48 * KIB), Some(1280 * KIB), Some(18 * MIB)));
    assert_eq!((e.l1d_bytes, e.l2_bytes, e.cpus_per_l2), (Some(32 * KIB), Some(2 * MIB), Some(4)));
    assert_eq!((m.performance_cores(), m.efficiency_cores(), m.physical_cores), (Some(4), Some(8), Some(12)));
    assert_eq!(m.sockets, Some(1));
    let f = &m.features;
    assert!(f.avx2 && f.fma && f.f16c && f.avx_vnni);
    assert!(!f.avx512f && !f.amx_tile && !f.neon);
    assert_eq!(m.memory_bytes, Some(15991508 * KIB));
    assert!(!m.unified_memory && m.neural_engine.is_none() && !m.hypervisor);
    assert_eq!(
        (m.nominal_clock_mhz, m.nominal_clock_source.as_deref()),
        (Some(2100.0), Some("cpufreq base_frequency"))
    );
    // A client chip: not in the atlas, so peaks come from a calibration or nowhere.
    assert!(atlas::lookup_machine(&m).is_none());
    assert_eq!(calibration::expected_peaks_in(&report(m), None).source, PeakSource::Unknown);
}

#[test]
fn sapphire_rapids_two_socket_server() {
    let m = lin("xeon-platinum-8480plus-2s");
    assert_eq!(m.model, "Intel(R) Xeon(R) Platinum 8480+");
    assert_eq!(m.microarchitecture, Microarch::SapphireRapids);
    assert_eq!(m.x86_signature.map(|s| (s.family, s.model)), Some((6, 143)));
    assert_eq!((m.logical_cores, m.physical_cores, m.sockets), (224, Some(112), Some(2)));
    let u = class(&m, CoreKind::Uniform);
    assert_eq!((u.l1d_bytes, u.l2_bytes, u.l3_bytes), (Some(48 * KIB), Some(2 * MIB), Some(105 * MIB)));
    let f = &m.features;
    assert!(f.amx_tile && f.amx_bf16 && f.amx_int8 && !f.amx_fp16);
    assert!(f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni && f.avx512_bf16 && f.avx512_fp16);
    assert_eq!(m.memory_bytes, Some(527939412 * KIB));
    assert!(!m.hypervisor && !m.unified_memory);
    let row = atlas::lookup_machine(&m).unwrap();
    assert_eq!(row.brand, "Platinum 8480+");
    // Two sockets: the per-cycle rates x 112 cores x the 2.0 GHz base clock.
    let peaks = calibration::expected_peaks_in(&report(m), None);
    assert_eq!(peaks.source, PeakSource::Atlas(row.name.into()));
    assert_eq!(peaks.bf16, Some(1024.0 * 112.0 * 2.0));
    assert_eq!(peaks.int8, Some(2048.0 * 112.0 * 2.0));
    assert_eq!(peaks.fp32, Some(64.0 * 112.0 * 2.0));
    assert!(peaks.note.contains("112 detected cores"), "{}", peaks.note);
}

#[test]
fn amd_zen4_server() {
    let m = lin("epyc-9654");
    assert_eq!(m.vendor, "AuthenticAMD");
    assert_eq!(m.model, "AMD EPYC 9654 96-Core Processor");
    assert_eq!(m.microarchitecture, Microarch::Zen4);
    assert_eq!(m.x86_signature.map(|s| (s.family, s.model)), Some((25, 17)));
    assert_eq!((m.logical_cores, m.physical_cores, m.sockets), (192, Some(96), Some(1)));
    let u = class(&m, CoreKind::Uniform);
    assert_eq!((u.l1d_bytes, u.l2_bytes, u.l3_bytes), (Some(32 * KIB), Some(MIB), Some(32 * MIB)));
    let f = &m.features;
    assert!(f.avx512f && f.avx512_bf16 && f.avx512_vnni && f.avx512vbmi && !f.avx512_fp16);
    assert!(!f.amx_tile && !f.amx_bf16 && !f.amx_int8);
    assert_eq!(m.memory_bytes, Some(395899724 * KIB));
    assert!(!m.unified_memory && m.neural_engine.is_none());
    let row = atlas::lookup_machine(&m).unwrap();
    assert_eq!(row.name, "AMD EPYC 4th gen (Zen 4, Genoa), EPYC 9654");
    // The SKU itself with its full core count: the row's whole-chip figures.
    let peaks = calibration::expected_peaks_in(&report(m), None);
    assert_eq!(peaks.fp32, Some(32.0 * 96.0 * 2.4));
    assert_eq!((peaks.bf16, peaks.int8), (None, None));
}

#[test]
fn ci_machine_emerald_rapids_guest() {
    let m = lin("ci-xeon-emr-2cpu");
    assert_eq!(m.model, "Intel(R) Xeon(R) Processor");
    assert_eq!(m.microarchitecture, Microarch::EmeraldRapids);
    assert_eq!(m.x86_signature.map(|s| (s.family, s.model, s.stepping)), Some((6, 207, 2)));
    assert!(m.hypervisor);
    assert_eq!((m.logical_cores, m.physical_cores, m.sockets), (2, Some(2), Some(1)));
    let f = &m.features;
    for flag in [
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
    ] {
        assert!(f.has(flag), "{flag}");
    }
    assert!(!f.amx_fp16);
    let u = class(&m, CoreKind::Uniform);
    assert_eq!(
        (u.capacity, u.l1d_bytes, u.l2_bytes, u.l3_bytes),
        (Some(1024), Some(48 * KIB), Some(2 * MIB), Some(300 * MIB))
    );
    assert_eq!(m.memory_bytes, Some(24608788 * KIB));
    assert!(m.power_sensors.is_empty());
    // A generic brand string: matched by microarchitecture, scaled to 2 cores at the reported clock.
    let row = atlas::lookup_machine(&m).unwrap();
    assert_eq!(row.microarchitecture, Microarch::EmeraldRapids);
    let peaks = calibration::expected_peaks_in(&report(m), None);
    assert_eq!(peaks.bf16, Some(1024.0 * 2.0 * 2.1));
    assert!(peaks.note.contains("cpu MHz"), "{}", peaks.note);
}

#[test]
fn gpu_box_real_capture() {
    let m = lin("gpu-box-xeon-emr-16cpu");
    assert_eq!(m.microarchitecture, Microarch::EmeraldRapids);
    assert_eq!((m.logical_cores, m.physical_cores, m.sockets), (16, Some(16), Some(1)));
    assert!(m.features.amx_tile && m.features.avx512_fp16 && m.hypervisor);
    assert_eq!(class(&m, CoreKind::Uniform).l3_bytes, Some(300 * MIB));
    assert_eq!(m.memory_bytes, Some(131981020 * KIB));
}

#[test]
fn this_build_machine_real_capture_zen3() {
    let m = lin("build-machine-epyc-zen3");
    assert_eq!((m.vendor.as_str(), m.model.as_str()), ("AuthenticAMD", "AMD EPYC"));
    assert_eq!(m.microarchitecture, Microarch::Zen3);
    assert_eq!(m.x86_signature.map(|s| (s.family, s.model)), Some((25, 1)));
    assert_eq!((m.logical_cores, m.physical_cores), (2, Some(2)));
    let u = class(&m, CoreKind::Uniform);
    assert_eq!((u.l1d_bytes, u.l2_bytes, u.l3_bytes), (Some(32 * KIB), Some(512 * KIB), Some(32 * MIB)));
    let f = &m.features;
    assert!(f.avx2 && f.fma && f.f16c && !f.avx512f && !f.amx_tile);
    assert!(m.hypervisor);
    assert_eq!(m.memory_bytes, Some(24683656 * KIB));
    assert_eq!(atlas::lookup_machine(&m).map(|r| r.microarchitecture), Some(Microarch::Zen3));
    let k = kernel_choices(&report(m));
    assert_eq!(k[2].kernel, "scalar/vector int8 fallback");
}

#[test]
fn arm_big_little_board() {
    let m = lin("arm-rk3588");
    assert_eq!(m.vendor, "ARM");
    assert_eq!(m.model, "ARM Cortex-A76 + Cortex-A55");
    assert_eq!(m.microarchitecture, Microarch::CortexA76);
    assert_eq!(m.arm_id.map(|a| (a.implementer, a.part)), Some((0x41, 0xd0b)));
    let (p, e) = (class(&m, CoreKind::Performance), class(&m, CoreKind::Efficiency));
    assert_eq!((p.cpu_list.as_deref(), p.capacity, p.physical_cores), (Some("4-7"), Some(1024), Some(4)));
    assert_eq!((e.cpu_list.as_deref(), e.capacity, e.physical_cores), (Some("0-3"), Some(530), Some(4)));
    assert_eq!((p.microarchitecture, e.microarchitecture), (Some(Microarch::CortexA76), Some(Microarch::CortexA55)));
    assert_eq!((p.l1d_bytes, p.l2_bytes, p.l3_bytes), (Some(64 * KIB), Some(512 * KIB), Some(3 * MIB)));
    assert_eq!((e.l1d_bytes, e.l2_bytes), (Some(32 * KIB), Some(128 * KIB)));
    assert!(m.features.neon && m.features.dotprod && m.features.fp16 && !m.features.i8mm && !m.features.sme);
    assert_eq!(m.nominal_clock_mhz, Some(1800.0)); // cpufreq of the first online CPU (an A55)
    assert_eq!(m.memory_bytes, Some(16099924 * KIB));
    assert!(atlas::lookup_machine(&m).is_none());
    assert_eq!(
        kernels(m),
        vec![
            ("fp32", "neon-fp32".to_string()),
            ("bf16", "fp32 vector path".to_string()),
            ("int8", "neon-dotprod (SDOT/UDOT)".to_string()),
            ("fp16", "neon-fp16 (FMLA .8h)".to_string()),
        ]
    );
}

/// A small xorshift generator, so the garbage is the same on every run.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Text built from fragments parsers look for, mixed with junk.
    fn text(&mut self, len: usize) -> String {
        const BITS: &[&str] = &[
            ":",
            "\n",
            " ",
            "\t",
            "0x",
            "-",
            ",",
            "K",
            "M",
            "G",
            "kB",
            "0",
            "1",
            "9",
            "99999999999999999999",
            "processor",
            "flags",
            "Features",
            "CPU part",
            "CPU implementer",
            "vendor_id",
            "GenuineIntel",
            "AuthenticAMD",
            "cpu family",
            "model",
            "MemTotal",
            "hw.perflevel0.",
            "hw.perflevel9.",
            "name",
            "physicalcpu",
            "l2cachesize",
            "hw.nperflevels",
            "machdep.cpu.brand_string",
            "Apple M4",
            "Apple M",
            "hw.optional.arm.FEAT_SME",
            "sme_max_svl_b",
            "hw.memsize",
            "siblings",
            "cpu cores",
            "é",
            "\u{0}",
        ];
        (0..len).map(|_| BITS[(self.next() % BITS.len() as u64) as usize]).collect()
    }
}

#[test]
fn garbage_in_gives_defaults_not_panics() {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let t = noise.text(60);
        let _ = macos::parse_sysctl(&t);
        let _ = linux::parse_cpuinfo_blocks(&t);
        let _ = linux::parse_cpulist(&t);
        let _ = linux::parse_cache_size(&t);
        let _ = linux::parse_meminfo_total(&t);
        let _ = tessera_hw::parse_cpuinfo(&t, "x".into(), 1);
    }
    // Nothing at all.
    let m = macos::parse_sysctl("");
    assert_eq!((m.model.as_str(), m.logical_cores, m.memory_bytes), ("unknown", 0, None));
    assert!(m.core_classes.is_empty() && m.neural_engine.is_none());
    // A sysfs tree full of garbage.
    let root = std::env::temp_dir().join(format!("tessera-hw-garbage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let put = |rel: &str, v: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    put(
        "proc/cpuinfo",
        b"processor : zero\nvendor_id : GenuineIntel\ncpu family : six\nCPU part : 0xq\nsiblings : 0\n",
    );
    put("proc/meminfo", b"MemTotal: -5 kB\n");
    put("sys/devices/system/cpu/online", b"9-3,zz,1");
    put("sys/devices/system/cpu/possible", b"\xff\xfe");
    put("sys/devices/system/cpu/cpu1/cpu_capacity", b"huge");
    put("sys/devices/system/cpu/cpu1/topology/thread_siblings_list", b"");
    put("sys/devices/system/cpu/cpu1/cache/index0/level", b"one");
    put("sys/devices/system/cpu/cpu1/cache/index0/size", b"lots");
    put("sys/devices/cpu_core/cpus", b"0-99999999");
    put("sys/devices/cpu_atom/cpus", b"-");
    put("proc/sys/abi/sme_default_vector_length", b"4294967295");
    let m = linux::read_machine(&root);
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!((m.vendor.as_str(), m.logical_cores, m.memory_bytes), ("GenuineIntel", 1, None));
    assert_eq!(m.microarchitecture, Microarch::Unknown);
    assert_eq!(m.core_classes.len(), 1);
    assert_eq!(m.core_classes[0].l1d_bytes, None);
    // An empty directory: an unknown machine with no classes.
    let m = linux::read_machine(Path::new("/nonexistent/tessera/root"));
    assert_eq!((m.model.as_str(), m.logical_cores), ("unknown", 0));
    assert!(m.core_classes.is_empty());
    assert!(kernel_choices(&report(m)).len() == 4);
}

#[test]
fn calibration_round_trip_in_a_temp_dir() {
    let dir = std::env::temp_dir().join(format!("tessera-hw-cal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The Alder Lake laptop is not in the atlas: peaks come from its calibration.
    let m = lin("intel-i7-1260p");
    let key = calibration::machine_key(&m);
    assert!(key.starts_with("12th Gen Intel(R) Core(TM) i7-1260P|16 cpus|features "), "{key}");
    assert_eq!(calibration::expected_peaks_in(&report(m.clone()), Some(&dir)).source, PeakSource::Unknown);
    let cal = Calibration {
        machine_key: key.clone(),
        measured: MeasuredPeaks { fp32: Some(512.5), bf16: None, fp16: None, int8: None },
        when: 1_790_000_000,
        tool_version: "0.1.0".into(),
        threads: 16,
        method: "fp32 GEMM 512^3".into(),
    };
    let path = calibration::store(&cal, &dir).unwrap();
    assert_eq!(path, calibration::calibration_path(&dir, &key));
    assert_eq!(calibration::load(&dir, &key).map(|(c, _)| c), Some(cal.clone()));
    let peaks = calibration::expected_peaks_in(&report(m.clone()), Some(&dir));
    assert_eq!(peaks.source, PeakSource::Calibrated(path.clone()));
    assert_eq!((peaks.fp32, peaks.bf16), (Some(512.5), None));
    // Another machine does not see it; a corrupt file reads as none.
    let other = lin("arm-rk3588");
    assert!(calibration::load(&dir, &calibration::machine_key(&other)).is_none());
    std::fs::write(&path, "{ not json").unwrap();
    assert!(calibration::load(&dir, &key).is_none());
    let _ = std::fs::remove_dir_all(&dir);
    // Cache directory: TESSERA_CACHE_DIR, else XDG_CACHE_HOME/tessera, else ~/.cache/tessera.
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let d = calibration::cache_dir_from(env(&[("TESSERA_CACHE_DIR", "/c"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]));
    assert_eq!(d, Some(PathBuf::from("/c")));
    let d = calibration::cache_dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]));
    assert_eq!(d, Some(PathBuf::from("/x/tessera")));
    let d = calibration::cache_dir_from(env(&[("XDG_CACHE_HOME", " "), ("HOME", "/h")]));
    assert_eq!(d, Some(PathBuf::from("/h/.cache/tessera")));
    assert_eq!(calibration::cache_dir_from(env(&[])), None);
}

#[test]
fn reports_serialize_with_typed_fields() {
    let r = report(lin("ci-xeon-emr-2cpu"));
    let v = serde_json::to_value(&r).unwrap();
    let m = &v["machine"];
    assert_eq!(m["microarchitecture"], "Emerald Rapids");
    assert_eq!(m["features"]["amx_tile"], true);
    assert_eq!(m["features"]["avx512_fp16"], true);
    assert_eq!(m["core_classes"][0]["kind"], "uniform");
    assert_eq!(m["gpus_note"], GPUS_NOTE);
    let p = serde_json::to_value(calibration::expected_peaks_in(&r, None)).unwrap();
    assert_eq!(p["source"]["kind"], "atlas");
}
