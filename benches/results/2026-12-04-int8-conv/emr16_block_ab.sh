#!/usr/bin/env bash
# A/B on the lent Xeon: the int8 convolution with its im2row rows made while A is packed, whole image
# (.devrun/tessera_ga, 8445c3e) against the same in blocks of positions whose packed A is 512 KiB (.devrun/tessera_blk).
# tessera bench, alternating, 3 rounds; 2 and 16 threads; the models of make_cnn_quantized.py and
# make_light_quantized.py.
M=/tmp/m; mkdir -p $M
D=benches/results/2026-12-04-int8-conv
[ -f $M/cnn2_qdq.onnx ] || python3 $D/make_cnn_quantized.py $M >/dev/null 2>&1
[ -f $M/resnet50_qop.onnx ] || python3 $D/make_light_quantized.py $M resnet50 >/dev/null 2>&1
for r in 1 2 3; do for t in 2 16; do for b in ga blk; do
  for spec in "cnn2_qdq n=1" "cnn2_qdq n=8" "resnet50_qop -"; do
    set -- $spec
    dim=(); [ "$2" != "-" ] && dim=(--dim $2)
    echo "round $r threads $t $b $1 $2 $(.devrun/tessera_$b bench $M/$1.onnx "${dim[@]}" --threads $t --iterations 10 --warmup 2 2>&1 | grep latency | sed 's/ *p99.*//')"
  done
done; done; done
