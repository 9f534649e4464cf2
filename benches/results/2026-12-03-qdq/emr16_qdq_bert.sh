#!/bin/bash
# On the lent Xeon, from the repository root, with the stripped release binary in .devrun/:
# BERT-base (random weights, make_bert) and its dynamic (int8) and static QDQ twins, batch 1 and 8, 1 and 2 threads,
# Tessera's int8 precision and ORT's two int8 models beside Tessera on the same files.
python3 benches/bert_vs_peers.py --model bert --batch 1,8 --threads 1,2 --precisions int8 --iters 10 --warmup 2 \
  --no-torch --tessera .devrun/tessera --models-dir /tmp/m --work /tmp/w --json $OUT/emr16_qdq_bert.json
