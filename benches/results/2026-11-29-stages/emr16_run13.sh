#!/bin/bash
# 5d0d583: the in-call split with each thread's waits (in-wait-first, in-wait-last) at 2 threads, and the whole-model split at 2 and 16 threads.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
timeout 60 "$T" bench-gemm --shapes 128x768x768,128x2304x768,128x3072x768,128x768x3072 --threads 2 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --stages --cold --epilogue none 2>&1 | grep '^amx-' | grep -v " pack-a \| product \| epilogue " > "$OUT/in_call.txt"
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "$T" --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for t in 2 16; do for p in bf16 int8; do
  echo "== threads $t $p" >> "$OUT/profile.txt"
  "$T" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 30 --profile >> "$OUT/profile.txt" 2>&1
done; done
grep -E "^==|tile driver|latency" "$OUT/profile.txt"
