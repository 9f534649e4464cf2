#!/bin/bash
# a37cfe2: the kernel and provider test executables on AMX (TESSERA_REQUIRE_AMX=1), a build of the kernel tests
# with one mutation (the probe's second B tile loaded from the first's offset: the data-probe test must fail),
# and bench-gemm's per-case probe on the Xeon.
chmod +x .devrun/*
export TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100
( time timeout 200 .devrun/kernels_tests --test-threads 4 ) > "$OUT/amx_kernels_tests.txt" 2>&1
( time timeout 60 .devrun/stage_timing_tests ) > "$OUT/amx_stage_timing_tests.txt" 2>&1
( time timeout 200 .devrun/providers_tests --test-threads 4 ) > "$OUT/amx_providers_tests.txt" 2>&1
( timeout 100 .devrun/kernels_tests_mut amx_data_probe ) > "$OUT/amx_kernels_tests_mutated.txt" 2>&1
unset TESSERA_REQUIRE_AMX PROPTEST_CASES
grep -h "test result" "$OUT"/amx_*tests.txt "$OUT"/amx_kernels_tests_mutated.txt
grep -h "amx_data_probe" "$OUT"/amx_kernels_tests.txt "$OUT"/amx_kernels_tests_mutated.txt
timeout 60 .devrun/tessera bench-gemm --shapes 128x768x768,2048x2048x2048 --threads 1,2 --kernels amx-bf16,amx-int8 --seconds 0.1 --best > "$OUT/bench_gemm_probe.txt" 2>&1
cat "$OUT/bench_gemm_probe.txt" | cut -c1-40,110-200
