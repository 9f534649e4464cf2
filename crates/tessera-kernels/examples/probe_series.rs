//! Does the vector unit slow down when the tile unit does? On T threads at
//! once (default 1), for S seconds (default 3), each thread repeats: the
//! AMX bf16 probe on random operand tiles, the same on zero tiles, the
//! AVX-512 fp32 FMA probe (about 1 ms each), and the series is printed with
//! the correlation of the first and last, and their means in the tile
//! unit's slow samples (data below 0.6x zero) and the others.
//! `cargo run --release -p tessera-kernels --example probe_series -- T S`;
//! needs AMX (the lent Xeon: `benches/results/2026-12-02-phases/`).
use tessera_kernels::gemm::ukernel::DotKind;
use tessera_kernels::gemm::ukernel::{amx, avx512};

fn main() {
    if let Err(why) = tessera_hw::amx_enabled() {
        eprintln!("probe_series needs AMX: {why}");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map_or(1, |s| s.parse().expect("T: a thread count")).max(1);
    let secs: f64 = args.get(2).map_or(3.0, |s| s.parse().expect("S: seconds"));
    let t0 = std::time::Instant::now();
    let rows: Vec<Vec<(f64, f64, f64, f64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    while t0.elapsed().as_secs_f64() < secs {
                        let t = t0.elapsed().as_secs_f64();
                        let a = amx::probe_peak_data(DotKind::Bf16, 30_000) / 1e9;
                        let z = amx::probe_peak(DotKind::Bf16, 30_000) / 1e9;
                        let v = avx512::probe_fp32_fma(150_000) / 1e9;
                        out.push((t, a, z, v));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!("thread  t_s  amx_data  amx_zero  avx512_fma  (GFLOP/s)");
    for (i, r) in rows.iter().enumerate() {
        for (t, a, z, v) in r.iter().step_by((r.len() / 40).max(1)) {
            println!("{i} {t:.3} {a:.0} {z:.0} {v:.0}");
        }
    }
    // Correlation of the AMX data rate with the FMA rate, all samples.
    let all: Vec<_> = rows.iter().flatten().collect();
    let n = all.len() as f64;
    let ma = all.iter().map(|r| r.1).sum::<f64>() / n;
    let mv = all.iter().map(|r| r.3).sum::<f64>() / n;
    let cov = all.iter().map(|r| (r.1 - ma) * (r.3 - mv)).sum::<f64>() / n;
    let sa = (all.iter().map(|r| (r.1 - ma).powi(2)).sum::<f64>() / n).sqrt();
    let sv = (all.iter().map(|r| (r.3 - mv).powi(2)).sum::<f64>() / n).sqrt();
    let slow: Vec<_> = all.iter().filter(|r| r.1 < 0.6 * r.2).collect();
    let fast: Vec<_> = all.iter().filter(|r| r.1 >= 0.6 * r.2).collect();
    let mean = |v: &Vec<&&(f64, f64, f64, f64)>, f: fn(&(f64, f64, f64, f64)) -> f64| {
        v.iter().map(|r| f(r)).sum::<f64>() / v.len().max(1) as f64
    };
    println!(
        "samples {} corr(amx_data, fma) {:.3}; slow (data < 0.6 zero): {} samples, amx {:.0} fma {:.0}; fast: {} samples, amx {:.0} fma {:.0}",
        all.len(),
        if sa * sv > 0.0 { cov / (sa * sv) } else { 0.0 },
        slow.len(),
        mean(&slow, |r| r.1),
        mean(&slow, |r| r.3),
        fast.len(),
        mean(&fast, |r| r.1),
        mean(&fast, |r| r.3)
    );
}
