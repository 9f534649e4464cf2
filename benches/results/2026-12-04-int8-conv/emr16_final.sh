#!/usr/bin/env bash
# The lent Xeon, final code: AMX tests (kernels, providers), then Tessera beside ORT on the same files
# (model_vs_ort.py, 2 rounds) for the final binary (.devrun/tessera) and the one before this stop's
# convolution work (.devrun/tessera_base, da33969: the contrib operators, channels-first int8 convolution, QDQ
# convolutions in f32), on the models of make_cnn_quantized.py and make_light_quantized.py.
set -u
D=benches/results/2026-12-04-int8-conv
M=/tmp/m; mkdir -p $M
[ -f $M/cnn2_qdq.onnx ] || python3 $D/make_cnn_quantized.py $M >/dev/null 2>&1
[ -f $M/resnet50_qop.onnx ] || python3 $D/make_light_quantized.py $M resnet50 >/dev/null 2>&1
for t in tessera_kernels tessera_providers; do
    echo "=== $t"; TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100 .devrun/$t 2>&1 | grep -E "test result|FAILED|panicked" | tail -3
done
for b in tessera tessera_base; do
    echo "=== binary $b"
    for m in cnn2_qop cnn2_qdq; do
        echo "--- $m"
        python3 benches/model_vs_ort.py $M/$m.onnx --tessera .devrun/$b --dims n=1 --dims n=8 --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
    done
    for m in resnet50_qop resnet50_qdq; do
        echo "--- $m"
        python3 benches/model_vs_ort.py $M/$m.onnx --tessera .devrun/$b --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
    done
done
