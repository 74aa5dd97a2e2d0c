#!/usr/bin/env bash
# run.sh: build a libFuzzer target (clang, libFuzzer + ASan + UBSan) in build-fuzz/ and run it.
#
#   bash fuzz/run.sh [SECONDS] [TARGET]   default 60 s of fuzz_ingest; CI runs short ones:
#                                         `bash fuzz/run.sh 20` and
#                                         `bash fuzz/run.sh 10 fuzz_chatwoot_webhook`
#
# Targets: fuzz_ingest (the shim's request path; seeds fuzz/corpus, dictionary http.dict)
# and fuzz_chatwoot_webhook (the worker's webhook reading; seeds: every webhook fixture in
# tests/fixtures/webhooks behind a path byte, written to build-fuzz/; dictionary
# chatwoot.dict). Needs clang (Debian package clang) and the top-level CMakeLists.txt to
# include fuzz/ under option TIERONE_FUZZ. New inputs go to build-fuzz/<target>-corpus; a
# crash leaves crash-* in the current directory and a non-zero exit status. The last lines
# show libFuzzer's final stats (number_of_executed_units).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-60}
TARGET=${2:-fuzz_ingest}
BUILD=${TIERONE_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
case "$TARGET" in
  fuzz_ingest) DICT=$ROOT/fuzz/http.dict MAXLEN=8192 ;;
  fuzz_chatwoot_webhook) DICT=$ROOT/fuzz/chatwoot.dict MAXLEN=16384 ;;
  *)
    echo "run.sh: unknown target $TARGET (fuzz_ingest, fuzz_chatwoot_webhook)" >&2
    exit 2
    ;;
esac
CC=clang cmake -S "$ROOT" -B "$BUILD" -DTIERONE_FUZZ=ON -DTIERONE_ASAN=ON -DTIERONE_UBSAN=ON \
  -DTIERONE_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target "$TARGET" -j "${TIERONE_BUILD_JOBS:-2}"
CORPUS=$BUILD/$TARGET-corpus
mkdir -p "$CORPUS"
if [ "$TARGET" = fuzz_ingest ]; then
  SEEDS=$ROOT/fuzz/corpus
else
  # byte 0 picks the path: 0 = the account webhook, 1 = the agent bot
  SEEDS=$BUILD/$TARGET-seeds
  mkdir -p "$SEEDS"
  for f in "$ROOT"/tests/fixtures/webhooks/*.json; do
    { printf '\000'; cat "$f"; } >"$SEEDS/chatwoot-$(basename "$f")"
    { printf '\001'; cat "$f"; } >"$SEEDS/agent-bot-$(basename "$f")"
  done
fi
"$BUILD/fuzz/$TARGET" -max_total_time="$SECS" -max_len="$MAXLEN" -timeout=10 \
  -dict="$DICT" -print_final_stats=1 "$CORPUS" "$SEEDS"
