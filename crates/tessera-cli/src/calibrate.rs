//! `tessera calibrate`: measures this machine's throughput per precision
//! in under two seconds and stores it in the calibration cache
//! (`tessera_hw::calibration`), where `tessera detect` and expected-peak
//! lookups find it for chips the atlas has no figures for.
//!
//! What is timed: fp32, the vector GEMM every provider uses
//! (`tessera_kernels::gemm::sgemm`) on a 512x512x512 product, best call
//! over about 0.8 s; bf16 and int8, where AMX is usable and not disabled,
//! the register-only tile probe on operand tiles of random values
//! (`ukernel::amx::probe_peak_data`: zero tiles run faster than any data)
//! on every thread at once, as `bench-gemm` reports it. Other precisions are left
//! unmeasured (`None`): there is no fp16 GEMM to time yet, and an int8
//! figure without a tile unit would time a fallback, not the machine.

use std::time::{Duration, Instant};

use tessera_hw::calibration::{self, Calibration, MeasuredPeaks};
use tessera_kernels::gemm::{self, ukernel::amx, ukernel::DotKind, MatRef, Parallel};

/// Side of the square fp32 product: large enough to run at speed, small
/// enough (3 MiB) that a call takes milliseconds.
const N: usize = 512;
/// Time spent on the fp32 GEMM.
const FP32_BUDGET: Duration = Duration::from_millis(800);
/// Iterations of the tile probe (4 tile products each), about 0.1 s on one core.
const PROBE_ITERATIONS: usize = 2_000_000;

/// Best GFLOP/s of the fp32 GEMM over [`FP32_BUDGET`] on `threads` threads.
fn fp32_gflops(threads: usize) -> f64 {
    let a: Vec<f32> = (0..N * N).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
    let b: Vec<f32> = (0..N * N).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
    let mut c = vec![0f32; N * N];
    let mut call = || {
        let t = Instant::now();
        gemm::sgemm(
            MatRef::row_major(&a, N, N),
            MatRef::row_major(&b, N, N),
            &mut c,
            N,
            1.0,
            0.0,
            Parallel::Rayon(threads),
        );
        t.elapsed().as_secs_f64()
    };
    call(); // warm-up: page faults, packing buffers
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut calls = 0;
    while calls < 3 || (start.elapsed() < FP32_BUDGET && calls < 1000) {
        best = best.min(call());
        calls += 1;
    }
    2.0 * (N * N * N) as f64 / best.max(1e-9) / 1e9
}

/// Tile-unit operations per second over all threads of `pool`, each
/// running the register-only probe at the same time.
fn tile_peak(pool: &rayon::ThreadPool, kind: DotKind) -> f64 {
    let per_thread = std::sync::Mutex::new(Vec::new());
    pool.broadcast(|_| {
        let v = amx::probe_peak_data(kind, PROBE_ITERATIONS);
        per_thread.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    });
    per_thread.into_inner().unwrap_or_else(|e| e.into_inner()).iter().sum()
}

/// Measures this machine with `threads` threads (0 = one per core).
pub fn calibrate(threads: usize) -> Calibration {
    let threads =
        if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    let machine = tessera_hw::detect_machine();
    let mut measured = MeasuredPeaks::default();
    let mut method = format!("fp32: best call of sgemm {N}x{N}x{N} over {} ms", FP32_BUDGET.as_millis());
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => {
            measured.fp32 = Some(pool.install(|| fp32_gflops(threads)));
            match tessera_hw::amx_enabled() {
                Ok(()) => {
                    measured.bf16 = Some(tile_peak(&pool, DotKind::Bf16) / 1e9);
                    measured.int8 = Some(tile_peak(&pool, DotKind::I8 { a_signed: true, b_signed: true }) / 1e9);
                    method.push_str(
                        "; bf16/int8: AMX register-only probe (tdpbf16ps/tdpbssd) on operand tiles of random values, on every thread",
                    );
                }
                Err(why) => method.push_str(&format!("; bf16/int8 not measured (no AMX: {why})")),
            }
        }
        Err(e) => {
            // No pool (thread limits): measure on this thread only, and say so.
            measured.fp32 = Some(fp32_gflops(1));
            method.push_str(&format!("; on one thread, because a pool of {threads} could not start: {e}"));
        }
    }
    Calibration {
        machine_key: calibration::machine_key(&machine),
        measured,
        when: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        threads,
        method,
    }
}

/// `tessera calibrate`: measure, store, print.
pub fn run(threads: usize, json: bool) -> Result<(), String> {
    let dir = calibration::cache_dir()
        .ok_or_else(|| format!("no cache directory: set {} (or XDG_CACHE_HOME or HOME)", calibration::CACHE_DIR_ENV))?;
    let t = Instant::now();
    let cal = calibrate(threads);
    let secs = t.elapsed().as_secs_f64();
    let path = calibration::store(&cal, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if json {
        let out = serde_json::json!({ "path": path.display().to_string(), "seconds": secs, "calibration": cal });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let show = |v: Option<f64>, unit: &str| v.map(|v| format!("{v:.0} {unit}")).unwrap_or_else(|| "-".into());
    println!("machine    {}", cal.machine_key);
    println!(
        "measured   fp32 {}, bf16 {}, int8 {} ({} thread{}, {secs:.1} s)",
        show(cal.measured.fp32, "GFLOP/s"),
        show(cal.measured.bf16, "GFLOP/s"),
        show(cal.measured.int8, "GOP/s"),
        cal.threads,
        if cal.threads == 1 { "" } else { "s" }
    );
    println!("method     {}", cal.method);
    println!("stored     {}", path.display());
    Ok(())
}
