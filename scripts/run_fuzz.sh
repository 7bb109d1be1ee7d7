#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 180 s) from the seeds of
# scripts/fuzz_seeds.py, and prints one line per target: runs, corpus size, and whether it
# found a crash, a leak, a timeout (an input slower than 10 s) or an allocation past 2 GB.
#   scripts/run_fuzz.sh [SECONDS] [TARGET...]      # needs cargo-fuzz and a nightly toolchain
set -uo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-180}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(image_intake multipart_intake json_requests tokenizer_round_trip stop_matching)
python3 scripts/fuzz_seeds.py 2>/dev/null || "${PYTHON:-python3}" scripts/fuzz_seeds.py
mkdir -p fuzz/logs
status=0
for target in "${targets[@]}"; do
    log="fuzz/logs/${target}.log"
    (cd fuzz && cargo +nightly fuzz run -O "$target" -- -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1
    code=$?
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$')
    found=$(grep -oE '(ERROR: libFuzzer: [a-z-]+|SUMMARY: [A-Za-z]+: [a-z-]+|panicked at [^ ]+)' "$log" | head -1)
    corpus=$(ls "fuzz/corpus/$target" 2>/dev/null | wc -l)
    echo "$target: ${seconds} s, ${runs:-?} runs, corpus ${corpus} inputs, exit ${code}: ${found:-nothing found}"
    [ "$code" -eq 0 ] || status=1
done
exit $status
