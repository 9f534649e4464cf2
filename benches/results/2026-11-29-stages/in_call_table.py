#!/usr/bin/env python3
"""Tabulates bench-gemm --stages rows of the in-call split (in-* stages):
microseconds per call and thread in each stage, and the rest ("other":
scheduling, loop overhead, threads waiting), per round header."""
import collections, sys

rows = collections.OrderedDict()
hdr = ''
for line in open(sys.argv[1]):
    if line.startswith('=='):
        hdr = ' '.join(line.split()[1:])
        continue
    f = line.split()
    if len(f) < 11 or not f[4].startswith(('call', 'in-')):
        continue
    key = (hdr, f[0], f[3], 'x'.join(f[5:8]), f[8])
    rows.setdefault(key, {})[f[4]] = float(f[10])
stages = ['in-kloop', 'in-prefetch', 'in-finish', 'in-pack', 'in-session']
print(f"{'round':22} {'kernel':9} {'MxNxK':13} thr {'call':>7} {'in-call':>8} " + ' '.join(f'{s[3:]:>8}' for s in stages) + f" {'other':>7}  kloop% finish% other%")
for (h, kern, epi, shape, thr), v in rows.items():
    if 'in-call' not in v:
        continue
    other = v['in-call'] - sum(v.get(s, 0) for s in stages)
    c = v['in-call']
    print(f"{h:22} {kern:9} {shape:13} {thr:>3} {v.get('call', 0):7.1f} {c:8.1f} " + ' '.join(f"{v.get(s, 0):8.1f}" for s in stages)
          + f" {other:7.1f}  {100 * v['in-kloop'] / c:5.1f} {100 * v['in-finish'] / c:6.1f} {100 * other / c:6.1f}")
