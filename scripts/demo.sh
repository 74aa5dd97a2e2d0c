#!/usr/bin/env bash
# demo.sh: the README's first command. On a fresh Debian bookworm machine as root it installs
# what is missing, builds tierone, starts a throwaway Redis, and shows the engine at work with
# Ruby Sidekiq as the other side of the wire:
#   1. Ruby's Sidekiq::Client enqueues jobs (10,000 no-ops, timers, a failing job, a scheduled
#      one), tierone-worker runs them, and Ruby's Sidekiq API reads the results back;
#   2. if tierone-ingest is built, a signed Chatwoot webhook is posted to it and the Sidekiq job
#      it queued is printed.
# Everything it starts is stopped on exit. Usage: bash scripts/demo.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh

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
echo "built: $(ls build-demo | grep -E '^tierone-' | tr '\n' ' ')"

say "Starting a throwaway redis-server"
services_start_redis
REDIS_URL_DEMO="$TIERONE_TEST_REDIS_URL"
ADMIN_PORT=$(services_free_port)
LOG="$SERVICES_DIR/worker.log"

say "Ruby's Sidekiq::Client enqueues jobs for tierone"
REDIS_URL="$REDIS_URL_DEMO" ruby -e '
  require "sidekiq"; require "sidekiq/api"
  Sidekiq.logger.level = Logger::WARN
  Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
  Sidekiq::Client.push_bulk("class" => "Tierone::Noop", "args" => Array.new(10_000) { [] })
  5.times { |i| Sidekiq::Client.push("class" => "Tierone::Sleep", "args" => [200 + i]) }
  Sidekiq::Client.push("class" => "Tierone::Fail", "args" => ["the demo job that fails"], "retry" => 3)
  Sidekiq::Client.push("class" => "Tierone::Noop", "args" => [], "at" => Time.now.to_f + 2)
  puts "queued: #{Sidekiq::Queue.new.size} jobs in queue:default, " \
       "#{Sidekiq::ScheduledSet.new.size} scheduled in 2 s"
'

say "tierone-worker runs them (concurrency 100, admin on :$ADMIN_PORT)"
TIERONE_REDIS_URL="$REDIS_URL_DEMO" TIERONE_QUEUES=default TIERONE_ADMIN_PORT="$ADMIN_PORT" \
  TIERONE_POLL_INTERVAL=500ms TIERONE_LOG_LEVEL=info \
  build-demo/tierone-worker --diagnostic-jobs >"$LOG" 2>&1 &
WORKER_PID=$!
start=$(date +%s%N)
deadline=$((SECONDS + 30))
until [ "$(redis-cli -u "$REDIS_URL_DEMO" LLEN queue:default)" = 0 ] &&
  [ "$(redis-cli -u "$REDIS_URL_DEMO" ZCARD schedule)" = 0 ] &&
  [ -z "$(redis-cli -u "$REDIS_URL_DEMO" --scan --pattern 'tierone:inprogress:*' |
    xargs -r -n1 redis-cli -u "$REDIS_URL_DEMO" HLEN | grep -v '^0$')" ]; do
  [ $SECONDS -lt $deadline ] || { echo "jobs did not drain in 30 s; worker log:"; tail "$LOG"; exit 1; }
  sleep 0.05
done
end=$(date +%s%N)
echo "drained in $(((end - start) / 1000000)) ms (the scheduled job waited its 2 s)"
echo "/readyz: $(curl -s "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null || echo '(curl not installed)')"
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null | grep -E '^tierone_jobs_(processed|failed|retried)_total|^process_resident' || true

say "Ruby's Sidekiq API reads tierone's process, stats and retries"
kill -TERM "$WORKER_PID" && wait "$WORKER_PID" && WORKER_PID=""
REDIS_URL="$REDIS_URL_DEMO" ruby -e '
  require "sidekiq"; require "sidekiq/api"
  s = Sidekiq::Stats.new
  puts "Sidekiq::Stats: processed=#{s.processed} failed=#{s.failed} retries=#{s.retry_size} dead=#{s.dead_size}"
  Sidekiq::RetrySet.new.each do |job|
    puts "Sidekiq::RetrySet: #{job.klass} #{job.args.inspect} -> #{job["error_class"]}: " \
         "#{job["error_message"]} (retry_count #{job["retry_count"]}, next try at #{job.at})"
  end
'
grep -c '"level":"info"' "$LOG" >/dev/null && echo "worker log: $LOG (JSON lines), last line:" && tail -1 "$LOG"

if [ -x build-demo/tierone-ingest ]; then
  say "tierone-ingest turns a signed Chatwoot webhook into a Sidekiq job"
  INGEST_PORT=$(services_free_port)
  SECRET="demo-secret-$(date +%s)"
  TIERONE_REDIS_URL="$REDIS_URL_DEMO" TIERONE_WEBHOOK_SECRETS="$SECRET" \
    TIERONE_LISTEN_HOST=127.0.0.1 TIERONE_LISTEN_PORT="$INGEST_PORT" \
    TIERONE_SPOOL_PATH="$SERVICES_DIR/ingest.spool" TIERONE_LOG_LEVEL=warn \
    build-demo/tierone-ingest >"$SERVICES_DIR/ingest.log" 2>&1 &
  INGEST_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$INGEST_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
  BODY='{"event":"message_created","id":4211,"content":"My export fails","message_type":"incoming","private":false,"conversation":{"id":17,"status":"pending"},"account":{"id":1},"inbox":{"id":3}}'
  TS=$(date +%s)
  SIG=$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)
  for attempt in first repeat; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$INGEST_PORT/webhooks/chatwoot" \
      -H 'Content-Type: application/json' -H "X-Chatwoot-Delivery: demo-delivery-1" \
      -H "X-Chatwoot-Timestamp: $TS" -H "X-Chatwoot-Signature: sha256=$SIG" --data-binary "$BODY")
    echo "$attempt delivery: HTTP $code"
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$INGEST_PORT/webhooks/chatwoot" \
    -H "X-Chatwoot-Timestamp: $TS" -H "X-Chatwoot-Signature: sha256=00" --data-binary "$BODY")
  echo "forged signature: HTTP $code"
  echo "queue:events holds $(redis-cli -u "$REDIS_URL_DEMO" LLEN queue:events) job(s) (the repeat was not queued twice):"
  redis-cli -u "$REDIS_URL_DEMO" LINDEX queue:events 0
fi

say "Done; everything started here is stopped"
