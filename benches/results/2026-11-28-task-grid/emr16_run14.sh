#!/bin/bash
# Does the 16-thread task grid matter when the weights come from memory (as in a model) rather than warm caches?
chmod +x .devrun/*
T=$PWD/.devrun/tessera
for r in 1 2 3; do
  echo "== round $r cold" >> "$OUT/grid_cold_16t.txt"
  timeout 80 "$T" bench-gemm --shapes 128x768x768,128x768x3072 --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.2 --best --cold --tile-blocking auto:8:a:spread:4x1,auto:8:a:spread:2x3 2>&1 | grep '^amx-' >> "$OUT/grid_cold_16t.txt"
  echo "== round $r warm" >> "$OUT/grid_cold_16t.txt"
  timeout 40 "$T" bench-gemm --shapes 128x768x768,128x768x3072 --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.2 --best --tile-blocking auto:8:a:spread:4x1,auto:8:a:spread:2x3 2>&1 | grep '^amx-' >> "$OUT/grid_cold_16t.txt"
done
cat "$OUT/grid_cold_16t.txt" | cut -c1-110
