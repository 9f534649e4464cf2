#!/usr/bin/env python3
"""Conformance cases for ONNX Runtime's quantized contrib operators (domain
com.microsoft), which its QOperator quantizer writes: QLinearAdd, QLinearMul,
QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, QLinearSigmoid,
QLinearLeakyRelu, QLinearSoftmax and QGemm.

The ONNX backend tests do not cover these operators, so each case here is a
one-node model on seeded random data whose expected outputs are ONNX
Runtime's (the pinned wheel). Shapes include broadcasting, ragged sizes, both
8-bit types, channels-last layouts and QGemm's transposes, per-column B and
float output.

Tessera computes the float definition (dequantize, operate in f32, quantize
with rounding half to even); the outputs must match ONNX Runtime's exactly,
as integer outputs do in every conformance case.

Writes <out>/contrib/test_<name>/{model.onnx,test_data_set_0/*.pb};
idempotent via a STAMP file (onnxruntime version + script hash).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cases():
    import numpy as np
    from onnx import TensorProto as T

    rng = np.random.default_rng(20261129)

    def q(dtype, shape):
        lo, hi = (0, 256) if dtype == np.uint8 else (-128, 128)
        return rng.integers(lo, hi, size=shape).astype(dtype)

    def scale(lo=0.005, hi=0.1):
        return np.array(rng.uniform(lo, hi), np.float32)

    def zero(dtype):
        return np.array(rng.integers(100, 156) if dtype == np.uint8 else rng.integers(-28, 28), dtype)

    out = []
    # (name, op, attrs, inputs [(name, array or None for omitted, is_initializer)])
    for dt, tag in [(np.uint8, "u8"), (np.int8, "s8")]:
        for op in ["QLinearAdd", "QLinearMul"]:
            for sa, sb, shp in [("same", "same", ((2, 3, 5, 7), (2, 3, 5, 7))), ("row", "bcast", ((2, 3, 5, 7), (1, 3, 1, 7))),
                                ("scalar", "bcast", ((4, 33), (1,)))]:
                a, b = q(dt, shp[0]), q(dt, shp[1])
                out.append((f"{op.lower()}_{tag}_{sa}_{sb}", op, {},
                            [("A", a, False), ("A_scale", scale(), True), ("A_zero_point", zero(dt), True),
                             ("B", b, False), ("B_scale", scale(), True), ("B_zero_point", zero(dt), True),
                             ("C_scale", scale(0.05, 0.2), True), ("C_zero_point", zero(dt), True)]))
        # Scales whose sums land halfway between steps: rounding half to even shows.
        half, one = np.array(0.5, np.float32), np.array(1.0, np.float32)
        odd = np.array(129 if dt == np.uint8 else 5, dt)
        for op in ["QLinearAdd", "QLinearMul"]:
            out.append((f"{op.lower()}_{tag}_ties", op, {},
                        [("A", q(dt, (4, 64)), False), ("A_scale", half, True), ("A_zero_point", zero(dt), True),
                         ("B", q(dt, (4, 64)), False), ("B_scale", half if op == "QLinearAdd" else one, True),
                         ("B_zero_point", zero(dt), True), ("C_scale", one if op == "QLinearAdd" else 32 * one, True),
                         ("C_zero_point", odd, True)]))
        for last in [0, 1]:
            x = q(dt, (2, 6, 9, 11) if not last else (2, 9, 11, 6))
            out.append((f"qlinearglobalaveragepool_{tag}_last{last}", "QLinearGlobalAveragePool", {"channels_last": last},
                        [("X", x, False), ("x_scale", scale(), True), ("x_zero_point", zero(dt), True),
                         ("y_scale", scale(0.002, 0.02), True), ("y_zero_point", zero(dt), True)]))
        for last, attrs in [(0, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
                            (0, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
                            (0, {"kernel_shape": [2, 3], "ceil_mode": 1, "strides": [2, 2]}),
                            (1, {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]})]:
            x = q(dt, (2, 5, 10, 9) if not last else (2, 10, 9, 5))
            name = f"qlinearaveragepool_{tag}_last{last}_k{''.join(map(str, attrs['kernel_shape']))}" \
                   f"{'_incl' if attrs.get('count_include_pad') else ''}{'_ceil' if attrs.get('ceil_mode') else ''}"
            out.append((name, "QLinearAveragePool", dict(attrs, channels_last=last),
                        [("X", x, False), ("x_scale", scale(), True), ("x_zero_point", zero(dt), True),
                         ("y_scale", scale(), True), ("y_zero_point", zero(dt), True)]))
        ys, yz = scale(), zero(dt)
        for axis in [1, -1]:
            shapes = [(2, 3, 4), (2, 5, 4), (2, 1, 4)] if axis == 1 else [(2, 3, 4), (2, 3, 2), (2, 3, 7)]
            ins = [("Y_scale", ys, True), ("Y_zero_point", yz, True)]
            for i, s in enumerate(shapes):
                # The first input shares Y's grid (copied as it is), the others are requantized.
                ins += [(f"X{i}", q(dt, s), False), (f"X{i}_scale", ys if i == 0 else scale(), True),
                        (f"X{i}_zero_point", yz if i == 0 else zero(dt), True)]
            out.append((f"qlinearconcat_{tag}_axis{axis}", "QLinearConcat", {"axis": axis}, ins))
        for op, attrs in [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {"alpha": 0.1}), ("QLinearLeakyRelu", {})]:
            x = q(dt, (3, 7, 5))
            out.append((f"{op.lower()}_{tag}{'_alpha' if attrs else ''}", op, attrs,
                        [("X", x, False), ("X_scale", scale(0.02, 0.08), True), ("X_zero_point", zero(dt), True),
                         ("Y_scale", scale(0.002, 0.02) if op == "QLinearSigmoid" else scale(), True),
                         ("Y_zero_point", zero(dt), True)]))
    for dt, tag in [(np.uint8, "u8"), (np.int8, "s8")]:
        for opset, axis, shape in [(13, -1, (3, 4, 10)), (13, 1, (3, 6, 5)), (11, 1, (3, 4, 5))]:
            out.append((f"qlinearsoftmax_{tag}_opset{opset}_axis{axis}", "QLinearSoftmax", {"opset": opset, "axis": axis},
                        [("X", q(dt, shape), False), ("X_scale", scale(0.02, 0.1), True), ("X_zero_point", zero(dt), True),
                         ("y_scale", np.array(1 / 256 if dt == np.uint8 else 1 / 128, np.float32), True),
                         ("y_zero_point", np.array(0 if dt == np.uint8 else -128, dt), True)]))
    # Scales that put results halfway between steps, and odd output zero
    # points, for each operator: which way a tie rounds, and whether the zero
    # point is added before or after rounding, shows.
    for dt, tag in [(np.uint8, "u8"), (np.int8, "s8")]:
        half, one = np.array(0.5, np.float32), np.array(1.0, np.float32)
        odd = np.array(129 if dt == np.uint8 else 5, dt)
        out.append((f"qlinearglobalaveragepool_{tag}_ties", "QLinearGlobalAveragePool", {},
                    [("X", q(dt, (2, 16, 1, 2)), False), ("x_scale", one, True), ("x_zero_point", zero(dt), True),
                     ("y_scale", one, True), ("y_zero_point", odd, True)]))
        out.append((f"qlinearaveragepool_{tag}_ties", "QLinearAveragePool", {"kernel_shape": [1, 2]},
                    [("X", q(dt, (2, 8, 3, 9)), False), ("x_scale", one, True), ("x_zero_point", zero(dt), True),
                     ("y_scale", one, True), ("y_zero_point", odd, True)]))
        out.append((f"qlinearconcat_{tag}_ties", "QLinearConcat", {"axis": 0},
                    [("Y_scale", one, True), ("Y_zero_point", odd, True), ("X0", q(dt, (3, 40)), False),
                     ("X0_scale", half, True), ("X0_zero_point", zero(dt), True), ("X1", q(dt, (2, 40)), False),
                     ("X1_scale", half, True), ("X1_zero_point", zero(dt), True)]))
        out.append((f"qlinearleakyrelu_{tag}_ties", "QLinearLeakyRelu", {"alpha": 0.5},
                    [("X", q(dt, (4, 64)), False), ("X_scale", one, True), ("X_zero_point", zero(dt), True),
                     ("Y_scale", one, True), ("Y_zero_point", odd, True)]))
    qa = q(np.uint8, (6, 8))
    out.append(("qgemm_u8s8_ties", "QGemm", {"transB": 1},
                [("A", qa, False), ("a_scale", np.array(0.5, np.float32), True), ("a_zero_point", zero(np.uint8), True),
                 ("B", q(np.int8, (9, 8)), True), ("b_scale", np.array(1.0, np.float32), True),
                 ("b_zero_point", np.array(0, np.int8), True), ("C", None, False),
                 ("y_scale", np.array(2.0, np.float32), True), ("y_zero_point", np.array(129, np.uint8), True)]))
    # QGemm: A uint8 or int8, B int8 (per tensor or per column) or uint8.
    for name, adt, bdt, ta, tb, per_col, c_shape, quant_out, alpha in [
        ("u8s8_tb_percol_bias_q", np.uint8, np.int8, 0, 1, True, (11,), True, 1.0),
        ("u8s8_plain_f32", np.uint8, np.int8, 0, 0, False, None, False, 1.0),
        ("u8u8_ta_bias2d_q_alpha", np.uint8, np.uint8, 1, 0, False, (5, 11), True, 0.5),
        ("s8s8_tatb_biasrow_f32", np.int8, np.int8, 1, 1, True, (1, 11), False, 2.0),
        ("u8s8_yscale_only_f32", np.uint8, np.int8, 0, 1, True, (11,), "scale only", 1.0),
    ]:
        m, k, n = 5, 37, 11
        a = q(adt, (k, m) if ta else (m, k))
        b = q(bdt, (n, k) if tb else (k, n))
        bs = rng.uniform(0.002, 0.02, n).astype(np.float32) if per_col else scale(0.002, 0.02)
        bz = (np.zeros(n, bdt) if bdt == np.int8 else rng.integers(120, 136, n).astype(bdt)) if per_col else zero(bdt)
        ins = [("A", a, False), ("a_scale", scale(0.01, 0.05), True), ("a_zero_point", zero(adt), True),
               # One case takes B at run time instead of as a constant.
               ("B", b, not name.startswith("s8s8")), ("b_scale", bs, True), ("b_zero_point", bz, True)]
        ins.append(("C", rng.integers(-3000, 3000, c_shape).astype(np.int32), True) if c_shape else ("C", None, False))
        if quant_out == "scale only":
            # y_scale without y_zero_point: ORT's Y is float, divided by y_scale.
            ins += [("y_scale", scale(0.05, 0.3), True)]
        elif quant_out:
            ins += [("y_scale", scale(0.05, 0.3), True), ("y_zero_point", zero(np.uint8), True)]
        attrs = {"transA": ta, "transB": tb, "alpha": alpha}
        out.append((f"qgemm_{name}", "QGemm", attrs, ins))
    return out


def model_for(name, op, attrs, ins):
    import numpy as np
    from onnx import helper as h, numpy_helper as nh

    names, inputs, inits = [], [], []
    for n, arr, is_init in ins:
        if arr is None:
            names.append("")
            continue
        names.append(n)
        if is_init:
            inits.append(nh.from_array(arr, n))
        else:
            inputs.append(h.make_tensor_value_info(n, h.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
    node = h.make_node(op, names, ["Y"], domain="com.microsoft", **attrs)
    given = {n: arr for n, arr, _ in ins if arr is not None}
    if op == "QGemm":
        out_np = given["y_zero_point"].dtype if "y_zero_point" in given else np.dtype(np.float32)
    else:
        out_np = next(arr.dtype for n, arr, _ in ins if n in ("A", "X", "X0"))
    out_type = h.np_dtype_to_tensor_dtype(np.dtype(out_np))
    graph = h.make_graph([node], name, inputs, [h.make_tensor_value_info("Y", out_type, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 19), h.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=str(REPO / ".cache" / "onnx-contrib-tests"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort
    from onnx import numpy_helper

    out = Path(args.output)
    want = f"onnxruntime={ort.__version__} script={hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}\n"
    if not args.force and (out / "STAMP").exists() and (out / "STAMP").read_text() == want:
        print(f"gen_contrib_tests: up to date ({out}/contrib)")
        return 0
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    all_cases = cases()
    for name, op, attrs, ins in all_cases:
        model = model_for(name, op, attrs, ins)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {n: arr for n, arr, is_init in ins if arr is not None and not is_init}
        (y,) = sess.run(None, feeds)
        case = tmp / "contrib" / f"test_{name}"
        ds = case / "test_data_set_0"
        ds.mkdir(parents=True)
        (case / "model.onnx").write_bytes(model.SerializeToString())
        for k, (n, arr) in enumerate(feeds.items()):
            (ds / f"input_{k}.pb").write_bytes(numpy_helper.from_array(arr, n).SerializeToString())
        (ds / "output_0.pb").write_bytes(numpy_helper.from_array(y, "Y").SerializeToString())
    (tmp / "STAMP").write_text(want)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"gen_contrib_tests: wrote {len(all_cases)} cases to {out}/contrib")
    return 0


if __name__ == "__main__":
    sys.exit(main())
