#!/bin/bash
# AMX and AVX-512 dot-product tests on the lent machine's Xeon, the bf16
# gate there, and BERT-base with AMX on and off (CPU only).
export PYTHONUNBUFFERED=1
T=$PWD/.devrun/tessera
chmod +x .devrun/*
export TESSERA_REQUIRE_AMX=1 TESSERA_REQUIRE_AVX512_DOT=1
( .devrun/kernels_tests --test-threads 16 amx avx512dot 2>&1 | grep -E "^test .*(amx|avx512dot)|test result|panicked|FAILED" ) > "$OUT/tests_kernels.txt" 2>&1
( .devrun/providers_tests --test-threads 16 amx avx512dot 2>&1 | grep -E "^test .*(amx|avx512dot)|test result|panicked|FAILED" ) > "$OUT/tests_providers.txt" 2>&1
"$T" detect > "$OUT/detect.txt" 2>&1
"$T" --disable amx detect | sed -n '/^kernels/,$p' > "$OUT/detect_noamx.txt" 2>&1
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16,int8 --iters 15 --warmup 3 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b1.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for p in bf16 int8; do for d in none amx; do
  echo "== --disable $d --precision $p" >> "$OUT/disable_amx.txt"
  "$T" --disable $d bench $M --precision $p --threads 2 --dim batch=1 --dim seq=128 --iterations 15 2>&1 | grep -E "latency" >> "$OUT/disable_amx.txt"
  "$T" --disable $d info $M --precision $p --dim batch=1 --dim seq=128 2>&1 | grep -iE "avx512-dot|amx" | head -3 >> "$OUT/disable_amx.txt"
done; done
tail -3 "$OUT/tests_kernels.txt" "$OUT/tests_providers.txt"; sed -n '/^kernels/,$p' "$OUT/detect.txt"; cat "$OUT/detect_noamx.txt"; tail -5 "$OUT/bert_b1.txt"; cat "$OUT/disable_amx.txt"
