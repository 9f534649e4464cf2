//! `tessera doctor`: every kernel and provider this machine offers, run on
//! small cases against the portable reference, with pass/fail, speed, and
//! the reason for whatever is unavailable. This is what a user runs on a new
//! machine (a Mac in particular) to check the hardware paths.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use tessera::{Session, SessionOptions};
use tessera_core::{Attr, DType, Graph, Node, Tensor, ValueInfo};
use tessera_kernels::gemm::vector::{vector_igemm, vector_sgemm, Blocking, FloatKernel, Reference, VectorKernel};
use tessera_kernels::gemm::{
    sgemm, tile_igemm, tile_sgemm, Epilogue, I8Mat, I8Out, InputFormat, MatRef, PackedB, Parallel, Split, TileIsa,
};
use tessera_providers::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Unavailable,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// "kernel" or "provider".
    pub kind: &'static str,
    pub name: String,
    pub status: Status,
    /// The error measured against the reference (and its limit), or why
    /// the path is unavailable.
    pub detail: String,
    /// Throughput or time on the speed case, when it ran.
    pub speed: Option<String>,
}

fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut r = tessera::demo::Rng::new(seed);
    (0..n).map(|_| r.uniform() * 2.0 - 1.0).collect()
}

/// Seconds per call of `f` after one warm-up call, timed for about 0.2 s
/// (at least 3 calls); the first error stops the timing.
fn seconds_per_call<E>(mut f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    f()?;
    let t0 = Instant::now();
    let mut calls = 0u32;
    while calls < 3 || t0.elapsed().as_secs_f64() < 0.2 {
        f()?;
        calls += 1;
    }
    Ok(t0.elapsed().as_secs_f64() / calls as f64)
}

/// GFLOP/s of `f` (one `m x n x k` product per call).
fn gflops(m: usize, n: usize, k: usize, mut f: impl FnMut()) -> String {
    let s = seconds_per_call(|| -> Result<(), ()> {
        f();
        Ok(())
    })
    .unwrap_or(f64::NAN);
    format!("{:.1} GFLOP/s at {m}x{n}x{k}", 2.0 * (m * n * k) as f64 / s / 1e9)
}

/// The ragged accuracy case and the speed case of every kernel.
const ACC: (usize, usize, usize) = (67, 45, 83);
const SPEED: usize = 256;

/// A product under test: `(a, b, m, k, n) -> c`, all row-major.
type FloatProduct<'a> = &'a dyn Fn(&[f32], &[f32], usize, usize, usize) -> Vec<f32>;
type IntProduct<'a> = &'a dyn Fn(&[i8], &[i8], usize, usize, usize) -> Vec<i32>;

fn float_check(name: &str, limit: f64, format: InputFormat, run: FloatProduct) -> Check {
    let (m, n, k) = ACC;
    let (a, b) = (rand_f32(m * k, 1), rand_f32(k * n, 2));
    let got = run(&a, &b, m, k, n);
    let e = tessera_kernels::gemm::dot_error(&a, &b, m, k, n, &got, format);
    let status = if e <= limit { Status::Pass } else { Status::Fail };
    let s = SPEED;
    let (sa, sb) = (rand_f32(s * s, 3), rand_f32(s * s, 4));
    let speed = (status == Status::Pass).then(|| gflops(s, s, s, || drop(run(&sa, &sb, s, s, s))));
    Check {
        kind: "kernel",
        name: name.into(),
        status,
        detail: format!("{m}x{n}x{k}: error {e:.1e} of sum|ab| (limit {limit:.0e})"),
        speed,
    }
}

fn int_check(name: &str, run: IntProduct) -> Check {
    let (m, n, k) = ACC;
    let q = |v: Vec<f32>| v.iter().map(|x| (x * 127.0) as i8).collect::<Vec<i8>>();
    let (a, b) = (q(rand_f32(m * k, 5)), q(rand_f32(k * n, 6)));
    let got = run(&a, &b, m, k, n);
    let mut wrong = 0;
    for i in 0..m {
        for j in 0..n {
            let want: i32 = (0..k).map(|kk| a[i * k + kk] as i32 * b[kk * n + j] as i32).sum();
            wrong += (got[i * n + j] != want) as usize;
        }
    }
    let status = if wrong == 0 { Status::Pass } else { Status::Fail };
    let s = SPEED;
    let (sa, sb) = (q(rand_f32(s * s, 7)), q(rand_f32(s * s, 8)));
    let speed =
        (status == Status::Pass).then(|| gflops(s, s, s, || drop(run(&sa, &sb, s, s, s))).replace("FLOP", "OP"));
    Check {
        kind: "kernel",
        name: name.into(),
        status,
        detail: format!("{m}x{n}x{k}: {wrong} of {} outputs differ from the exact result", m * n),
        speed,
    }
}

fn unavailable(kind: &'static str, name: &str, why: impl Into<String>) -> Check {
    Check { kind, name: name.into(), status: Status::Unavailable, detail: why.into(), speed: None }
}

fn vector_float<K: FloatKernel>(kern: &K) -> impl Fn(&[f32], &[f32], usize, usize, usize) -> Vec<f32> + '_ {
    move |a, b, m, k, n| {
        let mut c = vec![0f32; m * n];
        let (av, bv) = (MatRef::row_major(a, m, k), MatRef::row_major(b, k, n));
        vector_sgemm(kern, Blocking::DEFAULT, av, bv, &mut c, n, &Epilogue::default());
        c
    }
}

fn vector_int<K: VectorKernel<In = i8, Acc = i32>>(
    kern: &K,
) -> impl Fn(&[i8], &[i8], usize, usize, usize) -> Vec<i32> + '_ {
    move |a, b, m, k, n| {
        let mut c = vec![0i32; m * n];
        vector_igemm(kern, Blocking::DEFAULT, a, b, m, k, n, &mut c, n);
        c
    }
}

fn tile_float(isa: TileIsa, split: Split) -> impl Fn(&[f32], &[f32], usize, usize, usize) -> Vec<f32> {
    move |a, b, m, k, n| {
        let pb = PackedB::from_f32(MatRef::row_major(b, k, n), split);
        let mut c = vec![0f32; m * n];
        tile_sgemm(isa, MatRef::row_major(a, m, k), &pb, &mut c, n, &Epilogue::default());
        c
    }
}

fn tile_int(isa: TileIsa) -> impl Fn(&[i8], &[i8], usize, usize, usize) -> Vec<i32> {
    move |a, b, m, k, n| {
        let bytes = |v: &[i8]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
        let pb = PackedB::from_i8(&bytes(b), k, n, true, &[0]);
        let mut c = vec![0i32; m * n];
        let ab = bytes(a);
        let am = I8Mat { data: &ab, rows: m, cols: k, row_stride: k, signed: true };
        tile_igemm(isa, am, &[0], &pb, I8Out::I32 { c: &mut c, ldc: n });
        c
    }
}

/// A kernel check by its name.
type NamedCheck<'a> = (&'a str, &'a dyn Fn(&str) -> Check);

fn kernel_checks() -> Vec<Check> {
    let mut out = Vec::new();
    out.push(float_check("fp32-vector (gemm crate)", 1e-6, InputFormat::FP32, &|a, b, m, k, n| {
        let mut c = vec![0f32; m * n];
        sgemm(MatRef::row_major(a, m, k), MatRef::row_major(b, k, n), &mut c, n, 1.0, 0.0, Parallel::Rayon(0));
        c
    }));
    out.push(float_check(
        "vector driver, portable kernel",
        1e-6,
        InputFormat::FP32,
        &vector_float(&Reference::<f32, f32>::new(8, 12, 1)),
    ));
    out.push(int_check("vector driver, portable int8 kernel", &vector_int(&Reference::<i8, i32>::new(8, 12, 4))));
    out.push(float_check(
        "tile contract, emulated bf16",
        1e-5,
        InputFormat::BF16,
        &tile_float(TileIsa::Emulated, Split::Bf16),
    ));
    out.push(int_check("tile contract, emulated int8", &tile_int(TileIsa::Emulated)));
    // The hardware ISAs' kernels, or each one unavailable with the reason.
    let hardware = |usable: Result<(), String>, checks: &[NamedCheck]| -> Vec<Check> {
        match usable {
            Ok(()) => checks.iter().map(|(name, check)| check(name)).collect(),
            Err(why) => checks.iter().map(|(name, _)| unavailable("kernel", name, why.clone())).collect(),
        }
    };
    out.extend(hardware(
        TileIsa::Amx.enabled(),
        &[
            ("amx-bf16", &|n| float_check(n, 1e-5, InputFormat::BF16, &tile_float(TileIsa::Amx, Split::Bf16))),
            ("amx-bf16x6 (fp32-accurate)", &|n| {
                float_check(n, 1e-6, InputFormat::FP32, &tile_float(TileIsa::Amx, Split::Bf16x6))
            }),
            ("amx-int8", &|n| int_check(n, &tile_int(TileIsa::Amx))),
        ],
    ));
    out.extend(hardware(
        TileIsa::Avx512Dot.enabled(),
        &[
            ("avx512-dot bf16", &|n| {
                float_check(n, 1e-5, InputFormat::BF16, &tile_float(TileIsa::Avx512Dot, Split::Bf16))
            }),
            ("avx512-dot int8", &|n| int_check(n, &tile_int(TileIsa::Avx512Dot))),
        ],
    ));
    out.extend(arm_checks());
    out
}

#[cfg(target_arch = "aarch64")]
fn arm_checks() -> Vec<Check> {
    use tessera_kernels::gemm::ukernel::neon::{has_dotprod, has_fp16, NeonF16, NeonF32, NeonI8Dot};
    use tessera_kernels::gemm::ukernel::sme::{streaming_vector_bytes, SmeBf16, SmeF32};
    let mut out = vec![float_check("neon-fp32", 1e-6, InputFormat::FP32, &vector_float(&NeonF32))];
    out.push(if has_fp16() {
        // fp16 accumulators over one K block of 256: about 2^-11 per add.
        float_check("neon-fp16", 2e-2, InputFormat::FP16, &vector_float(&NeonF16))
    } else {
        unavailable("kernel", "neon-fp16", "CPU lacks FEAT_FP16")
    });
    out.push(if has_dotprod() {
        int_check("neon-i8dot", &vector_int(&NeonI8Dot))
    } else {
        unavailable("kernel", "neon-i8dot", "CPU lacks FEAT_DotProd")
    });
    match (SmeF32::new(), SmeBf16::new()) {
        (Some(f), Some(b)) => {
            let bits = streaming_vector_bytes().unwrap_or(0) * 8;
            out.push(float_check(
                &format!("sme-fp32 ({bits}-bit streaming vectors)"),
                1e-6,
                InputFormat::FP32,
                &vector_float(&f),
            ));
            out.push(float_check(
                &format!("sme-bf16 ({bits}-bit streaming vectors)"),
                1e-5,
                InputFormat::BF16,
                &vector_float(&b),
            ));
        }
        _ => {
            for name in ["sme-fp32", "sme-bf16"] {
                out.push(unavailable("kernel", name, "CPU lacks FEAT_SME (Apple M4 and later have it)"));
            }
        }
    }
    out
}

#[cfg(not(target_arch = "aarch64"))]
fn arm_checks() -> Vec<Check> {
    let why = format!("not an Arm CPU ({})", std::env::consts::ARCH);
    ["neon-fp32", "neon-fp16", "neon-i8dot", "sme-fp32", "sme-bf16"]
        .iter()
        .map(|n| unavailable("kernel", n, why.clone()))
        .collect()
}

/// A small CNN block: Conv 3x3 (pads) + ReLU, Conv 1x1 with bias, Gemm
/// head after flattening.
fn conv_graph() -> tessera_core::Result<Graph> {
    let mut g = Graph { name: "doctor-cnn".into(), ..Default::default() };
    g.opsets.insert(String::new(), 17);
    let shape = [1, 8, 12, 12].map(tessera_core::Dim::Known).to_vec();
    g.inputs.push(ValueInfo { name: "x".into(), dtype: Some(DType::F32), shape: Some(shape) });
    let t = |shape: &[usize], seed: u64, scale: f32| {
        Tensor::from_vec(shape, rand_f32(shape.iter().product(), seed).iter().map(|v| v * scale).collect())
    };
    g.initializers.insert("w1".into(), t(&[16, 8, 3, 3], 11, 0.2)?);
    g.initializers.insert("w2".into(), t(&[8, 16, 1, 1], 12, 0.3)?);
    g.initializers.insert("b2".into(), t(&[8], 13, 0.1)?);
    g.initializers.insert("wh".into(), t(&[10, 8 * 12 * 12], 14, 0.05)?);
    g.initializers.insert("flat".into(), Tensor::from_vec(&[2], vec![1i64, -1])?);
    g.nodes.push(Node::new("Conv", "c1", &["x", "w1"], &["h1"]).with_attr("pads", Attr::Ints(vec![1, 1, 1, 1])));
    g.nodes.push(Node::new("Relu", "r1", &["h1"], &["a1"]));
    g.nodes.push(Node::new("Conv", "c2", &["a1", "w2", "b2"], &["h2"]));
    g.nodes.push(Node::new("Reshape", "f", &["h2", "flat"], &["v"]));
    g.nodes.push(Node::new("Gemm", "head", &["v", "wh"], &["y"]).with_attr("transB", Attr::Int(1)));
    g.outputs.push(ValueInfo { name: "y".into(), dtype: Some(DType::F32), shape: None });
    Ok(g)
}

/// An integer model: MatMulInteger with a per-column weight zero point,
/// and QLinearMatMul.
fn int8_graph() -> tessera_core::Result<Graph> {
    let mut g = Graph { name: "doctor-int8".into(), ..Default::default() };
    g.opsets.insert(String::new(), 17);
    g.inputs.push(ValueInfo { name: "a".into(), dtype: Some(DType::U8), shape: None });
    let bytes = |n: usize, seed: u64| rand_f32(n, seed).iter().map(|v| ((v + 1.0) * 127.5) as u8).collect::<Vec<u8>>();
    g.initializers.insert("b".into(), Tensor::from_bytes(DType::I8, &[64, 48], &bytes(64 * 48, 21))?);
    g.initializers.insert("bz".into(), Tensor::from_bytes(DType::I8, &[48], &bytes(48, 22))?);
    g.initializers.insert("az".into(), Tensor::from_bytes(DType::U8, &[], &[128])?);
    g.initializers.insert("s".into(), Tensor::from_vec(&[], vec![0.02f32])?);
    g.initializers.insert("ys".into(), Tensor::from_vec(&[], vec![3.0f32])?);
    g.initializers.insert("yz".into(), Tensor::from_bytes(DType::U8, &[], &[100])?);
    g.nodes.push(Node::new("MatMulInteger", "mi", &["a", "b", "az", "bz"], &["acc"]));
    g.nodes.push(Node::new("QLinearMatMul", "qm", &["a", "s", "az", "b", "s", "bz", "ys", "yz"], &["q"]));
    g.outputs.push(ValueInfo { name: "acc".into(), dtype: Some(DType::I32), shape: None });
    g.outputs.push(ValueInfo { name: "q".into(), dtype: Some(DType::U8), shape: None });
    Ok(g)
}

struct Case {
    name: &'static str,
    graph: Graph,
    inputs: Vec<(String, Tensor)>,
    dims: HashMap<String, usize>,
}

fn cases() -> tessera_core::Result<Vec<Case>> {
    let mut dims = HashMap::new();
    dims.insert("batch".to_string(), 1);
    dims.insert("seq".to_string(), 16);
    let hidden = tessera::demo::HIDDEN;
    let x = Tensor::from_vec(&[1, 16, hidden], rand_f32(16 * hidden, 31))?;
    let img = Tensor::from_vec(&[1, 8, 12, 12], rand_f32(8 * 144, 32))?;
    let bytes: Vec<u8> = rand_f32(16 * 64, 33).iter().map(|v| ((v + 1.0) * 127.5) as u8).collect();
    Ok(vec![
        Case {
            name: "transformer layer",
            graph: tessera::demo::encoder_layer(7)?,
            inputs: vec![("x".into(), x)],
            dims: dims.clone(),
        },
        Case { name: "CNN block", graph: conv_graph()?, inputs: vec![("x".into(), img)], dims: HashMap::new() },
        Case {
            name: "int8 model",
            graph: int8_graph()?,
            inputs: vec![("a".into(), Tensor::from_bytes(DType::U8, &[16, 64], &bytes)?)],
            dims: HashMap::new(),
        },
    ])
}

fn session(case: &Case, provider: &str, precision: Precision, threads: usize) -> tessera_core::Result<Session> {
    let opts = SessionOptions {
        threads,
        dims: case.dims.clone(),
        providers: vec![provider.to_string()],
        precision,
        ..Default::default()
    };
    Session::from_graph(case.graph.clone(), opts)
}

fn time_ms(s: &Session, inputs: &[(String, Tensor)]) -> tessera_core::Result<f64> {
    Ok(seconds_per_call(|| s.run(inputs.to_vec()).map(drop))? * 1e3)
}

/// Largest difference relative to the reference's largest magnitude, over
/// every output (integer outputs must match exactly: limit 0).
fn output_error(got: &[(String, Tensor)], want: &[(String, Tensor)]) -> Result<f64, String> {
    let mut worst = 0f64;
    for ((gn, g), (_, w)) in got.iter().zip(want) {
        if g.shape() != w.shape() || g.dtype() != w.dtype() {
            return Err(format!(
                "output {gn}: {:?} {} vs reference {:?} {}",
                g.shape(),
                g.dtype(),
                w.shape(),
                w.dtype()
            ));
        }
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        let scale = wv.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let e = gv.iter().zip(&wv).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        worst = worst.max(if g.dtype().is_float() { e / scale } else { e });
    }
    Ok(worst)
}

fn provider_checks(threads: usize) -> Vec<Check> {
    let cases = match cases() {
        Ok(c) => c,
        Err(e) => {
            return vec![Check {
                kind: "provider",
                name: "test cases".into(),
                status: Status::Fail,
                detail: e.to_string(),
                speed: None,
            }]
        }
    };
    // (provider, precision, limit relative to the output's scale).
    let runs: &[(&str, Precision, f64)] = &[
        ("amx", Precision::Bf16, 3e-2),
        ("amx", Precision::Fp32Tiles, 1e-4),
        ("amx", Precision::Int8, 6e-2),
        ("accelerate", Precision::Fp32, 1e-4),
        ("sme", Precision::Fp32, 1e-4),
        ("sme", Precision::Bf16, 3e-2),
        // fp16 inside the converted regions.
        ("coreml", Precision::Fp32, 1e-2),
        ("coreml-interpreter", Precision::Fp32, 1e-2),
    ];
    // Why a provider cannot start on this machine (checked once, so that
    // an unavailable provider reads as such, not as a failure).
    let why_not = |provider: &str| -> Option<String> {
        match provider {
            "amx" => tessera_providers::amx::AmxProvider::new(Precision::Bf16).err(),
            "accelerate" => tessera_providers::accelerate::AccelerateProvider::new().err(),
            "sme" => tessera_providers::amx::sme::SmeProvider::new(Precision::Fp32).err(),
            "coreml" => tessera_providers::coreml::CoreMlProvider::new().err(),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for case in &cases {
        let reference = session(case, "cpu", Precision::Fp32, threads).and_then(|s| {
            let r = s.run(case.inputs.clone())?;
            Ok((time_ms(&s, &case.inputs)?, r))
        });
        let (ref_ms, want) = match reference {
            Ok(r) => r,
            Err(e) => {
                out.push(Check {
                    kind: "provider",
                    name: format!("cpu / {}", case.name),
                    status: Status::Fail,
                    detail: e.to_string(),
                    speed: None,
                });
                continue;
            }
        };
        out.push(Check {
            kind: "provider",
            name: format!("cpu (reference) / {}", case.name),
            status: Status::Pass,
            detail: "the portable reference the others are compared with".into(),
            speed: Some(format!("{ref_ms:.2} ms")),
        });
        for &(provider, precision, limit) in runs {
            let name = format!("{provider} {precision} / {}", case.name);
            if let Some(why) = why_not(provider) {
                out.push(unavailable("provider", &name, why));
                continue;
            }
            let s = match session(case, provider, precision, threads) {
                Ok(s) => s,
                Err(e) => {
                    out.push(Check {
                        kind: "provider",
                        name,
                        status: Status::Fail,
                        detail: e.to_string(),
                        speed: None,
                    });
                    continue;
                }
            };
            if let Some(why) = s.skipped_providers().first() {
                out.push(unavailable("provider", &name, why.clone()));
                continue;
            }
            // Nodes carry the provider's own name ("coreml" for the
            // interpreter back end too): the session's first provider.
            let placed_as = s.provider_names().into_iter().next().unwrap_or_default();
            let on_it = s.assignments().iter().filter(|a| a.provider == placed_as).count();
            // Where the hardware behind a provider differs from its name
            // (the tile provider on AVX-512 dot products), say which.
            let shown = if placed_as.is_empty() || provider.starts_with(placed_as.as_str()) {
                provider.to_string()
            } else {
                format!("{provider} ({placed_as})")
            };
            if on_it == 0 {
                let first = s.assignments().into_iter().next();
                let why = first.map(|a| format!(" (first node, {}: {})", a.op_type, a.reason)).unwrap_or_default();
                out.push(unavailable(
                    "provider",
                    &name,
                    format!("{provider} claims no node of this case at {precision}{why}"),
                ));
                continue;
            }
            let checked =
                s.run(case.inputs.clone()).map_err(|e| e.to_string()).and_then(|got| output_error(&got, &want));
            let limit = if case.name == "int8 model" && precision != Precision::Int8 { 0.0 } else { limit };
            // Back ends that place operations themselves say where.
            let plans: Vec<String> = s.device_plans().iter().map(|(_, _, p)| p.counts_text()).collect();
            let plan = if plans.is_empty() { String::new() } else { format!("; operations on {}", plans.join(" | ")) };
            let (status, detail) = match checked {
                Ok(e) if e <= limit => {
                    (Status::Pass, format!("{on_it} nodes on {shown}; error {e:.1e} (limit {limit:.0e}){plan}"))
                }
                Ok(e) => (Status::Fail, format!("{on_it} nodes on {shown}; error {e:.1e} > limit {limit:.0e}{plan}")),
                Err(e) => (Status::Fail, e),
            };
            let speed = (status == Status::Pass)
                .then(|| time_ms(&s, &case.inputs).ok())
                .flatten()
                .map(|ms| format!("{ms:.2} ms ({:.2}x the cpu provider)", ref_ms / ms));
            out.push(Check { kind: "provider", name, status, detail, speed });
        }
    }
    out
}

/// Runs every check; the exit status is 1 if any available path failed.
pub fn run(threads: usize, json: bool) -> Result<i32, String> {
    let report = tessera_hw::detect();
    let mut checks = kernel_checks();
    checks.extend(provider_checks(threads));
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            cpu: &'a str,
            os: &'a str,
            checks: &'a [Check],
            failed: usize,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out { cpu: &report.cpu.model, os: &report.os, checks: &checks, failed })
                .map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "tessera doctor: {} ({}, {} threads)",
            report.cpu.model,
            report.os,
            if threads == 0 { report.cpu.logical_cores } else { threads }
        );
        for kind in ["kernel", "provider"] {
            println!("\n{kind}s:");
            for c in checks.iter().filter(|c| c.kind == kind) {
                let tag = match c.status {
                    Status::Pass => "PASS",
                    Status::Fail => "FAIL",
                    Status::Unavailable => "n/a ",
                };
                let speed = c.speed.as_deref().map(|s| format!("  [{s}]")).unwrap_or_default();
                println!("  {tag}  {:<44} {}{speed}", c.name, c.detail);
            }
        }
        let passed = checks.iter().filter(|c| c.status == Status::Pass).count();
        let na = checks.iter().filter(|c| c.status == Status::Unavailable).count();
        println!("\n{passed} passed, {failed} failed, {na} unavailable on this machine");
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
