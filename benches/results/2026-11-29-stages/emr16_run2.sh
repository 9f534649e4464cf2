#!/bin/bash
# The epilogue alone (stage "epilogue") against call - product - pack, and the deferred finish (TESSERA_TILE_FINISH=deferred) against finishing at once.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=128x768x768,128x2304x768,128x3072x768,128x768x3072
for r in 1 2 3; do
  for f in now deferred; do
    echo "== round $r finish=$f warm" >> "$OUT/stages.txt"
    TESSERA_TILE_FINISH=$f timeout 60 "$T" bench-gemm --shapes $S --threads 1,2 --kernels amx-bf16 --seconds 0.15 --best --stages --epilogue none 2>&1 | grep '^amx-' >> "$OUT/stages.txt"
    echo "== round $r finish=$f cold" >> "$OUT/stages.txt"
    TESSERA_TILE_FINISH=$f timeout 60 "$T" bench-gemm --shapes $S --threads 2 --kernels amx-bf16 --seconds 0.15 --best --stages --cold --epilogue none,gelu_erf 2>&1 | grep '^amx-' >> "$OUT/stages.txt"
  done
done
cut -c1-135 "$OUT/stages.txt" | awk '{print $1,$4,$5,$6,$7,$8,$9,$10,$11,$12}' | head -120
