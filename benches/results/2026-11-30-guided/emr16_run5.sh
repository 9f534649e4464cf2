#!/bin/bash
# 98c2a95 (guided schedule, fused int8 quantizer): AMX GEMMs against PyTorch's bf16 matmul in the same run.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
( time timeout 570 python3 benches/gemm_vs_torch.py --threads 1,2,16 --iters 10 --warmup 2 --tessera .devrun/tessera ) > "$OUT/gemm_vs_torch.txt" 2>&1
grep -E "amx-bf16 |amx-int8 " "$OUT/gemm_vs_torch.txt" | head -60
tail -4 "$OUT/gemm_vs_torch.txt"
