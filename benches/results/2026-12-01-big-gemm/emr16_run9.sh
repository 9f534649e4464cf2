#!/bin/bash
# 484f209: BERT-base beside the peers, 4 more repetitions (run 7's command), each bracketed by the tile probe on random operand tiles.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
probe() { "$T" bench-gemm --shapes 32x32x32 --threads 1 --kernels amx-bf16 --seconds 0.01 2>&1 | grep "random operand" | sed "s/^/$1 probe: /"; }
for r in 1 2 3 4; do
  echo "== repetition $r" >> "$OUT/bert_b1_peers_x4b.txt"
  probe before >> "$OUT/bert_b1_peers_x4b.txt"
  timeout 100 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m 2>&1 | grep -E "^bert-base|^model|^host" >> "$OUT/bert_b1_peers_x4b.txt"
  probe after >> "$OUT/bert_b1_peers_x4b.txt"
done
timeout 60 "$T" bench /tmp/m/bert-base/bert.onnx --precision bf16 --threads 2 --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile > "$OUT/bert_bf16_2t_profile_b.txt" 2>&1
grep -c bert-base "$OUT/bert_b1_peers_x4b.txt"
grep probe "$OUT/bert_b1_peers_x4b.txt"
grep -E "tile unit|latency" "$OUT/bert_bf16_2t_profile_b.txt"
