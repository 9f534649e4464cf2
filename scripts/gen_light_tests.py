#!/usr/bin/env python3
"""Turn the onnx wheel's 9 data/light/ models into ordinary conformance cases.

The wheel ships light_<name>.onnx and light_<name>_output_0.pb but no inputs.
The ONNX backend test runner (onnx/backend/test/runner/__init__.py,
Runner._add_model_test.run with use_dummy=True) makes the inputs itself:
for every graph input that is not an initializer it calls
generate_dummy_data(x, seed=0, random=False), which is deterministic,

    shape = dim_value, or 1 for a symbolic dim
    value = (np.arange(n).reshape(shape) / n).astype(np.float32)

and compares against the shipped output with the per-model tolerances listed in
onnx.backend.test.case.model.collect_testcases() (also in data/real/*/data.json:
densenet121 uses rtol 2e-3, the rest 1e-3; atol 1e-7).

We reproduce exactly that into <out>/light/test_<name>/:
    model.onnx                      (copied)
    data.json                       {"rtol": .., "atol": ..}  (loader convention)
    test_data_set_0/input_N.pb      (the runner's dummy inputs)
    test_data_set_0/output_0.pb     (the shipped expected output)
Idempotent via a STAMP file (onnx version + script hash).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def dummy_input(vi):
    """Same values as onnx's Runner.generate_dummy_data(x, seed=0, random=False)."""
    import numpy as np

    if vi.type.tensor_type.elem_type != 1:
        raise SystemExit(f"light input {vi.name} is not float32; the runner cannot make it either")
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
    n = np.prod(shape)
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def light_cases():
    """(case name, model path, expected-output paths, rtol, atol) as the runner lists them."""
    import onnx
    import onnx.backend.test.case.model as model_cases

    root = Path(onnx.__file__).resolve().parent.parent
    out = []
    for tc in model_cases.collect_testcases():
        if tc.kind != "real" or not (tc.url or "").startswith("onnx/backend/test/data/light/"):
            continue
        model = root / tc.url
        prefix = model.with_suffix("")
        outputs = sorted(prefix.parent.glob(prefix.name + "_output_*.pb"))
        out.append((tc.name, model, outputs, tc.rtol, tc.atol))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=str(REPO / ".cache" / "onnx-light-tests"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()

    import onnx
    from onnx import numpy_helper

    out = Path(args.output)
    want = f"onnx={onnx.__version__} script={hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}\n"
    if not args.force and (out / "STAMP").exists() and (out / "STAMP").read_text() == want:
        print(f"gen_light_tests: up to date ({out}/light)")
        return 0

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    cases = light_cases()
    if len(cases) != 9:
        print(f"gen_light_tests: expected 9 light models, found {len(cases)}", file=sys.stderr)
        return 1
    for name, model_path, outputs, rtol, atol in cases:
        case = tmp / "light" / name
        ds = case / "test_data_set_0"
        ds.mkdir(parents=True)
        shutil.copyfile(model_path, case / "model.onnx")
        (case / "data.json").write_text(json.dumps({"rtol": rtol, "atol": atol}, sort_keys=True))
        m = onnx.load(str(model_path))
        if len(outputs) != len(m.graph.output):
            print(f"gen_light_tests: {name}: {len(outputs)} expected outputs for {len(m.graph.output)} graph outputs", file=sys.stderr)
            return 1
        inits = {i.name for i in m.graph.initializer}
        k = 0
        for vi in m.graph.input:
            if vi.name in inits:
                continue
            t = numpy_helper.from_array(dummy_input(vi), vi.name)
            (ds / f"input_{k}.pb").write_bytes(t.SerializeToString())
            k += 1
        for j, o in enumerate(outputs):
            shutil.copyfile(o, ds / f"output_{j}.pb")
    (tmp / "STAMP").write_text(want)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"gen_light_tests: wrote {len(cases)} cases to {out}/light")
    return 0


if __name__ == "__main__":
    sys.exit(main())
