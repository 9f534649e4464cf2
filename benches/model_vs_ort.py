#!/usr/bin/env python3
"""Any ONNX model: Tessera against ONNX Runtime on the same file, in one run.

For each --threads T and each --dims set, R rounds (--rounds) of: ONNX Runtime
(CPU provider, intra_op_num_threads=T, inter_op 1, sequential; W warm-ups and
N timed calls with perf_counter) then `tessera bench MODEL --threads T --dim
K=V ... --warmup W --iterations N --json [--precision P]`, back to back. The
table gives the medians over the rounds of each side's p50 and the ratio
tessera / ORT (below 1: Tessera faster), with the ratio's range.

Accuracy, once per dims set: one seeded input set (integer inputs whose name
has "mask" are ones, other integers uniform in [0, 64), floats standard
normal) through `tessera run`, ORT with its optimizations on (what users run)
and ORT with them off (ORT_DISABLE_ALL: the graph's operators one by one,
the closest to the file's definition for QDQ models, whose fused kernels
round differently); cosine and max abs error of every float output, and
of the two ORT runs against each other (how far rounding alone moves them).

Tessera's bench makes its own inputs of the same shapes (ids in [0, 64), mask
ones); latency does not depend on the values.

  python3 benches/model_vs_ort.py MODEL --dims batch_size=1,sequence_length=128 \\
      --dims batch_size=8,sequence_length=128 --threads 1,2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

NP_TYPES = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}


def parse_dims(s: str) -> dict[str, int]:
    out = {}
    for part in s.split(","):
        k, _, v = part.partition("=")
        if not k or not v.isdigit():
            raise SystemExit(f"--dims '{s}': want NAME=VALUE[,NAME=VALUE...]")
        out[k.strip()] = int(v)
    return out


def make_inputs(model: Path, dims: dict[str, int], seed: int = 1234) -> dict[str, np.ndarray]:
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        shape = []
        for d in t.shape.dim:
            if d.dim_param:
                if d.dim_param not in dims:
                    raise SystemExit(f"input {i.name}: give --dims {d.dim_param}=VALUE")
                shape.append(dims[d.dim_param])
            else:
                shape.append(d.dim_value)
        dt = NP_TYPES.get(t.elem_type)
        if dt is None:
            raise SystemExit(f"input {i.name}: element type {t.elem_type} is not handled here")
        if np.issubdtype(dt, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
        elif dt is np.bool_:
            feeds[i.name] = np.ones(shape, dt)
        elif "mask" in i.name:
            feeds[i.name] = np.ones(shape, dt)
        else:
            feeds[i.name] = rng.integers(0, 64, size=shape).astype(dt)
    return feeds


def ort_session(model: Path, threads: int, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def ort_p50(model: Path, feeds: dict, threads: int, warmup: int, iters: int) -> float:
    sess = ort_session(model, threads)
    for _ in range(warmup):
        sess.run(None, feeds)
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(ms, 50))


def tessera_p50(tessera: Path, model: Path, dims: dict, threads: int, warmup: int, iters: int,
                precision: str | None) -> tuple[float | None, str]:
    cmd = [str(tessera), "bench", str(model), "--threads", str(threads), "--warmup", str(warmup),
           "--iterations", str(iters), "--json"]
    for k, v in dims.items():
        cmd += ["--dim", f"{k}={v}"]
    if precision:
        cmd += ["--precision", precision]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["?"])[-1]
    line = next((l for l in reversed(r.stdout.splitlines()) if l.lstrip().startswith("{")), None)
    if line is None:
        return None, "bench printed no JSON"
    out = json.loads(line)
    probe = out.get("tile_probe_gflops")
    return float(out["p50_ms"]), (f"tile probe {probe[0]:.0f}/{probe[1]:.0f}" if probe else "")


def accuracy(tessera: Path, model: Path, feeds: dict, threads: int, precision: str | None, work: Path) -> list[str]:
    # A fresh folder: an output left by an earlier run must not stand in
    # for one this run did not write.
    if work.exists():
        shutil.rmtree(work)
    (work / "in").mkdir(parents=True)
    cmd = [str(tessera), "run", str(model), "--threads", str(threads), "--output-dir", str(work / "out")]
    for name, a in feeds.items():
        f = work / "in" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.npy"
        np.save(f, a)
        cmd += ["--input", f"{name}={f}"]
    if precision:
        cmd += ["--precision", precision]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return [f"tessera run failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"]
    lines = []
    refs = {}
    for label, optimize in (("ORT", True), ("ORT unoptimized", False)):
        sess = ort_session(model, 0, optimize)
        refs[label] = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for name, ref in refs["ORT"].items():
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        f = work / "out" / (re.sub(r"[^A-Za-z0-9_.\-]", "_", name) + ".npy")
        if not f.exists():
            lines.append(f"{name}: tessera wrote no {f.name}")
            continue
        got = np.load(f)
        # A NaN or infinity where ORT has a finite value is a failure, not a
        # cosine.
        if got.shape != ref.shape or (~np.isfinite(got) & np.isfinite(ref)).any():
            lines.append(f"{name}: tessera wrote {got.dtype} {list(got.shape)} against ORT's {list(ref.shape)}, "
                         f"non-finite where ORT is finite: {int((~np.isfinite(got) & np.isfinite(ref)).sum()) if got.shape == ref.shape else '-'}: mismatch")
            continue
        got = got.astype(np.float64).ravel()
        parts = []
        for label, outs in refs.items():
            r = outs[name].astype(np.float64).ravel()
            denom = np.linalg.norm(got) * np.linalg.norm(r)
            cos = float(got @ r / denom) if denom > 0 else float(np.array_equal(got, r))
            parts.append(f"vs {label} cosine {cos:.6f} max err {np.abs(got - r).max():.3g}")
        a, b = (refs[k][name].astype(np.float64).ravel() for k in ("ORT", "ORT unoptimized"))
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
        parts.append(f"(ORT vs ORT unoptimized: cosine {cos:.6f} max err {np.abs(a - b).max():.3g})")
        lines.append(f"{name} {list(refs['ORT'][name].shape)}: " + "; ".join(parts))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--dims", action="append", default=[], help="NAME=V[,NAME=V...]; repeat for more sets")
    ap.add_argument("--threads", default="2", help="comma list")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--precision", default=None, help="tessera --precision (default: its own)")
    ap.add_argument("--tessera", default=str(REPO / "target/release/tessera"))
    ap.add_argument("--work", default=str(REPO / ".cache/bench/model_vs_ort"))
    ap.add_argument("--smoke", action="store_true", help="1 warm-up, 2 iterations, 1 round: plumbing only")
    args = ap.parse_args()
    if args.smoke:
        args.warmup, args.iterations, args.rounds = 1, 2, 1
    model, tessera = Path(args.model), Path(args.tessera)
    if not tessera.exists():
        raise SystemExit(f"{tessera} not found (cargo build --release -p tessera-cli)")
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    dim_sets = [parse_dims(d) for d in args.dims] or [{}]
    print(f"model {model}; {args.rounds} round(s) of {args.warmup} warm-ups and {args.iterations} calls; "
          f"tessera precision {args.precision or 'default'}")
    print(f"{'dims':32s} {'thr':>3s} {'ORT p50 ms':>10s} {'tessera p50':>11s} {'ratio':>6s}  range        note")
    failed = False
    for dims in dim_sets:
        feeds = make_inputs(model, dims)
        label = ",".join(f"{k}={v}" for k, v in dims.items()) or "-"
        for t in threads:
            ort_ms, tes_ms, note = [], [], ""
            for _ in range(args.rounds):
                ort_ms.append(ort_p50(model, feeds, t, args.warmup, args.iterations))
                p, note = tessera_p50(tessera, model, dims, t, args.warmup, args.iterations, args.precision)
                if p is None:
                    failed = True
                    ort_ms.pop()
                    break
                tes_ms.append(p)
            if not tes_ms:
                print(f"{label:32s} {t:3d} {'-':>10s} {'-':>11s} {'-':>6s}  -            {note}")
                continue
            ratios = [a / b for a, b in zip(tes_ms, ort_ms)]
            print(f"{label:32s} {t:3d} {statistics.median(ort_ms):10.3f} {statistics.median(tes_ms):11.3f} "
                  f"{statistics.median(ratios):6.2f}  {min(ratios):.2f}-{max(ratios):.2f}    {note}")
        for line in accuracy(tessera, model, feeds, max(threads), args.precision, Path(args.work) / label):
            failed |= "tessera run failed" in line or "wrote no" in line or line.endswith("mismatch")
            print(f"  accuracy {label}: {line}")
    # A Tessera that cannot run the model fails the script (and the suite's smoke run).
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
