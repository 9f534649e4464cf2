#!/usr/bin/env bash
# The lent Xeon: d1913dd (.devrun/tessera_base) against d1eea99 (.devrun/tessera: padded-plane depthwise and grouped
# integer convolutions on the tiles), alternating per model, model_vs_ort.py, 2 and 16 threads, 2 rounds: the light
# ShuffleNet QOperator and QDQ, ResNet-50 QOperator (make_light_quantized.py) and the MobileNet-like QOperator at b1.
L=/tmp/lq; mkdir -p $L
python3 benches/results/2026-12-04-int8-conv/make_light_quantized.py $L shufflenet resnet50 >/dev/null 2>&1
M=/tmp/dw; mkdir -p $M
python3 benches/results/2026-12-04-int8-conv/make_depthwise_quantized.py $M >/dev/null 2>&1
for m in $L/shufflenet_qop $L/shufflenet_qdq $L/resnet50_qop $M/dw_qop; do for b in tessera_base tessera; do
    echo "=== $b $(basename $m)"
    dims=""; [ "$(basename $m)" = dw_qop ] && dims="--dims n=1"
    python3 benches/model_vs_ort.py $m.onnx --tessera .devrun/$b $dims --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
done; done
