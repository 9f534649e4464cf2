#!/bin/bash
# Scratch, not kept: 736ed14 (head) against a build packing A inside the driver's parallel region (packin), BERT-base bf16, 3 rounds alternating.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera .devrun/tessera_head --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3; do for t in 16 2; do
  for b in $( [ $((r%2)) = 1 ] && echo "tessera_head tessera_packin" || echo "tessera_packin tessera_head" ); do
    echo "== round $r threads $t bf16 $b" >> "$OUT/bert_ab.txt"
    timeout 60 .devrun/$b bench $M --precision bf16 --threads $t --dim batch=1 --dim seq=128 --iterations 30 --warmup 3 2>&1 | grep -E "latency" | sed 's/latency/untimed latency/' >> "$OUT/bert_ab.txt"
    timeout 60 .devrun/$b bench $M --precision bf16 --threads $t --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile 2>&1 | grep -E "tile driver|latency" >> "$OUT/bert_ab.txt"
  done
done; done
grep -c latency "$OUT/bert_ab.txt"
