#!/bin/bash
# A rows by rows (int8 quantized and bf16 packed straight into the panels, row-parallel) against 92ab481 (old), interleaved; BERT-base end to end with the driver's split.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
declare -A BIN=([old]=$PWD/.devrun/tessera_old [new]=$PWD/.devrun/tessera)
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions bf16,int8 --iters 20 --warmup 3 --tessera "${BIN[new]}" --models-dir /tmp/m > "$OUT/bert_b1_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4 5; do for t in 2 16; do for p in int8 bf16; do for b in old new; do
  echo "== round $r threads $t $p $b $("${BIN[$b]}" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 25 2>&1 | grep latency)" >> "$OUT/bert_ab.txt"
done; done; done; done
for t in 2 16; do for p in int8 bf16; do
  echo "== threads $t $p new" >> "$OUT/profile.txt"
  "${BIN[new]}" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 30 --profile >> "$OUT/profile.txt" 2>&1
done; done
tail -9 "$OUT/bert_b1_peers.txt"; awk '{print $3,$5,$6,$7,$8,$11}' "$OUT/bert_ab.txt"; grep -E "^==|tile driver" "$OUT/profile.txt"
