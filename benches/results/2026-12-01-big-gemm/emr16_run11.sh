#!/bin/bash
# The bench JSON's tile probe through bert_vs_peers.py: one repetition, 2 and 16 threads.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b1_peers_probe_notes.txt" 2>&1
grep -E "^bert-base|^model" "$OUT/bert_b1_peers_probe_notes.txt"
