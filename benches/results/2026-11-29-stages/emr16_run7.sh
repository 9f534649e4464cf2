#!/bin/bash
# In-call split (microkernel, output prefetch, epilogue, packing, tile sessions) with the output prefetch on and off (TESSERA_TILE_AHEAD).
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=128x768x768,128x2304x768,128x3072x768,128x768x3072
for r in 1 2; do for a in on off; do
  echo "== round $r ahead=$a" >> "$OUT/in_call.txt"
  TESSERA_TILE_AHEAD=$a timeout 100 "$T" bench-gemm --shapes $S --threads 1,2 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --stages --cold --epilogue none 2>&1 | grep '^amx-' | grep -v " pack-a \| product \| epilogue " >> "$OUT/in_call.txt"
done; done
echo done
