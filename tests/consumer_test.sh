#!/usr/bin/env bash
# Installs dsv3 into a temporary prefix and builds examples/hello and
# examples/research against it with find_package(dsv3), then runs both on a
# tiny model (research checks what it demonstrates and prints "N passed, M failed").
# Usage: consumer_test.sh SOURCE_DIR BUILD_DIR DSV3_BINARY
set -euo pipefail
SRC=$1 BUILD=$2 DSV3=$3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cmake --install "$BUILD" --prefix "$T/prefix" >/dev/null
for ex in hello research; do
  cmake -S "$SRC/examples/$ex" -B "$T/$ex" -DCMAKE_PREFIX_PATH="$T/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$T/$ex" >/dev/null
done
"$DSV3" make-model --out "$T/model" --preset tiny 2>/dev/null
"$T/hello/hello" "$T/model" | grep -q "next token after"
"$T/research/research" "$T/model"
echo "hello: ok"
