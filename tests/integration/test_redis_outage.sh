#!/usr/bin/env bash
# test_redis_outage.sh: tierone-worker survives Redis outages in the middle of its work and
# loses no job (ARCHITECTURE.md §5: outcomes wait in memory, nothing new is fetched, every
# job is in exactly one place in Redis).
#
# It starts its own redis-server (AOF, appendfsync always, so a restart keeps every
# acknowledged write) on a free port, a small TCP proxy in front of it (Ruby, below) and
# tierone-worker (--diagnostic-jobs) with an admin port, talking to Redis through the proxy.
# Ruby's Sidekiq client pushes 500 Tierone::Record jobs ("ran", id) mixed with
# Tierone::Sleep [50] jobs. While they run, Redis goes away three times:
#
#   outage 1: Redis is shut down (SIGTERM: it closes its connections and exits)
#   outage 2: Redis is frozen (SIGSTOP) until a command from the worker sits unread in its
#             socket, then killed -9: the connection is reset (RST), not closed, and the
#             worker must notice that at once too, not only through its 10 s command
#             timeout
#   outage 3: replies are lost (the proxy drops Redis's answers, as a half-open network
#             partition does) until Redis has executed a fetch for the worker, then the
#             proxy cuts the connection: the jobs that fetch moved into the worker's
#             in-progress store must still run
#
# During outages 1 and 2: /readyz answers 503 "redis down", /healthz 200, /metrics
# tierone_redis_up 0; the worker stays alive, the jobs in flight finish and their outcomes
# wait in memory. Redis is then started again on the same port with the same data, and
# /readyz is 200 again. At the end every Record id is in `ran` (a Record whose SADD hit an
# outage failed retryably and comes back through the retry set after Sidekiq's 15-25 s
# backoff); queue, retry set, dead set and in-progress store are empty; SIGTERM -> exit 0,
# stat:processed - stat:failed == number of jobs, and the process leaves `processes` and
# drops its lease.
#
# Not covered: a READONLY reply after a failover (a replica that answers but refuses
# writes). Simulating it needs a second redis-server promoted and demoted under the worker
# (REPLICAOF); lib/redis.c treats READONLY as a reason to reconnect.
#
#   bash tests/integration/test_redis_outage.sh        (TIERONE_BIN_DIR defaults to build/)
#   TIERONE_KEEP_LOGS=1 ...                             keep the temp dir with all logs
#
# Prints "N passed, N failed" last; exits non-zero if any check failed.
set -euo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=${TIERONE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${TIERONE_BIN_DIR:-$ROOT/build}/tierone-worker
RECORDS=500
SLEEPS=250
WORK=$(mktemp -d /tmp/tierone-redis-outage.XXXXXX)
REDIS_PID=""
PROXY_PID=""
WORKER_PID=""
RPORT=""
APORT=""
PASSED=0
FAILED=0

log() { printf 'redis-outage: %s\n' "$*" >&2; }

pass() {
  PASSED=$((PASSED + 1))
  log "ok: $*"
}

# A failed check; the test goes on so the summary shows everything that broke.
fail_check() {
  FAILED=$((FAILED + 1))
  log "FAILED: $*"
  dump_state
}

# A failure after which nothing else can be checked.
fatal() {
  fail_check "$*"
  for f in "$WORK"/worker.log "$WORK"/proxy.log "$WORK"/redis/redis-*.log; do
    [ -f "$f" ] && { echo "--- tail of $f"; tail -n 30 "$f"; } >&2
  done
  exit 1
}

rcli() { redis-cli -p "$RPORT" --raw "$@"; }

# What Redis and the worker hold now (after a failure).
dump_state() {
  local k stores=""
  if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
    for k in $(rcli keys 'tierone:inprogress:*'); do
      stores+="$k=$(rcli hlen "$k") "
    done
    log "state: ran $(rcli scard ran), queue:default $(rcli llen queue:default)," \
      "retry $(rcli zcard retry), dead $(rcli zcard dead), in-progress stores: ${stores:-none}"
  fi
  if [ -n "$WORKER_PID" ]; then
    admin_get /metrics 2>/dev/null | grep -E '^tierone_(jobs|outcomes|redis)' >&2 || true
  fi
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$REDIS_PID" ] && kill -CONT "$REDIS_PID" 2>/dev/null
  itest_stop_pid "$WORKER_PID" KILL
  itest_stop_pid "$PROXY_PID" TERM
  itest_stop_pid "$REDIS_PID" TERM
  if [ "$FAILED" -gt 0 ] && [ "$rc" -eq 0 ]; then
    rc=1
  fi
  if [ -n "${TIERONE_KEEP_LOGS:-}" ] || [ "$rc" -ne 0 ]; then
    log "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  exit "$rc"
}
trap cleanup EXIT

[ -x "$BIN" ] || fatal "$BIN not built"
command -v redis-server >/dev/null || fatal "redis-server not installed"
command -v redis-cli >/dev/null || fatal "redis-cli not installed"
command -v ruby >/dev/null || fatal "ruby not installed"
command -v curl >/dev/null || fatal "curl not installed"

RPORT=$(services_free_port) || fatal "no free port"
PPORT=$(services_free_port) || fatal "no free port"
APORT=$(services_free_port) || fatal "no free port"
if [ "$RPORT" = "$PPORT" ] || [ "$RPORT" = "$APORT" ] || [ "$PPORT" = "$APORT" ]; then
  fatal "the same free port twice; run again"
fi

start_redis() {
  itest_start_redis "$RPORT" "$WORK/redis" --appendonly yes --appendfsync always ||
    fatal "redis-server did not start on $RPORT"
  REDIS_PID=$ITEST_REDIS_PID
}

stop_redis() {
  itest_stop_pid "$REDIS_PID" TERM
  REDIS_PID=""
}

# The proxy: forwards 127.0.0.1:PPORT to Redis, one pair of threads per connection. It
# passes a reset on (a reset from Redis becomes a reset to the worker: SO_LINGER 0), and a
# clean close as a clean close. SIGUSR1: drop every byte Redis sends from now on (requests
# still reach Redis). SIGUSR2: close every connection and forward normally again.
cat >"$WORK/proxy.rb" <<'RUBY'
require "socket"
$stdout.sync = true
listen_port, upstream_port = ARGV.map { |a| Integer(a) }
server = TCPServer.new("127.0.0.1", listen_port)
$drop = false
$cut = false
$pairs = []
$lock = Mutex.new
trap("USR1") { $drop = true }
trap("USR2") { $cut = true }

def shut(pair, reset)
  pair.each do |s|
    s.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii")) if reset
  rescue StandardError
    nil
  end
  pair.each do |s|
    s.close
  rescue StandardError
    nil
  end
  $lock.synchronize { $pairs.delete(pair) }
end

def pump(from, to, replies, pair)
  loop do
    data = from.readpartial(65_536)
    to.write(data) unless replies && $drop
  end
rescue EOFError
  shut(pair, false)
rescue Errno::ECONNRESET, Errno::EPIPE
  puts "reset on a connection; passing it on"
  shut(pair, true)
rescue IOError, SystemCallError
  shut(pair, false)
end

Thread.new do
  loop do
    if $cut
      pairs = $lock.synchronize { $pairs.dup }
      puts "cutting #{pairs.size} connection(s)"
      pairs.each { |p| shut(p, false) }
      $drop = false
      $cut = false
    end
    sleep 0.005
  end
end

puts "proxy 127.0.0.1:#{listen_port} -> #{upstream_port}"
loop do
  client = server.accept
  begin
    up = TCPSocket.new("127.0.0.1", upstream_port)
  rescue SystemCallError
    client.close
    next
  end
  pair = [client, up]
  $lock.synchronize { $pairs << pair }
  Thread.new { pump(client, up, false, pair) }
  Thread.new { pump(up, client, true, pair) }
end
RUBY

# GET a path from the worker's admin server; prints "STATUS BODY".
admin_get() {
  local out
  out=$(curl -s -m 2 -w ' %{http_code}' "http://127.0.0.1:$APORT$1" 2>/dev/null) || return 1
  printf '%s %s\n' "${out##* }" "${out% *}"
}

worker_alive() { kill -0 "$WORKER_PID" 2>/dev/null; }

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 50 ms; returns 1 on timeout, fatal
# if the worker died meanwhile.
wait_for() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + secs))
  while ((SECONDS < deadline)); do
    if "$@"; then return 0; fi
    worker_alive || fatal "the worker exited while waiting for $what"
    sleep 0.05
  done
  return 1
}

# must_wait SECONDS DESCRIPTION CMD...: wait_for, fatal on timeout.
must_wait() {
  wait_for "$@" || fatal "timed out after ${1}s waiting for $2"
}

# (Outputs are captured before matching: with pipefail, grep -q closing a pipe early
# would fail it.)
readyz_is() {
  local out
  out=$(admin_get /readyz) || return 1
  [[ $out == "$1"* ]]
}

healthz_ok() {
  local out
  out=$(admin_get /healthz) || return 1
  [[ $out == "200 "* ]]
}

none_busy() {
  local out
  out=$(admin_get /metrics) || return 1
  grep -q '^tierone_jobs_busy 0$' <<<"$out"
}

ran_at_least() { [ "$(rcli scard ran 2>/dev/null || echo 0)" -ge "$1" ]; }
queue_below() { [ "$(rcli llen queue:default 2>/dev/null || echo 0)" -lt "$1" ]; }

# One script, so the four counts are of one moment: read one by one, a retry the poller moved
# into the queue between reading the queue and reading the retry set was in neither.
all_done() {
  [ "$(rcli eval "return table.concat({redis.call('SCARD', 'ran'),
    redis.call('LLEN', 'queue:default'), redis.call('ZCARD', 'retry'),
    #redis.call('KEYS', 'tierone:inprogress:*')}, ' ')" 0)" = "$RECORDS 0 0 0" ]
}

# True when a connection to Redis holds bytes Redis has not read (/proc/net/tcp rx_queue
# of an established socket whose local port is RPORT): closing it then sends a reset.
redis_has_unread() {
  local hexport _sl laddr _rem st queues _rest
  hexport=$(printf '%04X' "$RPORT")
  while read -r _sl laddr _rem st queues _rest; do
    if [ "${laddr##*:}" = "$hexport" ] && [ "$st" = 01 ] && ((16#${queues#*:} > 0)); then
      return 0
    fi
  done < <(tail -n +2 /proc/net/tcp)
  return 1
}

# Checks made while Redis is down: the worker lives, says why it is not ready, and the jobs
# it was running finish with their outcomes kept in memory.
check_outage() {
  local label=$1 out pending i
  out=$(admin_get /readyz || true)
  if [[ $out == "503 "*"redis down"* ]]; then
    pass "$label: /readyz says 503 redis down"
  else
    fail_check "$label: /readyz: $out"
  fi
  out=$(admin_get /metrics || true)
  if grep -q '^tierone_redis_up 0$' <<<"$out"; then
    pass "$label: /metrics tierone_redis_up 0"
  else
    fail_check "$label: /metrics: $(grep redis_up <<<"$out")"
  fi
  # An absence: the worker keeps living and answering through a few reconnect attempts.
  for ((i = 0; i < 30; i++)); do
    worker_alive || break
    healthz_ok || break
    sleep 0.05
  done
  if worker_alive && healthz_ok; then
    pass "$label: the worker stays alive and /healthz answers 200"
  else
    fatal "$label: the worker died or stopped answering"
  fi
  must_wait 10 "$label: jobs in flight to finish" none_busy
  out=$(admin_get /metrics || true)
  pending=$(sed -n 's/^tierone_outcomes_pending \([0-9]*\)$/\1/p' <<<"$out")
  if [ "${pending:-0}" -gt 0 ]; then
    pass "$label: jobs in flight finished; $pending outcome(s) wait in memory"
  else
    fail_check "$label: no outcome waits in memory"
  fi
}

restart_redis() {
  start_redis
  log "redis restarted; queue:default has $(rcli llen queue:default), ran has $(rcli scard ran)"
  must_wait 15 "/readyz 200 after $1" readyz_is 200
  pass "$1: /readyz is 200 again after Redis came back"
}

STARTED=$SECONDS
start_redis
ruby "$WORK/proxy.rb" "$PPORT" "$RPORT" </dev/null >>"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for ((i = 0; i < 100; i++)); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PPORT") 2>/dev/null && break
  sleep 0.05
done
log "redis on $RPORT (AOF in $WORK/redis), proxy on $PPORT, admin on $APORT"

# The jobs, pushed with Ruby Sidekiq's client: chunks of 10 Records and 5 Sleeps.
REDIS_URL="redis://127.0.0.1:$RPORT/0" ruby -e '
  require "sidekiq"
  Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
  Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL"), size: 1 } }
  records, sleeps = Integer(ARGV[0]), Integer(ARGV[1])
  per = sleeps * 10 / records
  (0...records).each_slice(10) do |ids|
    Sidekiq::Client.push_bulk("class" => "Tierone::Record", "args" => ids.map { |i| ["ran", i] })
    Sidekiq::Client.push_bulk("class" => "Tierone::Sleep", "args" => Array.new(per) { [50] })
  end
' "$RECORDS" "$SLEEPS" 2>"$WORK/push.err" || fatal "pushing jobs failed: $(cat "$WORK/push.err")"
TOTAL=$(rcli llen queue:default)
[ "$TOTAL" = $((RECORDS + SLEEPS)) ] ||
  fatal "expected $((RECORDS + SLEEPS)) jobs queued, got $TOTAL"

TIERONE_REDIS_URL="redis://127.0.0.1:$PPORT/0" TIERONE_QUEUES=default TIERONE_CONCURRENCY=10 \
  TIERONE_ADMIN_HOST=127.0.0.1 TIERONE_ADMIN_PORT="$APORT" TIERONE_BEAT_INTERVAL=200ms \
  TIERONE_POLL_INTERVAL=200ms TIERONE_RECOVERY_INTERVAL=300ms TIERONE_HEARTBEAT_TTL=5 \
  TIERONE_SHUTDOWN_TIMEOUT=10s TIERONE_LOG_LEVEL=info \
  "$BIN" --diagnostic-jobs </dev/null >>"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
must_wait 10 "/readyz 200 at start" readyz_is 200

# ---- outage 1: Redis is shut down ------------------------------------------------------
must_wait 20 "100 Record jobs run" ran_at_least 100
AT_STOP=$(rcli scard ran)
stop_redis
log "outage 1: redis shut down with $AT_STOP Record jobs run"
# At once for a closed connection; at worst through the 10 s command timeout (outage 2).
must_wait 15 "/readyz 503 in outage 1" readyz_is 503
check_outage "outage 1 (shutdown)"
restart_redis "outage 1"

# ---- outage 2: Redis freezes, then dies with unread commands (reset) -------------------
must_wait 20 "$((AT_STOP + 100)) Record jobs run" ran_at_least $((AT_STOP + 100))
kill -STOP "$REDIS_PID"
must_wait 5 "a command from the worker unread by the frozen Redis" redis_has_unread
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
REDIS_PID=""
log "outage 2: redis frozen and killed -9"
# A reset connection is as dead as a closed one: the worker must notice at once, not after
# its 10 s command timeout. 5 s leaves room for a loaded machine.
if wait_for 5 "/readyz 503 after the reset" readyz_is 503; then
  pass "outage 2: the worker noticed the reset connection"
else
  fail_check "outage 2: /readyz still 200 5 s after Redis died and the connection was" \
    "reset; the worker only notices through its 10 s command timeout"
fi
must_wait 15 "/readyz 503 in outage 2" readyz_is 503
check_outage "outage 2 (kill -9)"
restart_redis "outage 2"

# ---- outage 3: replies are lost, then the connection is cut ----------------------------
must_wait 20 "more Record jobs run" ran_at_least $(($(rcli scard ran) + 20))
QUEUED=$(rcli llen queue:default)
kill -USR1 "$PROXY_PID"
log "outage 3: the proxy drops Redis's replies (queue:default $QUEUED)"
# A fetch executed by Redis whose reply the worker never gets.
must_wait 10 "a fetch executed while replies are lost" queue_below "$QUEUED"
FETCHED=$((QUEUED - $(rcli llen queue:default)))
kill -USR2 "$PROXY_PID"
log "outage 3: Redis moved $FETCHED job(s) into the worker's store without a reply; connection cut"
must_wait 15 "/readyz 200 after outage 3" readyz_is 200
pass "outage 3: the worker reconnected after the cut"

# ---- the end: everything ran -----------------------------------------------------------
# Records that failed in an outage come back after their retry backoff (15-25 s).
if wait_for 35 "all jobs done" all_done; then
  pass "all $RECORDS Record jobs ran; queue, retry set and in-progress stores are empty"
else
  fail_check "not every job ran: jobs stay in the worker's in-progress store (fetched" \
    "when a reply was lost), or the queue/retry set did not drain"
fi
if [ "$(rcli zcard dead)" = 0 ]; then
  pass "dead set empty"
else
  fail_check "dead set has $(rcli zcard dead) job(s): $(rcli zrange dead 0 2)"
fi

kill -TERM "$WORKER_PID"
rc=0
wait "$WORKER_PID" || rc=$?
WORKER_PID=""
if [ "$rc" = 0 ]; then
  pass "the worker exits 0 on SIGTERM"
else
  fail_check "the worker exited $rc on SIGTERM"
fi
processed=$(rcli get stat:processed)
failed=$(rcli get stat:failed)
# Exactly the number of jobs unless a lost reply made a job run twice (at least once).
if [ $((processed - failed)) -ge "$TOTAL" ] && [ "$(rcli llen queue:default)" = 0 ]; then
  pass "stat:processed $processed - stat:failed $failed >= $TOTAL jobs; nothing left queued"
else
  fail_check "stat:processed $processed - stat:failed $failed < $TOTAL, or jobs left in" \
    "queue:default after the stop: $(rcli llen queue:default)"
fi
if [ "$(rcli scard processes)" = 0 ] && [ -z "$(rcli keys 'tierone:lease:*')" ] &&
  [ -z "$(rcli keys 'tierone:inprogress:*')" ]; then
  pass "the worker left processes, dropped its lease and its in-progress store"
else
  fail_check "after exit: processes $(rcli smembers processes), leases" \
    "$(rcli keys 'tierone:lease:*'), stores $(rcli keys 'tierone:inprogress:*')"
fi
log "done in $((SECONDS - STARTED)) s"
