#!/bin/bash
# Attention's operands prefetched into L2 before each head (scratch switches in
# one binary, tessera_xp: XP_PF K and V rows, XP_PFQ the query rows, XP_PFO the
# output rows with intent to write), against none, alternating, 3 rounds:
# BERT-base at 2 threads, bf16 batch 1 and 8, int8 batch 1, with --profile.
T=$PWD/.devrun/tessera_xp
python3 -c "import sys; sys.path.insert(0, 'scripts'); import make_bert; make_bert.ensure(__import__('pathlib').Path('/tmp/m/bert-base'), make_bert.BertParams(), int8=False, log=print)" > /dev/null
for round in 1 2 3; do
  for cfg in "bf16 1" "int8 1" "bf16 8"; do
    set -- $cfg
    for v in none "XP_PF=1 XP_PFQ=1 XP_PFO=1"; do
      echo "== round $round $1 batch $2 prefetch: $v"
      env ${v#none} $T bench /tmp/m/bert-base/bert.onnx --precision $1 --threads 2 --dim batch=$2 --dim seq=128 --iterations $((30 / $2 + 2)) --warmup 2 --profile 2>&1 | grep -E "attention on|p50|tile unit|amx:Attention"
    done
  done
done
