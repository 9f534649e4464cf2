#!/bin/bash
# 3768606 (tile probe on random operand tiles, around each case): 2048^3 blockings with stages, 1 and 2 threads,
# two processes; then the GEMMs beside PyTorch's matmul.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
for r in 1 2; do
  echo "== process $r" >> "$OUT/big_stages.txt"
  timeout 150 "$T" bench-gemm --shapes 2048x2048x2048 --threads 1,2 --kernels amx-bf16 --seconds 0.1 --best --stages \
    --tile-blocking auto:8:a,0:8:ab,8:4:a,8:4:ab,16:4:ab,0:4:ab >> "$OUT/big_stages.txt" 2>&1
done
awk '$5 ~ /^(call|product)$/ || /peak|==/ {print $2,$5,$9,$10,$11,$13,$14,$17}' "$OUT/big_stages.txt"
( time timeout 330 python3 benches/gemm_vs_torch.py --threads 1,2,16 --iters 10 --warmup 2 --tessera $T ) > "$OUT/gemm_vs_torch.txt" 2>&1
grep -E "amx-bf16 |amx-int8 " "$OUT/gemm_vs_torch.txt" | head -60
tail -4 "$OUT/gemm_vs_torch.txt"
