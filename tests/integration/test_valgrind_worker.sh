#!/usr/bin/env bash
# test_valgrind_worker.sh: the real tierone-worker under valgrind (memcheck) runs a mix of
# every diagnostic job type (success, timer, failure -> retry set, Redis write, HTTP GET to a
# closed port -> transport error) and stops on SIGTERM with no memory error and no definite
# leak. Uses database 9 of TIERONE_TEST_REDIS_URL (scripts/test.sh provides it).
# Prints "N passed, N failed" last.
set -euo pipefail

ROOT=${TIERONE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${TIERONE_BIN_DIR:-$ROOT/build}/tierone-worker
: "${TIERONE_TEST_REDIS_URL:?run through scripts/test.sh (TIERONE_TEST_REDIS_URL is not set)}"
URL="${TIERONE_TEST_REDIS_URL%/*}/9"
WORK=$(mktemp -d /tmp/tierone-valgrind.XXXXXX)
WORKER=""
trap '[ -n "$WORKER" ] && kill -9 "$WORKER" 2>/dev/null; rm -rf "$WORK"' EXIT
PASSED=0
FAILED=0
check() {
  local what=$1
  shift
  if "$@"; then PASSED=$((PASSED + 1)); echo "ok: $what"; else FAILED=$((FAILED + 1)); echo "FAILED: $what"; fi
}
if ! command -v valgrind >/dev/null; then echo "valgrind is not installed"; echo "0 passed, 1 failed"; exit 1; fi
# Sanitizer builds cannot run under valgrind; the plain pass covers this test.
# (ldd's output is read whole first: with pipefail, `ldd | grep -q` fails when grep exits early
# and ldd dies of SIGPIPE, which once made CI run valgrind on the ASan build.)
libs=$(ldd "$BIN" 2>/dev/null || true)
if [[ $libs == *libasan* ]]; then
  echo "skipped: $BIN is an AddressSanitizer build (valgrind runs in the plain pass)"
  echo "1 passed, 0 failed"
  exit 0
fi

redis-cli -u "$URL" FLUSHDB >/dev/null
jobs=()
for i in $(seq 1 50); do
  jobs+=("{\"class\":\"Tierone::Noop\",\"args\":[],\"jid\":\"n$i\",\"queue\":\"default\",\"retry\":true}")
  jobs+=("{\"class\":\"Tierone::Record\",\"args\":[\"ran\",\"$i\"],\"jid\":\"r$i\",\"queue\":\"default\",\"retry\":true}")
done
for i in $(seq 1 10); do
  jobs+=("{\"class\":\"Tierone::Sleep\",\"args\":[20],\"jid\":\"s$i\",\"queue\":\"default\",\"retry\":true}")
  jobs+=("{\"class\":\"Tierone::Fail\",\"args\":[\"boom $i\"],\"jid\":\"f$i\",\"queue\":\"default\",\"retry\":true}")
  jobs+=("{\"class\":\"Tierone::HttpGet\",\"args\":[\"http://127.0.0.1:9/\"],\"jid\":\"h$i\",\"queue\":\"default\",\"retry\":true}")
done
jobs+=('{"class":"Nobody::Home","args":[],"jid":"u1","queue":"default","retry":true}' 'not json')
redis-cli -u "$URL" LPUSH queue:default "${jobs[@]}" >/dev/null
total=${#jobs[@]}

TIERONE_REDIS_URL="$URL" TIERONE_QUEUES=default TIERONE_ADMIN_PORT=0 TIERONE_LOG_LEVEL=warn \
  valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 \
  --log-file="$WORK/valgrind.log" "$BIN" --diagnostic-jobs >"$WORK/worker.log" 2>&1 &
WORKER=$!
deadline=$((SECONDS + 120))
# Done when the queue is empty and every job has an outcome: 50 Record ids written, 10 Fail +
# 10 HttpGet + 1 unknown class in the retry set, the invalid one dead.
until [ "$(redis-cli -u "$URL" LLEN queue:default)" = 0 ] &&
  [ "$(redis-cli -u "$URL" SCARD ran)" = 50 ] &&
  [ "$(redis-cli -u "$URL" ZCARD retry)" = 21 ] &&
  [ "$(redis-cli -u "$URL" ZCARD dead)" = 1 ]; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$WORKER" 2>/dev/null; then break; fi
  sleep 0.05
done
check "all $total jobs reached their outcome under valgrind" \
  [ "$(redis-cli -u "$URL" SCARD ran)" = 50 -a "$(redis-cli -u "$URL" ZCARD retry)" = 21 ]
kill -TERM "$WORKER" 2>/dev/null || true
status=0
wait "$WORKER" || status=$?
WORKER=""
check "exit 0 after SIGTERM with no valgrind error (status $status)" [ "$status" = 0 ]
check "no memory errors" grep -q 'ERROR SUMMARY: 0 errors' "$WORK/valgrind.log"
check "no definite leaks" grep -qE 'definitely lost: 0 bytes|All heap blocks were freed' "$WORK/valgrind.log"
[ "$FAILED" = 0 ] || { tail -40 "$WORK/valgrind.log"; tail -5 "$WORK/worker.log"; }
redis-cli -u "$URL" FLUSHDB >/dev/null
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
