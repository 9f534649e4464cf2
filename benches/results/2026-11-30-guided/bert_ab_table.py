#!/usr/bin/env python3
"""Tabulates emr16_run1_bert_ab.txt: per threads and precision, p50 ms of
each round under the static grid and the guided schedule, their ratio
(static / guided: above 1, guided faster), and the tile driver's microkernel
time and wait after the last task (ms per run and thread)."""
import collections, re, statistics, sys

d = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    if line.startswith('=='):
        f = line.split()
        key, rnd, sched = (f[4], f[5]), f[2], f[6]
    elif 'latency' in line:
        d[key].setdefault(sched, {}).setdefault(rnd, {})['p50'] = float(line.split()[2])
    elif 'tile driver' in line:
        cur = d[key].setdefault(sched, {}).setdefault(rnd, {})
        cur['uk'] = float(re.search(r'microkernel ([\d.]+)', line).group(1))
        cur['wait'] = float(re.search(r'after the last ([\d.]+)', line).group(1))
for (thr, prec), v in d.items():
    rounds = sorted(v['static'])
    ratios = [v['static'][r]['p50'] / v['guided'][r]['p50'] for r in rounds]
    print(f"{thr:>2} threads {prec}: p50 static " + ' '.join(f"{v['static'][r]['p50']:.2f}" for r in rounds)
          + " | guided " + ' '.join(f"{v['guided'][r]['p50']:.2f}" for r in rounds)
          + " | ratio " + ' '.join(f"{x:.2f}" for x in ratios)
          + f" (median {statistics.median(ratios):.2f}, guided faster in {sum(x > 1 for x in ratios)} of {len(ratios)})")
    for s in ('static', 'guided'):
        print(f"   {s:6} microkernel " + ' '.join(f"{v[s][r]['uk']:.2f}" for r in rounds)
              + "  wait after last " + ' '.join(f"{v[s][r]['wait']:.2f}" for r in rounds))
