#!/bin/bash
# The tile driver's output prefetch was written as a write-intent prefetch
# (_MM_HINT_ET0), but a portable build compiles that hint to PREFETCHT0 (0
# PREFETCHW in the binary). Scratch switch XP_PFW (tessera_xp = d092358 plus
# the switch) emits PREFETCHW itself. Off/on alternating, 3 rounds, 2 threads,
# BERT-base int8 b1, bf16 b1, bf16 b8, --profile.
T=$PWD/.devrun/tessera_xp
python3 -c "import sys; sys.path.insert(0, 'scripts'); import make_bert; make_bert.ensure(__import__('pathlib').Path('/tmp/m/bert-base'), make_bert.BertParams(), int8=False, log=print)" > /dev/null
for round in 1 2 3; do
  for cfg in "int8 1" "bf16 1" "bf16 8"; do
    set -- $cfg
    for v in off XP_PFW=1; do
      echo "== round $round $1 batch $2 prefetchw: $v"
      env ${v#off} $T bench /tmp/m/bert-base/bert.onnx --precision $1 --threads 2 --dim batch=$2 --dim seq=128 --iterations $((30 / $2 + 2)) --warmup 2 --profile 2>&1 | grep -E "p50|tile unit|tile driver"
    done
  done
done
