#!/bin/bash
# 66a746b (this stop's last code), built on the build machine and carried:
# the AMX tests (kernels, stage timing, providers) with TESSERA_REQUIRE_AMX=1,
# then BERT-base beside the peers: batch 1 at 2 and 16 threads (two
# repetitions) and batch 8 at 2 threads.
export TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100
R=.devrun
$R/kernels_tests --test-threads 4 > $OUT/emr16_final_amx_kernels_tests.txt 2>&1; echo "kernels rc=$?"; tail -3 $OUT/emr16_final_amx_kernels_tests.txt
$R/stage_timing_tests > $OUT/emr16_final_amx_stage_timing_tests.txt 2>&1; echo "stage timing rc=$?"; tail -3 $OUT/emr16_final_amx_stage_timing_tests.txt
$R/providers_tests --test-threads 4 > $OUT/emr16_final_amx_providers_tests.txt 2>&1; echo "providers rc=$?"; tail -3 $OUT/emr16_final_amx_providers_tests.txt
grep -c "amx" $OUT/emr16_final_amx_kernels_tests.txt $OUT/emr16_final_amx_providers_tests.txt
unset TESSERA_REQUIRE_AMX PROPTEST_CASES
T=$PWD/.devrun/tessera
for rep in 1 2; do
  echo "== repetition $rep"
  python3 benches/bert_vs_peers.py --model bert --batch 1 --threads 2,16 --precisions fp32,bf16,int8 --iters 20 --warmup 3 --tessera $T --models-dir /tmp/m 2>&1 | grep -E "^(model|bert|note|host)"
done > $OUT/emr16_final_bert_b1_peers.txt
python3 benches/bert_vs_peers.py --model bert --batch 8 --threads 2 --precisions fp32,bf16,int8 --iters 8 --warmup 2 --tessera $T --models-dir /tmp/m 2>&1 | grep -E "^(model|bert|note|host)" > $OUT/emr16_final_bert_b8_peers.txt
cat $OUT/emr16_final_bert_b1_peers.txt $OUT/emr16_final_bert_b8_peers.txt
