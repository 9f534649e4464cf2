#!/usr/bin/env bash
# The lent Xeon (AMX): int8 convolutions after the channels-last change and the QDQ conv fusion.
# Part 1 (tests): AMX test executables. Part 2 (bench): Tessera (this change) and ORT on the same files,
# model_vs_ort.py, 2 rounds; with BASE=1 also the binary before it (.devrun/tessera_base) on the same files.
# Usage on the device: bash benches/results/2026-12-04-int8-conv/emr16_int8_conv.sh tests|bench|ab
set -u
D=benches/results/2026-12-04-int8-conv
M=/tmp/m; mkdir -p $M
make_models() {
    python3 $D/make_cnn_quantized.py $M >/dev/null 2>&1
    python3 $D/make_light_quantized.py $M resnet50 2>&1 | grep -v WARN | grep -v "W:onnxruntime" | cut -c1-200
    ls -la $M
}
case "$1" in
tests)
    for t in tessera_kernels tessera_providers int8_fusion; do
        echo "=== $t"; TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100 .devrun/$t 2>&1 | grep -E "test result|FAILED|panicked|ignored" | tail -5
    done
    ;;
bench)
    make_models
    .devrun/tessera detect 2>&1 | grep -iE "amx|tile" | head -3
    for m in cnn2_qop cnn2_qdq; do
        python3 benches/model_vs_ort.py $M/$m.onnx --tessera .devrun/tessera --dims n=1 --dims n=8 --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
    done
    for m in resnet50_qop resnet50_qdq; do
        python3 benches/model_vs_ort.py $M/$m.onnx --tessera .devrun/tessera --threads 2,16 --rounds 2 --iterations 10 2>&1 | grep -v "^model\|^dims"
    done
    ;;
ab)
    make_models
    for r in 1 2; do for b in tessera_base tessera; do for m in cnn2_qop resnet50_qop; do
        echo "$b $m n=1 t=2 $(.devrun/$b bench $M/$m.onnx --dim n=1 --threads 2 --iterations 10 --warmup 3 2>&1 | grep latency)"
    done; done; done
    ;;
esac
