#!/bin/bash
# CPU topology of the lent machine, and whether the 2-thread GEMM speed depends on which two CPUs run it.
chmod +x .devrun/*
T=$PWD/.devrun/tessera
lscpu > "$OUT/lscpu_full.txt"; lscpu -e >> "$OUT/lscpu_full.txt"
for c in 0 1 2 8; do echo "cpu$c siblings $(cat /sys/devices/system/cpu/cpu$c/topology/thread_siblings_list) core $(cat /sys/devices/system/cpu/cpu$c/topology/core_id)" >> "$OUT/lscpu_full.txt"; done
for r in 1 2 3; do for cpus in 0,1 0,2 0,8 0,15 5,6; do
  echo "== round $r cpus $cpus" >> "$OUT/pairs.txt"
  taskset -c $cpus timeout 30 "$T" bench-gemm --shapes 128x768x768,128x3072x768 --threads 2 --kernels amx-bf16 --seconds 0.1 --best --cold 2>&1 | grep '^amx-' | awk '{print $6,$7,$8,$10}' >> "$OUT/pairs.txt"
done; done
for r in 1 2 3; do for c in 0 1 8; do
  echo "== round $r cpu $c" >> "$OUT/single.txt"
  taskset -c $c timeout 30 "$T" bench-gemm --shapes 128x768x768,128x3072x768 --threads 1 --kernels amx-bf16 --seconds 0.1 --best --cold 2>&1 | grep '^amx-\|peak,' | awk '{print $1,$2,$3,$4,$5,$6,$7,$8,$10}' >> "$OUT/single.txt"
done; done
grep -E "Thread|Core|Socket|NUMA" "$OUT/lscpu_full.txt"; tail -20 "$OUT/lscpu_full.txt"; cat "$OUT/pairs.txt"; cat "$OUT/single.txt"
