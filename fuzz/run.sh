#!/usr/bin/env bash
# run.sh: build fuzz_ingest (clang, libFuzzer + ASan + UBSan) in build-fuzz/ and run it.
#
#   bash fuzz/run.sh [SECONDS]     default 60; CI runs a short one, e.g. `bash fuzz/run.sh 30`
#
# Needs clang (Debian package clang) and the top-level CMakeLists.txt to include fuzz/
# under option TIERONE_FUZZ. New inputs go to build-fuzz/fuzz-corpus (the seeds in
# fuzz/corpus are read too); a crash leaves crash-* in the current directory and a non-zero
# exit status. The last lines show libFuzzer's final stats (number_of_executed_units).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-60}
BUILD=${TIERONE_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
CC=clang cmake -S "$ROOT" -B "$BUILD" -DTIERONE_FUZZ=ON -DTIERONE_ASAN=ON -DTIERONE_UBSAN=ON \
  -DTIERONE_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target fuzz_ingest -j "${TIERONE_BUILD_JOBS:-2}"
mkdir -p "$BUILD/fuzz-corpus"
"$BUILD/fuzz/fuzz_ingest" -max_total_time="$SECS" -max_len=8192 -timeout=10 \
  -dict="$ROOT/fuzz/http.dict" -print_final_stats=1 \
  "$BUILD/fuzz-corpus" "$ROOT/fuzz/corpus"
