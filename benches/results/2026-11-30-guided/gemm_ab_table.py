#!/usr/bin/env python3
"""Pairs the `call` rows (GFLOP/s, untimed calls) and `in-wait-last` rows
of a bench-gemm run over two blockings alternating (A,B,A,B), per kernel
and shape in the order they ran: the baseline (blocking name ending in
argv[2], default `:static`) against the other one. For run 10 pass
`:spread` (baseline spread, candidate spread2)."""
import collections, sys

base_suffix = sys.argv[2] if len(sys.argv) > 2 else ':static'
rows = collections.defaultdict(lambda: {'base': [], 'cand': []})
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 11 or f[4] not in ('call', 'in-wait-last'):
        continue
    which = 'base' if f[1].endswith(base_suffix) else 'cand'
    key = (f[0], 'x'.join(f[5:8]), f[8], f[4])
    rows[key][which].append(float(f[9]) if f[4] == 'call' else float(f[10]))
empty = {'base': [], 'cand': []}
print(f"{'kernel':9} {'MxNxK':13} thr  GFLOP/s baseline -> candidate (ratio)     wait-last us baseline -> candidate")
for key, v in list(rows.items()):
    if key[3] != 'call':
        continue
    w = rows.get(key[:3] + ('in-wait-last',), empty)
    pairs = ' '.join(f"{s:.0f}->{g:.0f} ({g / s:.2f})" for s, g in zip(v['base'], v['cand']))
    waits = ' '.join(f"{s:.1f}->{g:.1f}" for s, g in zip(w['base'], w['cand']))
    print(f"{key[0]:9} {key[1]:13} {key[2]:>3}  {pairs}   {waits}")
