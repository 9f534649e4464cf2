#!/bin/bash
# Is attention's packing slow on the lent Xeon because Q, K and V come from the
# other core? BERT-base bf16 with --profile at 1 thread (every value produced and
# read on one core) and at 2 threads (the QKV product splits its columns between
# the cores), batch 1 and 8, two rounds.
T=$PWD/.devrun/tessera_sym
python3 -c "import sys; sys.path.insert(0, 'scripts'); import make_bert; make_bert.ensure(__import__('pathlib').Path('/tmp/m/bert-base'), make_bert.BertParams(), int8=False, log=print)" > /dev/null
for round in 1 2; do
  for cfg in "1 1" "2 1" "1 8" "2 8"; do
    set -- $cfg
    echo "== round $round threads $1 batch $2"
    $T bench /tmp/m/bert-base/bert.onnx --precision bf16 --threads $1 --dim batch=$2 --dim seq=128 --iterations $((24 / $2 + 2)) --warmup 1 --profile 2>&1 | grep -E "tile driver|attention on|p50|tile unit|LayerNorm|amx:Attention"
  done
done
