#!/bin/bash
# Validation of the task grid (STRAGGLER_SHARE 4) against 7192056's rule on
# the lent machine's Xeon (CPU only), three interleaved rounds, then BERT-base
# beside ONNX Runtime and PyTorch with the new binary.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
declare -A BIN=([old]=$PWD/.devrun/tessera_old [new]=$PWD/.devrun/tessera)
S=128x768x768,128x2304x768,128x3072x768,128x768x3072,1024x768x768,1024x3072x768,2048x2048x2048
for r in 1 2 3; do for b in old new; do
  for t in 16 2; do
    echo "== round $r $b" >> "$OUT/gemm_ab_${t}t.txt"
    timeout 60 "${BIN[$b]}" bench-gemm --shapes $S --threads $t --kernels amx-bf16,amx-int8 --seconds 0.2 --best 2>&1 | grep '^amx-' >> "$OUT/gemm_ab_${t}t.txt"
  done
done; done
mkdir -p /tmp/m
timeout 300 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "${BIN[new]}" --models-dir /tmp/m > "$OUT/bert_b1_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3; do for t in 16 2; do for p in bf16 int8; do for b in old new; do
  echo "== round $r threads $t $p $b $("${BIN[$b]}" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 40 2>&1 | grep latency)" >> "$OUT/bert_ab.txt"
done; done; done; done
tail -9 "$OUT/bert_b1_peers.txt"; cat "$OUT/bert_ab.txt"
