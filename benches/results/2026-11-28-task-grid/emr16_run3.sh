#!/bin/bash
# AMX GEMM blocking sweep on the lent machine's Xeon (CPU only); binary 7192056.
T=$PWD/.devrun/tessera
chmod +x .devrun/*
lscpu | grep -iE 'model name|L1d|L2|L3|MHz|^CPU\(s\)' > "$OUT/lscpu.txt"
"$T" bench-gemm --ukernel-study --seconds 0.2 > "$OUT/ukernel_study.txt" 2>&1
"$T" bench-gemm --ukernel-study --seconds 0.2 >> "$OUT/ukernel_study.txt" 2>&1
B="auto:8:a:spread,0:8:a:spread,8:8:a:spread,4:8:a:spread,16:8:a:spread,8:8:ab:spread,8:8:none:spread,8:16:a:spread,8:32:a:spread,8:4:a:spread,2:8:a:spread,8:2:a:spread"
S=2048x2048x2048,1024x768x768,1024x3072x768,1024x768x3072,128x768x768,128x3072x768,128x768x3072
timeout 280 "$T" bench-gemm --shapes $S --threads 1 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --tile-blocking $B > "$OUT/sweep_1t.txt" 2>&1
timeout 200 "$T" bench-gemm --shapes $S --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --tile-blocking $B > "$OUT/sweep_16t.txt" 2>&1
timeout 100 "$T" bench-gemm --shapes 128x768x768,128x3072x768,128x768x3072,1024x3072x768 --threads 2,16 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --cold --tile-blocking auto:8:a:spread,0:8:a:spread,8:8:a:spread,4:8:a:spread,8:16:a:spread,8:4:a:spread > "$OUT/sweep_cold.txt" 2>&1
