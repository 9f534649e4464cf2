#!/usr/bin/env python3
"""The random-weight CNNs of 2026-12-03-qdq/make_cnn_qdq.py (cnn: 4 convs on 32x32; cnn2: 11 convs 3->512
channels on 224x224), each through ONNX Runtime's quantize_static twice: QDQ (OUT_DIR/{name}_qdq.onnx) and
QOperator (QLinearConv, QLinearGlobalAveragePool, QGemm: OUT_DIR/{name}_qop.onnx); per channel, uint8 activations,
int8 weights, the same seeded calibration inputs. Run with the repository's .venv python or the lent machine's
python3: `python3 make_cnn_quantized.py OUT_DIR`."""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")


def build(name, spec, hw, classes, seed, std):
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (cin, cout, k, s) in enumerate(spec):
        scale = std(cin, k)
        inits += [nh.from_array((rng.standard_normal((cout, cin, k, k)) * scale).astype(np.float32), f"c{i}_w"),
                  nh.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"c{i}_b")]
        nodes += [h.make_node("Conv", [x, f"c{i}_w", f"c{i}_b"], [f"c{i}"], pads=[k // 2] * 4, strides=[s, s]),
                  h.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    last = spec[-1][1]
    nodes += [h.make_node("GlobalAveragePool", [x], ["gap"]), h.make_node("Flatten", ["gap"], ["flat"]),
              h.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1)]
    inits += [nh.from_array((rng.standard_normal((classes, last)) * 0.05).astype(np.float32), "fc_w"),
              nh.from_array(np.zeros(classes, np.float32), "fc_b")]
    g = h.make_graph(nodes, name, [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, hw, hw])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", classes])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(out / f"{name}.onnx"))
    return rng


class Inputs(CalibrationDataReader):
    def __init__(self, rng, hw, n):
        self.d = iter([{"x": rng.standard_normal((1, 3, hw, hw)).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.d, None)


for name, spec, hw, classes, seed, n, std in [
    ("cnn", [(3, 16, 3, 1), (16, 32, 3, 2), (32, 32, 1, 1), (32, 64, 3, 2)], 32, 10, 0, 8, lambda c, k: 0.2),
    ("cnn2", [(3, 32, 3, 2), (32, 32, 3, 1), (32, 64, 3, 2), (64, 64, 1, 1), (64, 64, 3, 1), (64, 128, 3, 2),
              (128, 128, 3, 1), (128, 256, 3, 2), (256, 256, 3, 1), (256, 512, 3, 2), (512, 512, 1, 1)],
     224, 1000, 1, 4, lambda c, k: np.sqrt(2 / (c * k * k))),
]:
    for suffix, FMT in [("_qdq", QuantFormat.QDQ), ("_qop", QuantFormat.QOperator)]:
      rng = build(name, spec, hw, classes, seed, std)
      quantize_static(str(out / f"{name}.onnx"), str(out / f"{name}{suffix}.onnx"), Inputs(rng, hw, n),
                    quant_format=FMT, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
