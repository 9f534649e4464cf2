#!/bin/bash
# fb84577 (old: guided, two-pass int8 quantizer) vs 98c2a95 (new: fused int8 quantizer), BERT-base b1, 4 rounds alternating order.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera .devrun/tessera --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for t in 2 16; do for p in int8 bf16; do
  for b in $( [ $((r%2)) = 1 ] && echo "tessera_fb84577 tessera" || echo "tessera tessera_fb84577" ); do
    echo "== round $r threads $t $p $b" >> "$OUT/bert_ab.txt"
    timeout 60 .devrun/$b bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile 2>&1 | grep -E "tile driver|latency" >> "$OUT/bert_ab.txt"
  done
done; done; done
grep -c latency "$OUT/bert_ab.txt"
