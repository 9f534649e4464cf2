#!/usr/bin/env python3
"""The ONNX Attention operator (opset 23): Tessera beside ONNX Runtime in one run.

Each case is a one-node model built here (no download) with random inputs
(numpy default_rng(0), float32): self-attention of BERT-base's shape, a long
causal prefill, grouped-query heads in the 3-D layout, one decoding step
against a key/value cache of 511 positions (grouped-query, causal), and a
batch with a boolean padding mask. For each: ONNX Runtime's p50 (sequential
execution, intra-op threads = T), `tessera bench`'s p50 under each of
--precisions (fp32: the vector units; bf16: the products on bf16 tiles
where the machine has them), the ratio ORT / Tessera (above 1: Tessera
faster), and the largest difference of Tessera's output Y from ONNX
Runtime's over max |Y| (held to 1e-4 in fp32, 3e-2 in bf16).

    python benches/attention_vs_ort.py --tessera target/release/tessera --threads 2 --iters 50 --precisions fp32,bf16

`--smoke` runs the smallest case once (the test suite's check that the
script works); its timings mean nothing.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

# name: (inputs as (name, shape, dtype)), attributes, outputs
CASES = {
    "bert_4d": ([("q", [1, 12, 128, 64]), ("k", [1, 12, 128, 64]), ("v", [1, 12, 128, 64])], {}, ["y"]),
    "causal_prefill_4d": (
        [("q", [1, 12, 512, 64]), ("k", [1, 12, 512, 64]), ("v", [1, 12, 512, 64])],
        {"is_causal": 1},
        ["y"],
    ),
    "gqa_3d": ([("q", [1, 128, 32 * 64]), ("k", [1, 128, 8 * 64]), ("v", [1, 128, 8 * 64])],
               {"q_num_heads": 32, "kv_num_heads": 8}, ["y"]),
    "decode_step_cache": (
        [("q", [1, 32, 1, 64]), ("k", [1, 8, 1, 64]), ("v", [1, 8, 1, 64]), ("", None),
         ("past_key", [1, 8, 511, 64]), ("past_value", [1, 8, 511, 64])],
        {"is_causal": 1},
        ["y", "present_key", "present_value"],
    ),
    "padding_mask_b4": (
        [("q", [4, 12, 128, 64]), ("k", [4, 12, 128, 64]), ("v", [4, 12, 128, 64]), ("mask", [4, 1, 128, 128], "bool")],
        {},
        ["y"],
    ),
}
SMOKE = "decode_step_cache"


def build(name: str, work: Path) -> tuple[Path, dict]:
    inputs, attrs, outputs = CASES[name]
    rng = np.random.default_rng(0)
    vis, feeds, names = [], {}, []
    for spec in inputs:
        iname, shape = spec[0], spec[1]
        names.append(iname)
        if not iname:
            continue
        if len(spec) > 2 and spec[2] == "bool":
            # Padding: batch b keeps its first 128 - 16 b keys.
            # (every query row of a batch sees the same keys; ONNX Runtime
            # takes no mask broadcast over the query axis).
            keep = np.arange(shape[-1])[None, :] < (shape[-1] - 16 * np.arange(shape[0]))[:, None]
            x = np.broadcast_to(keep[:, None, None, :], shape).copy()
            vis.append(helper.make_tensor_value_info(iname, TensorProto.BOOL, shape))
        else:
            x = rng.standard_normal(shape, dtype=np.float32)
            vis.append(helper.make_tensor_value_info(iname, TensorProto.FLOAT, shape))
        feeds[iname] = x
    node = helper.make_node("Attention", names, outputs, **attrs)
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    g = helper.make_graph([node], name, vis, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    path = work / f"{name}.onnx"
    onnx.save(m, str(path))
    return path, feeds


def ort_time(path: Path, feeds: dict, threads: int, warmup: int, iters: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = s.run(None, feeds)[0]
    for _ in range(warmup):
        s.run(None, feeds)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        s.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def tessera(cli: str, path: Path, feeds: dict, threads: int, warmup: int, iters: int, precision: str):
    with tempfile.TemporaryDirectory() as d:
        args = []
        for k, x in feeds.items():
            f = Path(d) / f"{k}.npy"
            np.save(f, x)
            args += ["--input", f"{k}={f}"]
        # `bench` times its own seeded random inputs (a boolean mask among
        # them is then random too); `run` takes these ones, for the accuracy.
        cmd = [cli, "bench", str(path), "--threads", str(threads), "--warmup", str(warmup),
               "--iterations", str(iters), "--json", "--precision", precision]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        line = next(l for l in reversed(r.stdout.splitlines()) if l.lstrip().startswith("{"))
        ms = json.loads(line)["p50_ms"]
        cmd = [cli, "run", str(path), "--threads", str(threads), "--output-dir", d, "--precision", precision] + args
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        return ms, np.load(Path(d) / "y.npy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--threads", default="2")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precisions", default="fp32", help="tessera precisions, comma list (fp32, bf16)")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    cases = [SMOKE] if a.smoke else a.cases.split(",")
    threads = [1] if a.smoke else [int(t) for t in a.threads.split(",")]
    iters, warmup = (1, 0) if a.smoke else (a.iters, a.warmup)
    print(f"onnxruntime {ort.__version__}; p50 ms; ratio = ORT p50 / Tessera p50 (above 1: Tessera faster)")
    precisions = [p for p in a.precisions.split(",") if p]
    limits = {"fp32": 1e-4, "bf16": 3e-2}
    if any(p not in limits for p in precisions):
        ap.error(f"--precisions takes {', '.join(limits)}")
    print(f"{'case':<20}{'thr':>4}{'prec':>6}{'ORT':>10}{'tessera':>10}{'ratio':>7}{'max err':>10}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="attention_vs_ort_") as tmp:
        work = Path(tmp)
        for name in cases:
            path, feeds = build(name, work)
            for t in threads:
                ort_ms, ref = ort_time(path, feeds, t, warmup, iters)
                for prec in precisions:
                    try:
                        ms, got = tessera(a.tessera, path, feeds, t, warmup, iters, prec)
                        err = float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))
                        if got.shape != ref.shape or not err < limits[prec]:
                            failed = True
                        print(f"{name:<20}{t:>4}{prec:>6}{ort_ms:>10.3f}{ms:>10.3f}{ort_ms / ms:>7.2f}{err:>10.2e}",
                              flush=True)
                    except (RuntimeError, StopIteration, FileNotFoundError, ValueError) as e:
                        failed = True
                        print(f"{name:<20}{t:>4}{prec:>6}{ort_ms:>10.3f}  error: {e}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
