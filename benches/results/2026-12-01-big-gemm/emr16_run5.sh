#!/bin/bash
# 3768606: where fp32 (bf16x6), bf16 and int8 BERT-base b1 spend a run at 16 and 2 threads (--profile),
# each bench bracketed by the tile probe on random and zero tiles (the machine's phase).
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "$T" --models-dir /tmp/m > /dev/null 2>&1
probe() { "$T" bench-gemm --shapes 32x32x32 --threads 1 --kernels amx-bf16 --seconds 0.01 2>&1 | grep "random operand" | sed 's/^/   probe: /'; }
for th in 16 2; do
  for p in fp32 bf16 int8; do
    echo "== threads $th $p" >> "$OUT/profiles.txt"
    probe >> "$OUT/profiles.txt"
    timeout 90 "$T" bench /tmp/m/bert-base/bert.onnx --precision $p --threads $th --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile >> "$OUT/profiles.txt" 2>&1
    probe >> "$OUT/profiles.txt"
  done
done
grep -E "^==|probe:|latency|amx:|cpu:|tile driver" "$OUT/profiles.txt" | grep -v "cpu:\(Range\|Sub\|Shape\|Mul\|Cast\|ConstantOfShape\|Unsqueeze\)"
