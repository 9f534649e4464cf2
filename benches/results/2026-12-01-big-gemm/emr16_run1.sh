#!/bin/bash
# 60e1719: where a 2048^3 bf16 AMX GEMM's call goes (in-call split), per blocking, power-of-two and not, 1/2/16 threads.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=2048x2048x2048,2048x2064x2048,1024x768x768
B=auto:8:a,8:8:a,16:8:a,8:16:a,0:8:ab,16:4:a
for th in 1 2 16; do
  timeout 170 "$T" bench-gemm --shapes $S --threads $th --kernels amx-bf16 --seconds 0.15 --best --stages --tile-blocking $B 2>&1 | grep -v '^chip' >> "$OUT/stages.txt"
done
timeout 60 "$T" bench-gemm --ukernel-study >> "$OUT/ukernel.txt" 2>&1
awk '$5 ~ /call|product|pack-a|epilogue|in-kloop|in-finish|in-pack|in-wait-last|in-prefetch/ {print $2,$5,$6,$7,$8,$9,$10,$11}' "$OUT/stages.txt" | column -t | cut -c1-110
tail -30 "$OUT/ukernel.txt"
