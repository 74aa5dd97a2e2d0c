#!/usr/bin/env bash
# test_failover.sh: tierone-worker pointed at a Redis that has just become a read-only
# replica (what a client sees during a failover: connections work, writes answer READONLY)
# logs the trouble once, backs off instead of spinning, loses no job, and drains every job
# once the replica is promoted (REPLICAOF NO ONE).
#
#   bash tests/integration/test_failover.sh     (TIERONE_BIN_DIR defaults to build/)
# Prints "N passed, N failed" last; exits non-zero if any check failed.
set -euo pipefail

ROOT=${TIERONE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${TIERONE_BIN_DIR:-$ROOT/build}/tierone-worker
# shellcheck source=tests/integration/lib.sh
source "$ROOT/tests/integration/lib.sh"
JOBS=200
WORK=$(mktemp -d /tmp/tierone-failover.XXXXXX)
PIDS=()
PASSED=0
FAILED=0

log() { printf 'failover: %s\n' "$*" >&2; }
check() { # check "what" command...
  local what=$1
  shift
  if "$@"; then
    PASSED=$((PASSED + 1))
    log "ok: $what"
  else
    FAILED=$((FAILED + 1))
    log "FAILED: $what"
  fi
}
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for SECONDS command...: poll every 20 ms until the command succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.02
  done
}

start_redis() { # start_redis PORT [extra args...]
  itest_start_redis "$1" "$WORK" "${@:2}"
  PIDS+=("$ITEST_REDIS_PID")
}

PRIMARY=$(services_free_port)
start_redis "$PRIMARY"
REPLICA=$(services_free_port)
while [ "$REPLICA" = "$PRIMARY" ]; do REPLICA=$(services_free_port); done
start_redis "$REPLICA" --replicaof 127.0.0.1 "$PRIMARY"
wait_for 20 sh -c "redis-cli -p $REPLICA INFO replication | grep -q 'master_link_status:up'"

# Jobs are written on the primary and replicated.
payloads=()
for i in $(seq 1 $JOBS); do
  payloads+=("$(printf '{"class":"Tierone::Record","args":["ran","%s"],"jid":"%024d","queue":"default","retry":true}' "$i" "$i")")
done
redis-cli -p "$PRIMARY" LPUSH queue:default "${payloads[@]}" >/dev/null
redis-cli -p "$PRIMARY" SADD queues default >/dev/null
wait_for 20 sh -c "[ \$(redis-cli -p $REPLICA LLEN queue:default) = $JOBS ]"

TIERONE_REDIS_URL="redis://127.0.0.1:$REPLICA/0" TIERONE_QUEUES=default TIERONE_ADMIN_PORT=0 \
  TIERONE_BEAT_INTERVAL=200ms TIERONE_LOG_LEVEL=info \
  "$BIN" --diagnostic-jobs >"$WORK/worker.log" 2>&1 &
WORKER=$!
PIDS+=("$WORKER")

# While read-only: the worker keeps trying, logs it, runs nothing.
wait_for 20 grep -q READONLY "$WORK/worker.log" || true
check "the READONLY reply is logged" grep -q READONLY "$WORK/worker.log"
# Give the reconnect loop time to show whether it backs off (it must not spin every 100 ms).
for _ in $(seq 1 100); do kill -0 "$WORKER" 2>/dev/null || break; sleep 0.02; done
check "the worker is still running" kill -0 "$WORKER"
check "no job ran on the read-only replica" [ "$(redis-cli -p "$REPLICA" SCARD ran)" = 0 ]
check "no job was lost while read-only" [ "$(redis-cli -p "$REPLICA" LLEN queue:default)" = "$JOBS" ]
# Two connections see it: the worker's, and the one that waits for wake tokens (waker.c).
check "the trouble is logged once, not once per reconnect" \
  [ "$(grep -c 'redis tierone-worker: connection to .* lost' "$WORK/worker.log")" = 1 ]
check "the wake connection logs it at most once" \
  [ "$(grep -c 'redis tierone-worker-wake: connection to .* lost' "$WORK/worker.log")" -le 1 ]
check "a READONLY reply does not turn the wake-ups off" \
  [ "$(grep -c 'wake-ups off' "$WORK/worker.log")" = 0 ]
check "the log stays quiet while read-only (no line per retry)" \
  [ "$(wc -l <"$WORK/worker.log")" -le 6 ]

# Failover completes: the replica becomes the primary.
redis-cli -p "$PRIMARY" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
redis-cli -p "$REPLICA" REPLICAOF NO ONE >/dev/null
check "every job runs after the promotion" \
  wait_for 30 sh -c "[ \$(redis-cli -p $REPLICA SCARD ran) = $JOBS ]"
check "the recovery is logged" wait_for 10 grep -q 'working again' "$WORK/worker.log"

kill -TERM "$WORKER"
status=0
wait "$WORKER" || status=$?
check "SIGTERM exits 0" [ "$status" = 0 ]
check "nothing left in flight" [ -z "$(redis-cli -p "$REPLICA" --scan --pattern 'tierone:inprogress:*')" ]

[ "$FAILED" = 0 ] || { log "worker log tail:"; tail -20 "$WORK/worker.log" >&2; }
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
