#!/bin/bash
# Output prefetch before a block's last call (TESSERA_TILE_AHEAD) x register epilogue (TESSERA_WIDE_EPILOGUE), interleaved.
export PYTHONUNBUFFERED=1
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=128x768x768,128x2304x768,128x3072x768,128x768x3072
for r in 1 2 3; do for a in on off; do for w in on off; do
  echo "== round $r ahead=$a wide=$w" >> "$OUT/gemm.txt"
  TESSERA_TILE_AHEAD=$a TESSERA_WIDE_EPILOGUE=$w timeout 40 "$T" bench-gemm --shapes $S --threads 2 --kernels amx-bf16,amx-int8 --seconds 0.1 --best --cold --epilogue none 2>&1 | grep '^amx-' >> "$OUT/gemm.txt"
done; done; done
mkdir -p /tmp/m
timeout 200 python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2 --precisions bf16 --iters 5 --warmup 1 --tessera "$T" --models-dir /tmp/m > "$OUT/build.txt" 2>&1
M=/tmp/m/bert-base/bert.onnx
for r in 1 2 3 4; do for p in bf16 int8; do for a in on off; do for w in on off; do
  echo "== round $r $p ahead=$a wide=$w $(TESSERA_TILE_AHEAD=$a TESSERA_WIDE_EPILOGUE=$w "$T" bench $M --precision $p --threads 2 --dim batch=1 --dim seq=128 --iterations 20 2>&1 | grep latency)" >> "$OUT/bert_2t.txt"
done; done; done; done
cat "$OUT/bert_2t.txt" | awk '{print $3,$4,$5,$6,$9}'
