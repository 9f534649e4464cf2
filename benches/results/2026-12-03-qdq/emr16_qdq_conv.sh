#!/bin/bash
# On the lent Xeon, from the repository root. .devrun/: tessera (this commit: QDQ Convs as QLinearConv),
# tessera_prev (385dfe4's build plus the Erf change: QDQ Convs run as DequantizeLinear + fp32 Conv + QuantizeLinear),
# cnn2_qdq.onnx (11 convs 3->512 channels on 224x224, ReLU, random weights, quantize_static QDQ per channel, uint8
# activations, 4 random calibration inputs) and cnn_qdq.onnx (4 small convs on 32x32).
for bin in tessera tessera_prev; do
  for m in cnn2_qdq cnn_qdq; do
    python3 benches/model_vs_ort.py .devrun/$m.onnx --dims n=1 --dims n=8 --threads 1,2 --rounds 2 --tessera .devrun/$bin --work /tmp/w_$bin
  done
done
