#!/usr/bin/env bash
# Installs dsv3's build dependencies from Debian's packages, idempotently,
# plus any packages named as arguments. Needs root (or sudo). Does nothing
# when everything is already installed.
set -euo pipefail
PKGS="cmake g++ make pkg-config python3 libxtensor-dev libxtensor-blas-dev xtl-dev
nlohmann-json3-dev doctest-dev libcli11-dev libonig-dev libopenblas-dev libomp-dev $*"
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
