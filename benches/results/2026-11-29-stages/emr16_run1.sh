#!/bin/bash
# Where a bf16 AMX GEMM's time goes: A packing, the tile loop, the epilogue (bench-gemm --stages), 1 and 2 threads.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
lscpu | grep -iE 'model name|L1d|L2|L3|MHz|^CPU\(s\)' > "$OUT/lscpu.txt"
S=128x768x768,128x2304x768,128x3072x768,128x768x3072,2048x2048x2048
for r in 1 2; do
  echo "== round $r warm" >> "$OUT/stages.txt"
  timeout 100 "$T" bench-gemm --shapes $S --threads 1,2 --kernels amx-bf16 --seconds 0.2 --best --stages --tile-blocking auto:8:a:spread,auto:8:none:spread 2>&1 | grep -v '^amx peak\|^amx bf16 micro\|^chip' >> "$OUT/stages.txt"
  echo "== round $r cold" >> "$OUT/stages.txt"
  timeout 100 "$T" bench-gemm --shapes 128x768x768,128x3072x768,128x768x3072 --threads 1,2 --kernels amx-bf16 --seconds 0.2 --best --stages --cold --tile-blocking auto:8:a:spread,auto:8:none:spread 2>&1 | grep '^amx-' >> "$OUT/stages.txt"
  echo "== round $r epilogues" >> "$OUT/stages.txt"
  timeout 60 "$T" bench-gemm --shapes 128x768x768,128x3072x768 --threads 1 --kernels amx-bf16 --seconds 0.2 --best --stages --epilogue none,relu,gelu_erf 2>&1 | grep '^amx-' >> "$OUT/stages.txt"
done
cut -c1-150 "$OUT/stages.txt"
