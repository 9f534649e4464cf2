#!/bin/bash
# 8214e66 (final code): BERT-base beside the peers, 4 repetitions, each Tessera row noting its own tile phase; the probe around each repetition as before.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
probe() { "$T" bench-gemm --shapes 32x32x32 --threads 1 --kernels amx-bf16 --seconds 0.01 2>&1 | grep "random operand" | sed "s/^/$1 probe: /"; }
for r in 1 2 3 4; do
  echo "== repetition $r" >> "$OUT/bert_b1_peers_x4c.txt"
  probe before >> "$OUT/bert_b1_peers_x4c.txt"
  timeout 100 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m 2>&1 | grep -E "^bert-base|^model|^host" >> "$OUT/bert_b1_peers_x4c.txt"
  probe after >> "$OUT/bert_b1_peers_x4c.txt"
done
grep -c bert-base "$OUT/bert_b1_peers_x4c.txt"
grep probe "$OUT/bert_b1_peers_x4c.txt"
