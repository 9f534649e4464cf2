#!/bin/bash
# b118d44: static grid vs guided schedule for fp32 (bf16x6 split products) and ORT's int8 model, same binary, 3 rounds alternating.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=auto:8:a:spread:auto:static; G=auto:8:a:spread
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "$T" --models-dir /tmp/m > /dev/null 2>&1
for r in 1 2 3; do for c in "2 fp32 bert.onnx" "16 fp32 bert.onnx" "2 fp32 bert_int8.onnx"; do set -- $c
  for s in $( [ $((r%2)) = 1 ] && echo "static guided" || echo "guided static" ); do
    if [ $s = static ]; then B=$S; else B=$G; fi
    echo "== round $r threads $1 $3 $s" >> "$OUT/bert_ab.txt"
    TESSERA_TILE_BLOCKING=$B timeout 90 "$T" bench /tmp/m/bert-base/$3 --precision $2 --threads $1 --dim batch=1 --dim seq=128 --iterations 15 --warmup 2 --profile 2>&1 | grep -E "tile driver|latency" >> "$OUT/bert_ab.txt"
  done
done; done
grep -c latency "$OUT/bert_ab.txt"
