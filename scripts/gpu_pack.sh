#!/usr/bin/env bash
# Prepares a run of scripts/gpu_check.sh on a GPU machine that has the NVIDIA
# driver but no compilers or libraries (the lent device machine): builds the
# CLI and the test binary with -DDSV3_CUDA=ON here (CUDA runtime linked
# statically), and copies the shared libraries they need, but glibc's, into
# gpu-libs/ (about 46 MB; gpu_check.sh puts it on LD_LIBRARY_PATH). Carry
# build-cuda/dsv3, build-cuda/tests/dsv3_tests and gpu-libs with the tree.
#
#   bash scripts/gpu_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
cmake -S . -B build-cuda -DDSV3_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-cuda -j"$(nproc)" --target dsv3_cli dsv3_tests
rm -rf gpu-libs
mkdir -p gpu-libs
for bin in build-cuda/dsv3 build-cuda/tests/dsv3_tests; do
  ldd "$bin" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;;  # glibc: the machine's own
    *) cp -L "$lib" gpu-libs/ ;;
  esac
done
du -sh gpu-libs build-cuda/dsv3 build-cuda/tests/dsv3_tests
echo 'gpu_pack.sh: carry ["build-cuda/dsv3", "build-cuda/tests/dsv3_tests", "gpu-libs"]; run: bash scripts/gpu_check.sh'
