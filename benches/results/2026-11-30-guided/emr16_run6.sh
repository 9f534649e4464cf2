#!/bin/bash
# b118d44: the kernel and provider test executables on AMX (TESSERA_REQUIRE_AMX=1), then BERT-base beside the peers, 6 repetitions.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
export TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100
( time timeout 200 .devrun/kernels_tests --test-threads 4 ) > "$OUT/amx_kernels_tests.txt" 2>&1
( time timeout 60 .devrun/stage_timing_tests ) > "$OUT/amx_stage_timing_tests.txt" 2>&1
( time timeout 200 .devrun/providers_tests --test-threads 4 ) > "$OUT/amx_providers_tests.txt" 2>&1
unset TESSERA_REQUIRE_AMX PROPTEST_CASES
grep -h "test result" "$OUT"/amx_*tests.txt
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
for r in 1 2 3 4 5 6; do
  echo "== repetition $r" >> "$OUT/bert_b1_peers_x6.txt"
  timeout 90 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m 2>&1 | grep -E "^bert-base|^model|^host" >> "$OUT/bert_b1_peers_x6.txt"
done
grep -c bert-base "$OUT/bert_b1_peers_x6.txt"
