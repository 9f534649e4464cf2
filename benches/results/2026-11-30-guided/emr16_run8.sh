#!/bin/bash
# b118d44: fp32 (bf16x6) BERT-base at 2 threads, static vs guided, whole per-op profile, 3 rounds alternating.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=auto:8:a:spread:auto:static; G=auto:8:a:spread
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "$T" --models-dir /tmp/m > /dev/null 2>&1
for r in 1 2 3; do
  for s in $( [ $((r%2)) = 1 ] && echo "static guided" || echo "guided static" ); do
    if [ $s = static ]; then B=$S; else B=$G; fi
    echo "== round $r threads 2 fp32 $s" >> "$OUT/profile_fp32.txt"
    TESSERA_TILE_BLOCKING=$B timeout 90 "$T" bench /tmp/m/bert-base/bert.onnx --precision fp32 --threads 2 --dim batch=1 --dim seq=128 --iterations 15 --warmup 2 --profile >> "$OUT/profile_fp32.txt" 2>&1
  done
done
grep -E "^==|latency|amx:|cpu:Att|cpu:Lay|tile driver" "$OUT/profile_fp32.txt"
