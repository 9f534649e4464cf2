#!/bin/bash
# GEMMs against PyTorch's bf16 matmul on the lent machine's Xeon, final binary (b1b5cb4).
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
timeout 480 python3 benches/gemm_vs_torch.py --threads 1,2,16 --iters 10 --warmup 2 --tessera "$PWD/.devrun/tessera" > "$OUT/gemm_vs_torch.txt" 2>&1
grep -E 'amx-bf16 |amx-int8 |shape' "$OUT/gemm_vs_torch.txt" | head -80
