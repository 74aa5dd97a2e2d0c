#!/usr/bin/env bash
# ingest.sh: throughput, latency and memory of tierone-ingest, beside nginx answering a
# static 202 on the same machine (the ceiling of an HTTP server here), in one run.
#
#   bash bench/ingest.sh                       # shim with 1 and with 2 processes vs nginx
#   BENCH_DELIVERY=1 BENCH_RUNS=5 bash bench/ingest.sh
#
# Builds tierone-ingest ($TIERONE_BENCH_BUILD_TYPE, default Release) in
# $TIERONE_BENCH_BUILD_DIR (default build-release), starts its own redis-server, one
# tierone-ingest per entry of BENCH_PROCESSES (TIERONE_INGEST_PROCESSES=N, each on its own
# port and spool) and nginx (BENCH_NGINX_WORKERS workers, default 2 = the cores here, as
# nginx is normally run; `return 202`) on free loopback ports, then runs wrk (keep-alive)
# with a Lua script that POSTs the same correctly signed 2 KB Chatwoot-like body, RUNS
# times. A run is BENCH_SLICES slices (default 5) of DURATION / SLICES each: in every slice
# nginx, then every shim, one after the other, so a change of the shared host's speed during
# the run reaches every server about equally instead of whichever had the run's only turn
# (requests/s = the run's requests over its slices' summed durations; p50 the median of the
# slices', p99 the largest slice's). Every shim request
# is queued (no X-Chatwoot-Delivery, so no dedupe; with BENCH_DELIVERY=1 each request
# carries a unique one, as Chatwoot sends, so the dedupe script runs too, and every server
# gets the same per-request Lua): the script checks the shim's queued-job counters (summed
# over its processes' admin ports) against wrk's request count. A background LTRIM keeps
# queue:events at 1000 entries so Redis does not grow to gigabytes.
#
# Prints per run and the medians, per shim: requests/s, p50, p99 (wrk's latency), peak RSS
# (VmHWM; with several processes the sum over them and the supervisor, and the largest
# one), nginx's requests/s and the ratio, then the targets (>= 60 % of nginx, p99 <= 5 ms,
# RSS <= 16 MB per process) as met / MISSED. Also the CPU time (user + system) per request
# of the shim's processes, of redis-server during the shim's run, of nginx and of wrk: on a
# machine whose cores are all busy the ratio follows (nginx + wrk) / (shim + redis + wrk)
# more than anything else, and these figures are steadier than req/s when other work runs.
# Exit status 0 unless something failed to run.
#
# Environment: BENCH_RUNS (3), BENCH_DURATION (10s, whole seconds: per server and run),
# BENCH_SLICES (5), BENCH_CONNECTIONS (50),
# BENCH_THREADS (2), BENCH_DELIVERY (0), BENCH_PROCESSES ("1 2"), BENCH_NGINX_WORKERS (2),
# TIERONE_BENCH_BUILD_DIR, TIERONE_BENCH_BUILD_TYPE (Release), TIERONE_BENCH_KEEP (keep the
# temp dir).
# Needs wrk, nginx (nginx-light), redis-server, redis-cli, openssl, GNU time (/usr/bin/time)
# (Debian packages).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${TIERONE_BENCH_BUILD_DIR:-$ROOT/build-release}
BUILD_TYPE=${TIERONE_BENCH_BUILD_TYPE:-Release}
RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-10s}
SLICES=${BENCH_SLICES:-5}
CONNS=${BENCH_CONNECTIONS:-50}
THREADS=${BENCH_THREADS:-2}
DELIVERY=${BENCH_DELIVERY:-0}
read -r -a PROCS <<<"${BENCH_PROCESSES:-1 2}"
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-2}
SECRET=bench-secret
WORK=$(mktemp -d /tmp/tierone-bench.XXXXXX)
chmod 0755 "$WORK" # nginx's worker (user nobody) reads nothing here, but may stat it
REDIS_PID="" NGINX_PID="" TRIM_PID=""
declare -a SHIM_PIDS=() SHIM_PORTS=() SHIM_ADMIN=()

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
  for pid in "${SHIM_PIDS[@]}"; do stop_pid "$pid"; done
  [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null && sleep 0.3
  stop_pid "$NGINX_PID"
  stop_pid "$REDIS_PID"
  if [ -n "${TIERONE_BENCH_KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

for tool in wrk nginx redis-server redis-cli openssl cmake /usr/bin/time; do
  command -v "$tool" >/dev/null || die "$tool not found (install the Debian package)"
done

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free port followed by $1 (default 0) more free ports.
free_port() {
  local port i k ok
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + (RANDOM % 12000)))
    ok=1
    for ((k = 0; k <= ${1:-0}; k++)); do port_free $((port + k)) || ok=0; done
    [ "$ok" = 1 ] || continue
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
say "building tierone-ingest ($BUILD_TYPE) in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DTIERONE_TESTS=OFF >/dev/null
cmake --build "$BUILD" --target tierone-ingest -j "${TIERONE_BUILD_JOBS:-2}" >/dev/null

# ---- services ---------------------------------------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" </dev/null >/dev/null 2>&1 &
REDIS_PID=$!
wait_port "$RPORT" "$REDIS_PID" || die "redis-server did not start"

# One shim per BENCH_PROCESSES entry N; its admin port is APORT (N = 1) or, per process,
# APORT+1..APORT+N.
for n in "${PROCS[@]}"; do
  sport=$(free_port)
  aport=$(free_port "$n")
  TIERONE_REDIS_URL="redis://127.0.0.1:$RPORT/0" TIERONE_LISTEN_HOST=127.0.0.1 \
    TIERONE_LISTEN_PORT="$sport" TIERONE_ADMIN_HOST=127.0.0.1 TIERONE_ADMIN_PORT="$aport" \
    TIERONE_WEBHOOK_SECRETS="$SECRET" TIERONE_SPOOL_PATH="$WORK/ingest-$n.spool" \
    TIERONE_INGEST_PROCESSES="$n" TIERONE_LOG_LEVEL=warn \
    "$BUILD/tierone-ingest" </dev/null >"$WORK/shim-$n.log" 2>&1 &
  pid=$!
  wait_port "$sport" "$pid" || die "tierone-ingest x$n did not start: $(cat "$WORK/shim-$n.log")"
  for ((k = (n > 1 ? 1 : 0); k <= (n > 1 ? n : 0); k++)); do
    wait_port $((aport + k)) "$pid" || die "tierone-ingest x$n: no admin port $((aport + k))"
  done
  SHIM_PIDS+=("$pid") SHIM_PORTS+=("$sport") SHIM_ADMIN+=("$aport")
done

NPORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<NGINX_CONF
worker_processes $NGINX_WORKERS;
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
NGINX_CONF
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
  cat >"$WORK/post.lua" <<LUA
local f = assert(io.open("$WORK/body.json", "rb"))
wrk.method = "POST"
wrk.path = "/webhooks/chatwoot"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Chatwoot-Timestamp"] = "$ts"
wrk.headers["X-Chatwoot-Signature"] = "sha256=$sig"
LUA
  if [ "$DELIVERY" = 1 ]; then
    cat >>"$WORK/post.lua" <<LUA
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
LUA
  fi
  cat >>"$WORK/post.lua" <<LUA
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT %d %.1f %d %d %d %d %d\n", s.requests,
    s.requests / s.duration * 1e6, lat:percentile(50), lat:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout, s.duration))
end
LUA
}

# Series $2 summed over the /metrics of shim $1 (an index into PROCS / SHIM_*).
shim_metric() {
  local i=$1 n=${PROCS[$1]} k total=0 out v
  for ((k = (n > 1 ? 1 : 0); k <= (n > 1 ? n : 0); k++)); do
    exec 3<>"/dev/tcp/127.0.0.1/$((SHIM_ADMIN[i] + k))"
    printf 'GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n' >&3
    out=$(cat <&3)
    exec 3<&-
    v=$(printf '%s\n' "$out" | awk -v k="$2" '$1 == k {print $2}')
    total=$((total + ${v%.*}))
  done
  printf '%s\n' "$total"
}

# Peak RSS in kB of shim $1 as "sum max" over its supervisor and children.
shim_rss() {
  local pid=${SHIM_PIDS[$1]} p kb sum=0 max=0
  for p in $pid $(cat "/proc/$pid/task/$pid/children" 2>/dev/null); do
    kb=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + kb))
    [ "$kb" -gt "$max" ] && max=$kb
  done
  printf '%s %s\n' "$sum" "$max"
}

# CPU time (user + system, clock ticks) used so far by the processes $@ and their children.
cpu_ticks() {
  local p q t=0
  for p in "$@"; do
    for q in $p $(cat "/proc/$p/task/$p/children" 2>/dev/null); do
      t=$((t + $(awk '{print $14 + $15}' "/proc/$q/stat" 2>/dev/null || echo 0)))
    done
  done
  printf '%s\n' "$t"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# wrk against port $1 for one slice; prints "requests rps p50_us p99_us non2xx errors
# duration_us wrk_cpu_us".
run_wrk() {
  write_lua
  /usr/bin/time -f 'CPU %U %S' -o "$WORK/wrk.time" wrk -t"$THREADS" -c"$CONNS" -d"${SLICE_S}s" \
    -s "$WORK/post.lua" "http://127.0.0.1:$1/webhooks/chatwoot" >"$WORK/wrk.out" 2>&1 ||
    die "wrk failed: $(cat "$WORK/wrk.out")"
  printf '%s %s\n' "$(grep '^RESULT ' "$WORK/wrk.out" | cut -d' ' -f2-)" \
    "$(awk '/^CPU/ {printf "%.0f", ($2 + $3) * 1e6}' "$WORK/wrk.time")"
}
# CPU microseconds per request: ticks $1 over $2 requests.
per_req() { awk -v t="$1" -v n="$2" -v u="$TICK_US" 'BEGIN {printf "%.1f", t * u / n}'; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
maxof() { printf '%s\n' "$@" | sort -g | tail -1; }

SECONDS_TOTAL=${DURATION%s}
[[ "$SECONDS_TOTAL" =~ ^[0-9]+$ ]] || die "BENCH_DURATION must be whole seconds, e.g. 10s"
[[ "$SLICES" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SLICES must be a positive integer"
[ "$SECONDS_TOTAL" -ge 1 ] || die "BENCH_DURATION must be at least 1s"
[ "$SLICES" -le "$SECONDS_TOTAL" ] || SLICES=$SECONDS_TOTAL # slices of at least 1 s
SLICE_S=$((SECONDS_TOTAL / SLICES))
ms() { awk -v x="$1" 'BEGIN{printf "%.3f", x/1000}'; }
mb() { awk -v x="$1" 'BEGIN{printf "%.1f", x/1024}'; }
verdict() { if awk "BEGIN {exit !($1)}"; then echo met; else echo MISSED; fi; }

say "body $(wc -c <"$WORK/body.json") bytes; wrk -t$THREADS -c$CONNS, keep-alive; $RUNS runs of" \
  "$SLICES interleaved ${SLICE_S} s slices per server;" \
  "$([ "$DELIVERY" = 1 ] && echo "a unique X-Chatwoot-Delivery per request" || echo "no delivery ids")"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
say "redis :$RPORT  nginx :$NPORT ($NGINX_WORKERS workers)"
for i in "${!PROCS[@]}"; do
  say "tierone-ingest x${PROCS[$i]} :${SHIM_PORTS[$i]} (pid ${SHIM_PIDS[$i]}, admin ${SHIM_ADMIN[$i]})"
done
say "cpu_us columns: CPU time per request of the shim's processes, of redis-server during the"
say "shim's run, and of nginx's processes (user + system; wrk's own in the note)"
printf '%-6s %-4s %10s %8s %8s %8s %8s %12s %6s %7s %7s %7s\n' run shim req/s p50_ms p99_ms \
  rss_MB rss_max nginx_req/s ratio shim_us redis_us nginx_us
declare -a N_RPS=() N_CPU=()
declare -A S_RPS S_P50 S_P99 S_RSS S_RSSMAX RATIO S_CPU R_CPU
FAILED=0
# One slice of wrk against server $1 (port $2), adding to that server's sums for this run:
# requests, duration, non-2xx, socket errors, wrk CPU (us), server CPU ticks ($3: pids),
# Redis CPU ticks (shims only), and the slice's p50 and p99.
declare -A A_REQ A_DUR A_BAD A_ERR A_WRK A_TICKS A_RTICKS A_P50 A_P99
slice() {
  local key=$1 port=$2 pids=$3 t0 r0 req rps p50 p99 bad err dur wrkcpu
  t0=$(cpu_ticks $pids) r0=$(cpu_ticks "$REDIS_PID")
  read -r req rps p50 p99 bad err dur wrkcpu <<<"$(run_wrk "$port")"
  A_TICKS[$key]=$((${A_TICKS[$key]:-0} + $(cpu_ticks $pids) - t0))
  A_RTICKS[$key]=$((${A_RTICKS[$key]:-0} + $(cpu_ticks "$REDIS_PID") - r0))
  A_REQ[$key]=$((${A_REQ[$key]:-0} + req)) A_DUR[$key]=$((${A_DUR[$key]:-0} + dur))
  A_BAD[$key]=$((${A_BAD[$key]:-0} + bad)) A_ERR[$key]=$((${A_ERR[$key]:-0} + err))
  A_WRK[$key]=$((${A_WRK[$key]:-0} + wrkcpu))
  A_P50[$key]+=" $p50" A_P99[$key]+=" $p99"
}
for ((run = 1; run <= RUNS; run++)); do
  A_REQ=() A_DUR=() A_BAD=() A_ERR=() A_WRK=() A_TICKS=() A_RTICKS=() A_P50=() A_P99=()
  declare -a before=()
  for i in "${!PROCS[@]}"; do
    before[$i]=$(shim_metric "$i" 'tierone_ingest_jobs_total{result="queued"}')
  done
  for ((sl = 1; sl <= SLICES; sl++)); do
    slice nginx "$NPORT" "$NGINX_PID"
    for i in "${!PROCS[@]}"; do slice "shim$i" "${SHIM_PORTS[$i]}" "${SHIM_PIDS[$i]}"; done
  done
  n_req=${A_REQ[nginx]} n_bad=${A_BAD[nginx]} n_err=${A_ERR[nginx]}
  n_rps=$(awk -v r="$n_req" -v d="${A_DUR[nginx]}" 'BEGIN {printf "%.1f", r / d * 1e6}')
  n_cpu=$(per_req "${A_TICKS[nginx]}" "$n_req")
  n_wrkcpu=$(awk -v c="${A_WRK[nginx]}" -v n="$n_req" 'BEGIN {printf "%.1f", c / n}')
  N_RPS+=("$n_rps") N_CPU+=("$n_cpu")
  [ "$n_bad" = 0 ] || {
    say "run $run: nginx answered $n_bad non-2xx"
    FAILED=1
  }
  sleep 0.5 # let the last answers' counters settle
  for i in "${!PROCS[@]}"; do
    k="shim$i"
    s_req=${A_REQ[$k]} s_bad=${A_BAD[$k]} s_err=${A_ERR[$k]}
    s_rps=$(awk -v r="$s_req" -v d="${A_DUR[$k]}" 'BEGIN {printf "%.1f", r / d * 1e6}')
    # shellcheck disable=SC2086 # the collected values are split on purpose
    s_p50=$(median ${A_P50[$k]}) s_p99=$(maxof ${A_P99[$k]})
    s_cpu=$(per_req "${A_TICKS[$k]}" "$s_req")
    r_cpu=$(per_req "${A_RTICKS[$k]}" "$s_req")
    s_wrkcpu=$(awk -v c="${A_WRK[$k]}" -v n="$s_req" 'BEGIN {printf "%.1f", c / n}')
    after=$(shim_metric "$i" 'tierone_ingest_jobs_total{result="queued"}')
    spooled=$(shim_metric "$i" 'tierone_ingest_jobs_total{result="spooled"}')
    read -r rss_kb rss_max <<<"$(shim_rss "$i")"
    queued=$((after - before[i]))
    if [ "$s_bad" != 0 ]; then
      say "run $run: x${PROCS[$i]}: $s_bad non-2xx answers"
      FAILED=1
    fi
    if [ "$queued" -lt "$s_req" ]; then
      say "run $run: x${PROCS[$i]}: wrk counted $s_req requests but only $queued were queued (spooled: $spooled)"
      FAILED=1
    fi
    ratio=$(awk -v a="$s_rps" -v b="$n_rps" 'BEGIN {printf "%.2f", a / b}')
    S_RPS[$i]+=" $s_rps" S_P50[$i]+=" $s_p50" S_P99[$i]+=" $s_p99" S_RSS[$i]+=" $rss_kb"
    S_RSSMAX[$i]+=" $rss_max" RATIO[$i]+=" $ratio" S_CPU[$i]+=" $s_cpu" R_CPU[$i]+=" $r_cpu"
    printf '%-6s %-4s %10.0f %8s %8s %8s %8s %12.0f %6s %7s %7s %7s   (wrk %s/%s us; queued %d of %d; socket errors %s/%s)\n' \
      "$run" "x${PROCS[$i]}" "$s_rps" "$(ms "$s_p50")" "$(ms "$s_p99")" "$(mb "$rss_kb")" \
      "$(mb "$rss_max")" "$n_rps" "$ratio" "$s_cpu" "$r_cpu" "$n_cpu" "$s_wrkcpu" "$n_wrkcpu" \
      "$queued" "$s_req" "$s_err" "$n_err"
  done
done

m_nrps=$(median "${N_RPS[@]}")
m_ncpu=$(median "${N_CPU[@]}")
for i in "${!PROCS[@]}"; do
  # shellcheck disable=SC2086 # the collected values are split on purpose
  {
    m_rps=$(median ${S_RPS[$i]})
    m_p50=$(median ${S_P50[$i]})
    m_p99=$(median ${S_P99[$i]})
    m_rss=$(median ${S_RSS[$i]})
    m_rssmax=$(median ${S_RSSMAX[$i]})
    m_ratio=$(median ${RATIO[$i]})
    m_scpu=$(median ${S_CPU[$i]})
    m_rcpu=$(median ${R_CPU[$i]})
  }
  printf '%-6s %-4s %10.0f %8s %8s %8s %8s %12.0f %6s %7s %7s %7s   (ratios:%s)\n' median \
    "x${PROCS[$i]}" "$m_rps" "$(ms "$m_p50")" "$(ms "$m_p99")" "$(mb "$m_rss")" \
    "$(mb "$m_rssmax")" "$m_nrps" "$m_ratio" "$m_scpu" "$m_rcpu" "$m_ncpu" "${RATIO[$i]}"
  say "targets x${PROCS[$i]}: req/s >= 60% of nginx: $(verdict "$m_ratio >= 0.60") ($m_ratio);" \
    "p99 <= 5 ms: $(verdict "$m_p99 <= 5000") ($(ms "$m_p99") ms);" \
    "RSS <= 16 MB per process: $(verdict "$m_rssmax <= 16384") ($(mb "$m_rssmax") MB)"
done
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$FAILED" -eq 0 ] || die "some requests were not answered 2xx or not queued"
