#!/usr/bin/env bash
# The lent Xeon: where the MobileNet-like net's time goes (bf815be), tessera bench --profile, QOperator and f32,
# batch 1, 2 and 16 threads.
M=/tmp/dw; mkdir -p $M
python3 benches/results/2026-12-04-int8-conv/make_depthwise_quantized.py $M >/dev/null 2>&1
for m in dw_qop dw; do for t in 2 16; do
    echo "=== $m threads $t"
    .devrun/tessera bench $M/$m.onnx --dim n=1 --threads $t --iterations 50 --warmup 5 --profile 2>&1 | grep -v "^model"
done; done
