#!/bin/bash
# Confirmation of c8393fc's task rule against 7192056's on the lent machine's
# Xeon (CPU only): BERT shapes at 16 threads and BERT-base end to end,
# interleaved rounds.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
declare -A BIN=([old]=$PWD/.devrun/tessera_old [new]=$PWD/.devrun/tessera)
S=128x768x768,128x2304x768,128x3072x768,128x768x3072
for r in 1 2 3 4; do for b in old new; do
  echo "== round $r $b" >> "$OUT/gemm_ab_16t.txt"
  timeout 60 "${BIN[$b]}" bench-gemm --shapes $S --threads 16 --kernels amx-bf16,amx-int8 --seconds 0.3 --best 2>&1 | grep '^amx-' >> "$OUT/gemm_ab_16t.txt"
done; done
mkdir -p /tmp/m
timeout 120 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 16 --precisions bf16 --iters 3 --warmup 1 --tessera "${BIN[new]}" --models-dir /tmp/m > /dev/null 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for p in bf16 int8; do for b in old new; do
  echo "== round $r threads 16 $p $b $("${BIN[$b]}" bench $M --precision $p --threads 16 --dim batch=1 --dim seq=128 --iterations 80 2>&1 | grep latency)" >> "$OUT/bert_ab_16t.txt"
done; done; done
"${BIN[new]}" bench $M --precision bf16 --threads 16 --dim batch=1 --dim seq=128 --iterations 60 --profile > "$OUT/profile_bf16_16t_new.txt" 2>&1
"${BIN[old]}" bench $M --precision bf16 --threads 16 --dim batch=1 --dim seq=128 --iterations 60 --profile > "$OUT/profile_bf16_16t_old.txt" 2>&1
cat "$OUT/bert_ab_16t.txt"; grep -E 'gemm|mlp|latency' "$OUT"/profile_*.txt
