#!/bin/bash
# The int8 A/B of run 10 with the binaries in the opposite order in each round (new7, final, old), to separate binary from position.
chmod +x .devrun/*
declare -A BIN=([old]=$PWD/.devrun/tessera_old [new7]=$PWD/.devrun/tessera_new7 [final]=$PWD/.devrun/tessera)
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "${BIN[final]}" --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4 5; do for t in 2 16; do for b in new7 final old; do
  echo "== round $r threads $t int8 $b $("${BIN[$b]}" bench $M --precision int8 --threads $t --dim batch=1 --dim seq=128 --iterations 20 2>&1 | grep latency)" >> "$OUT/bert_ab.txt"
done; done; done
awk '{print $3,$5,$6,$7,$10}' "$OUT/bert_ab.txt"
