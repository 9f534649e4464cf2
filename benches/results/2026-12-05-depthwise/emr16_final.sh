#!/usr/bin/env bash
# The lent Xeon: e2bfb5c's test executables on AMX (TESSERA_REQUIRE_AMX=1, PROPTEST_CASES=100), then the
# MobileNet-like net (f32, QOperator, QDQ) beside ORT with model_vs_ort.py, batch 1
# and 8, 2 and 16 threads, 2 rounds (.devrun/tessera = e2bfb5c).
export TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100
for t in tessera_kernels tessera_providers int8_fusion stage_timing; do
    echo "=== tests $t"; .devrun/$t 2>&1 | grep -E "test result|FAILED|panicked|SKIPPED"
done
M=/tmp/dw; mkdir -p $M
python3 benches/results/2026-12-04-int8-conv/make_depthwise_quantized.py $M >/dev/null 2>&1
for m in dw_qop dw_qdq dw; do
    echo "=== tessera $m"
    python3 benches/model_vs_ort.py $M/$m.onnx --tessera .devrun/tessera --dims n=1 --dims n=8 --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
done
