#!/bin/bash
# On the lent Xeon, from the repository root: the CPU vector convolutions (--disable amx, so that the tile
# provider does not take them) before (tessera_base: c72656e) and after (tessera: 3d59536's conv blocking),
# alternating, 3 rounds, at 2 and 16 threads: ResNet-50 and DenseNet-121 (onnx light, from the onnx wheel there)
# and cnn2 (make_cnn_qdq.py's f32 net). p50 ms.
L=$(python3 -c "import onnx,os;print(os.path.dirname(onnx.__file__))")/backend/test/data/light
for t in 2 16; do
  for r in 1 2 3; do
    for b in tessera_base tessera; do
      printf "threads %2s round %s %-13s" $t $r $b
      for m in .devrun/cnn2.onnx $L/light_resnet50.onnx $L/light_densenet121.onnx; do
        .devrun/$b bench $m --dim n=1 --threads $t --iterations 8 --warmup 2 --disable amx | grep latency | awk '{printf " %s", $3}'
      done
      echo
    done
  done
done
