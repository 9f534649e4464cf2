#!/bin/bash
# Where the tile driver's time goes inside BERT-base (tessera bench --profile, driver time stamps), 2 and 16 threads; bench-gemm's in-call split with the pool's workers polling as in a session.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=128x768x768,128x2304x768,128x3072x768,128x768x3072
for r in 1 2; do
  echo "== round $r" >> "$OUT/in_call.txt"
  timeout 100 "$T" bench-gemm --shapes $S --threads 1,2 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --stages --cold --epilogue none 2>&1 | grep '^amx-' | grep -v " pack-a \| product \| epilogue " >> "$OUT/in_call.txt"
done
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 5 --warmup 1 --tessera "$T" --models-dir /tmp/m > "$OUT/build.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2; do for t in 2 16; do for p in bf16 int8; do
  echo "== round $r threads $t $p" >> "$OUT/bert_profile.txt"
  "$T" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 40 --profile >> "$OUT/bert_profile.txt" 2>&1
done; done; done
grep -E "^==|tile driver|latency|FusedMlp  |LayerNorm" "$OUT/bert_profile.txt"
