"""A MobileNet-like random-weight net: stem conv, 6 depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, ReLU),
224x224, through quantize_static QOperator and QDQ (per channel, u8 activations, s8 weights)."""
import sys, numpy as np, onnx
from pathlib import Path
from onnx import helper as h, numpy_helper as nh, TensorProto as T
from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationDataReader
out = Path(sys.argv[1]); rng = np.random.default_rng(3)
nodes, inits, x, c = [], [], "x", 3
def conv(name, x, cin, cout, k, s, g):
    inits.extend([nh.from_array((rng.standard_normal((cout, cin // g, k, k)) * np.sqrt(2 / (cin // g * k * k))).astype(np.float32), name + "_w"),
                  nh.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), name + "_b")])
    nodes.append(h.make_node("Conv", [x, name + "_w", name + "_b"], [name], pads=[k // 2] * 4, strides=[s, s], group=g))
    nodes.append(h.make_node("Relu", [name], [name + "_r"])); return name + "_r"
x = conv("stem", x, 3, 32, 3, 2, 1); c = 32
for i, (cout, s) in enumerate([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]):
    x = conv(f"dw{i}", x, c, c, 3, s, c); x = conv(f"pw{i}", x, c, cout, 1, 1, 1); c = cout
nodes += [h.make_node("GlobalAveragePool", [x], ["gap"]), h.make_node("Flatten", ["gap"], ["flat"]), h.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1)]
inits += [nh.from_array((rng.standard_normal((1000, c)) * 0.05).astype(np.float32), "fc_w"), nh.from_array(np.zeros(1000, np.float32), "fc_b")]
g = h.make_graph(nodes, "dw", [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, 224, 224])], [h.make_tensor_value_info("y", T.FLOAT, ["n", 1000])], inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)]); m.ir_version = 8; onnx.save(m, str(out / "dw.onnx"))
class R(CalibrationDataReader):
    def __init__(s): s.d = iter([{"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)])
    def get_next(s): return next(s.d, None)
for fmt, suf in [(QuantFormat.QOperator, "qop"), (QuantFormat.QDQ, "qdq")]:
    quantize_static(str(out / "dw.onnx"), str(out / f"dw_{suf}.onnx"), R(), quant_format=fmt, per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
