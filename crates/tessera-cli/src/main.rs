mod bench_gemm;
mod calibrate;
mod conformance;
mod coreml;
mod detect;
mod doctor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use tessera::demo::Rng;
use tessera::{Session, SessionOptions};
use tessera_core::{DType, Dim, Tensor, ValueInfo};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Run ONNX models on every matrix engine the machine has")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Turn hardware features off, e.g. --disable amx,avx512 (adds to TESSERA_DISABLE).
    #[arg(long, global = true, value_name = "LIST", value_delimiter = ',')]
    disable: Vec<String>,
}

#[derive(Args, Clone, Debug)]
struct ModelArgs {
    /// The .onnx file.
    model: PathBuf,
    /// Value of a symbolic dimension, e.g. --dim batch=1 --dim seq=128.
    #[arg(long = "dim", value_parser = parse_kv::<usize>)]
    dims: Vec<(String, usize)>,
    /// Execution providers: auto, amx, sme, accelerate, coreml (macOS), coreml-interpreter
    /// (the Core ML split, run by the MIL interpreter) or cpu.
    #[arg(long, default_value = "auto")]
    provider: String,
    /// Matrix-product precision: fp32 (accurate, default), bf16, int8 or auto.
    #[arg(long, default_value = "fp32")]
    precision: tessera::Precision,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Skip graph optimizations (for A/B checks).
    #[arg(long)]
    no_optimize: bool,
    /// Seed for generated inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Let idle worker threads sleep during a run instead of polling for
    /// work (less energy, more latency per parallel kernel).
    #[arg(long)]
    no_spin: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a model once; write one NAME.npy per output.
    Run {
        #[command(flatten)]
        m: ModelArgs,
        /// An input from a .npy file: NAME=FILE.npy (others are generated).
        #[arg(long = "input", value_parser = parse_kv::<PathBuf>)]
        inputs: Vec<(String, PathBuf)>,
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
    },
    /// Measure latency percentiles, throughput and planned memory.
    Bench {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 50)]
        iterations: usize,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Time every operator and print where the time went (provider:op).
        #[arg(long)]
        profile: bool,
    },
    /// Inputs, outputs, op histogram, optimizations and node placement.
    Info {
        #[command(flatten)]
        m: ModelArgs,
        /// List every node with its provider and the reason.
        #[arg(long)]
        nodes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Build a small transformer layer in code, check it and benchmark it.
    Demo {
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Convert a model for another runtime: --to coreml writes a Core ML ML Program .mlpackage.
    Convert(coreml::ConvertArgs),
    /// Run a Core ML .mlpackage with Tessera's MIL interpreter (checks a conversion off Apple hardware).
    CoremlRun(coreml::CoremlRunArgs),
    /// Run ONNX backend test cases and model cases, write a per-case table.
    Conformance(conformance::ConformanceArgs),
    /// GFLOP/s of each GEMM kernel per shape, against the tile unit's
    /// measured peak and the fp32 vector path.
    BenchGemm {
        /// Shapes as MxNxK, comma separated (default: 2048^3 and BERT-base shapes).
        #[arg(long, value_delimiter = ',')]
        shapes: Vec<String>,
        /// Thread counts to run, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        threads: Vec<usize>,
        /// Kernels: fp32-vector, amx-bf16, amx-bf16x3, amx-bf16x6, amx-int8, avx512-bf16, avx512-bf16x3,
        /// avx512-bf16x6, avx512-int8, neon-fp32, neon-fp16, neon-i8dot,
        /// sme-fp32, sme-bf16 (default: all; those this CPU lacks say why they are skipped).
        #[arg(long, value_delimiter = ',')]
        kernels: Vec<String>,
        /// Seconds to time each case (at least 3 calls).
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        /// Weights from DRAM: cycle through copies that overflow the caches.
        #[arg(long)]
        cold: bool,
        /// Tile driver blockings to compare, each kc:panels:prefetch[:stream[:grid[:schedule]]] (k-blocks per
        /// K chunk, 0 = all of K; most A panels per task; microkernel prefetch none, a or ab; how the next
        /// weight panel reaches L2: off, bulk or spread; the task grid, auto or PxR A x B panels per task; how
        /// threads share the grid out, guided (default) or static), comma separated.
        #[arg(long, value_delimiter = ',')]
        tile_blocking: Vec<String>,
        /// Report each case's fastest call instead of the median (noise on a shared machine only adds time).
        #[arg(long)]
        best: bool,
        /// Instead of GEMMs: the bf16 microkernel alone on one thread, operands in L1 or L2, each
        /// prefetch variant, with and without loading C.
        #[arg(long)]
        ukernel_study: bool,
        /// Epilogue for the tile kernels: a bias per column, then this activation (none, relu, gelu_erf,
        /// gelu_tanh, silu); comma separated to compare. Default: no epilogue.
        #[arg(long, value_delimiter = ',')]
        epilogue: Vec<String>,
        /// Pack weights into huge-page mappings (on) or plain heap buffers (off), comma separated to
        /// compare both.
        #[arg(long, value_delimiter = ',', default_value = "on")]
        huge_pages: Vec<String>,
        /// Also time each bf16 tile GEMM's stages apart: packing A alone ("pack-a"), the tile loop over
        /// packed panels without epilogue ("product") and the epilogue alone ("epilogue"); and split the
        /// calls of every tile GEMM (bf16 and int8) by the driver's own time stamps: mean wall time per call
        /// ("in-call"), and per call and thread the microkernel ("in-kloop"), output prefetches
        /// ("in-prefetch"), epilogues ("in-finish"), packing A ("in-pack"), tile sessions ("in-session") and each
        /// thread's wait for its first task and after its last ("in-wait-first", "in-wait-last").
        #[arg(long)]
        stages: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run every kernel and provider this machine offers on small cases
    /// against the portable reference: pass/fail, speed, and why the rest
    /// is unavailable. Exit status 1 if an available path fails.
    Doctor {
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Report the machine (CPU, cores and caches, SIMD/matrix features, AMX status, memory, Neural Engine,
    /// power sensors), its chip atlas row, expected peaks and the kernel chosen per precision.
    Detect {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure this machine's peak throughput per precision (under 2 s) and cache it for chips not in the atlas.
    Calibrate {
        /// Threads to measure with (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
}

fn parse_kv<T: std::str::FromStr>(s: &str) -> Result<(String, T), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got '{s}'"))?;
    let v = v.parse::<T>().map_err(|_| format!("bad value in '{s}'"))?;
    Ok((k.to_string(), v))
}

fn main() {
    // A panic is a bug; report it on one line rather than with a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error (please report): {msg}{loc}");
    }));
    let cli = Cli::parse();
    for name in cli.disable.iter().flat_map(|l| tessera_hw::parse_disable_list(l)) {
        if !tessera_hw::KNOWN_SWITCHES.contains(&name.as_str()) {
            eprintln!(
                "warning: --disable {name}: no part of tessera looks at '{name}' (known: {})",
                tessera_hw::KNOWN_SWITCHES.join(", ")
            );
        }
        tessera_hw::set_disabled(&name);
    }
    let result = match cli.cmd {
        Cmd::Run { m, inputs, output_dir } => cmd_run(&m, &inputs, &output_dir),
        Cmd::Bench { m, warmup, iterations, json, profile } => cmd_bench(&m, warmup, iterations, json, profile),
        Cmd::Info { m, nodes, json } => cmd_info(&m, nodes, json),
        Cmd::Demo { threads } => cmd_demo(threads),
        Cmd::Convert(a) => coreml::convert(&a),
        Cmd::CoremlRun(a) => coreml::coreml_run(&a),
        Cmd::Conformance(a) => conformance::run(&a).map(|code| std::process::exit(code)),
        Cmd::Doctor { threads, json } => doctor::run(threads, json).map(|code| std::process::exit(code)),
        Cmd::Detect { json } => detect::run(json),
        Cmd::Calibrate { threads, json } => calibrate::run(threads, json),
        Cmd::BenchGemm { ukernel_study: true, seconds, .. } => bench_gemm::ukernel_study(seconds),
        Cmd::BenchGemm {
            shapes,
            threads,
            kernels,
            seconds,
            cold,
            tile_blocking,
            best,
            epilogue,
            huge_pages,
            stages,
            json,
            ..
        } => {
            let tile = bench_gemm::TileCases {
                blocking: &tile_blocking,
                epilogue: &epilogue,
                huge_pages: &huge_pages,
                stages,
            };
            cmd_bench_gemm(&shapes, threads, kernels, seconds, cold, tile, best, json)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn options(m: &ModelArgs) -> SessionOptions {
    SessionOptions {
        threads: m.threads,
        dims: m.dims.iter().cloned().collect(),
        optimize: !m.no_optimize,
        providers: vec![m.provider.clone()],
        precision: m.precision,
        disable: Vec::new(),
        spin: !m.no_spin,
    }
}

fn open(m: &ModelArgs) -> Result<Session, String> {
    Session::from_file(&m.model, options(m)).map_err(|e| format!("{}: {e}", m.model.display()))
}

/// Seeded random data of the declared shape. Integer inputs are small
/// non-negative numbers (valid token ids for any vocabulary of 64 or more);
/// inputs named like masks are ones and token types zeros.
fn generate_input(vi: &ValueInfo, dims: &HashMap<String, usize>, rng: &mut Rng) -> Result<Tensor, String> {
    let shape: Vec<usize> = vi
        .shape
        .as_ref()
        .ok_or_else(|| format!("input '{}' has no declared shape; pass it with --input", vi.name))?
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Ok(*k),
            Dim::Sym(s) => dims.get(s).copied().ok_or_else(|| format!("input '{}' needs --dim {s}=VALUE", vi.name)),
            Dim::Unknown => Err(format!("input '{}' has an unnamed dynamic dimension; pass it with --input", vi.name)),
        })
        .collect::<Result<_, _>>()?;
    let n = tessera_core::tensor::checked_numel(&shape).map_err(|e| e.to_string())?;
    let dtype = vi.dtype.unwrap_or(DType::F32);
    let lname = vi.name.to_lowercase();
    let vals: Vec<f64> = if dtype.is_float() {
        (0..n).map(|_| rng.uniform() as f64).collect()
    } else if lname.contains("mask") {
        vec![1.0; n]
    } else if lname.contains("type") || dtype == DType::Bool {
        (0..n).map(|_| if dtype == DType::Bool { (rng.next_u64() & 1) as f64 } else { 0.0 }).collect()
    } else {
        (0..n).map(|_| (rng.next_u64() % 64) as f64).collect()
    };
    Tensor::from_f64(dtype, &shape, &vals).map_err(|e| e.to_string())
}

fn make_inputs(s: &Session, m: &ModelArgs, given: &[(String, PathBuf)]) -> Result<Vec<(String, Tensor)>, String> {
    let dims: HashMap<String, usize> = m.dims.iter().cloned().collect();
    let mut rng = Rng::new(m.seed);
    let mut out = Vec::new();
    for (name, path) in given {
        let t = tessera::npy::read_npy(path).map_err(|e| e.to_string())?;
        out.push((name.clone(), t));
    }
    for vi in s.inputs() {
        if !given.iter().any(|(n, _)| n == &vi.name) {
            out.push((vi.name.clone(), generate_input(vi, &dims, &mut rng)?));
        }
    }
    Ok(out)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' }).collect()
}

fn cmd_run(m: &ModelArgs, given: &[(String, PathBuf)], out_dir: &Path) -> Result<(), String> {
    let s = open(m)?;
    let inputs = make_inputs(&s, m, given)?;
    let outs = s.run(inputs).map_err(|e| format!("{}: {e}", m.model.display()))?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for (name, t) in outs {
        let p = out_dir.join(format!("{}.npy", sanitize(&name)));
        tessera::npy::write_npy(&p, &t).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("{name}: {} {:?} -> {}", t.dtype(), t.shape(), p.display());
    }
    Ok(())
}

struct BenchResult {
    latencies_ms: Vec<f64>,
    total_s: f64,
}

impl BenchResult {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

fn time_runs(
    s: &Session,
    inputs: &[(String, Tensor)],
    warmup: usize,
    iterations: usize,
    bar: bool,
) -> Result<BenchResult, String> {
    let pb =
        if bar { indicatif::ProgressBar::new((warmup + iterations) as u64) } else { indicatif::ProgressBar::hidden() };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:8} [{bar:40}] {pos}/{len} {elapsed}").expect("valid template"),
    );
    pb.set_message("warmup");
    for _ in 0..warmup {
        s.run(inputs.to_vec()).map_err(|e| e.to_string())?;
        pb.inc(1);
    }
    pb.set_message("measure");
    let mut lat = Vec::with_capacity(iterations);
    let t0 = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        s.run(inputs.to_vec()).map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        pb.inc(1);
    }
    let total_s = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(BenchResult { latencies_ms: lat, total_s })
}

fn bound_dims(s: &Session, inputs: &[(String, Tensor)]) -> HashMap<String, usize> {
    let mut dims = HashMap::new();
    for vi in s.inputs() {
        if let (Some(shape), Some((_, t))) = (&vi.shape, inputs.iter().find(|(n, _)| n == &vi.name)) {
            for (d, &v) in shape.iter().zip(t.shape()) {
                if let Dim::Sym(name) = d {
                    dims.insert(name.clone(), v);
                }
            }
        }
    }
    dims
}

fn cmd_bench(m: &ModelArgs, warmup: usize, iterations: usize, json: bool, profile: bool) -> Result<(), String> {
    let s = open(m)?;
    let inputs = make_inputs(&s, m, &[])?;
    let plan = s.memory_plan(&bound_dims(&s, &inputs)).map_err(|e| e.to_string())?;
    // On an AMX machine: the tile unit's rate on data just before and after
    // the timed runs, which tells the phase a shared host's tile unit ran
    // in (its rate on data swings 2x and more); about 10-25 ms each.
    let tile_probe = || {
        tessera_hw::amx_enabled().is_ok().then(|| {
            tessera_kernels::gemm::ukernel::amx::probe_peak_data(
                tessera_kernels::gemm::ukernel::DotKind::Bf16,
                bench_gemm::case_probe_iterations(tessera_kernels::gemm::TileIsa::Amx),
            ) / 1e9
        })
    };
    let probe_before = tile_probe();
    let r = time_runs(&s, &inputs, warmup, iterations.max(1), !json)?;
    let tile_probes = probe_before.zip(tile_probe());
    if let Some((before, after)) = tile_probes {
        eprintln!(
            "tile unit on random operand tiles, one core: {before:.0} GFLOP/s before the timed runs, {after:.0} after"
        );
    }
    if profile {
        // Timed separately so the per-op clock reads do not skew the latencies above.
        tessera_providers::profile::set_enabled(true);
        let _ = tessera_kernels::gemm::stage_ticks_since_last(true);
        let _ = tessera_kernels::attention::stage_ticks_since_last(true);
        let (start, t0) = (std::time::Instant::now(), tessera_kernels::gemm::tick_count());
        time_runs(&s, &inputs, 0, iterations.max(1), false)?;
        let (secs, ticks) = (start.elapsed().as_secs_f64(), tessera_kernels::gemm::tick_count().saturating_sub(t0));
        let stages = tessera_kernels::gemm::stage_ticks_since_last(false);
        let attention_stages = tessera_kernels::attention::stage_ticks_since_last(false);
        tessera_providers::profile::set_enabled(false);
        let rows = tessera_providers::profile::take();
        let total: f64 = rows.iter().map(|r| r.2).sum();
        eprintln!("{:<32} {:>7} {:>10} {:>6}", "provider:op", "calls", "ms/run", "%");
        for (k, n, secs) in rows {
            let per_run = secs * 1e3 / iterations.max(1) as f64;
            eprintln!(
                "{k:<32} {:>7} {per_run:>10.3} {:>6.1}",
                n / iterations.max(1) as u64,
                100.0 * secs / total.max(1e-12)
            );
        }
        // The tile driver's own time stamps (microkernel, epilogue, ...),
        // summed over threads, as milliseconds per run and thread.
        if stages.iter().any(|&t| t > 0) {
            let ms = |t: u64| t as f64 / ticks.max(1) as f64 * secs * 1e3 / (iterations.max(1) * s.threads()) as f64;
            eprintln!(
                "tile driver, ms per run and thread: microkernel {:.3}, epilogue {:.3}, output prefetch {:.3}, packing A {:.3}, tile sessions {:.3}, waiting for a first task {:.3}, after the last {:.3}",
                ms(stages[0]),
                ms(stages[2]),
                ms(stages[1]),
                ms(stages[3]),
                ms(stages[4]),
                ms(stages[5]),
                ms(stages[6])
            );
        }
        // Attention on tiles, split likewise (summed over its heads).
        if attention_stages.iter().any(|&t| t > 0) {
            let ms = |t: u64| t as f64 / ticks.max(1) as f64 * secs * 1e3 / (iterations.max(1) * s.threads()) as f64;
            let names = [
                "packing K and V",
                "packing Q",
                "score products",
                "score rows",
                "softmax",
                "value products",
                "output rows",
                "tile sessions",
            ];
            let parts: Vec<String> =
                names.iter().zip(attention_stages).map(|(n, t)| format!("{n} {:.3}", ms(t))).collect();
            eprintln!("attention on tiles, ms per run and thread: {}", parts.join(", "));
        }
    }
    let throughput = r.latencies_ms.len() as f64 / r.total_s;
    if json {
        let o = serde_json::json!({
            "model": m.model.display().to_string(),
            "threads": s.threads(),
            "iterations": r.latencies_ms.len(),
            "p50_ms": r.pct(50.0),
            "p90_ms": r.pct(90.0),
            "p99_ms": r.pct(99.0),
            "mean_ms": r.latencies_ms.iter().sum::<f64>() / r.latencies_ms.len() as f64,
            "throughput_per_s": throughput,
            "peak_memory_bytes": plan.peak_bytes,
            "unplanned_memory_bytes": plan.unplanned_bytes,
            "weight_bytes": plan.weight_bytes,
            "dynamic_values": plan.dynamic_values.len(),
            // [before, after] the timed runs, GFLOP/s on one core; null
            // without AMX.
            "tile_probe_gflops": tile_probes.map(|(b, a)| [b, a]),
        });
        println!("{o}");
    } else {
        println!("model        {}", m.model.display());
        println!("threads      {}", s.threads());
        println!("iterations   {} (after {} warmup)", r.latencies_ms.len(), warmup);
        println!("latency      p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms", r.pct(50.0), r.pct(90.0), r.pct(99.0));
        println!("throughput   {throughput:.2} inferences/s");
        println!(
            "memory       planned activation peak {} (vs {} without reuse), weights {}{}",
            human(plan.peak_bytes),
            human(plan.unplanned_bytes),
            human(plan.weight_bytes),
            if plan.dynamic_values.is_empty() {
                String::new()
            } else {
                format!(", {} data-dependent values outside the plan", plan.dynamic_values.len())
            }
        );
    }
    Ok(())
}

fn human(b: usize) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn cmd_info(m: &ModelArgs, nodes: bool, json: bool) -> Result<(), String> {
    let model = tessera_onnx::load_model(&m.model).map_err(|e| format!("{}: {e}", m.model.display()))?;
    let hist_before = model.graph.op_histogram();
    let s = open(m)?;
    let assignments = s.assignments();
    let dims: HashMap<String, usize> = m.dims.iter().cloned().collect();
    let plan = s.memory_plan(&dims).ok();
    if json {
        let o = serde_json::json!({
            "inputs": s.inputs().iter().map(|v| serde_json::json!({"name": v.name, "dtype": v.dtype.map(|d| d.name()), "shape": v.shape_string()})).collect::<Vec<_>>(),
            "outputs": s.outputs().iter().map(|v| serde_json::json!({"name": v.name, "dtype": v.dtype.map(|d| d.name()), "shape": v.shape_string()})).collect::<Vec<_>>(),
            "ops_in_file": hist_before,
            "ops_after_optimization": s.graph().op_histogram(),
            "optimizations": s.pass_report().to_string(),
            "nodes": assignments,
            "partitions": s.partition_count(),
            "providers": s.provider_names(),
            "providers_not_used": s.skipped_providers(),
            "precision": m.precision.to_string(),
            "planned_peak_bytes": plan.as_ref().map(|p| p.peak_bytes),
            "device_plans": s.device_plans().iter().map(|(i, prov, p)| serde_json::json!({
                "partition": i, "provider": prov, "source": p.source, "by_device": p.by_device(), "ops": p.ops,
            })).collect::<Vec<_>>(),
        });
        println!("{o}");
        return Ok(());
    }
    println!(
        "model: {} (ir {}, producer '{}', opsets {:?})",
        m.model.display(),
        model.ir_version,
        model.producer,
        model.graph.opsets
    );
    println!("providers: {} (precision {})", s.provider_names().join(", "), m.precision);
    for why in s.skipped_providers() {
        println!("  not used: {why}");
    }
    println!("inputs:");
    for v in s.inputs() {
        println!("  {:30} {:5} {}", v.name, v.dtype.map(|d| d.name()).unwrap_or("?"), v.shape_string());
    }
    println!("outputs:");
    for v in s.outputs() {
        let inferred = s.graph().value_info.get(&v.name).filter(|i| i.shape.is_some()).unwrap_or(v);
        println!("  {:30} {:5} {}", v.name, v.dtype.map(|d| d.name()).unwrap_or("?"), inferred.shape_string());
    }
    println!("ops in file ({} nodes): {}", model.graph.nodes.len(), fmt_hist(&hist_before));
    println!("optimizer: {}", s.pass_report());
    println!("ops to run ({} nodes): {}", s.graph().nodes.len(), fmt_hist(&s.graph().op_histogram()));
    let mut by: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for a in &assignments {
        *by.entry((a.provider.clone(), a.reason.clone())).or_default() += 1;
    }
    println!("placement ({} partition{}):", s.partition_count(), if s.partition_count() == 1 { "" } else { "s" });
    for ((p, r), c) in by {
        println!("  {p:6} {c:5} nodes  ({r})");
    }
    for (i, prov, plan) in s.device_plans() {
        println!(
            "  partition {i} ({prov}): {} operations placed by {}: {}",
            plan.ops.len(),
            plan.source,
            plan.counts_text()
        );
        for (dev, _) in plan.by_device() {
            let types: Vec<String> = plan.op_types_on(&dev).iter().take(12).map(|(t, c)| format!("{t} {c}")).collect();
            println!("    {dev}: {}", types.join(", "));
        }
    }
    if let Some(p) = plan {
        println!(
            "memory plan: activation peak {} (vs {} without reuse), weights {}{}",
            human(p.peak_bytes),
            human(p.unplanned_bytes),
            human(p.weight_bytes),
            if p.dynamic_values.is_empty() {
                String::new()
            } else {
                format!("; {} values of unknown size (give --dim for symbolic dims)", p.dynamic_values.len())
            }
        );
    }
    if nodes {
        for a in &assignments {
            println!("  {:40} {:20} -> {:6} {}", a.node, a.op_type, a.provider, a.reason);
        }
    }
    Ok(())
}

fn fmt_hist(h: &[(String, usize)]) -> String {
    h.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" ")
}

fn cmd_demo(threads: usize) -> Result<(), String> {
    let cpu = tessera_hw::detect_cpu();
    println!(
        "Tessera demo: a transformer encoder layer (hidden {}, {} heads, FFN {}) built in code",
        tessera::demo::HIDDEN,
        tessera::demo::HEADS,
        tessera::demo::FFN
    );
    println!("machine   {} ({}), {} logical cores", cpu.model, cpu.arch, cpu.logical_cores);
    println!(
        "features  {}",
        if cpu.features.is_empty() { "none of interest".to_string() } else { cpu.features.join(" ") }
    );
    let graph = tessera::demo::encoder_layer(7).map_err(|e| e.to_string())?;
    let (batch, seq) = (2usize, 64usize);
    let dims: HashMap<String, usize> = [("batch".to_string(), batch), ("seq".to_string(), seq)].into_iter().collect();
    let opts = SessionOptions { threads, dims: dims.clone(), ..Default::default() };
    let fast = Session::from_graph(graph.clone(), opts.clone()).map_err(|e| e.to_string())?;
    let reference =
        Session::from_graph(graph, SessionOptions { optimize: false, ..opts }).map_err(|e| e.to_string())?;
    println!("optimizer {}", fast.pass_report());
    println!(
        "nodes     {} in the file's form, {} after optimization, provider: {}",
        reference.graph().nodes.len(),
        fast.graph().nodes.len(),
        fast.assignments().first().map(|a| a.provider.as_str()).unwrap_or("-")
    );
    let mut rng = Rng::new(1);
    let x = Tensor::from_vec(&[batch, seq, tessera::demo::HIDDEN], rng.vec(batch * seq * tessera::demo::HIDDEN, 1.0))
        .map_err(|e| e.to_string())?;
    let inputs = vec![("x".to_string(), x)];
    let a = fast.run(inputs.clone()).map_err(|e| e.to_string())?;
    let b = reference.run(inputs.clone()).map_err(|e| e.to_string())?;
    let (ya, yb) = (a[0].1.to_f64_vec(), b[0].1.to_f64_vec());
    let max_err = ya.iter().zip(&yb).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    let scale = yb.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let ok = max_err <= 1e-4 * scale.max(1.0) && ya.iter().all(|v| v.is_finite());
    println!(
        "check     optimized vs unfused reference kernels: max abs error {max_err:.2e} (output scale {scale:.2}) -> {}",
        if ok { "PASS" } else { "FAIL" }
    );
    let plan = fast.memory_plan(&dims).map_err(|e| e.to_string())?;
    let r = time_runs(&fast, &inputs, 3, 30, false)?;
    let rr = time_runs(&reference, &inputs, 3, 30, false)?;
    let gflop = 2.0 * (batch * seq) as f64 * (4.0 * 128.0 * 128.0 + 2.0 * 128.0 * 512.0) / 1e9
        + 2.0 * 2.0 * (batch * seq * seq * 128) as f64 / 1e9;
    println!(
        "bench     batch {batch}, seq {seq}, {} threads: p50 {:.3} ms (p90 {:.3}), {:.1} GFLOP/s; unoptimized graph p50 {:.3} ms",
        fast.threads(),
        r.pct(50.0),
        r.pct(90.0),
        gflop / (r.pct(50.0) / 1e3),
        rr.pct(50.0)
    );
    println!(
        "memory    planned activation peak {} (vs {} without reuse), weights {}",
        human(plan.peak_bytes),
        human(plan.unplanned_bytes),
        human(plan.weight_bytes)
    );
    if !ok {
        return Err("demo correctness check failed".into());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cmd_bench_gemm(
    shapes: &[String],
    threads: Vec<usize>,
    kernels: Vec<String>,
    seconds: f64,
    cold: bool,
    tile: bench_gemm::TileCases,
    best: bool,
    json: bool,
) -> Result<(), String> {
    let huge_pages = tile
        .huge_pages
        .iter()
        .map(|s| match s.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(format!("--huge-pages '{other}': want on, off or on,off")),
        })
        .collect::<Result<Vec<bool>, String>>()?;
    let blockings = if tile.blocking.is_empty() {
        vec![tessera_kernels::gemm::TileBlocking::DEFAULT]
    } else {
        tile.blocking.iter().map(|s| tessera_kernels::gemm::TileBlocking::parse(s)).collect::<Result<_, _>>()?
    };
    let epilogues = if tile.epilogue.is_empty() {
        vec![None]
    } else {
        tile.epilogue
            .iter()
            .map(|s| {
                tessera_kernels::gemm::Activation::parse(s)
                    .map(Some)
                    .ok_or_else(|| format!("--epilogue '{s}': want none, relu, gelu_erf, gelu_tanh or silu"))
            })
            .collect::<Result<_, _>>()?
    };
    let shapes = if shapes.is_empty() {
        bench_gemm::DEFAULT_SHAPES.to_vec()
    } else {
        shapes
            .iter()
            .map(|s| {
                let v: Vec<usize> = s
                    .split('x')
                    .map(|d| d.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("bad shape '{s}' (want MxNxK)"))?;
                match v[..] {
                    [m, n, k] if m > 0 && n > 0 && k > 0 && m * n * k <= 1 << 36 => Ok((m, n, k)),
                    _ => Err(format!("bad shape '{s}' (want MxNxK, each > 0)")),
                }
            })
            .collect::<Result<Vec<_>, String>>()?
    };
    let kernels =
        if kernels.is_empty() { bench_gemm::ALL_KERNELS.iter().map(|s| s.to_string()).collect() } else { kernels };
    let opts = bench_gemm::Options {
        shapes,
        threads,
        kernels,
        min_seconds: seconds,
        cold,
        blockings,
        epilogues,
        best,
        huge_pages,
        stages: tile.stages,
    };
    let rows = bench_gemm::run(&opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
    } else {
        bench_gemm::print(&rows);
    }
    Ok(())
}
