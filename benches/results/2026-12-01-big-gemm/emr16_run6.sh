#!/bin/bash
# 3768606 (old) against 994e23c (new: AVX-512 split of A, panels packed in runs of k-blocks by idle threads):
# BERT-base b1 fp32 (bf16x6) at 16 and 2 threads and bf16 at 16, --profile, 3 rounds, order alternating.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera .devrun/tessera --models-dir /tmp/m > /dev/null 2>&1
for r in 1 2 3; do
  for b in $( [ $((r%2)) = 1 ] && echo "old new" || echo "new old" ); do
    if [ $b = old ]; then T=.devrun/tessera_old; else T=.devrun/tessera; fi
    for c in "fp32 16" "bf16 16" "fp32 2"; do set -- $c
      echo "== round $r $b $1 threads $2" >> "$OUT/ab.txt"
      timeout 60 $T bench /tmp/m/bert-base/bert.onnx --precision $1 --threads $2 --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile >> "$OUT/ab.txt" 2>&1
    done
  done
done
grep -E "^==|latency|tile driver" "$OUT/ab.txt" | sed 's/tile driver, ms per run and thread: //'
