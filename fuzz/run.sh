#!/bin/sh
# Runs the libFuzzer targets side by side, each for $1 seconds (default 60), from a seed corpus built from
# ../shared/testdata (CSV corpora; JSON-Schema-Test-Suite and Zoom payloads for the JSON targets).
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
# The three targets run side by side (each for the whole $seconds), then each is reported.
for target in csv appointments zoom; do
    corpus="$out/corpus-$target"
    mkdir -p "$corpus"
    if [ "$target" = csv ]; then
        find "$testdata/csv" -type f -name '*.csv' -exec cp {} "$corpus/" \; 2>/dev/null
    else
        find "$testdata/zoom" "$testdata/json-schema-test-suite/tests/draft2020-12" -type f -name '*.json' \
            -size -64k -exec sh -c 'cp "$1" "$2/$(echo "$1" | md5sum | cut -c1-16).json"' _ {} "$corpus" \; 2>/dev/null
    fi
    (
        "$out/fuzz-$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -seed="$seed" \
            -artifact_prefix="$out/crashes/$target-" "$corpus" > "$out/fuzz-$target.log" 2>&1
        echo $? > "$out/fuzz-$target.status"
    ) &
done
wait
for target in csv appointments zoom; do
    log="$out/fuzz-$target.log"
    code=$(cat "$out/fuzz-$target.status")
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [ "$code" = 0 ]; then
        echo "fuzz $target: ${runs:-?} executions in ${seconds} s, no crash"
    else
        echo "fuzz $target: CRASH after ${runs:-?} executions (exit $code); see $log and $out/crashes/"
        status=1
    fi
done
exit $status
