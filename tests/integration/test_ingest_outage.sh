#!/usr/bin/env bash
# test_ingest_outage.sh: tierone-ingest loses nothing it accepted while Redis is down, even
# when it is killed -9 in the middle of the outage.
#
# It starts its own redis-server (AOF, appendfsync always, so a restart keeps what was
# acknowledged) on a free port, and tierone-ingest in front of it. A Ruby client posts a
# steady stream of signed deliveries (unique X-Chatwoot-Delivery each) over keep-alive and
# records every answer in order. Meanwhile:
#
#   1. Redis is stopped          -> deliveries are answered 202 "spooled"
#   2. Redis is frozen (SIGSTOP) -> pushes time out and fall back to the spool; once Redis
#      is thawed it executes what it had buffered, so the dedupe key must stop the copy
#      the spool pushes later
#   3. the shim is killed -9 and restarted on the same spool while Redis is still down
#   4. Redis is started again    -> the spool drains, then pushes go direct again
#
# Then: every delivery that got a 2xx is in queue:events exactly once, in the order the
# client got its answers; nothing is there twice; anything extra is a delivery whose
# answer the client never got (the shim died after spooling it). The spool ends empty.
#
#   bash tests/integration/test_ingest_outage.sh        (TIERONE_BIN_DIR defaults to build/)
#   TIERONE_KEEP_LOGS=1 ...                             keep the temp dir with all logs
set -euo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=${TIERONE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${TIERONE_BIN_DIR:-$ROOT/build}/tierone-ingest
TOTAL=${OUTAGE_DELIVERIES:-1500}
SECRET=outage-secret
WORK=$(mktemp -d /tmp/tierone-outage.XXXXXX)
REDIS_PID=""
SHIM_PID=""
CLIENT_PID=""
STEP=""

log() { printf 'outage: %s\n' "$*" >&2; }

fail() {
  log "FAILED${STEP:+ during $STEP}: $*"
  for f in "$WORK"/shim.log "$WORK"/redis/redis-*.log; do
    [ -f "$f" ] && { echo "--- tail of $f"; tail -n 40 "$f"; } >&2
  done
  exit 1
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$REDIS_PID" ] && kill -CONT "$REDIS_PID" 2>/dev/null
  itest_stop_pid "$CLIENT_PID" KILL
  itest_stop_pid "$SHIM_PID" KILL
  itest_stop_pid "$REDIS_PID" TERM
  if [ -n "${TIERONE_KEEP_LOGS:-}" ] || [ "$rc" -ne 0 ]; then
    log "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT

[ -x "$BIN" ] || fail "$BIN not built"
command -v redis-server >/dev/null || fail "redis-server not installed"
command -v ruby >/dev/null || fail "ruby not installed"

RPORT=$(services_free_port) || fail "no free port"
SPORT=$(services_free_port) || fail "no free port"
[ "$RPORT" != "$SPORT" ] || SPORT=$(services_free_port)

start_redis() {
  itest_start_redis "$RPORT" "$WORK/redis" --appendonly yes --appendfsync always ||
    fail "redis-server did not start on $RPORT"
  REDIS_PID=$ITEST_REDIS_PID
}

stop_redis() {
  itest_stop_pid "$REDIS_PID" TERM
  REDIS_PID=""
}

# GET a path from the shim with bash's /dev/tcp; prints the response.
http_get() {
  local out
  exec 3<>"/dev/tcp/127.0.0.1/$SPORT" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' "$1" >&3
  out=$(cat <&3)
  exec 3<&-
  printf '%s\n' "$out"
}

start_shim() {
  TIERONE_REDIS_URL="redis://127.0.0.1:$RPORT/0" TIERONE_LISTEN_HOST=127.0.0.1 \
    TIERONE_LISTEN_PORT="$SPORT" TIERONE_ADMIN_PORT=0 TIERONE_WEBHOOK_SECRETS="$SECRET" \
    TIERONE_SPOOL_PATH="$WORK/ingest.spool" TIERONE_REDIS_TIMEOUT=300ms \
    TIERONE_LOG_LEVEL=info "$BIN" </dev/null >>"$WORK/shim.log" 2>&1 &
  SHIM_PID=$!
  local i
  for ((i = 0; i < 200; i++)); do
    [[ $(http_get /healthz 2>/dev/null) == *$'\n'ok* ]] && return 0
    kill -0 "$SHIM_PID" 2>/dev/null || fail "tierone-ingest exited at start"
    sleep 0.05
  done
  fail "tierone-ingest did not answer /healthz"
}

answers() {
  if [ -f "$WORK/answers.txt" ]; then wc -l <"$WORK/answers.txt"; else echo 0; fi
}

# Wait until the client has at least $1 answers.
wait_answers() {
  local want=$1 i
  for ((i = 0; i < 1200; i++)); do
    [ "$(answers)" -ge "$want" ] && return 0
    kill -0 "$CLIENT_PID" 2>/dev/null || fail "client exited early"
    sleep 0.05
  done
  fail "client stalled at $(answers) answers (wanted $want)"
}

cat >"$WORK/client.rb" <<'RUBY'
# Posts TOTAL signed deliveries one after another on keep-alive; one line per delivery:
# "<delivery id> <status or ERR> <status field of the body>".
require "json"
require "net/http"
require "openssl"
port, secret, total, out = ARGV
http = nil
File.open(out, "w") do |f|
  f.sync = true
  Integer(total).times do |i|
    id = format("d-%05d", i)
    body = JSON.generate({ "event" => "message_created", "id" => i, "content" => "x" * 200 })
    ts = Time.now.to_i.to_s
    sig = OpenSSL::HMAC.hexdigest("SHA256", secret, "#{ts}.#{body}")
    begin
      http ||= Net::HTTP.start("127.0.0.1", Integer(port), open_timeout: 2, read_timeout: 10)
      req = Net::HTTP::Post.new("/webhooks/chatwoot",
                                "Content-Type" => "application/json",
                                "X-Chatwoot-Timestamp" => ts,
                                "X-Chatwoot-Signature" => "sha256=#{sig}",
                                "X-Chatwoot-Delivery" => id)
      req.body = body
      res = http.request(req)
      f.puts "#{id} #{res.code} #{res.body[/"status":"(\w+)"/, 1]}"
    rescue StandardError => e
      begin
        http&.finish
      rescue StandardError
        nil
      end
      http = nil
      f.puts "#{id} ERR #{e.class}"
    end
    sleep 0.004
  end
end
RUBY

STEP="start"
start_redis
start_shim
log "redis on $RPORT, shim on $SPORT, $TOTAL deliveries"
ruby "$WORK/client.rb" "$SPORT" "$SECRET" "$TOTAL" "$WORK/answers.txt" 2>"$WORK/client.err" &
CLIENT_PID=$!

STEP="outage 1 (redis stopped)"
wait_answers 150
stop_redis
log "redis stopped at $(answers) answers"
wait_answers $(($(answers) + 150))
start_redis
log "redis back at $(answers) answers"

STEP="outage 2 (redis frozen)"
wait_answers $(($(answers) + 150))
kill -STOP "$REDIS_PID"
log "redis frozen at $(answers) answers"
wait_answers $(($(answers) + 150))
kill -CONT "$REDIS_PID"
log "redis thawed at $(answers) answers"

STEP="outage 3 (redis stopped, shim killed -9)"
wait_answers $(($(answers) + 150))
stop_redis
log "redis stopped at $(answers) answers"
wait_answers $(($(answers) + 150))
kill -KILL "$SHIM_PID"
wait "$SHIM_PID" 2>/dev/null || true
log "shim killed -9 at $(answers) answers; spool $(stat -c %s "$WORK/ingest.spool") bytes"
start_shim
wait_answers $(($(answers) + 150))
start_redis
log "redis back at $(answers) answers"

STEP="drain"
wait "$CLIENT_PID" || fail "client failed: $(cat "$WORK/client.err")"
CLIENT_PID=""
for ((i = 0; i < 600; i++)); do
  grep -q '^tierone_ingest_spool_depth 0$' <<<"$(http_get /metrics)" && break
  sleep 0.05
done
grep -q '^tierone_ingest_spool_depth 0$' <<<"$(http_get /metrics)" || fail "the spool did not drain"

STEP="stop"
itest_stop_pid "$SHIM_PID" TERM
SHIM_PID=""
[ "$(stat -c %s "$WORK/ingest.spool")" = 16 ] || fail "spool not cut back to its header"
grep -q '"level":"error"' "$WORK/shim.log" && fail "error lines in the shim's log"

STEP="verify"
redis-cli -p "$RPORT" --raw LRANGE queue:events 0 -1 >"$WORK/queue.txt"
ruby -rjson -e '
  answers = File.readlines(ARGV[0]).map(&:split)
  ok = answers.select { |a| a[1] =~ /\A2\d\d\z/ }.map(&:first)
  not_ok = answers.reject { |a| a[1] =~ /\A2\d\d\z/ }.map(&:first)
  statuses = answers.map { |a| a[2] }.tally
  queued = File.readlines(ARGV[1]).map { |l| JSON.parse(l)["args"][0]["delivery"] }.reverse
  dups = queued.tally.select { |_, n| n > 1 }.keys
  abort "duplicates in queue:events: #{dups.first(10)}" unless dups.empty?
  missing = ok - queued
  abort "accepted but not queued: #{missing.first(10)} (#{missing.size})" unless missing.empty?
  extra = queued - ok
  abort "queued but never sent: #{(extra - not_ok).first(10)}" unless (extra - not_ok).empty?
  order = queued.select { |d| ok.include?(d) }
  abort "order of acceptance broken near #{order.zip(ok).find { |a, b| a != b }}" unless order == ok
  abort "no delivery was spooled: the outage was not exercised" unless statuses["spooled"].to_i > 0
  abort "nothing went direct after the outage" unless answers.last(20).any? { |a| a[2] == "queued" }
  puts "outage: #{answers.size} sent, #{ok.size} accepted (#{statuses}), " \
       "#{queued.size} in queue:events, #{extra.size} extra (answer lost), 0 duplicates"
' "$WORK/answers.txt" "$WORK/queue.txt" || fail "verification failed"
log "PASS"
