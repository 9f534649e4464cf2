#!/bin/bash
# 484f209: the kernel and provider test executables on AMX (TESSERA_REQUIRE_AMX=1), then BERT-base beside the
# peers, 4 repetitions, each bracketed by the tile probe on random operand tiles (the host's phase).
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
export TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100
( time timeout 200 .devrun/kernels_tests --test-threads 4 ) > "$OUT/amx_kernels_tests.txt" 2>&1
( time timeout 60 .devrun/stage_timing_tests ) > "$OUT/amx_stage_timing_tests.txt" 2>&1
( time timeout 200 .devrun/providers_tests --test-threads 4 ) > "$OUT/amx_providers_tests.txt" 2>&1
unset TESSERA_REQUIRE_AMX PROPTEST_CASES
grep -h "test result" "$OUT"/amx_*tests.txt
grep -h "data_probe\|split_a_panel\|split_parts\|panels_packed\|pack_runs" "$OUT"/amx_kernels_tests.txt
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
probe() { "$T" bench-gemm --shapes 32x32x32 --threads 1 --kernels amx-bf16 --seconds 0.01 2>&1 | grep "random operand" | sed "s/^/$1 probe: /"; }
for r in 1 2 3 4; do
  echo "== repetition $r" >> "$OUT/bert_b1_peers_x4.txt"
  probe before >> "$OUT/bert_b1_peers_x4.txt"
  timeout 100 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m 2>&1 | grep -E "^bert-base|^model|^host" >> "$OUT/bert_b1_peers_x4.txt"
  probe after >> "$OUT/bert_b1_peers_x4.txt"
done
timeout 60 "$T" bench /tmp/m/bert-base/bert.onnx --precision bf16 --threads 2 --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile > "$OUT/bert_bf16_2t_profile.txt" 2>&1
grep -c bert-base "$OUT/bert_b1_peers_x4.txt"
grep probe "$OUT/bert_b1_peers_x4.txt"
grep -E "tile unit|latency" "$OUT/bert_bf16_2t_profile.txt"
