//! `tessera bench-gemm`: GFLOP/s of each GEMM kernel on each shape, beside
//! the tile unit's peak measured by a register-only probe and the fp32
//! vector path, in one run.

use std::time::Instant;

use serde::Serialize;
use tessera_kernels::gemm::{
    self, tile_igemm_with, tile_sgemm_with, ukernel::amx, ukernel::avx512, ukernel::DotKind, Activation, Epilogue,
    I8Mat, I8Out, MatRef, PackedB, Parallel, Split, StagedA, TileBlocking, TileIsa,
};
use tessera_kernels::weight_mem;

#[derive(Serialize)]
pub struct Row {
    pub kernel: String,
    /// The tile driver's blocking (`kc:panels:prefetch:stream[:grid]`, the
    /// grid as requested; empty for other
    /// kernels).
    pub blocking: String,
    /// The tile kernel's epilogue: "" (none) or "bias+ACTIVATION".
    pub epilogue: String,
    /// With `--stages`, which part of a tile GEMM the row times (see
    /// [`Options::stages`]); "" for the whole call.
    pub stage: String,
    /// Whether the packed weights were on huge pages (tile kernels).
    pub huge_pages: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub threads: usize,
    pub gflops: f64,
    /// Microseconds per call.
    pub micros: f64,
    /// Weight bytes read per call over the call's time: how close a call
    /// comes to streaming its weight at memory speed (with `--cold`).
    pub weight_gbs: f64,
    /// Peak of the unit this kernel runs on, for these threads (0 if
    /// none): the register-only probe on operand tiles of random values,
    /// run on every thread (best of two) just before and just after this
    /// case's timed calls (their best with `--best`, else their mean), so
    /// that it shares their clock (on the lent Xeon the tile unit's rate
    /// on data swings 2x and more within a process). The `--stages` rows
    /// run after the second probe.
    pub peak_gflops: f64,
    pub pct_of_peak: f64,
    /// The probe after the timed calls over the probe before them: far
    /// from 1, the machine changed speed meanwhile, and the case's share of
    /// the peak is unreliable.
    pub peak_drift: f64,
    /// This chip's expected peak for the kernel's precision, scaled to the
    /// threads used (atlas row or calibration; 0 if neither has one).
    pub chip_peak_gflops: f64,
    pub pct_of_chip_peak: f64,
}

/// The chip's expected peak (GFLOP/s) for a kernel, scaled from all cores
/// to `threads` of them; None when the atlas and calibration have none.
fn chip_peak(peaks: &tessera_hw::Peaks, cores: usize, kernel: &str, threads: usize) -> Option<f64> {
    let whole = match kernel {
        "fp32-vector" | "neon-fp32" | "sme-fp32" => peaks.fp32,
        // The atlas's bf16 and int8 rates are the matrix unit's; the
        // avx512-* kernels have none (their probe is the reference).
        "amx-bf16" | "sme-bf16" => peaks.bf16,
        // The splits compute one fp32 product from several bf16 ones.
        "amx-bf16x3" => peaks.bf16.map(|p| p / 3.0),
        "amx-bf16x6" => peaks.bf16.map(|p| p / 6.0),
        "neon-fp16" => peaks.fp16,
        "amx-int8" | "neon-i8dot" => peaks.int8,
        _ => None,
    }?;
    Some(whole * threads.min(cores) as f64 / cores.max(1) as f64)
}

/// The tile-kernel dimensions of `tessera bench-gemm`, as given on the
/// command line.
pub struct TileCases<'a> {
    pub blocking: &'a [String],
    pub epilogue: &'a [String],
    pub huge_pages: &'a [String],
    pub stages: bool,
}

pub struct Options {
    pub shapes: Vec<(usize, usize, usize)>,
    pub threads: Vec<usize>,
    pub kernels: Vec<String>,
    pub min_seconds: f64,
    /// Cycle through enough copies of the weight to overflow the caches, as
    /// a model's layers do (each call then streams its weight from DRAM).
    pub cold: bool,
    /// Tile driver blockings; each tile kernel runs once per blocking.
    pub blockings: Vec<TileBlocking>,
    /// Fastest call instead of the median.
    pub best: bool,
    /// Epilogues to compare for the tile kernels: None, or a bias and this
    /// activation.
    pub epilogues: Vec<Option<Activation>>,
    /// Weight memory settings to compare for the tile kernels (huge pages
    /// on, off).
    pub huge_pages: Vec<bool>,
    /// Also time a bf16 tile GEMM's stages apart ("pack-a": A's panels
    /// alone; "product": the tile loop without epilogue; "epilogue": the
    /// epilogue alone), and split the calls of every tile GEMM (bf16 and
    /// int8) by the driver's time stamps ("in-call" and the `in-*` rows of
    /// [`in_call_stages`]). Rows other than the call and "product" carry no
    /// GFLOP/s.
    pub stages: bool,
}

/// The tile driver ISA a kernel name runs on ("amx-*", "avx512-*").
fn tile_isa(kernel: &str) -> Option<TileIsa> {
    if kernel.starts_with("amx-") {
        Some(TileIsa::Amx)
    } else if kernel.starts_with("avx512-") {
        Some(TileIsa::Avx512Dot)
    } else {
        None
    }
}

/// Number of weight copies so that they overflow any L3 (512 MiB in all).
fn copies(cold: bool, bytes_each: usize) -> usize {
    if cold {
        ((512usize << 20) / bytes_each.max(1)).clamp(1, 64)
    } else {
        1
    }
}

pub const DEFAULT_SHAPES: &[(usize, usize, usize)] = &[
    (2048, 2048, 2048),
    (128, 768, 768),
    (128, 2304, 768),
    (128, 3072, 768),
    (128, 768, 3072),
    (1024, 768, 768),
    (1024, 3072, 768),
    (1024, 768, 3072),
];

pub const ALL_KERNELS: &[&str] = &[
    "fp32-vector",
    "amx-bf16",
    "amx-bf16x3",
    "amx-bf16x6",
    "amx-int8",
    "avx512-bf16",
    "avx512-bf16x3",
    "avx512-bf16x6",
    "avx512-int8",
    "neon-fp32",
    "neon-fp16",
    "neon-i8dot",
    "sme-fp32",
    "sme-bf16",
];

/// Seconds per call of an Arm kernel through the vector driver, or why it
/// cannot run here.
#[cfg(target_arch = "aarch64")]
fn arm_seconds(
    kernel: &str,
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    min_seconds: f64,
) -> Result<f64, String> {
    use tessera_kernels::gemm::ukernel::{neon, sme};
    use tessera_kernels::gemm::vector::{vector_igemm, vector_sgemm, Blocking, FloatKernel};
    fn float<K: FloatKernel>(kern: &K, a: &[f32], b: &[f32], m: usize, n: usize, k: usize, t: f64) -> f64 {
        let mut c = vec![0f32; m * n];
        let (av, bv) = (MatRef::row_major(a, m, k), MatRef::row_major(b, k, n));
        time(t, || vector_sgemm(kern, Blocking::DEFAULT, av, bv, &mut c, n, &Epilogue::default()))
    }
    match kernel {
        "neon-fp32" => Ok(float(&neon::NeonF32, a, b, m, n, k, min_seconds)),
        "neon-fp16" if neon::has_fp16() => Ok(float(&neon::NeonF16, a, b, m, n, k, min_seconds)),
        "neon-fp16" => Err("CPU lacks FEAT_FP16".into()),
        "neon-i8dot" if neon::has_dotprod() => {
            let q = |v: &[f32]| v.iter().map(|x| (x * 127.0) as i8).collect::<Vec<i8>>();
            let (ai, bi) = (q(a), q(b));
            let mut c = vec![0i32; m * n];
            Ok(time(min_seconds, || vector_igemm(&neon::NeonI8Dot, Blocking::DEFAULT, &ai, &bi, m, k, n, &mut c, n)))
        }
        "neon-i8dot" => Err("CPU lacks FEAT_DotProd".into()),
        "sme-fp32" => {
            sme::SmeF32::new().map(|kern| float(&kern, a, b, m, n, k, min_seconds)).ok_or("CPU lacks FEAT_SME".into())
        }
        "sme-bf16" => {
            sme::SmeBf16::new().map(|kern| float(&kern, a, b, m, n, k, min_seconds)).ok_or("CPU lacks FEAT_SME".into())
        }
        _ => Err(format!("unknown Arm kernel {kernel}")),
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn arm_seconds(_: &str, _: &[f32], _: &[f32], _: usize, _: usize, _: usize, _: f64) -> Result<f64, String> {
    Err(format!("not an Arm CPU ({})", std::env::consts::ARCH))
}

/// The bf16 microkernel alone on L1-resident panels of random values (8 k-blocks of A and B,
/// 32 KiB): the ceiling the driver and packing can reach. GFLOP/s per core
/// times the threads, each thread on its own panels.
fn microkernel_gflops(pool: &rayon::ThreadPool, isa: TileIsa, seconds: f64) -> f64 {
    let case = UkernelCase {
        isa,
        kblocks: 8,
        a_panels: 1,
        b_panels: 1,
        accumulate: true,
        prefetch: amx::Prefetch::A,
        random: true,
    };
    let per = std::sync::Mutex::new(0.0);
    pool.broadcast(|_| *per.lock().unwrap() += case.gflops(seconds));
    per.into_inner().unwrap()
}

/// One microkernel measurement: every B panel times every A panel (B
/// outer, as the driver runs them), each call over `kblocks` k-blocks.
#[derive(Copy, Clone)]
struct UkernelCase {
    isa: TileIsa,
    kblocks: usize,
    a_panels: usize,
    b_panels: usize,
    accumulate: bool,
    prefetch: amx::Prefetch,
    /// Panels of random bf16 values in [-1, 1] instead of one repeated
    /// byte (the multipliers' switching, and so maybe the clock, follows
    /// the data).
    random: bool,
}

impl UkernelCase {
    /// GFLOP/s on the calling thread.
    fn gflops(self, seconds: f64) -> f64 {
        use tessera_kernels::gemm::ukernel::{AccBlock, TileSession, BLOCK_BYTES};
        let len = self.kblocks * BLOCK_BYTES;
        // 64-byte aligned panels, as the packed ones are.
        let mut a = tessera_kernels::gemm::tile::aligned_bytes(len * self.a_panels, 0x3f);
        let mut b = tessera_kernels::gemm::tile::aligned_bytes(len * self.b_panels, 0x3f);
        if self.random {
            fill_random_bf16(&mut a, 1);
            fill_random_bf16(&mut b, 2);
        }
        let sess = TileSession::begin(self.isa, self.prefetch);
        let mut acc = AccBlock::new();
        let rounds = (20_000 / (self.a_panels * self.b_panels * self.kblocks / 8).max(1)).max(1);
        let s = time(seconds, || {
            for _ in 0..rounds {
                for bp in b.chunks_exact(len) {
                    for ap in a.chunks_exact(len) {
                        sess.run(DotKind::Bf16, ap, bp, self.kblocks, &mut acc, self.accumulate);
                    }
                }
            }
        });
        let calls = rounds * self.a_panels * self.b_panels;
        calls as f64 * (32 * 32 * 32 * self.kblocks * 2) as f64 / s / 1e9
    }
}

/// `--ukernel-study`: the microkernel on one thread with its operands in
/// L1 or L2, with and without loading C, under each prefetch variant.
pub fn ukernel_study(seconds: f64) -> Result<(), String> {
    tessera_hw::amx_enabled()?;
    // %probe against the probe on data (the zero-tile probe runs faster
    // than any data does); the phase may change during the study, which
    // the probe rounds at its start and end show.
    let probe = amx::probe_peak_data(DotKind::Bf16, 2_000_000) / 1e9;
    println!("tile probe (register-only, random operand tiles), 1 thread: {probe:.0} GFLOP/s");
    print_loaded_probes(seconds);
    println!(
        "{:<28} {:>10} {:>8} {:>8} {:>7} {:>10} {:>7}",
        "operands", "kblocks", "C load", "prefetch", "data", "GFLOP/s", "%probe"
    );
    let placements =
        [("L1 (1 A x 1 B panel)", 8, 1, 1), ("L2 (4 A x 8 B panels)", 24, 4, 8), ("L2, long K (2 A x 2 B)", 96, 2, 2)];
    for (name, kblocks, a_panels, b_panels) in placements {
        for accumulate in [false, true] {
            for prefetch in [amx::Prefetch::None, amx::Prefetch::A, amx::Prefetch::Ab] {
                // Both data patterns back to back, so that they share the
                // machine's speed of the moment.
                for random in [false, true] {
                    let g =
                        UkernelCase { isa: TileIsa::Amx, kblocks, a_panels, b_panels, accumulate, prefetch, random }
                            .gflops(seconds);
                    println!(
                        "{name:<28} {kblocks:>10} {:>8} {:>8} {:>7} {g:>10.0} {:>7.1}",
                        if accumulate { "yes" } else { "no" },
                        format!("{prefetch:?}").to_lowercase(),
                        if random { "random" } else { "0x3f" },
                        100.0 * g / probe
                    );
                }
            }
        }
    }
    print_loaded_probes(seconds);
    Ok(())
}

/// The register-only bf16 probe on zeroed operand tiles against the same
/// loop on tiles of random values, alternating, each for about `seconds`.
fn print_loaded_probes(seconds: f64) {
    // About 16 cycles per instruction, 4 per iteration, near 3 GHz.
    let iterations = ((seconds * 3e9 / 64.0) as usize).max(1000);
    for round in 1..=2 {
        let zero = amx::probe_peak(DotKind::Bf16, iterations) / 1e9;
        let random = amx::probe_peak_data(DotKind::Bf16, iterations) / 1e9;
        println!(
            "tile probe round {round}, {iterations} iterations: zero tiles {zero:.0} GFLOP/s, random tiles {random:.0} GFLOP/s ({:.2}x)",
            zero / random
        );
    }
}

/// Fills `bytes` with bf16 values drawn uniformly from [-1, 1].
fn fill_random_bf16(bytes: &mut [u8], seed: u64) {
    let values = rand_vec(bytes.len() / 2, seed);
    for (pair, v) in bytes.chunks_exact_mut(2).zip(values) {
        pair.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
    }
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Report the fastest call instead of the median (`--best`): on a shared
/// machine the noise only ever adds time.
static BEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Median (or, with `--best`, fastest) seconds per call of `f` (at least 3
/// calls, about `min_seconds`).
fn time(min_seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || (start.elapsed().as_secs_f64() < min_seconds && samples.len() < 200) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    if BEST.load(std::sync::atomic::Ordering::Relaxed) {
        samples[0]
    } else {
        samples[samples.len() / 2]
    }
}

/// Where a tile GEMM's calls spend their time, from the driver's own time
/// stamps in one run of `f` (about `min_seconds`): the mean wall seconds
/// per call ("in-call"; the "call" row is the median or best of at most
/// 200 calls), and seconds per call and thread in the microkernel ("in-kloop"), the output prefetches
/// ("in-prefetch"), the epilogues ("in-finish"), packing A ("in-pack"),
/// the tasks' tile sessions ("in-session"), and a thread's wait in the
/// product for its first task ("in-wait-first"; all of it for a thread that
/// got none) and after its last ("in-wait-last"); the rest of "in-call" is
/// the loops between the calls and what a call does besides the product. On a machine whose
/// speed changes from run to run, these shares hold within the run. Runs
/// on the pool it measures.
fn in_call_stages(min_seconds: f64, mut f: impl FnMut()) -> Vec<(&'static str, f64)> {
    let threads = rayon::current_num_threads();
    f();
    let _ = gemm::stage_ticks_since_last(true);
    let (start, t0) = (Instant::now(), gemm::tick_count());
    let mut calls = 0usize;
    while calls < 3 || start.elapsed().as_secs_f64() < min_seconds {
        f();
        calls += 1;
    }
    let (secs, ticks) = (start.elapsed().as_secs_f64(), gemm::tick_count().saturating_sub(t0));
    let [kloop, prefetch, finish, pack, session, wait_first, wait_last] = gemm::stage_ticks_since_last(false);
    let per = |t: u64| t as f64 / ticks.max(1) as f64 * secs / (calls * threads.max(1)) as f64;
    vec![
        ("in-call", secs / calls as f64),
        ("in-kloop", per(kloop)),
        ("in-prefetch", per(prefetch)),
        ("in-finish", per(finish)),
        ("in-pack", per(pack)),
        ("in-session", per(session)),
        ("in-wait-first", per(wait_first)),
        ("in-wait-last", per(wait_last)),
    ]
}

/// Peak operations per second of `isa` over `threads` cores, each core
/// running the register-only probe at the same time (`iterations` rounds),
/// on AMX with operand tiles of random values, or of zeros when `zeros`
/// (the AVX-512 probe works on zeroed registers either way; whether its
/// rate depends on data was not measured). Each core keeps
/// its best of `tries` probes: on a shared machine a probe that lost its
/// core for a while reads low (once as half the rate, which put a GEMM at
/// 196% of "peak").
fn tile_peak(
    pool: &rayon::ThreadPool,
    isa: TileIsa,
    kind: DotKind,
    iterations: usize,
    tries: usize,
    zeros: bool,
) -> f64 {
    let per = std::sync::Mutex::new(Vec::new());
    pool.broadcast(|_| {
        let probe = || match isa {
            TileIsa::Avx512Dot => avx512::probe_peak(kind, iterations),
            _ if zeros => amx::probe_peak(kind, iterations),
            _ => amx::probe_peak_data(kind, iterations),
        };
        let v = (0..tries.max(1)).map(|_| probe()).fold(0.0, f64::max);
        per.lock().unwrap().push(v);
    });
    let v = per.into_inner().unwrap();
    v.iter().sum()
}

/// Probe rounds bracketing each case's timed calls (and `tessera bench`'s
/// timed runs): about 10 ms per probe
/// at full speed (AMX: 4 tile products of ~16 cycles a round; the AVX-512
/// probe's round is about 4x shorter).
pub(crate) fn case_probe_iterations(isa: TileIsa) -> usize {
    match isa {
        TileIsa::Avx512Dot => 1_600_000,
        _ => 400_000,
    }
}

pub fn run(opts: &Options) -> Result<Vec<Row>, String> {
    BEST.store(opts.best, std::sync::atomic::Ordering::Relaxed);
    // The hardware ISAs of the requested tile kernels.
    let mut isas: Vec<TileIsa> = Vec::new();
    for isa in opts.kernels.iter().filter_map(|k| tile_isa(k)) {
        if !isas.contains(&isa) {
            isas.push(isa);
        }
    }
    let report = tessera_hw::detect();
    let peaks = tessera_hw::expected_peaks(&report);
    match &peaks.source {
        tessera_hw::PeakSource::Unknown => eprintln!("chip peak: unknown ({})", peaks.note),
        src => eprintln!("chip peak from {src:?}"),
    }
    let cores = report.cpu.logical_cores;
    let mut rows = Vec::new();
    for &threads in &opts.threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
        for &isa in &isas {
            if isa.enabled().is_err() {
                continue;
            }
            let i8_kind = DotKind::I8 { a_signed: true, b_signed: true };
            let bf16 = tile_peak(&pool, isa, DotKind::Bf16, 2_000_000, 3, false) / 1e9;
            let i8 = tile_peak(&pool, isa, i8_kind, 2_000_000, 3, false) / 1e9;
            if isa == TileIsa::Amx {
                let bf16_zeros = tile_peak(&pool, isa, DotKind::Bf16, 2_000_000, 3, true) / 1e9;
                let i8_zeros = tile_peak(&pool, isa, i8_kind, 2_000_000, 3, true) / 1e9;
                eprintln!(
                    "{} peak, {threads} thread(s), random operand tiles: bf16 {bf16:.0} GFLOP/s, int8 {i8:.0} GOP/s (zero tiles: {bf16_zeros:.0}, {i8_zeros:.0})",
                    isa.name()
                );
            } else {
                eprintln!("{} peak, {threads} thread(s): bf16 {bf16:.0} GFLOP/s, int8 {i8:.0} GOP/s", isa.name());
            }
            let uk = microkernel_gflops(&pool, isa, opts.min_seconds);
            eprintln!(
                "{} bf16 microkernel on L1-resident panels: {uk:.0} GFLOP/s ({:.1}% of peak)",
                isa.name(),
                100.0 * uk / bf16
            );
        }
        // The probe of `kernel`'s unit and precision now, in G(FL)OP/s of
        // the product it computes (0 for kernels without a probe).
        let probe_now = |kernel: &str| -> f64 {
            let Some(isa) = tile_isa(kernel).filter(|isa| isa.enabled().is_ok()) else { return 0.0 };
            let (kind, products) = if kernel.ends_with("int8") {
                (DotKind::I8 { a_signed: true, b_signed: true }, 1.0)
            } else if kernel.ends_with("x3") {
                (DotKind::Bf16, Split::Bf16x3.products().len() as f64)
            } else if kernel.ends_with("x6") {
                (DotKind::Bf16, Split::Bf16x6.products().len() as f64)
            } else {
                (DotKind::Bf16, 1.0)
            };
            // Best of two: a probe that lost its core reads low.
            tile_peak(&pool, isa, kind, case_probe_iterations(isa), 2, false) / 1e9 / products
        };
        for &(m, n, k) in &opts.shapes {
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            // 64-byte aligned, as a session's tensors are: a misaligned
            // output splits every 64-byte store across two cache lines.
            let mut c =
                aligned_vec::AVec::<f32, aligned_vec::ConstAlign<64>>::from_iter(64, std::iter::repeat_n(0f32, m * n));
            let flops = 2.0 * (m * n * k) as f64;
            let cases = opts.kernels.iter().flat_map(|kern| {
                let tile = tile_isa(kern).is_some();
                let blks = if tile { opts.blockings.clone() } else { vec![TileBlocking::DEFAULT] };
                let huge = if tile { opts.huge_pages.clone() } else { vec![weight_mem::huge_pages()] };
                let epis = if tile { opts.epilogues.clone() } else { vec![None] };
                blks.into_iter().flat_map(move |blk| {
                    let epis = epis.clone();
                    huge.clone().into_iter().flat_map(move |h| epis.clone().into_iter().map(move |e| (kern, blk, h, e)))
                })
            });
            let bias = rand_vec(n, 3);
            for (kernel, blk, huge, act) in cases {
                // (stage, seconds) of the call's parts, with `--stages`.
                let mut stage_times: Vec<(&str, f64)> = Vec::new();
                let epi = match act {
                    Some(activation) => Epilogue { bias: Some(&bias), activation, ..Default::default() },
                    None => Epilogue::default(),
                };
                weight_mem::set_huge_pages(huge);
                // The probes just before and after the timed calls (0 for
                // kernels without one).
                let (secs, weight_bytes, probe_before, probe_after) = match kernel.as_str() {
                    "fp32-vector" => {
                        let bs: Vec<Vec<f32>> = (0..copies(opts.cold, 4 * k * n)).map(|_| b.clone()).collect();
                        let mut i = 0;
                        let s = pool.install(|| {
                            time(opts.min_seconds, || {
                                i += 1;
                                gemm::sgemm(
                                    MatRef::row_major(&a, m, k),
                                    MatRef::row_major(&bs[i % bs.len()], k, n),
                                    &mut c,
                                    n,
                                    1.0,
                                    0.0,
                                    Parallel::Rayon(threads),
                                )
                            })
                        });
                        (s, 4 * k * n, 0.0, 0.0)
                    }
                    "amx-bf16" | "amx-bf16x3" | "amx-bf16x6" | "avx512-bf16" | "avx512-bf16x3" | "avx512-bf16x6" => {
                        let isa = tile_isa(kernel).expect("a tile kernel");
                        if let Err(why) = isa.enabled() {
                            eprintln!("skipping {kernel}: {why}");
                            continue;
                        }
                        let split = if kernel.ends_with("x3") {
                            Split::Bf16x3
                        } else if kernel.ends_with("x6") {
                            Split::Bf16x6
                        } else {
                            Split::Bf16
                        };
                        let pb0 = PackedB::from_f32(MatRef::row_major(&b, k, n), split);
                        let pbs: Vec<PackedB> = (0..copies(opts.cold, pb0.packed_bytes()))
                            .map(|_| PackedB::from_f32(MatRef::row_major(&b, k, n), split))
                            .collect();
                        let mut i = 0;
                        let mut call = || {
                            i += 1;
                            let pb = &pbs[i % pbs.len()];
                            tile_sgemm_with(isa, blk, MatRef::row_major(&a, m, k), pb, &mut c, n, &epi)
                        };
                        let before = probe_now(kernel);
                        let s = pool.install(|| time(opts.min_seconds, &mut call));
                        let after = probe_now(kernel);
                        if opts.stages {
                            let in_call = pool.install(|| in_call_stages(opts.min_seconds, &mut call));
                            let mut staged = StagedA::new(m, &pb0);
                            let pack =
                                pool.install(|| time(opts.min_seconds, || staged.pack(MatRef::row_major(&a, m, k))));
                            let mut i = 0;
                            let product = pool.install(|| {
                                time(opts.min_seconds, || {
                                    i += 1;
                                    staged.product(isa, blk, &pbs[i % pbs.len()])
                                })
                            });
                            let epilogue =
                                pool.install(|| time(opts.min_seconds, || staged.epilogue(n, &mut c, n, &epi)));
                            stage_times = vec![("pack-a", pack), ("product", product), ("epilogue", epilogue)];
                            stage_times.extend(in_call);
                        }
                        (s, pb0.packed_bytes(), before, after)
                    }
                    "amx-int8" | "avx512-int8" => {
                        let isa = tile_isa(kernel).expect("a tile kernel");
                        if let Err(why) = isa.enabled() {
                            eprintln!("skipping {kernel}: {why}");
                            continue;
                        }
                        let ab: Vec<u8> = a.iter().map(|v| (v * 100.0 + 128.0) as u8).collect();
                        let bb: Vec<u8> = b.iter().map(|v| (v * 100.0) as i8 as u8).collect();
                        let pbs: Vec<PackedB> =
                            (0..copies(opts.cold, k * n)).map(|_| PackedB::from_i8(&bb, k, n, true, &[0])).collect();
                        let mut ci = vec![0i32; m * n];
                        let mut i = 0;
                        let mut call = || {
                            i += 1;
                            let am = I8Mat { data: &ab, rows: m, cols: k, row_stride: k, signed: false };
                            // With an epilogue, the dynamic-quantization
                            // output (scaled to fp32, then the epilogue).
                            let out = match act {
                                Some(_) => {
                                    I8Out::F32 { c: &mut c, ldc: n, scale_a: &[0.01], scale_b: &[0.01], epi: &epi }
                                }
                                None => I8Out::I32 { c: &mut ci, ldc: n },
                            };
                            tile_igemm_with(isa, blk, am, &[128], &pbs[i % pbs.len()], out)
                        };
                        let before = probe_now(kernel);
                        let s = pool.install(|| time(opts.min_seconds, &mut call));
                        let after = probe_now(kernel);
                        if opts.stages {
                            stage_times = pool.install(|| in_call_stages(opts.min_seconds, &mut call));
                        }
                        (s, pbs[0].packed_bytes(), before, after)
                    }
                    arm if arm.starts_with("neon-") || arm.starts_with("sme-") => {
                        match pool.install(|| arm_seconds(arm, &a, &b, m, n, k, opts.min_seconds)) {
                            Ok(s) => (s, 4 * k * n, 0.0, 0.0),
                            Err(why) => {
                                eprintln!("skipping {kernel}: {why}");
                                continue;
                            }
                        }
                    }
                    other => return Err(format!("unknown kernel '{other}' (known: {})", ALL_KERNELS.join(", "))),
                };
                // A split GEMM does `products` times the work of the fp32
                // GEMM it computes: its probe is the peak over `products`.
                let peak = if opts.best { probe_before.max(probe_after) } else { (probe_before + probe_after) / 2.0 };
                let drift = if probe_before > 0.0 { probe_after / probe_before } else { 0.0 };
                let chip = chip_peak(&peaks, cores, kernel, threads).unwrap_or(0.0);
                for (stage, secs) in std::iter::once(("", secs)).chain(stage_times) {
                    // Only the call and the tile loop do the GEMM's work.
                    let gflops = if matches!(stage, "" | "product" | "in-call") { flops / secs / 1e9 } else { 0.0 };
                    rows.push(Row {
                        kernel: kernel.clone(),
                        blocking: if tile_isa(kernel).is_some() { blk.name() } else { String::new() },
                        huge_pages: huge,
                        epilogue: match act {
                            Some(a) if tile_isa(kernel).is_some() => format!("bias+{}", a.name()),
                            _ => String::new(),
                        },
                        stage: stage.to_string(),
                        m,
                        n,
                        k,
                        threads,
                        gflops,
                        micros: secs * 1e6,
                        weight_gbs: if gflops > 0.0 { weight_bytes as f64 / secs / 1e9 } else { 0.0 },
                        peak_gflops: peak,
                        pct_of_peak: if peak > 0.0 { 100.0 * gflops / peak } else { 0.0 },
                        peak_drift: drift,
                        chip_peak_gflops: chip,
                        pct_of_chip_peak: if chip > 0.0 { 100.0 * gflops / chip } else { 0.0 },
                    });
                }
            }
        }
    }
    Ok(rows)
}

pub fn print(rows: &[Row]) {
    println!(
        "{:<12} {:<20} {:>5} {:<20} {:<11} {:>6} {:>6} {:>6} {:>4} {:>10} {:>10} {:>8} {:>10} {:>7} {:>10} {:>7} {:>6}",
        "kernel",
        "blocking",
        "pages",
        "epilogue",
        "stage",
        "M",
        "N",
        "K",
        "thr",
        "GFLOP/s",
        "us/call",
        "W GB/s",
        "probe",
        "%probe",
        "chip peak",
        "%chip",
        "drift"
    );
    for r in rows {
        let opt = |v: f64, digits: usize| if v > 0.0 { format!("{v:.digits$}") } else { "-".into() };
        println!(
            "{:<12} {:<20} {:>5} {:<20} {:<11} {:>6} {:>6} {:>6} {:>4} {:>10.1} {:>10.1} {:>8.1} {:>10} {:>7} {:>10} {:>7} {:>6}",
            r.kernel,
            if r.blocking.is_empty() { "-" } else { &r.blocking },
            if r.blocking.is_empty() {
                "-"
            } else if r.huge_pages {
                "2M"
            } else {
                "4K"
            },
            if r.epilogue.is_empty() { "-" } else { &r.epilogue },
            if r.stage.is_empty() { "call" } else { &r.stage },
            r.m,
            r.n,
            r.k,
            r.threads,
            r.gflops,
            r.micros,
            r.weight_gbs,
            opt(r.peak_gflops, 0),
            opt(r.pct_of_peak, 1),
            opt(r.chip_peak_gflops, 0),
            opt(r.pct_of_chip_peak, 1),
            opt(r.peak_drift, 2)
        );
    }
}
