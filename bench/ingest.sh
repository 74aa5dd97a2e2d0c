#!/usr/bin/env bash
# ingest.sh: throughput, latency and memory of tierone-ingest, beside nginx answering a
# static 202 on the same machine (the ceiling of an HTTP server here), in one run.
#
#   bash bench/ingest.sh
#
# Builds tierone-ingest (Release) in $TIERONE_BENCH_BUILD_DIR (default build-release),
# starts its own redis-server, tierone-ingest and nginx (one worker, like the shim's one
# loop; `return 202`) on free loopback ports, then runs wrk (keep-alive) with a Lua script
# that POSTs the same correctly signed 2 KB Chatwoot-like body to each, alternating, RUNS
# times. Every shim request is queued (no X-Chatwoot-Delivery, so no dedupe; with
# BENCH_DELIVERY=1 each request carries a unique one, as Chatwoot sends, so the dedupe script
# runs too, and both servers get the same per-request Lua): the script checks the shim's
# queued-job counter against wrk's request count. A background LTRIM keeps
# queue:events at 1000 entries so Redis does not grow to gigabytes.
#
# Prints per run and the medians: requests/s, p50, p99 (wrk's latency), the shim's peak
# RSS (VmHWM), nginx's requests/s and the ratio, then the targets (>= 60 % of nginx,
# p99 <= 5 ms, RSS <= 16 MB) as met / MISSED. Exit status 0 unless something failed to run.
#
# Environment: BENCH_RUNS (3), BENCH_DURATION (10s), BENCH_CONNECTIONS (50),
# BENCH_THREADS (2), BENCH_DELIVERY (0), TIERONE_BENCH_BUILD_DIR, TIERONE_BENCH_KEEP (keep the
# temp dir).
# Needs wrk, nginx (nginx-light), redis-server, redis-cli, openssl (Debian packages).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${TIERONE_BENCH_BUILD_DIR:-$ROOT/build-release}
RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNECTIONS:-50}
THREADS=${BENCH_THREADS:-2}
DELIVERY=${BENCH_DELIVERY:-0}
SECRET=bench-secret
WORK=$(mktemp -d /tmp/tierone-bench.XXXXXX)
chmod 0755 "$WORK" # nginx's worker (user nobody) reads nothing here, but may stat it
REDIS_PID="" SHIM_PID="" NGINX_PID="" TRIM_PID=""

say() { printf '%s\n' "$*"; }
die() {
  say "ingest.sh: $*" >&2
  exit 1
}

stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  set +e
  stop_pid "$TRIM_PID"
  stop_pid "$SHIM_PID"
  [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null && sleep 0.3
  stop_pid "$NGINX_PID"
  stop_pid "$REDIS_PID"
  if [ -n "${TIERONE_BENCH_KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

for tool in wrk nginx redis-server redis-cli openssl cmake; do
  command -v "$tool" >/dev/null || die "$tool not found (install the Debian package)"
done

free_port() {
  local port i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + (RANDOM % 12768)))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    printf '%s\n' "$port"
    return 0
  done
  return 1
}

wait_port() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 200; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# ---- build ------------------------------------------------------------------------------
say "building tierone-ingest (Release) in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTIERONE_TESTS=OFF >/dev/null
cmake --build "$BUILD" --target tierone-ingest -j "${TIERONE_BUILD_JOBS:-2}" >/dev/null

# ---- services ---------------------------------------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" </dev/null >/dev/null 2>&1 &
REDIS_PID=$!
wait_port "$RPORT" "$REDIS_PID" || die "redis-server did not start"

SPORT=$(free_port)
TIERONE_REDIS_URL="redis://127.0.0.1:$RPORT/0" TIERONE_LISTEN_HOST=127.0.0.1 \
  TIERONE_LISTEN_PORT="$SPORT" TIERONE_ADMIN_PORT=0 TIERONE_WEBHOOK_SECRETS="$SECRET" \
  TIERONE_SPOOL_PATH="$WORK/ingest.spool" TIERONE_LOG_LEVEL=warn \
  "$BUILD/tierone-ingest" </dev/null >"$WORK/shim.log" 2>&1 &
SHIM_PID=$!
wait_port "$SPORT" "$SHIM_PID" || die "tierone-ingest did not start: $(cat "$WORK/shim.log")"

NPORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NPORT;
    location / { default_type application/json; return 202 '{"status":"queued"}'; }
  }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" </dev/null >"$WORK/nginx/out.log" 2>&1 &
NGINX_PID=$!
wait_port "$NPORT" "$NGINX_PID" || die "nginx did not start: $(cat "$WORK/nginx/out.log")"

# Keep queue:events short: one redis-cli reading an LTRIM every 200 ms.
while sleep 0.2; do echo "LTRIM queue:events 0 999"; done |
  redis-cli -p "$RPORT" >/dev/null 2>&1 &
TRIM_PID=$!

# ---- the request ------------------------------------------------------------------------
# A 2 KB body shaped like a message_created delivery.
PREFIX='{"event":"message_created","id":123456,"message_type":"incoming","content":"'
PAD=$(head -c $((2048 - ${#PREFIX} - 2)) /dev/zero | tr '\0' 'x')
BODY="$PREFIX$PAD\"}"
printf '%s' "$BODY" >"$WORK/body.json"

# Signed at the start of each run (the shim allows 5 minutes of clock skew).
write_lua() {
  local ts sig
  ts=$(date +%s)
  sig=$(printf '%s.' "$ts" | cat - "$WORK/body.json" | openssl dgst -sha256 -hmac "$SECRET" |
    awk '{print $NF}')
  cat >"$WORK/post.lua" <<EOF
local f = assert(io.open("$WORK/body.json", "rb"))
wrk.method = "POST"
wrk.path = "/webhooks/chatwoot"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Chatwoot-Timestamp"] = "$ts"
wrk.headers["X-Chatwoot-Signature"] = "sha256=$sig"
EOF
  if [ "$DELIVERY" = 1 ]; then
    cat >>"$WORK/post.lua" <<EOF
local threads = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
request = function()
  n = n + 1
  wrk.headers["X-Chatwoot-Delivery"] = string.format("bench-$ts-$RANDOM$RANDOM-%d-%d", tid, n)
  return wrk.format()
end
EOF
  fi
  cat >>"$WORK/post.lua" <<EOF
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT %d %.1f %d %d %d %d\n", s.requests,
    s.requests / s.duration * 1e6, lat:percentile(50), lat:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
EOF
}

# Counter value from the shim's /metrics.
shim_metric() {
  local out
  exec 3<>"/dev/tcp/127.0.0.1/$SPORT"
  printf 'GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n' >&3
  out=$(cat <&3)
  exec 3<&-
  printf '%s\n' "$out" | awk -v k="$1" '$1 == k {print $2}'
}

# wrk against port $1; prints "requests rps p50_us p99_us non2xx errors".
run_wrk() {
  write_lua
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$WORK/post.lua" "http://127.0.0.1:$1/webhooks/chatwoot" \
    >"$WORK/wrk.out" 2>&1 || die "wrk failed: $(cat "$WORK/wrk.out")"
  grep '^RESULT ' "$WORK/wrk.out" | cut -d' ' -f2-
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

say "body $(wc -c <"$WORK/body.json") bytes; wrk -t$THREADS -c$CONNS -d$DURATION, keep-alive; $RUNS runs;" \
  "$([ "$DELIVERY" = 1 ] && echo "a unique X-Chatwoot-Delivery per request" || echo "no delivery ids")"
say "redis :$RPORT  tierone-ingest :$SPORT (pid $SHIM_PID)  nginx :$NPORT (1 worker)"
printf '%-5s %12s %9s %9s %9s %12s %7s\n' run shim_req/s p50_ms p99_ms rss_MB nginx_req/s ratio
declare -a S_RPS S_P50 S_P99 S_RSS N_RPS RATIO
FAILED=0
for ((run = 1; run <= RUNS; run++)); do
  read -r _ n_rps _ _ n_bad n_err <<<"$(run_wrk "$NPORT")"
  before=$(shim_metric 'tierone_ingest_jobs_total{result="queued"}')
  read -r s_req s_rps s_p50 s_p99 s_bad s_err <<<"$(run_wrk "$SPORT")"
  sleep 0.5 # let the last answers' counters settle
  after=$(shim_metric 'tierone_ingest_jobs_total{result="queued"}')
  spooled=$(shim_metric 'tierone_ingest_jobs_total{result="spooled"}')
  rss_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$SHIM_PID/status")
  queued=$((${after%.*} - ${before%.*}))
  if [ "$s_bad" != 0 ] || [ "$n_bad" != 0 ]; then
    say "run $run: non-2xx answers: shim $s_bad, nginx $n_bad"
    FAILED=1
  fi
  if [ "$queued" -lt "$s_req" ]; then
    say "run $run: wrk counted $s_req shim requests but only $queued were queued (spooled: $spooled)"
    FAILED=1
  fi
  S_RPS+=("$s_rps") S_P50+=("$s_p50") S_P99+=("$s_p99") S_RSS+=("$rss_kb") N_RPS+=("$n_rps")
  ratio=$(awk -v a="$s_rps" -v b="$n_rps" 'BEGIN {printf "%.2f", a / b}')
  RATIO+=("$ratio")
  printf '%-5s %12.0f %9.3f %9.3f %9.1f %12.0f %7s   (queued %d of %d; socket errors shim %s nginx %s)\n' \
    "$run" "$s_rps" "$(awk -v x="$s_p50" 'BEGIN{print x/1000}')" \
    "$(awk -v x="$s_p99" 'BEGIN{print x/1000}')" "$(awk -v x="$rss_kb" 'BEGIN{print x/1024}')" \
    "$n_rps" "$ratio" "$queued" "$s_req" "$s_err" "$n_err"
done

m_rps=$(median "${S_RPS[@]}")
m_p50=$(median "${S_P50[@]}")
m_p99=$(median "${S_P99[@]}")
m_rss=$(median "${S_RSS[@]}")
m_nrps=$(median "${N_RPS[@]}")
m_ratio=$(median "${RATIO[@]}")
printf '%-5s %12.0f %9.3f %9.3f %9.1f %12.0f %7s\n' median "$m_rps" \
  "$(awk -v x="$m_p50" 'BEGIN{print x/1000}')" "$(awk -v x="$m_p99" 'BEGIN{print x/1000}')" \
  "$(awk -v x="$m_rss" 'BEGIN{print x/1024}')" "$m_nrps" "$m_ratio"

verdict() { if awk "BEGIN {exit !($1)}"; then echo met; else echo MISSED; fi; }
say "targets: req/s >= 60% of nginx: $(verdict "$m_ratio >= 0.60") ($m_ratio);" \
  "p99 <= 5 ms: $(verdict "$m_p99 <= 5000") ($(awk -v x="$m_p99" 'BEGIN{print x/1000}') ms);" \
  "RSS <= 16 MB: $(verdict "$m_rss <= 16384") ($(awk -v x="$m_rss" 'BEGIN{print x/1024}') MB)"
[ "$FAILED" -eq 0 ] || die "some requests were not answered 2xx or not queued"
