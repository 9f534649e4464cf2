#!/bin/bash
# Scratch build, not kept (b672449 + WeightStream::Spread2: the next two panels of a run streamed into L2): spread vs spread2, same binary.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera_spread2
A=auto:8:a:spread; B=auto:8:a:spread2
timeout 100 "$T" bench-gemm --shapes 128x3072x768,128x768x3072,128x2304x768 --threads 2 --kernels amx-bf16,amx-int8 --seconds 0.1 --best --cold --epilogue none --tile-blocking $A,$B,$A,$B > "$OUT/gemm_2t.txt" 2>&1
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "$T" --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for p in bf16 int8; do
  for s in $( [ $((r%2)) = 1 ] && echo "spread spread2" || echo "spread2 spread" ); do
    if [ $s = spread ]; then X=$A; else X=$B; fi
    echo "== round $r threads 2 $p $s" >> "$OUT/bert_ab.txt"
    TESSERA_TILE_BLOCKING=$X timeout 60 "$T" bench $M --precision $p --threads 2 --dim batch=1 --dim seq=128 --iterations 30 --warmup 3 2>&1 | grep -E "latency" | sed 's/latency/untimed latency/' >> "$OUT/bert_ab.txt"
    TESSERA_TILE_BLOCKING=$X timeout 60 "$T" bench $M --precision $p --threads 2 --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile 2>&1 | grep -E "tile driver|latency" >> "$OUT/bert_ab.txt"
  done
done; done
grep " call " "$OUT/gemm_2t.txt" | awk '{print $1,$2,$6,$7,$8,$10}'
grep -c latency "$OUT/bert_ab.txt"
