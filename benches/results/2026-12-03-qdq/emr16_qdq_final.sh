#!/bin/bash
# On the lent Xeon, from the repository root; .devrun/ holds the stripped release binary and the two
# MiniLM QDQ files made here (quantize_static of paraphrase-MiniLM-L3-v2 with every op type, 4 calibration
# inputs of random ids: uu_pt = uint8 activations and weights per tensor; ss_pc = int8 activations, int8
# weights per column), xz'd.
set -e
mkdir -p /tmp/q && for v in uu_pt ss_pc; do xz -dc .devrun/minilm_$v.onnx.xz > /tmp/q/minilm_$v.onnx; done
python3 benches/bert_vs_peers.py --model bert --batch 1,8 --threads 1,2 --precisions int8 --iters 10 --warmup 2 \
  --no-torch --tessera .devrun/tessera --models-dir /tmp/m --work /tmp/w --json $OUT/emr16_qdq_bert_final.json \
  2>&1 | grep -v "W:onnxruntime" > $OUT/emr16_qdq_bert_final.txt
for v in uu_pt ss_pc; do
  python3 benches/model_vs_ort.py /tmp/q/minilm_$v.onnx --dims batch_size=1,sequence_length=128 \
    --dims batch_size=8,sequence_length=128 --threads 1,2 --rounds 3 --tessera .devrun/tessera --work /tmp/w2
done > $OUT/emr16_qdq_minilm.txt 2>&1
