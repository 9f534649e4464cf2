#!/bin/bash
# Inside the calls: the driver's own time stamps split each call into microkernel, output prefetch and epilogue (bench-gemm --stages rows in-*), register epilogue on and off.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
S=128x768x768,128x2304x768,128x3072x768,128x768x3072
for r in 1 2; do for w in on off; do
  echo "== round $r wide=$w" >> "$OUT/in_call.txt"
  TESSERA_WIDE_EPILOGUE=$w timeout 100 "$T" bench-gemm --shapes $S --threads 1,2 --kernels amx-bf16,amx-int8 --seconds 0.15 --best --stages --cold --epilogue none,gelu_erf_pieces 2>&1 | grep '^amx-' >> "$OUT/in_call.txt"
done; done
grep -E "^==|in-" "$OUT/in_call.txt" | awk '{print $1,$4,$5,$6,$7,$8,$9,$11}' | head -20
