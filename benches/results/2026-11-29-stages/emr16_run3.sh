#!/bin/bash
# The AVX-512 register epilogue (default) against the portable one (TESSERA_WIDE_EPILOGUE=off): GEMM stages, then BERT-base end to end.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=128x768x768,128x2304x768,128x3072x768,128x768x3072
for r in 1 2; do for w in on off; do
  echo "== round $r wide=$w" >> "$OUT/gemm_stages.txt"
  TESSERA_WIDE_EPILOGUE=$w timeout 60 "$T" bench-gemm --shapes $S --threads 1,2 --kernels amx-bf16 --seconds 0.15 --best --stages --cold --epilogue none,gelu_erf_pieces 2>&1 | grep '^amx-' >> "$OUT/gemm_stages.txt"
  TESSERA_WIDE_EPILOGUE=$w timeout 40 "$T" bench-gemm --shapes $S --threads 2 --kernels amx-int8 --seconds 0.15 --best --cold --epilogue none 2>&1 | grep '^amx-' >> "$OUT/gemm_stages.txt"
done; done
mkdir -p /tmp/m
timeout 240 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16,int8 --iters 20 --warmup 3 --tessera "$T" --models-dir /tmp/m > "$OUT/bert_b1_peers.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3; do for p in bf16 int8; do for w in on off; do
  echo "== round $r threads 2 $p wide=$w $(TESSERA_WIDE_EPILOGUE=$w "$T" bench $M --precision $p --threads 2 --dim batch=1 --dim seq=128 --iterations 40 2>&1 | grep latency)" >> "$OUT/bert_ab_2t.txt"
done; done; done
TESSERA_WIDE_EPILOGUE=on "$T" bench $M --precision bf16 --threads 2 --dim batch=1 --dim seq=128 --iterations 40 --profile > "$OUT/profile_bf16_2t.txt" 2>&1
tail -12 "$OUT/bert_b1_peers.txt"; cat "$OUT/bert_ab_2t.txt"; head -12 "$OUT/profile_bf16_2t.txt"
awk '{print $1,$4,$5,$6,$7,$8,$9,$10,$11}' "$OUT/gemm_stages.txt" | grep -v "^==" | head -0
