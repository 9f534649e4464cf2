#!/bin/bash
# Final candidates on the lent Xeon, interleaved: 92ab481 (old), new7 (stage tooling only), final (new7 + row-parallel int8 quantization where threads outnumber A panels).
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
declare -A BIN=([old]=$PWD/.devrun/tessera_old [new7]=$PWD/.devrun/tessera_new7 [final]=$PWD/.devrun/tessera)
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 3 --warmup 1 --tessera "${BIN[final]}" --models-dir /tmp/m > "$OUT/build.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for t in 2 16; do for p in int8 bf16; do for b in old new7 final; do
  echo "== round $r threads $t $p $b $("${BIN[$b]}" bench $M --precision $p --threads $t --dim batch=1 --dim seq=128 --iterations 20 2>&1 | grep latency)" >> "$OUT/bert_ab.txt"
done; done; done; done
"${BIN[final]}" bench $M --precision int8 --threads 16 --dim batch=1 --dim seq=128 --iterations 30 --profile > "$OUT/profile_int8_16t.txt" 2>&1
awk '{print $3,$5,$6,$7,$10}' "$OUT/bert_ab.txt"; grep "tile driver" "$OUT/profile_int8_16t.txt"
