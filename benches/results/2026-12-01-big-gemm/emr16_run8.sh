#!/bin/bash
# 484f209: the microkernel's L1 prefetch of A only (default) against A and B, in one process, three
# alternations, each case bracketed by the data probe (drift); K whole (2048, 3072) and chunked (768).
chmod +x .devrun/*
T=$PWD/.devrun/tessera
B=auto:8:a,auto:8:ab,auto:8:a,auto:8:ab,auto:8:a,auto:8:ab
timeout 250 "$T" bench-gemm --shapes 2048x2048x2048,128x768x3072,1024x768x3072,128x3072x768 --threads 1,2 --kernels amx-bf16 --seconds 0.15 --best --tile-blocking $B > "$OUT/prefetch_ab.txt" 2>&1
awk '$1=="amx-bf16" {print $2,$6,$7,$8,$9,$10,$14,$17}' "$OUT/prefetch_ab.txt"
