#!/bin/bash
# fb84577 (guided default): BERT-base b1 beside the peers, 6 repetitions of the whole script (each engine a fresh process per repetition).
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
for r in 1 2 3 4 5 6; do
  echo "== repetition $r" >> "$OUT/bert_b1_peers_x6.txt"
  timeout 90 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m 2>&1 | grep -E "^bert-base|^model" >> "$OUT/bert_b1_peers_x6.txt"
done
grep -c bert-base "$OUT/bert_b1_peers_x6.txt"
