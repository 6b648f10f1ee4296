#!/bin/sh
# Builds the libFuzzer targets (swiftc -sanitize=fuzzer,address) into $1 (default .build-fuzz): each
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
for target in csv appointments zoom; do
    swiftc -O -sanitize=fuzzer,address -parse-as-library -package-name carespool -module-name Fuzz \
        "$out"/src/*.swift fuzz/$target.swift -o "$out/fuzz-$target" 2>&1 | grep -v "ld.gold: warning" || true
    test -x "$out/fuzz-$target"
done
