#!/bin/bash
# fb84577: static grid vs guided schedule, same binary (TESSERA_TILE_BLOCKING / --tile-blocking), interleaved.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=auto:8:a:spread:auto:static; G=auto:8:a:spread
lscpu | head -20 > "$OUT/lscpu.txt"
( time timeout 150 "$T" bench-gemm --shapes 128x768x768,128x3072x768,128x768x3072 --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.1 --best --stages --cold --epilogue none --tile-blocking $S,$G,$S,$G ) > "$OUT/gemm_16t.txt" 2>&1
( time timeout 100 "$T" bench-gemm --shapes 128x768x768,128x3072x768,128x768x3072 --threads 2 --kernels amx-bf16,amx-int8 --seconds 0.1 --best --stages --cold --epilogue none --tile-blocking $S,$G,$S,$G ) > "$OUT/gemm_2t.txt" 2>&1
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "$T" --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for t in 2 16; do for p in bf16 int8; do for s in $( [ $((r%2)) = 1 ] && echo "static guided" || echo "guided static" ); do
  if [ $s = static ]; then B=$S; else B=$G; fi
  echo "== round $r threads $t $p $s" >> "$OUT/bert_ab.txt"
  TESSERA_TILE_BLOCKING=$B timeout 60 "$T" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 20 --warmup 3 --profile 2>&1 | grep -E "tile driver|latency" >> "$OUT/bert_ab.txt"
done; done; done; done
grep -c latency "$OUT/bert_ab.txt"
