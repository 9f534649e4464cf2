#!/usr/bin/env bash
# The lent Xeon (final A/B): the MobileNet-like net of 2026-12-04-int8-conv/make_depthwise_quantized.py (f32, QOperator, QDQ)
# beside ORT on the same file, model_vs_ort.py, batch 1 and 8, 2 and 16 threads, 2 rounds;
# .devrun/tessera (e2bfb5c: padded-plane depthwise, vectorized gather and requantization, byte-block transpose, pooled buffers kept whole) and .devrun/tessera_base (d1913dd: direct loops), alternating per model.
M=/tmp/dw; mkdir -p $M
python3 benches/results/2026-12-04-int8-conv/make_depthwise_quantized.py $M >/dev/null 2>&1
for m in dw_qop dw_qdq dw; do for b in tessera_base tessera; do
    echo "=== $b $m"
    python3 benches/model_vs_ort.py $M/$m.onnx --tessera .devrun/$b --dims n=1 --dims n=8 --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
done; done
# The light ShuffleNet (real architecture with depthwise convolutions; weights from ConstantOfShape) and ResNet-50,
# quantized QOperator by make_light_quantized.py.
L=/tmp/lq; mkdir -p $L
python3 benches/results/2026-12-04-int8-conv/make_light_quantized.py $L shufflenet resnet50 >/dev/null 2>&1
for m in shufflenet_qop resnet50_qop; do for b in tessera_base tessera; do
    echo "=== $b $m"
    python3 benches/model_vs_ort.py $L/$m.onnx --tessera .devrun/$b --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
done; done
