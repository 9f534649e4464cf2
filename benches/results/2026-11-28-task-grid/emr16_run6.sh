#!/bin/bash
# Task grid sweep on the lent machine's Xeon (CPU only): each grid fixed
# through the blocking's fifth field; two interleaved rounds.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
G16="4x1 4x2 4x3 4x6 4x12 2x2 2x3 2x6 2x12 1x3 1x6 8x3 8x6 8x8 8x12 8x16 8x32"
B16=auto:8:a:spread; for g in $G16; do B16="$B16,auto:8:a:spread:$g"; done
G2="4x6 4x12 4x24 4x48 2x12 8x3 8x6 8x12 8x24 8x48"
B2=auto:8:a:spread; for g in $G2; do B2="$B2,auto:8:a:spread:$g"; done
S=128x768x768,128x2304x768,128x3072x768,128x768x3072,1024x768x768,1024x3072x768,2048x2048x2048
for r in 1 2; do
  echo "== round $r" >> "$OUT/grid_16t.txt"
  timeout 200 "$T" bench-gemm --shapes $S --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --tile-blocking $B16 2>&1 | grep '^amx-' >> "$OUT/grid_16t.txt"
  echo "== round $r" >> "$OUT/grid_2t_cold.txt"
  timeout 100 "$T" bench-gemm --shapes 128x768x768,128x3072x768,128x768x3072,1024x768x768 --threads 2 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --cold --tile-blocking $B2 2>&1 | grep '^amx-' >> "$OUT/grid_2t_cold.txt"
done
wc -l "$OUT"/*.txt
