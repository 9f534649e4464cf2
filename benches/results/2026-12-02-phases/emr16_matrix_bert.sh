#!/bin/bash
# The benchmark matrix for BERT-base on the lent Xeon: batch 1 and 8,
# sequence 128, 1 and 2 threads, each precision, beside ONNX Runtime fp32 and
# int8 and PyTorch bf16 in the same run. T: the tessera binary (built here at
# the commit named in README.md, carried in .devrun/).
T=$PWD/.devrun/tessera_sym
python3 benches/bert_vs_peers.py --model bert --batch 1,8 --threads 1,2 --precisions fp32,bf16,int8 \
  --iters 10 --warmup 2 --tessera $T --models-dir /tmp/m --json $OUT/emr16_matrix_bert.json 2>&1 \
  | tee $OUT/emr16_matrix_bert.txt | grep -E "^(model|bert|note)"
