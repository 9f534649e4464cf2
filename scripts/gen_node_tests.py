#!/usr/bin/env python3
"""Regenerate the ONNX backend node tests offline from the installed onnx wheel.

Since onnx 1.23 the wheel no longer ships data/node/, but it still ships the
generators: onnx.backend.test.case.node.collect_testcases() builds every case
(model + inputs + numpy-reference outputs) and
onnx.backend.test.cmd_tools.generate_data() knows how to serialise cases
(tensors, sequences, optionals, maps) into the on-disk layout
<out>/<kind>/<name>/{model.onnx,test_data_set_0/{input,output}_N.pb}.

generate_data() only walks the *model* test cases, so we point it at the node
collector instead. Output: <out>/node/test_*/ (default .cache/onnx-node-tests).

Idempotent: a stamp file records the onnx version and this script's hash; when
it matches, nothing is regenerated. --force regenerates anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stamp_text() -> str:
    import onnx

    h = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"onnx={onnx.__version__} script={h}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=str(REPO / ".cache" / "onnx-node-tests"))
    ap.add_argument("--force", action="store_true", help="regenerate even if the stamp matches")
    ap.add_argument("--op-type", default=None, help="only this op type (for debugging; not stamped)")
    args = ap.parse_args()

    out = Path(args.output)
    stamp = out / "STAMP"
    want = stamp_text()
    if not args.force and args.op_type is None and stamp.exists() and stamp.read_text() == want:
        n = sum(1 for _ in (out / "node").iterdir())
        print(f"gen_node_tests: up to date ({n} cases in {out}/node, {want.strip()})")
        return 0

    import onnx.backend.test.case.node as node_cases
    from onnx.backend.test import cmd_tools

    t0 = time.time()
    # Generate into a temporary sibling and swap it in, so an interrupted run
    # never leaves a half-written tree that looks complete.
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    # The numpy reference code warns about intended overflows/inf/nan; mute it.
    warnings.simplefilter("ignore", RuntimeWarning)
    cases = node_cases.collect_testcases(args.op_type)
    # generate_data() calls `model_test.collect_testcases()`; give it the node cases.
    cmd_tools.model_test = types.SimpleNamespace(collect_testcases=lambda: cases)
    cmd_tools.generate_data(argparse.Namespace(output=str(tmp)))

    kinds = {c.kind for c in cases}
    if kinds != {"node"}:
        print(f"gen_node_tests: unexpected case kinds {kinds}", file=sys.stderr)
        return 1
    n = sum(1 for _ in (tmp / "node").iterdir())
    if args.op_type is None:
        (tmp / "STAMP").write_text(want)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"gen_node_tests: wrote {n} cases to {out}/node in {time.time() - t0:.1f}s ({want.strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
