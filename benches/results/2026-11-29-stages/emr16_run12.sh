#!/bin/bash
# 914cc17's binary: BERT-base b1 beside ONNX Runtime and PyTorch at 2 and 16 threads, then the whole-model tile driver split.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
timeout 330 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b1_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for t in 2 16; do for p in bf16 int8; do
  echo "== threads $t $p" >> "$OUT/profile.txt"
  "$T" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 30 --profile >> "$OUT/profile.txt" 2>&1
done; done
tail -16 "$OUT/bert_b1_peers.txt"; grep -E "^==|tile driver|latency" "$OUT/profile.txt"
