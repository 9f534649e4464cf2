#!/bin/bash
# Scratch switch XP_DEMOTE (binary tessera_xp = 66a746b plus the switch, never
# committed): CLDEMOTE each line of a block's fp32 output after the epilogue
# stores it, so that outputs larger than L2 leave the packed panels in L2 and
# a consumer on another core finds them in L3. Off/on alternating, 3 rounds:
# BERT-base 2 threads (int8 and bf16 batch 1, bf16 batch 8), and bench-gemm.
T=$PWD/.devrun/tessera_xp
python3 -c "import sys; sys.path.insert(0, 'scripts'); import make_bert; make_bert.ensure(__import__('pathlib').Path('/tmp/m/bert-base'), make_bert.BertParams(), int8=False, log=print)" > /dev/null
for round in 1 2 3; do
  for cfg in "int8 1" "bf16 1" "bf16 8"; do
    set -- $cfg
    for v in off XP_DEMOTE=1; do
      echo "== round $round $1 batch $2 demote: $v"
      env ${v#off} $T bench /tmp/m/bert-base/bert.onnx --precision $1 --threads 2 --dim batch=$2 --dim seq=128 --iterations $((30 / $2 + 2)) --warmup 2 2>&1 | grep -E "p50|tile unit"
    done
  done
  for v in off XP_DEMOTE=1; do
    echo "== round $round bench-gemm demote: $v"
    env ${v#off} $T bench-gemm --shapes 1024x768x768,128x3072x768 --threads 1,2 --kernels amx-bf16,amx-int8 --seconds 0.1 --best 2>&1 | grep -E "call"
  done
done
