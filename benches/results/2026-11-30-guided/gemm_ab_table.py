#!/usr/bin/env python3
"""Pairs the `call` rows (GFLOP/s, untimed calls) and `in-wait-last` rows
of a bench-gemm --stages run over the blockings S,G,S,G: static (name ends
in `:static`) against guided (the default), per kernel and shape, in the
order they ran."""
import collections, sys

rows = collections.defaultdict(lambda: {'static': [], 'guided': []})
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 11 or f[4] not in ('call', 'in-wait-last'):
        continue
    sched = 'static' if f[1].endswith(':static') else 'guided'
    key = (f[0], 'x'.join(f[5:8]), f[8], f[4])
    rows[key][sched].append(float(f[9]) if f[4] == 'call' else float(f[10]))
print(f"{'kernel':9} {'MxNxK':13} thr  GFLOP/s static -> guided (ratio)     wait-last us static -> guided")
for key, v in rows.items():
    if key[3] != 'call':
        continue
    w = rows[key[:3] + ('in-wait-last',)]
    pairs = ' '.join(f"{s:.0f}->{g:.0f} ({g / s:.2f})" for s, g in zip(v['static'], v['guided']))
    waits = ' '.join(f"{s:.1f}->{g:.1f}" for s, g in zip(w['static'], w['guided']))
    print(f"{key[0]:9} {key[1]:13} {key[2]:>3}  {pairs}   {waits}")
