#!/bin/sh
# Runs the libFuzzer targets side by side, each for $1 seconds (default 60), from a seed corpus built from
# ../shared/testdata (CSV corpora; JSON-Schema-Test-Suite and Zoom payloads for the JSON targets): short
# inputs for two thirds of the time, then inputs up to 1 MiB where an input slower than its timeout
# (super-linear cost) is a finding like a crash.
# Prints one line per target: executions, and whether it found a crash (the input is kept under
# .build-fuzz/crashes/ — turn it into a regression test). Exit status 1 when any target crashed.
set -u
cd "$(dirname "$0")/.."
seconds=${1:-60}
# $2: libFuzzer's -seed (0: a random one). The bounded run in make test passes 1, so that a clean clone
# explores the same inputs every time and a new crash is found by the long form, not by chance in CI.
seed=${2:-0}
out=.build-fuzz
testdata=../shared/testdata
status=0
# The compiled schema, built once at start, is a graph with reference cycles that lives as long as the
# process: LeakSanitizer reports it at exit. Only that is suppressed; a leak per input is still found.
export LSAN_OPTIONS="suppressions=$(pwd)/fuzz/lsan.supp"
mkdir -p "$out/crashes"
# The four targets run side by side (each for the whole $seconds), then each is reported.
for target in csv appointments zoom report; do
    corpus="$out/corpus-$target"
    mkdir -p "$corpus"
    if [ "$target" = csv ]; then
        find "$testdata/csv" -type f -name '*.csv' -exec cp {} "$corpus/" \; 2>/dev/null
    elif [ "$target" = report ]; then
        cp Tests/Fixtures/zoom-report/* "$corpus/"
    else
        find "$testdata/zoom" "$testdata/json-schema-test-suite/tests/draft2020-12" -type f -name '*.json' \
            -size -64k -exec sh -c 'cp "$1" "$2/$(echo "$1" | md5sum | cut -c1-16).json"' _ {} "$corpus" \; 2>/dev/null
    fi
    (
        # Two phases on one corpus. Two thirds of the time on inputs of at most 4 KiB (-max_len: the seed
        # files are up to 64 KiB, and inputs that long ran a few hundred a second): many executions,
        # for crashes. Then a third on inputs up to 1 MiB, grown at once (-len_control=0), where a
        # super-linear cost shows as time: any input slower than -timeout is a finding (libFuzzer keeps it
        # as timeout-*), like a crash. Linear work on 1 MiB takes milliseconds here, even under ASan.
        short=$((seconds * 2 / 3))
        "$out/fuzz-$target" -max_total_time="$short" -max_len=4096 -timeout=2 -rss_limit_mb=2048 \
            -print_final_stats=1 -seed="$seed" -artifact_prefix="$out/crashes/$target-" "$corpus" \
            > "$out/fuzz-$target.log" 2>&1
        code=$?
        if [ "$code" = 0 ]; then
            "$out/fuzz-$target" -max_total_time="$((seconds - short))" -max_len=1048576 -len_control=0 \
                -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 -seed="$seed" \
                -artifact_prefix="$out/crashes/$target-" "$corpus" >> "$out/fuzz-$target.log" 2>&1
            code=$?
        fi
        # The long form ($3 = asan) ends with the same corpus under AddressSanitizer and LeakSanitizer.
        if [ "$code" = 0 ] && [ "${3:-}" = asan ]; then
            "$out/fuzz-$target-asan" -max_total_time="$((seconds / 3))" -max_len=65536 -timeout=20 \
                -rss_limit_mb=2048 -print_final_stats=1 -seed="$seed" \
                -artifact_prefix="$out/crashes/$target-asan-" "$corpus" >> "$out/fuzz-$target.log" 2>&1
            code=$?
        fi
        echo $code > "$out/fuzz-$target.status"
    ) &
done
wait
for target in csv appointments zoom report; do
    log="$out/fuzz-$target.log"
    code=$(cat "$out/fuzz-$target.status")
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | awk '{ s += $1 } END { print s }')
    slowest=$(grep -o 'stat::slowest_unit_time_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | sort -n | tail -1)
    if [ "$code" = 0 ]; then
        echo "fuzz $target: ${runs:-?} executions in ${seconds} s, no crash, no input slower than its timeout (slowest ${slowest:-?} s)"
    else
        echo "fuzz $target: CRASH or SLOW INPUT after ${runs:-?} executions (exit $code); see $log and $out/crashes/"
        status=1
    fi
done
exit $status
