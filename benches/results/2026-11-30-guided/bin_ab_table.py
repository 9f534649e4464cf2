#!/usr/bin/env python3
"""Tabulates an A/B of two binaries (`== round R threads T PREC BINARY`
headers, then `tessera bench --profile`'s tile driver and latency lines):
per threads and precision, p50 ms per round of each binary, the ratio
old / new (above 1: new faster), and the tile driver's packing of A and
microkernel time (ms per run and thread). argv: file, old name, new name."""
import collections, re, statistics, sys

path, old, new = sys.argv[1:4]
d = collections.defaultdict(lambda: collections.defaultdict(dict))
for line in open(path):
    if line.startswith('=='):
        f = line.split()
        key, rnd, who = (f[4], f[5]), f[2], f[6]
    elif 'latency' in line:
        d[key][who].setdefault(rnd, {})['p50'] = float(line.split()[2])
    elif 'tile driver' in line:
        cur = d[key][who].setdefault(rnd, {})
        for name, pat in (('uk', 'microkernel'), ('pack', 'packing A'), ('wait', 'after the last')):
            cur[name] = float(re.search(pat + r' ([\d.]+)', line).group(1))
for (thr, prec), v in d.items():
    rounds = sorted(v[old])
    ratios = [v[old][r]['p50'] / v[new][r]['p50'] for r in rounds]
    print(f"{thr:>2} threads {prec}: p50 {old} " + ' '.join(f"{v[old][r]['p50']:.2f}" for r in rounds)
          + f" | {new} " + ' '.join(f"{v[new][r]['p50']:.2f}" for r in rounds)
          + " | ratio " + ' '.join(f"{x:.2f}" for x in ratios)
          + f" (median {statistics.median(ratios):.2f}, new faster in {sum(x > 1 for x in ratios)} of {len(ratios)})")
    for who in (old, new):
        print(f"   {who:16} packing A " + ' '.join(f"{v[who][r]['pack']:.2f}" for r in rounds)
              + "  microkernel " + ' '.join(f"{v[who][r]['uk']:.2f}" for r in rounds)
              + "  wait after last " + ' '.join(f"{v[who][r]['wait']:.2f}" for r in rounds))
