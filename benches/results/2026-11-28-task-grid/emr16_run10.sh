#!/bin/bash
# AMX tests of the current tree on the lent machine's Xeon, the microkernel's
# load-and-product orders, and small-N task grids against 7192056 (CPU only).
chmod +x .devrun/*
export TESSERA_REQUIRE_AMX=1 TESSERA_REQUIRE_AVX512_DOT=1
( .devrun/kernels_tests --test-threads 16 amx avx512dot 2>&1 | grep -E "^test .*(amx|avx512dot)|test result|panicked|FAILED" ) > "$OUT/tests_kernels.txt" 2>&1
( .devrun/providers_tests --test-threads 16 amx avx512dot 2>&1 | grep -E "^test .*(amx|avx512dot)|test result|panicked|FAILED" ) > "$OUT/tests_providers.txt" 2>&1
declare -A BIN=([old]=$PWD/.devrun/tessera_old [new]=$PWD/.devrun/tessera)
for r in 1 2; do "${BIN[new]}" bench-gemm --ukernel-study --seconds 0.2 >> "$OUT/ukernel_study.txt" 2>&1; done
S=128x64x768,512x32x768,128x768x768,256x768x3072
for r in 1 2 3; do for b in old new; do for t in 2 16; do
  echo "== round $r $b threads $t" >> "$OUT/gemm_ab_small_n.txt"
  timeout 60 "${BIN[$b]}" bench-gemm --shapes $S --threads $t --kernels amx-bf16,amx-int8 --seconds 0.2 --best 2>&1 | grep '^amx-' >> "$OUT/gemm_ab_small_n.txt"
done; done; done
tail -2 "$OUT/tests_kernels.txt" "$OUT/tests_providers.txt"; grep -iE 'schedule|grouped|interleaved|halfrows|probe' "$OUT/ukernel_study.txt"
