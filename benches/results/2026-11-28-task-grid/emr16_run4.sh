#!/bin/bash
# Task grid A/B on the lent machine's Xeon (CPU only): tessera = ea73c79
# (task grid), tessera_old = 7192056 (about two tasks per thread).
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
N=$PWD/.devrun/tessera; O=$PWD/.devrun/tessera_old
mkdir -p /tmp/m
timeout 330 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 15 --warmup 3 --tessera "$N" --models-dir /tmp/m > "$OUT/bert_b1_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3; do for t in 2 16; do for p in bf16 int8; do for b in old new; do
  T=$N; [ $b = old ] && T=$O
  echo "== round $r threads $t $p $b $("$T" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 20 2>&1 | grep latency)" >> "$OUT/bert_ab.txt"
done; done; done; done
S=128x768x768,128x2304x768,128x3072x768,128x768x3072,1024x768x768,1024x3072x768
for r in 1 2; do for b in old new; do
  T=$N; [ $b = old ] && T=$O
  echo "== round $r $b" >> "$OUT/gemm_ab_16t.txt"
  timeout 60 "$T" bench-gemm --shapes $S --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.2 --best 2>&1 | grep '^amx-' >> "$OUT/gemm_ab_16t.txt"
  echo "== round $r $b" >> "$OUT/gemm_ab_2t_cold.txt"
  timeout 60 "$T" bench-gemm --shapes $S --threads 2 --kernels amx-bf16,amx-int8 --seconds 0.2 --best --cold 2>&1 | grep '^amx-' >> "$OUT/gemm_ab_2t_cold.txt"
done; done
