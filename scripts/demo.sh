#!/usr/bin/env bash
# demo.sh: the README's first command. On a fresh Debian bookworm machine as root it installs
# what is missing, builds tierone, starts a throwaway Redis and PostgreSQL, migrates, ingests
# the project's own docs/ as the knowledge base, and runs the support pipeline in shadow mode
# (every reply, note, label, hand-off, Slack message and Linear issue is recorded, not sent)
# and retrieval-only mode (no LLM: answers quote the best passage when it matches well):
#   - bundled, signed sample webhooks go through tierone-ingest (questions the docs answer, a
#     bug report, an off-topic request, a burst of two messages, a duplicate delivery, a
#     resolved conversation, the bot's own message, a private note, an e-mail auto-reply);
#   - tierone-worker runs the job chain; `tierone report` prints what the bot would have
#     done and why, `tierone stats` the Sidekiq view; Ruby Sidekiq's API reads the same.
# Everything it starts is stopped on exit.
#
# Usage: bash scripts/demo.sh
#        bash scripts/demo.sh --chatwoot URL [--live] [--minutes N]
#   --chatwoot URL  use a real Chatwoot (CHATWOOT_BOT_TOKEN and CHATWOOT_USER_TOKEN from the
#                   environment): instead of the samples, wait N minutes (default 10) for real
#                   webhooks on the printed URL, then print the report. Still shadow mode
#                   unless --live is given (then replies are really posted).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh

CHATWOOT_URL=""
LIVE=0
MINUTES=10
while [ $# -gt 0 ]; do
  case $1 in
  --chatwoot) CHATWOOT_URL=${2:?--chatwoot needs a URL}; shift 2 ;;
  --live) LIVE=1; shift ;;
  --minutes) MINUTES=${2:?--minutes needs a number}; shift 2 ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

WORKER_PID=""
INGEST_PID=""
cleanup() {
  for pid in $WORKER_PID $INGEST_PID; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  services_stop
}
trap cleanup EXIT INT TERM

say "Installing what is missing (apt-get)"
deps_install

say "Building (Release)"
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DTIERONE_TESTS=OFF >/dev/null
cmake --build build-demo -j2 >/dev/null
BIN=build-demo
echo "built: $(ls $BIN | grep -E '^tierone' | tr '\n' ' ')"

say "Starting a throwaway Redis and PostgreSQL"
services_start
export TIERONE_REDIS_URL="$TIERONE_TEST_REDIS_URL"
export TIERONE_DATABASE_URL="$TIERONE_TEST_DATABASE_URL"
R() { redis-cli -u "$TIERONE_REDIS_URL" "$@"; }
PSQL() { "$TIERONE_TEST_PG_BINDIR/psql" -X -q -t -A "$TIERONE_DATABASE_URL" -c "$1"; }

say "tierone migrate"
$BIN/tierone migrate --dir migrations

say "tierone kb ingest docs/ README.md (the knowledge base is this project's documentation)"
$BIN/tierone kb ingest docs README.md
$BIN/tierone kb search "retry a job from the dead set" -k 2 | head -8

say "Starting tierone-ingest and tierone-worker"
INGEST_PORT=$(services_free_port)
ADMIN_PORT=$(services_free_port)
SECRET="demo-secret-$RANDOM$RANDOM"
TIERONE_WEBHOOK_SECRETS="$SECRET" TIERONE_LISTEN_HOST=127.0.0.1 TIERONE_LISTEN_PORT="$INGEST_PORT" \
  TIERONE_ADMIN_PORT=0 TIERONE_SPOOL_PATH="$SERVICES_DIR/ingest.spool" TIERONE_LOG_LEVEL=warn \
  $BIN/tierone-ingest >"$SERVICES_DIR/ingest.log" 2>&1 &
INGEST_PID=$!
SHADOW=1
[ "$LIVE" = 1 ] && SHADOW=0
if [ -n "$CHATWOOT_URL" ]; then
  : "${CHATWOOT_BOT_TOKEN:?set CHATWOOT_BOT_TOKEN (the Agent Bot access token) for --chatwoot}"
  export CHATWOOT_BASE_URL="$CHATWOOT_URL"
else
  unset CHATWOOT_BASE_URL CHATWOOT_BOT_TOKEN CHATWOOT_USER_TOKEN
fi
TIERONE_SHADOW=$SHADOW TIERONE_DEBOUNCE=1s TIERONE_ADMIN_PORT="$ADMIN_PORT" TIERONE_BEAT_INTERVAL=500ms \
  TIERONE_POLL_INTERVAL=200ms LINEAR_TEAM_ID=demo-team TIERONE_LOG_LEVEL=info \
  SLACK_WEBHOOK_URL=https://hooks.slack.com/services/T000/B000/demo-not-sent \
  $BIN/tierone-worker >"$SERVICES_DIR/worker.log" 2>&1 &
WORKER_PID=$!
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$INGEST_PORT/healthz" >/dev/null 2>&1 &&
    curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$WORKER_PID" 2>/dev/null || { tail "$SERVICES_DIR/worker.log"; exit 1; }
  sleep 0.05
done
grep -m1 '"pipeline:' "$SERVICES_DIR/worker.log" | sed 's/.*"msg":"\([^"]*\)".*/worker: \1/' || true

# post FILE DELIVERY: a signed delivery, as Chatwoot sends it; prints the HTTP status.
post() {
  local body ts sig
  body=$(cat "$1")
  ts=$(date +%s)
  sig=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)
  curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$INGEST_PORT/webhooks/agent-bot" \
    -H 'Content-Type: application/json' -H "X-Chatwoot-Delivery: $2" \
    -H "X-Chatwoot-Timestamp: $ts" -H "X-Chatwoot-Signature: sha256=$sig" --data-binary "$body"
}

if [ -n "$CHATWOOT_URL" ]; then
  say "Waiting $MINUTES minute(s) for real webhooks"
  echo "Point the Agent Bot's outgoing URL (or an account webhook) at this machine:"
  echo "  http://<this host>:$INGEST_PORT/webhooks/agent-bot   secret: $SECRET"
  echo "(Chatwoot 4.14+ needs SAFE_FETCH_ALLOW_PRIVATE_NETWORK=true for a private address.)"
  sleep $((MINUTES * 60))
else
  say "Posting the bundled signed webhooks (scripts/demo/webhooks/)"
  for f in scripts/demo/webhooks/*.json; do
    name=$(basename "$f" .json)
    printf '  %-28s HTTP %s\n' "$name" "$(post "$f" "demo-$name")"
  done
  printf '  %-28s HTTP %s (same delivery id: answered, not queued again)\n' "01 again" \
    "$(post scripts/demo/webhooks/01-question-retry.json demo-01-question-retry)"
  printf '  %-28s HTTP %s (new delivery id, same message: the turn exists)\n' "01 redelivered" \
    "$(post scripts/demo/webhooks/01-question-retry.json demo-01-redelivery)"

  say "Waiting for every turn to end"
  deadline=$((SECONDS + 60))
  while :; do
    open=$(PSQL "SELECT count(*) FROM turns WHERE state = 'open'")
    busy=0
    for q in events ai actions linear; do busy=$((busy + $(R LLEN "queue:$q"))); done
    busy=$((busy + $(R ZCARD schedule) + $(R ZCARD retry)))
    [ "$open" = 0 ] && [ "$busy" = 0 ] && [ "$(R LLEN queue:events)" = 0 ] && break
    [ $SECONDS -lt $deadline ] || { echo "turns did not end in 60 s"; tail -20 "$SERVICES_DIR/worker.log"; exit 1; }
    sleep 0.1
  done
  echo "all turns ended"
  # The worker flushes its counters to stat:* with each heartbeat.
  for _ in $(seq 1 100); do [ "$(R GET stat:processed)" != "" ] && break; sleep 0.05; done
fi

say "tierone report (what the bot would have done, and why)"
$BIN/tierone report

say "tierone stats (the Sidekiq view of the same Redis)"
$BIN/tierone stats

say "Ruby Sidekiq's API reads tierone's work"
REDIS_URL="$TIERONE_REDIS_URL" ruby -e '
  require "sidekiq"; require "sidekiq/api"
  s = Sidekiq::Stats.new
  puts "Sidekiq::Stats: processed=#{s.processed} failed=#{s.failed} retries=#{s.retry_size} dead=#{s.dead_size}"
  Sidekiq::ProcessSet.new.each { |p| puts "Sidekiq::ProcessSet: #{p["identity"]} busy=#{p["busy"]} queues=#{p["queues"].join(",")}" }
'

say "Done; everything started here is stopped"
