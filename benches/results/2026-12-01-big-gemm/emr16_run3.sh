#!/bin/bash
# Does the tile unit's speed follow the data? Register-only probe on zero vs random tiles, and the
# microkernel study on constant (0x3f) vs random bf16 panels, back to back; 4 processes.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
for r in 1 2 3 4; do
  echo "== process $r" >> "$OUT/ukernel_data.txt"
  timeout 100 "$T" bench-gemm --ukernel-study --seconds 0.1 >> "$OUT/ukernel_data.txt" 2>&1
done
grep -E "==|probe|L1" "$OUT/ukernel_data.txt"
