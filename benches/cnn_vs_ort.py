#!/usr/bin/env python3
"""Vision models: Tessera beside ONNX Runtime fp32 in one run.

For each model (default: the CNNs of the onnx wheel's backend test data,
`data/light/`, real architectures with small random weights), at each thread
count: ONNX Runtime's p50 (sequential execution, intra-op threads = T), then
`tessera bench` at each precision, with the ratio ORT p50 / Tessera p50, and
the output of `tessera run` on the same input against ONNX Runtime's (cosine
similarity and max abs error over max |ORT|; a model's trailing Softmax is cut off first,
since random-weight classifiers saturate it and it would hide any error). Inputs: the declared shape (symbolic
dimensions as 1), numpy default_rng(0).random, float32.

    python benches/cnn_vs_ort.py --tessera target/release/tessera \
        --threads 1,2 --precisions fp32,bf16 --iters 10 --warmup 2

`--smoke` runs one small model once per precision (the test suite's check
that the script works); its timings mean nothing.
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

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"
DEFAULT_MODELS = ["resnet50", "inception_v1", "squeezenet", "densenet121", "vgg19"]


def model_path(name: str) -> Path:
    p = Path(name)
    return p if p.suffix == ".onnx" else LIGHT / f"light_{name}.onnx"


def without_final_softmax(path: Path, work: Path) -> Path:
    """The model with a trailing Softmax removed (its input becomes the
    output): random-weight classifiers saturate their softmax, which would
    hide every error in the comparison."""
    m = onnx.load(str(path))
    g = m.graph
    last = g.node[-1] if len(g.node) else None
    if last is None or last.op_type != "Softmax" or list(last.output) != [g.output[0].name]:
        return path
    logits = onnx.helper.make_tensor_value_info(last.input[0], g.output[0].type.tensor_type.elem_type, None)
    g.node.pop()
    g.output.pop(0)
    g.output.insert(0, logits)
    out = work / f"{path.stem}_logits.onnx"
    onnx.save(m, str(out))
    return out


def make_input(path: Path) -> tuple[str, np.ndarray]:
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in inits)
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    return inp.name, np.random.default_rng(0).random(dims, dtype=np.float32)


def ort_time(path: Path, name: str, x: np.ndarray, threads: int, warmup: int, iters: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = s.run(None, {name: x})[0]
    for _ in range(warmup):
        s.run(None, {name: x})
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        s.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def tessera_time(cli: str, path: Path, threads: int, precision: str, warmup: int, iters: int):
    cmd = [cli, "bench", str(path), "--threads", str(threads), "--precision", precision,
           "--warmup", str(warmup), "--iterations", str(iters), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    line = next(l for l in reversed(r.stdout.splitlines()) if l.lstrip().startswith("{"))
    return json.loads(line)["p50_ms"]


def tessera_output(cli: str, path: Path, name: str, x: np.ndarray, threads: int, precision: str,
                   out_name: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "x.npy"
        np.save(f, x)
        cmd = [cli, "run", str(path), "--threads", str(threads), "--precision", precision,
               "--input", f"{name}={f}", "--output-dir", d]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in out_name)
        return np.load(Path(d) / f"{safe}.npy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="light model names or .onnx paths, comma separated")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    models = ["squeezenet"] if a.smoke else a.models.split(",")
    threads = [1] if a.smoke else [int(t) for t in a.threads.split(",")]
    iters, warmup = (1, 0) if a.smoke else (a.iters, a.warmup)
    precisions = a.precisions.split(",")
    print(f"onnxruntime {ort.__version__}; p50 ms; ratio = ORT fp32 p50 / Tessera p50 (above 1: Tessera faster)")
    print(f"{'model':<14}{'thr':>4}{'ORT fp32':>10}  " + "  ".join(f"{'tessera ' + p:>16}{'ratio':>7}{'cosine':>10}{'rel err':>10}" for p in precisions))
    failed = False
    with tempfile.TemporaryDirectory(prefix="cnn_vs_ort_") as tmp:
        work = Path(tmp)
        for mname in models:
            path = without_final_softmax(model_path(mname), work)
            name, x = make_input(path)
            out_name = onnx.load(str(path), load_external_data=False).graph.output[0].name
            for t in threads:
                ort_ms, ref = ort_time(path, name, x, t, warmup, iters)
                cells = []
                for p in precisions:
                    try:
                        ms = tessera_time(a.tessera, path, t, p, warmup, iters)
                        got = tessera_output(a.tessera, path, name, x, t, p, out_name).astype(np.float64).ravel()
                        r = ref.astype(np.float64).ravel()
                        cos = float(got @ r / (np.linalg.norm(got) * np.linalg.norm(r) + 1e-30))
                        err = float(np.abs(got - r).max() / max(np.abs(r).max(), 1e-30))
                        cells.append(f"{ms:>16.2f}{ort_ms / ms:>7.2f}{cos:>10.6f}{err:>10.2e}")
                    except (RuntimeError, StopIteration, FileNotFoundError, ValueError) as e:
                        failed = True
                        cells.append(f"  error: {e}")
                print(f"{Path(mname).stem:<14}{t:>4}{ort_ms:>10.2f}  " + "  ".join(cells), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
