#!/usr/bin/env bash
# Installs dsv3 into a temporary prefix and builds examples/hello against it
# with find_package(dsv3), then runs it on a tiny model.
# Usage: consumer_test.sh SOURCE_DIR BUILD_DIR DSV3_BINARY
set -euo pipefail
SRC=$1 BUILD=$2 DSV3=$3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cmake --install "$BUILD" --prefix "$T/prefix" >/dev/null
cmake -S "$SRC/examples/hello" -B "$T/hello" -DCMAKE_PREFIX_PATH="$T/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$T/hello" >/dev/null
"$DSV3" make-model --out "$T/model" --preset tiny 2>/dev/null
"$T/hello/hello" "$T/model" | grep -q "next token after" && echo "1 passed, 0 failed"
