#!/usr/bin/env bash
# The lent Xeon: the final code's (701a5ed, after the second review) test executables on AMX (TESSERA_REQUIRE_AMX=1, PROPTEST_CASES=100).
export TESSERA_REQUIRE_AMX=1 PROPTEST_CASES=100
for t in tessera_kernels tessera_providers int8_fusion stage_timing; do
    echo "=== tests $t"; .devrun/$t 2>&1 | grep -E "test result|FAILED|panicked|SKIPPED|integer_convolutions|depthwise|requantized|pooled"
done
