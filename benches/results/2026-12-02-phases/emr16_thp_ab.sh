#!/bin/bash
# Are activations on 4 KiB pages a cost on the lent Xeon (a KVM guest)? The
# same binary under the guest's transparent huge pages in "madvise" mode (the
# default: only the packed weights, which Tessera advises, get huge pages) and
# in "always" mode (every large allocation, activations too), alternating.
T=$PWD/.devrun/tessera_sym
cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag
python3 -c "import sys; sys.path.insert(0, 'scripts'); import make_bert; make_bert.ensure(__import__('pathlib').Path('/tmp/m/bert-base'), make_bert.BertParams(), int8=False, log=print)" > /dev/null
orig=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled)
for round in 1 2; do
  for mode in madvise always; do
    echo $mode > /sys/kernel/mm/transparent_hugepage/enabled
    for cfg in "int8 8" "bf16 1" "int8 1"; do
      set -- $cfg
      echo "== round $round thp $mode precision $1 batch $2"
      $T bench /tmp/m/bert-base/bert.onnx --precision $1 --threads 2 --dim batch=$2 --dim seq=128 --iterations $((40 / $2 + 2)) --warmup 2 --profile 2>&1 | grep -E "tile driver|attention on|p50|tile unit|LayerNorm|amx:Attention"
    done
  done
done
echo $orig > /sys/kernel/mm/transparent_hugepage/enabled
grep -i huge /proc/meminfo
