//! `tessera detect [--json]`: the machine report (identity, cores and
//! caches, SIMD and matrix features, AMX status, memory, GPUs, Neural
//! Engine, power sensors), the chip atlas row it matches (or the
//! calibration it falls back to), expected peaks with their source, and
//! the kernel chosen for each precision with the reason.

use serde::Serialize;
use tessera_hw::atlas::{self, ChipRow};
use tessera_hw::calibration::{self, Calibration, PeakSource, Peaks};
use tessera_hw::{CoreClass, CoreKind, KernelChoice, MachineReport};

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn bytes(b: u64) -> String {
    const K: u64 = 1 << 10;
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= K => format!("{} KiB", b / K),
        b => format!("{b} B"),
    }
}

fn opt_bytes(b: Option<u64>) -> String {
    b.map(bytes).unwrap_or_else(|| "?".into())
}

fn gflops(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.0} {unit}")).unwrap_or_else(|| "-".into())
}

fn class_line(c: &CoreClass) -> String {
    let kind = match c.kind {
        CoreKind::Performance => "performance",
        CoreKind::Efficiency => "efficiency",
        CoreKind::Uniform => "all cores",
    };
    let mut s = if c.name == "all" { kind.to_string() } else { format!("{kind} ({})", c.name) };
    if let Some(a) = c.microarchitecture {
        s.push_str(&format!(", {a}"));
    }
    s.push_str(&format!(
        ": {} logical cpus{}, {} cores",
        c.logical_cpus,
        c.cpu_list.as_ref().map(|l| format!(" [{l}]")).unwrap_or_default(),
        c.physical_cores.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
    ));
    if let Some(cap) = c.capacity {
        s.push_str(&format!(", capacity {cap}"));
    }
    s.push_str(&format!("; L1d {}, L2 {}", opt_bytes(c.l1d_bytes), opt_bytes(c.l2_bytes)));
    if let Some(n) = c.cpus_per_l2.filter(|&n| n > 1) {
        s.push_str(&format!(" per {n} cpus"));
    }
    if c.l3_bytes.is_some() {
        s.push_str(&format!(", L3 {}", opt_bytes(c.l3_bytes)));
    }
    s
}

/// What `detect` knows beyond the hardware report.
struct Extras {
    row: Option<&'static ChipRow>,
    peaks: Peaks,
    calibration: Option<(Calibration, std::path::PathBuf)>,
    choices: Vec<KernelChoice>,
}

fn extras(report: &MachineReport) -> Extras {
    let cache_dir = calibration::cache_dir();
    Extras {
        row: atlas::lookup(report),
        peaks: calibration::expected_peaks_in(report, cache_dir.as_deref()),
        calibration: cache_dir
            .as_deref()
            .and_then(|d| calibration::load(d, &calibration::machine_key(&report.machine))),
        choices: with_measured_gate(tessera_hw::kernel_choices(report)),
    }
}

/// The feature-based choices, with the avx512-dot bf16 gate applied: where
/// the core's measured `vdpbf16ps` rate does not pay, bf16 products stay on
/// the fp32 vector path, as the provider does.
fn with_measured_gate(mut choices: Vec<KernelChoice>) -> Vec<KernelChoice> {
    for k in choices.iter_mut().filter(|k| k.precision == "bf16" && k.kernel.starts_with("avx512-dot")) {
        if let Some(why) = tessera_kernels::gemm::ukernel::avx512::bf16_refusal() {
            k.kernel = "fp32 vector path".into();
            k.why = format!("{}; but {why}", k.why);
        }
    }
    choices
}

pub fn run(json: bool) -> Result<(), String> {
    let report = tessera_hw::detect();
    let x = extras(&report);
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a MachineReport,
            atlas_row: Option<&'a ChipRow>,
            expected_peaks: &'a Peaks,
            calibration: Option<&'a Calibration>,
            kernel_choices: &'a [KernelChoice],
        }
        let out = Out {
            report: &report,
            atlas_row: x.row,
            expected_peaks: &x.peaks,
            calibration: x.calibration.as_ref().map(|(c, _)| c),
            kernel_choices: &x.choices,
        };
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        return Ok(());
    }
    print_text(&report, &x);
    Ok(())
}

fn print_text(report: &MachineReport, x: &Extras) {
    let m = &report.machine;
    let cpu = &report.cpu;
    println!("cpu        {} ({}, {}, {})", m.model, m.vendor, cpu.arch, report.os);
    let mut ident = vec![m.microarchitecture.to_string()];
    if let Some(s) = m.x86_signature {
        ident.push(format!("family {} model {} stepping {}", s.family, s.model, s.stepping));
    }
    if let Some(a) = m.arm_id {
        ident.push(format!("implementer {:#x} part {:#x}", a.implementer, a.part));
    }
    if let Some(hw) = &m.hw_model {
        ident.push(hw.clone());
    }
    if m.hypervisor {
        ident.push("under a hypervisor".into());
    }
    println!("           {}", ident.join("; "));
    println!(
        "cores      {} logical ({} usable by this process), {} physical{}",
        m.logical_cores,
        cpu.logical_cores,
        m.physical_cores.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        m.sockets.map(|s| format!(", {s} socket{}", if s == 1 { "" } else { "s" })).unwrap_or_default()
    );
    for c in &m.core_classes {
        println!("           {}", class_line(c));
    }
    println!(
        "memory     {}{}",
        opt_bytes(m.memory_bytes),
        if m.unified_memory { ", unified (shared by CPU and GPU)" } else { "" }
    );
    if let Some(mhz) = m.nominal_clock_mhz {
        println!("clock      {mhz:.0} MHz (from {})", m.nominal_clock_source.as_deref().unwrap_or("?"));
    }
    let present = m.features.present();
    println!("features   {}", if present.is_empty() { "none of interest".to_string() } else { present.join(" ") });
    if m.features.sme {
        match (m.features.sme_vector_bits, &m.features.sme_vector_bits_source) {
            (Some(bits), Some(src)) => println!("sme        streaming vector length {bits} bits ({src})"),
            _ => println!("sme        streaming vector length unknown"),
        }
    }
    match &report.x86 {
        Some(xf) => {
            let simd = [
                ("avx2", xf.avx2),
                ("fma", xf.fma),
                ("f16c", xf.f16c),
                ("avx512f", xf.avx512f),
                ("avx512bw", xf.avx512bw),
                ("avx512vl", xf.avx512vl),
                ("avx512_vnni", xf.avx512_vnni),
                ("avx512_bf16", xf.avx512_bf16),
                ("avx512_fp16", xf.avx512_fp16),
            ];
            let has: Vec<&str> = simd.iter().filter(|(_, b)| *b).map(|(n, _)| *n).collect();
            let lacks: Vec<&str> = simd.iter().filter(|(_, b)| !*b).map(|(n, _)| *n).collect();
            println!(
                "runtime    {}{}",
                if has.is_empty() { "none".to_string() } else { has.join(" ") },
                if lacks.is_empty() { String::new() } else { format!("  (not: {})", lacks.join(" ")) }
            );
            let a = &xf.amx;
            println!(
                "amx        usable: {}{}",
                yes_no(a.usable),
                a.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
            );
            println!(
                "           tile {}, bf16 {}, int8 {}, fp16 {}; XCR0 tile state {}; Linux permission {}",
                yes_no(a.tile),
                yes_no(a.bf16),
                yes_no(a.int8),
                yes_no(a.fp16),
                if a.os_enabled { "on" } else { "off" },
                if a.permission_granted { "granted" } else { "not granted" }
            );
            if let Some(p) = a.palette {
                println!(
                    "           palette 1: {} tiles x {} rows x {} B/row ({} B/tile, {} B total); tmul maxk {}, maxn {}",
                    p.max_names,
                    p.max_rows,
                    p.bytes_per_row,
                    p.bytes_per_tile,
                    p.total_tile_bytes,
                    p.tmul_maxk,
                    p.tmul_maxn
                );
            }
        }
        None => println!("amx        usable: no ({})", tessera_hw::amx().reason.as_deref().unwrap_or("")),
    }
    if m.gpus.is_empty() {
        println!("gpu        none listed ({})", m.gpus_note);
    } else {
        for g in &m.gpus {
            println!("gpu        {} ({}), memory {}", g.name, g.vendor, opt_bytes(g.memory_bytes));
        }
    }
    match &m.neural_engine {
        Some(ne) => println!(
            "neural eng yes: {} cores, {} ({})",
            ne.cores.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
            ne.tops.map(|t| format!("{t} TOPS")).unwrap_or_else(|| "TOPS not published".into()),
            ne.source
        ),
        None => println!("neural eng none"),
    }
    if m.power_sensors.is_empty() {
        println!("power      none found (checked powercap/intel-rapl*, hwmon/*/power*_input, power_supply)");
    } else {
        println!("power      {}", m.power_sensors.join("\n           "));
    }
    if !report.user_disabled.is_empty() {
        println!("disabled   {} (by the user)", report.user_disabled.join(", "));
    }
    match x.row {
        Some(r) => {
            println!("atlas      {}", r.name);
            if !r.is_apple() && !m.model.contains(r.brand) {
                // A generic brand string ("Intel(R) Xeon(R) Processor" in a VM): the row
                // describes the generation's flagship; the peaks below are scaled to this machine.
                println!(
                    "           matched by microarchitecture ({}): cores, bandwidth and clock below are the flagship SKU's; \
                     the peaks are scaled to this machine",
                    r.microarchitecture
                );
            }
            let mut facts = vec![if r.efficiency_cores > 0 {
                format!("{}P+{}E cores", r.performance_cores, r.efficiency_cores)
            } else {
                format!("{} cores", r.performance_cores)
            }];
            if !r.gpu_cores.is_empty() {
                let g: Vec<String> = r.gpu_cores.iter().map(|c| c.to_string()).collect();
                facts.push(format!("{}-core GPU", g.join(" or ")));
            }
            if let Some(t) = r.neural_engine_tops {
                facts.push(format!("Neural Engine {t} TOPS"));
            }
            if let Some(bw) = r.memory_bandwidth_gb_s {
                facts.push(format!("{bw} GB/s"));
            }
            if let Some(ghz) = r.clock_ghz {
                facts.push(format!("{ghz} GHz base"));
            }
            facts.push(r.matrix_unit.to_string());
            println!("           {}", facts.join(", "));
            println!("           source: {}", r.source);
        }
        None => match &x.calibration {
            Some((_, path)) => println!("atlas      not in the atlas; calibrated numbers from {}", path.display()),
            None => println!("atlas      not in the atlas; run `tessera calibrate` to measure this machine's peaks"),
        },
    }
    let p = &x.peaks;
    let source = match &p.source {
        PeakSource::Atlas(name) => format!("atlas row '{name}'"),
        PeakSource::Calibrated(path) => format!("calibration {}", path.display()),
        PeakSource::Unknown => "unknown".to_string(),
    };
    println!(
        "peaks      fp32 {}, bf16 {}, fp16 {}, int8 {}  (source: {source})",
        gflops(p.fp32, "GFLOP/s"),
        gflops(p.bf16, "GFLOP/s"),
        gflops(p.fp16, "GFLOP/s"),
        gflops(p.int8, "GOP/s")
    );
    println!("           {}", p.note);
    if let (Some((c, path)), false) = (&x.calibration, matches!(p.source, PeakSource::Calibrated(_))) {
        println!(
            "           calibrated here too ({}): fp32 {}, bf16 {}, int8 {}",
            path.display(),
            gflops(c.measured.fp32, "GFLOP/s"),
            gflops(c.measured.bf16, "GFLOP/s"),
            gflops(c.measured.int8, "GOP/s")
        );
    }
    println!("kernels");
    for k in &x.choices {
        println!("  {:5} {:28} {}", k.precision, k.kernel, k.why);
    }
    // The avx512-dot provider's bf16 gate is a measurement: show it.
    if let Some((bf16, fp32)) = tessera_kernels::gemm::ukernel::avx512::bf16_and_fp32_rates() {
        let verdict = match tessera_kernels::gemm::ukernel::avx512::bf16_refusal() {
            _ if !tessera_kernels::gemm::ukernel::avx512::usable() => "avx512-dot is disabled by the user".to_string(),
            None => "bf16 products may run on avx512-dot".to_string(),
            Some(why) => format!("bf16 products stay off avx512-dot ({why})"),
        };
        println!("  dot rates, one core: vdpbf16ps {bf16:.0} GFLOP/s, fp32 FMA {fp32:.0} GFLOP/s: {verdict}");
    }
}
