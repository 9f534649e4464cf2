#!/bin/bash
# Read bandwidth per thread (torch.sum) beside the AMX GEMMs' weight stream at M = 128, cold and warm, same run.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
D=benches/results/2026-12-01-big-gemm
for r in 1 2; do
  echo "== round $r" | tee -a "$OUT/stream.txt"
  timeout 120 python3 $D/stream_bw.py 2>&1 | tee -a "$OUT/stream.txt"
  for c in "" --cold; do
    timeout 60 "$T" bench-gemm --shapes 128x3072x768,128x768x3072 --threads 1,2 --kernels amx-bf16,amx-int8 --seconds 0.15 --best $c --epilogue none 2>&1 | grep '^amx-' | sed "s/^/${c:-warm} /" >> "$OUT/gemm.txt"
  done
done
awk '{print $1,$2,$6,$7,$8,$9,$10,$12}' "$OUT/gemm.txt"
