#!/bin/bash
# On the lent Xeon, from the repository root. .devrun/: tessera (a00f16f, the final code) and tessera_9ca
# (9ca7cf8, before this stop), both stripped; the two every-op MiniLM QDQ files (make_minilm_qdq.py), xz'd.
# BERT-base's QDQ twin is built there by bert_vs_peers' own code (make_bert + quantize_qdq).
set -e
mkdir -p /tmp/q && for v in uu_pt ss_pc; do xz -dc .devrun/minilm_$v.onnx.xz > /tmp/q/minilm_$v.onnx; done
python3 -c "
import sys; sys.path.insert(0, 'benches'); sys.path.insert(0, 'scripts')
from pathlib import Path
import bert_vs_peers as b
b.prepare_models(['bert'], False, Path('/tmp/m'), None, 128)" 2>&1 | grep -v "W:onnxruntime" | tail -2
for bin in tessera_9ca tessera; do
  echo "### binary $bin"
  python3 benches/model_vs_ort.py /tmp/m/bert-base/bert_qdq_s128.onnx --dims batch=1,seq=128 --dims batch=8,seq=128 --threads 2 --rounds 2 --tessera .devrun/$bin --work /tmp/w_$bin
  for v in uu_pt ss_pc; do
    python3 benches/model_vs_ort.py /tmp/q/minilm_$v.onnx --dims batch_size=1,sequence_length=128 --dims batch_size=8,sequence_length=128 --threads 2 --rounds 2 --tessera .devrun/$bin --work /tmp/w_$bin
  done
done
