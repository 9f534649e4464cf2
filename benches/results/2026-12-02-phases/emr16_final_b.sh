#!/bin/bash
# 66a746b again (.devrun/tessera): two more repetitions of BERT-base batch 1 at
# 2 threads beside the peers.
T=$PWD/.devrun/tessera
for rep in 3 4; do
  echo "== repetition $rep"
  python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera $T --models-dir /tmp/m 2>&1 | grep -E "^(model|bert|note|host)"
done > $OUT/emr16_final_bert_b1_peers_b.txt
cat $OUT/emr16_final_bert_b1_peers_b.txt
