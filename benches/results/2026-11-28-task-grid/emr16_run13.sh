#!/bin/bash
# Where fp32 BERT-base time goes on the lent machine's Xeon (CPU only), 2 threads, final code.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
timeout 150 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions fp32 --iters 15 --warmup 2 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b1_fp32_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
"$T" bench $M --precision fp32 --threads 2 --dim batch=1 --dim seq=128 --iterations 15 --profile > "$OUT/profile_fp32_2t.txt" 2>&1
"$T" --disable amx bench $M --precision fp32 --threads 2 --dim batch=1 --dim seq=128 --iterations 15 --profile > "$OUT/profile_fp32_2t_noamx.txt" 2>&1
tail -4 "$OUT/bert_b1_fp32_peers.txt"; head -12 "$OUT/profile_fp32_2t.txt"; grep latency "$OUT"/profile_*.txt; head -8 "$OUT/profile_fp32_2t_noamx.txt"
