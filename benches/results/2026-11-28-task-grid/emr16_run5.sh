#!/bin/bash
# Task grid A/B on the lent machine's Xeon (CPU only): tessera_old = 7192056
# (about two tasks per thread), tessera_grid = ea73c79 (task grid),
# tessera = task grid with the straggler term.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
declare -A BIN=([old]=$PWD/.devrun/tessera_old [grid]=$PWD/.devrun/tessera_grid [strag]=$PWD/.devrun/tessera)
S=128x768x768,128x2304x768,128x3072x768,128x768x3072,1024x768x768,1024x3072x768,2048x2048x2048
for r in 1 2 3; do for b in old grid strag; do
  echo "== round $r $b" >> "$OUT/gemm_ab_16t.txt"
  timeout 60 "${BIN[$b]}" bench-gemm --shapes $S --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.2 --best 2>&1 | grep '^amx-' >> "$OUT/gemm_ab_16t.txt"
done; done
mkdir -p /tmp/m
timeout 120 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 16 --precisions bf16 --iters 3 --warmup 1 --tessera "${BIN[strag]}" --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3; do for p in bf16 int8; do for b in old strag; do
  echo "== round $r threads 16 $p $b $("${BIN[$b]}" bench $M --precision $p --threads 16 --dim batch=1 --dim seq=128 --iterations 60 2>&1 | grep latency)" >> "$OUT/bert_ab_16t.txt"
done; done; done
for t in 2 16; do
  "${BIN[strag]}" bench $M --precision bf16 --threads $t --dim batch=1 --dim seq=128 --iterations 40 --profile > "$OUT/profile_bf16_${t}t.txt" 2>&1
done
cat "$OUT/bert_ab_16t.txt" "$OUT/profile_bf16_16t.txt"
