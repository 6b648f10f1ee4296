#!/bin/sh
# Builds the libFuzzer targets (swiftc -O -sanitize=fuzzer; with $2 = asan, ASan builds too) into $1
# (default .build-fuzz): each
# target is compiled with the real sources of CSV, JSONSchema and Kinds as one module (their
# `import CSV` / `import JSONSchema` lines dropped), and schema.json embedded.
set -eu
cd "$(dirname "$0")/.."
out=${1:-.build-fuzz}
mkdir -p "$out/src"
rm -f "$out"/src/*.swift
for f in Sources/CSV/*.swift Sources/JSONSchema/*.swift Sources/Kinds/*.swift; do
    grep -v -E '^(package )?import (CSV|JSONSchema)$' "$f" > "$out/src/$(basename "$(dirname "$f")")-$(basename "$f")"
done
python3 - "$out/src/FuzzSchema.swift" <<'PY'
import sys
data = open("schema.json", "rb").read()
with open(sys.argv[1], "w") as f:
    f.write("enum FuzzSchema {\n    static let bytes: [UInt8] = [" + ",".join(str(b) for b in data) + "]\n}\n")
PY
# fuzz-TARGET: optimised, with libFuzzer's coverage only — Swift's own checks (bounds, overflow,
# preconditions) are the oracle, and it runs about five times as many inputs a second as under ASan.
# With $2 = asan (the long form), fuzz-TARGET-asan too: AddressSanitizer and LeakSanitizer besides.
for target in csv appointments zoom report; do
    swiftc -O -sanitize=fuzzer -parse-as-library -package-name carespool -module-name Fuzz \
        "$out"/src/*.swift fuzz/$target.swift -o "$out/fuzz-$target" 2>&1 | grep -v "ld.gold: warning" || true
    test -x "$out/fuzz-$target"
    if [ "${2:-}" = asan ]; then
        swiftc -O -sanitize=fuzzer,address -parse-as-library -package-name carespool -module-name Fuzz \
            "$out"/src/*.swift fuzz/$target.swift -o "$out/fuzz-$target-asan" 2>&1 | grep -v "ld.gold: warning" || true
        test -x "$out/fuzz-$target-asan"
    fi
done
