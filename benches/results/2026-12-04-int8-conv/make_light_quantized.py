#!/usr/bin/env python3
"""The onnx wheel's data/light/ CNNs (real architectures; their weights are made by ConstantOfShape in the graph)
through ONNX Runtime's quantize_static, QOperator (OUT_DIR/{name}_qop.onnx) and QDQ (OUT_DIR/{name}_qdq.onnx): per
channel, uint8 activations, int8 weights, 4 seeded random calibration inputs. The initializers the IR-3 files also
list as graph inputs are dropped from the inputs first (ORT's quantizer rejects them otherwise). Prints each
quantized model's operator counts, or why the quantizer failed. `python3 make_light_quantized.py OUT_DIR NAME...`"""
import sys, onnx, numpy as np
from pathlib import Path
from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationDataReader
light=Path(onnx.__file__).parent/'backend/test/data/light'
out=Path(sys.argv[1]); out.mkdir(exist_ok=True)
for name in sys.argv[2:]:
    m=onnx.load(str(light/f'light_{name}.onnx'))
    inits={i.name for i in m.graph.initializer}
    keep=[i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]; m.graph.input.extend(keep)
    if m.ir_version<4: m.ir_version=4
    src=out/f'{name}.onnx'; onnx.save(m,str(src))
    shape=[d.dim_value or 1 for d in keep[0].type.tensor_type.shape.dim]
    class R(CalibrationDataReader):
        def __init__(s): s.d=iter([{keep[0].name: np.random.default_rng(i).random(shape,np.float32)} for i in range(4)])
        def get_next(s): return next(s.d,None)
    for fmt,suf in [(QuantFormat.QOperator,'qop'),(QuantFormat.QDQ,'qdq')]:
        try:
            quantize_static(str(src),str(out/f'{name}_{suf}.onnx'),R(),quant_format=fmt,per_channel=True,activation_type=QuantType.QUInt8,weight_type=QuantType.QInt8)
            q=onnx.load(str(out/f'{name}_{suf}.onnx')); import collections
            print(name,suf,dict(collections.Counter(n.op_type for n in q.graph.node)))
        except Exception as e: print(name,suf,'FAILED',e)
