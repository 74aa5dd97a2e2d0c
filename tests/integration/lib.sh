# shellcheck shell=bash
# lib.sh: helpers shared by the shell tests in this folder (sourced, never run by ctest:
# only test_*.sh are tests). Free ports come from scripts/lib/services.sh.
#
#   itest_start_redis PORT DIR [redis-server args...]   start one on 127.0.0.1, wait for PONG;
#                                                       sets ITEST_REDIS_PID; 1 on failure
#   itest_stop_pid PID [SIGNAL]                         signal, wait up to 20 s, then KILL

# shellcheck source=scripts/lib/services.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/lib/services.sh"

ITEST_REDIS_PID=""

itest_start_redis() {
  local port=$1 dir=$2 i
  shift 2
  mkdir -p "$dir"
  # Later options win, so callers may override persistence (e.g. --appendonly yes).
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize no --logfile "$dir/redis-$port.log" "$@" </dev/null >/dev/null 2>&1 &
  ITEST_REDIS_PID=$!
  for ((i = 0; i < 200; i++)); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    kill -0 "$ITEST_REDIS_PID" 2>/dev/null || break
    sleep 0.05
  done
  return 1
}

itest_stop_pid() {
  local pid=$1 sig=${2:-TERM} i
  [ -n "$pid" ] || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 400; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
