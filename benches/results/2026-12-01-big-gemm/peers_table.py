#!/usr/bin/env python3
"""Per repetition of bert_vs_peers.py (`== repetition N` headers): p50 ms
of each engine and the target ratios, then their medians over repetitions."""
import collections, statistics, sys

reps = []
for line in open(sys.argv[1]):
    if line.startswith('== repetition'):
        reps.append(collections.defaultdict(dict))
    elif line.startswith('bert-base'):
        f = line.split()
        thr, engine, p50 = f[3], f[4] + ' ' + f[5], float(f[6])
        reps[-1][thr][engine] = p50
ratios = collections.defaultdict(list)
for i, r in enumerate(reps, 1):
    for thr, e in sorted(r.items(), key=lambda kv: int(kv[0])):
        row = {
            'bf16/ort32': e['ort fp32'] / e['tessera bf16'],
            'bf16/torch': e['torch bf16'] / e['tessera bf16'],
            'int8/ort8': e['ort int8'] / e['tessera int8'],
            'fp32/ort32': e['ort fp32'] / e['tessera fp32'],
        }
        for k, v in row.items():
            ratios[(thr, k)].append(v)
        print(f"rep {i} thr {thr:>2}: " + ' '.join(f"{k} {v:6.2f}" for k, v in e.items()) + ' | '
              + ' '.join(f"{k} {v:.2f}x" for k, v in row.items()))
for (thr, k), v in sorted(ratios.items(), key=lambda kv: (int(kv[0][0]), kv[0][1])):
    print(f"thr {thr:>2} {k:11} median {statistics.median(v):.2f}x  range {min(v):.2f}-{max(v):.2f}  above 1 in {sum(x > 1 for x in v)} of {len(v)}")
