#!/bin/bash
# The final binary (b1b5cb4) on the lent machine's Xeon (CPU only): BERT-base
# beside ONNX Runtime and PyTorch at batch 1 and 8, and where int8 time goes.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
timeout 240 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b1_peers.txt" 2>&1
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 8 --threads 16 --precisions bf16,int8 --iters 10 --warmup 2 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b8_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
"$T" bench $M --precision int8 --threads 2 --dim batch=1 --dim seq=128 --iterations 40 --profile > "$OUT/profile_int8_2t.txt" 2>&1
tail -9 "$OUT/bert_b1_peers.txt"; tail -6 "$OUT/bert_b8_peers.txt"; head -14 "$OUT/profile_int8_2t.txt"
