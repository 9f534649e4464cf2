#!/usr/bin/env bash
# The lent Xeon: the MobileNet-like net of make_depthwise_quantized.py (QOperator and QDQ) beside ORT on the same
# file, model_vs_ort.py, batch 1 and 8, 2 and 16 threads, 2 rounds; .devrun/tessera (c64b3d5: depthwise integer
# convolution as row multiply-adds) and .devrun/tessera_base (368b05c: im2row and a one-row product per group).
M=/tmp/dw; mkdir -p $M
python3 benches/results/2026-12-04-int8-conv/make_depthwise_quantized.py $M >/dev/null 2>&1
for b in tessera tessera_base; do for m in dw_qop dw_qdq; do
    echo "=== $b $m"
    python3 benches/model_vs_ort.py $M/$m.onnx --tessera .devrun/$b --dims n=1 --dims n=8 --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
done; done
