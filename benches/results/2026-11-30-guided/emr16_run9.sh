#!/bin/bash
# b118d44 (old) against the a scratch build of b118d44 + the bf16 handover block converted in registers (not kept; the diff is not committed), BERT-base bf16, untimed p50 and --profile, 4 rounds alternating.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera .devrun/tessera --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for t in 2 16; do
  for b in $( [ $((r%2)) = 1 ] && echo "tessera_b118d44 tessera" || echo "tessera tessera_b118d44" ); do
    echo "== round $r threads $t bf16 $b" >> "$OUT/bert_ab.txt"
    timeout 60 .devrun/$b bench $M --precision bf16 --threads $t --dim batch=1 --dim seq=128 --iterations 30 --warmup 3 2>&1 | grep -E "latency" | sed 's/latency/untimed latency/' >> "$OUT/bert_ab.txt"
    timeout 60 .devrun/$b bench $M --precision bf16 --threads $t --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile 2>&1 | grep -E "tile driver|latency|FusedMlp  " >> "$OUT/bert_ab.txt"
  done
done; done
grep -c latency "$OUT/bert_ab.txt"
