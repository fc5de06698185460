#!/usr/bin/env bash
# Extra packages for scripts/fuzz.sh (clang + libFuzzer runtime) on top of
# scripts/deps.sh. Idempotent: does nothing when everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
PKGS="clang-14 libclang-rt-14-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "dsv3: installing$missing" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
