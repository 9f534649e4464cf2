#!/bin/bash
# 65d2ddb's task rule against 7192056's on the lent machine's Xeon (CPU only),
# interleaved rounds; then BERT-base beside ONNX Runtime and PyTorch.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
declare -A BIN=([old]=$PWD/.devrun/tessera_old [new]=$PWD/.devrun/tessera)
S=128x768x768,128x2304x768,128x768x3072
for r in 1 2 3 4; do for b in old new; do
  echo "== round $r $b" >> "$OUT/gemm_ab_16t.txt"
  timeout 60 "${BIN[$b]}" bench-gemm --shapes $S --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.3 --best 2>&1 | grep '^amx-' >> "$OUT/gemm_ab_16t.txt"
done; done
mkdir -p /tmp/m
timeout 300 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "${BIN[new]}" --models-dir /tmp/m > "$OUT/bert_b1_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for p in bf16 int8; do for b in old new; do
  echo "== round $r threads 16 $p $b $("${BIN[$b]}" bench $M --precision $p --threads 16 --dim batch=1 --dim seq=128 --iterations 80 2>&1 | grep latency)" >> "$OUT/bert_ab_16t.txt"
done; done; done
tail -15 "$OUT/bert_b1_peers.txt"; cat "$OUT/bert_ab_16t.txt"
