#!/bin/bash
# The issue-3 measurements on the lent machine's 16-core AMX Xeon (CPU only).
export PYTHONUNBUFFERED=1
T=$PWD/.devrun/tessera
chmod +x "$T"
cd "$(dirname "$0")/.."
{ date; lscpu | head -20; "$T" detect; } > "$OUT/detect.txt" 2>&1
python3 -c "import onnxruntime, torch, onnx; print('ort', onnxruntime.__version__, 'torch', torch.__version__, 'onnx', onnx.__version__)" >> "$OUT/detect.txt" 2>&1
mkdir -p /tmp/m
timeout 300 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 15 --warmup 3 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b1.txt" 2>&1
timeout 120 python3 benches/bert_vs_peers.py --model bert --batch 8 --threads 16 --precisions fp32,bf16,int8 --iters 10 --warmup 2 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b8.txt" 2>&1
timeout 150 python3 benches/gemm_vs_torch.py --threads 1,16 --tessera "$T" > "$OUT/gemm_vs_torch.txt" 2>&1
tail -12 "$OUT/bert_b1.txt"; tail -6 "$OUT/bert_b8.txt"; tail -30 "$OUT/gemm_vs_torch.txt"
