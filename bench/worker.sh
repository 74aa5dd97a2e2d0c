#!/usr/bin/env bash
# Worker benchmark: tierone-worker against Ruby Sidekiq 6.4.1 on the same machine, in the
# same run, against one fresh redis-server. See bench/README.md for what every number means.
#
#   bench/worker.sh [--runs N] [--quick] [--full-matrix] [--out FILE]
#
#   --runs N        repetitions of every scenario; the table shows medians (default 3)
#   --quick         10x fewer jobs (10,000 Noop, 2,000 HttpGet): checks the script works
#   --full-matrix   also run HttpGet on Sidekiq -c 10 (bounded at 100 jobs/s: 200 s a run)
#   --out FILE      also write the report to FILE (default: a temp file, path printed)
#
# Environment: BUILD_DIR (default <repo>/build-bench), TIERONE_BENCH_CONCURRENCY (tierone's
# concurrency, default 1000), DRAIN_TIMEOUT_S (default 600).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$REPO/build-bench}
RUNS=3
QUICK=0
FULL=0
OUT=""
TIERONE_C=${TIERONE_BENCH_CONCURRENCY:-1000}
DRAIN_TIMEOUT_S=${DRAIN_TIMEOUT_S:-600}
HTTP_DELAY_MS=100

while [ $# -gt 0 ]; do
    case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --full-matrix) FULL=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "worker.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$RUNS" in '' | *[!0-9]* | 0) echo "worker.sh: --runs needs a positive integer" >&2; exit 2 ;; esac

if [ "$QUICK" = 1 ]; then
    NOOP_N=10000
    HTTP_N=2000
else
    NOOP_N=100000
    HTTP_N=20000
fi

for tool in redis-server redis-cli redis-benchmark sidekiq ruby cmake; do
    command -v "$tool" >/dev/null || { echo "worker.sh: $tool not found" >&2; exit 2; }
done

# ---- cleanup: everything this script starts is stopped on any exit -------------------------
TMP=$(mktemp -d /tmp/tierone-bench.XXXXXX)
REDIS_PID=""
HTTP_PID=""
RUN_PID=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local pid
    for pid in "$RUN_PID" "$HTTP_PID" "$REDIS_PID"; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    done
    for pid in "$RUN_PID" "$HTTP_PID" "$REDIS_PID"; do
        if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REPORT=$TMP/report.txt
say() { printf '%s\n' "$*" | tee -a "$REPORT"; }

# ---- machine --------------------------------------------------------------------------------
say "tierone worker benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
say "versions: $(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /'), $(ruby -e 'print "ruby #{RUBY_VERSION}"'), $(ruby -e 'require "sidekiq"; require "redis"; print "sidekiq #{Sidekiq::VERSION}, redis-rb #{Redis::VERSION}"')"
say "jobs: $NOOP_N Tierone::Noop, $HTTP_N Tierone::HttpGet (server answers after ${HTTP_DELAY_MS} ms); runs: $RUNS (medians)"

# ---- build ----------------------------------------------------------------------------------
echo "building Release in $BUILD_DIR ..." >&2
if ! { cmake -S "$REPO" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DTIERONE_TESTS=OFF &&
    cmake --build "$BUILD_DIR" -j2 --target tierone-worker bench_push_jobs bench_slow_http; } \
    >"$TMP/build.log" 2>&1; then
    cat "$TMP/build.log" >&2
    echo "worker.sh: build failed" >&2
    exit 1
fi
WORKER=$BUILD_DIR/tierone-worker
PUSH=$BUILD_DIR/bench_push_jobs
SLOW=$BUILD_DIR/bench_slow_http

# ---- redis-server on a free port (no persistence, 127.0.0.1 only) -------------------------
start_redis() {
    local port
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 10000))
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --protected-mode yes --logfile "$TMP/redis.log" &
        REDIS_PID=$!
        for _ in $(seq 1 100); do
            if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
                REDIS_PORT=$port
                return 0
            fi
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.02
        done
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    done
    echo "worker.sh: could not start redis-server" >&2
    exit 1
}
start_redis
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# ---- slow HTTP server -----------------------------------------------------------------------
"$SLOW" 0 "$HTTP_DELAY_MS" >"$TMP/http.out" 2>"$TMP/http.err" &
HTTP_PID=$!
for _ in $(seq 1 100); do
    grep -q '^port ' "$TMP/http.out" 2>/dev/null && break
    sleep 0.02
done
HTTP_PORT=$(awk '/^port / {print $2}' "$TMP/http.out")
[ -n "$HTTP_PORT" ] || { echo "worker.sh: bench_slow_http did not start" >&2; cat "$TMP/http.err" >&2; exit 1; }
HTTP_URL=http://127.0.0.1:$HTTP_PORT/

# ---- scenarios: id|job class|jobs|impl|concurrency ------------------------------------------
SCENARIOS=(
    "noop|Tierone::Noop|$NOOP_N|tierone|$TIERONE_C"
    "noop|Tierone::Noop|$NOOP_N|sidekiq|10"
    "noop|Tierone::Noop|$NOOP_N|sidekiq|100"
    "http|Tierone::HttpGet|$HTTP_N|tierone|$TIERONE_C"
)
[ "$FULL" = 1 ] && SCENARIOS+=("http|Tierone::HttpGet|$HTTP_N|sidekiq|10")
SCENARIOS+=("http|Tierone::HttpGet|$HTTP_N|sidekiq|100")

# One drain: FLUSHALL, push, start the worker, wait for the last job, stop it.
# Leaves bench_push_jobs's "result ..." line in $LINE (runs in this shell, not a subshell, so
# the cleanup trap knows RUN_PID); the worker's output goes to $TMP/worker-*.log.
run_one() {
    local kind=$1 class=$2 n=$3 impl=$4 conc=$5 run=$6 arg=""
    [ "$kind" = http ] && arg=$HTTP_URL
    rcli flushall >/dev/null
    "$PUSH" push "$REDIS_URL" "$class" "$n" ${arg:+"$arg"}
    local log=$TMP/worker-$kind-$impl-c$conc-r$run.log done=$TMP/done-$kind-$impl-$conc-$run
    rm -f "$done"
    if [ "$impl" = tierone ]; then
        TIERONE_REDIS_URL=$REDIS_URL TIERONE_QUEUES=default TIERONE_CONCURRENCY=$conc \
            TIERONE_ADMIN_PORT=0 TIERONE_LOG_LEVEL=warn \
            "$PUSH" run "$REDIS_URL" "$n" "$DRAIN_TIMEOUT_S" tierone -- \
            "$WORKER" --diagnostic-jobs >"$TMP/result" 2>"$log" &
    else
        # shellcheck disable=SC2097,SC2098  # Sidekiq reads REDIS_URL from its environment
        REDIS_URL=$REDIS_URL BENCH_EXPECT=$n BENCH_DONE_FILE=$done \
            "$PUSH" run "$REDIS_URL" "$n" "$DRAIN_TIMEOUT_S" "file:$done" -- \
            sidekiq -r "$REPO/bench/ruby_jobs.rb" -c "$conc" -q default \
            >"$TMP/result" 2>"$log" &
    fi
    RUN_PID=$!
    local rc=0
    wait "$RUN_PID" || rc=$?
    RUN_PID=""
    # The worker's stdout shares the file with the result line; keep only the latter.
    LINE=$(grep '^result ' "$TMP/result" | tail -1 || true)
    [ -n "$LINE" ] || LINE="result ok=0 error=no-result"
    grep -v '^result ' "$TMP/result" >>"$log" || true
    if [ "$rc" != 0 ]; then
        echo "worker.sh: $impl c=$conc $kind run $run failed (rc=$rc); last worker output:" >&2
        tail -5 "$log" >&2
    fi
}

field() { # field NAME "result line"
    printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"
}
median() { # median of the arguments
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan";
        else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

declare -A RATE BOOTRATE RSS CPU OKS
for run in $(seq 1 "$RUNS"); do
    for sc in "${SCENARIOS[@]}"; do
        IFS='|' read -r kind class n impl conc <<<"$sc"
        key="$kind|$impl|$conc"
        echo "run $run/$RUNS: $kind $impl c=$conc ($n jobs) ..." >&2
        run_one "$kind" "$class" "$n" "$impl" "$conc" "$run"
        line=$LINE
        echo "  $line" >&2
        printf 'run %s %s %s c=%s: %s\n' "$run" "$kind" "$impl" "$conc" "$line" >>"$TMP/raw.txt"
        if [ "$(field ok "$line")" = 1 ]; then
            RATE[$key]="${RATE[$key]:-} $(field jobs_s "$line")"
            BOOTRATE[$key]="${BOOTRATE[$key]:-} $(field jobs_s_after_boot "$line")"
            RSS[$key]="${RSS[$key]:-} $(field hwm_kb "$line")"
            CPU[$key]="${CPU[$key]:-} $(awk -v c="$(field cpu_s "$line")" -v n="$n" 'BEGIN {printf "%.2f", c * 1e6 / n}')"
            OKS[$key]=$((${OKS[$key]:-0} + 1))
        fi
    done
done

# ---- report ---------------------------------------------------------------------------------
say ""
say "Drain throughput (median of $RUNS; jobs/s = jobs / (last job finished - worker started))"
fmt='%-5s %-8s %5s %7s %10s %11s %8s %8s %5s %-22s\n'
# shellcheck disable=SC2059
say "$(printf "$fmt" job worker c jobs jobs/s after-boot RSS_MB CPUus/job ok "tierone/this (rate,RSS)")"
declare -A MED_RATE MED_RSS
for sc in "${SCENARIOS[@]}"; do
    IFS='|' read -r kind class n impl conc <<<"$sc"
    key="$kind|$impl|$conc"
    if [ -z "${OKS[$key]:-}" ]; then
        MED_RATE[$key]=nan
        MED_RSS[$key]=nan
        # shellcheck disable=SC2059
        say "$(printf "$fmt" "$kind" "$impl" "$conc" "$n" failed - - - "0/$RUNS" "")"
        continue
    fi
    # shellcheck disable=SC2086
    MED_RATE[$key]=$(median ${RATE[$key]})
    # shellcheck disable=SC2086
    MED_RSS[$key]=$(median ${RSS[$key]})
    # shellcheck disable=SC2086
    boot=$(median ${BOOTRATE[$key]})
    # shellcheck disable=SC2086
    cpu=$(median ${CPU[$key]})
    ratio=""
    tkey="$kind|tierone|$TIERONE_C"
    if [ "$impl" = sidekiq ] && [ "${MED_RATE[$tkey]:-nan}" != nan ]; then
        ratio=$(awk -v a="${MED_RATE[$tkey]}" -v b="${MED_RATE[$key]}" -v c="${MED_RSS[$tkey]}" \
            -v d="${MED_RSS[$key]}" 'BEGIN {printf "%.1fx, %.2fx", a/b, c/d}')
    fi
    # shellcheck disable=SC2059
    say "$(printf "$fmt" "$kind" "$impl" "$conc" "$n" \
        "$(awk -v v="${MED_RATE[$key]}" 'BEGIN {printf "%.0f", v}')" \
        "$(awk -v v="$boot" 'BEGIN {printf "%.0f", v}')" \
        "$(awk -v v="${MED_RSS[$key]}" 'BEGIN {printf "%.1f", v/1024}')" \
        "$(awk -v v="$cpu" 'BEGIN {printf "%.1f", v}')" "${OKS[$key]}/$RUNS" "$ratio")"
done
[ "$FULL" = 1 ] || say "(HttpGet on sidekiq -c 10 skipped: 10 threads x 100 ms caps it at 100 jobs/s; --full-matrix runs it)"

# Targets from the issue (full-size runs only: --quick drains are too short to mean much).
t_noop=${MED_RATE["noop|tierone|$TIERONE_C"]:-nan}
t_http=${MED_RATE["http|tierone|$TIERONE_C"]:-nan}
t_http_rss=${MED_RSS["http|tierone|$TIERONE_C"]:-nan}
say ""
say "targets (tierone, reliable fetch on): Noop >= 100000 jobs/s; HttpGet at c=1000 >= 9000 jobs/s with peak RSS <= 32 MB"
say "$(awk -v n="$t_noop" -v h="$t_http" -v r="$t_http_rss" -v q="$QUICK" -v c="$TIERONE_C" 'BEGIN {
    printf "  Noop    %8.0f jobs/s  %s\n", n, (n == "nan") ? "FAILED" : (n >= 100000 ? "met" : "NOT met")
    printf "  HttpGet %8.0f jobs/s  %s;  peak RSS %.1f MB  %s%s\n", h,
        (h == "nan") ? "FAILED" : (h >= 9000 ? "met" : "NOT met"), r / 1024,
        (r == "nan") ? "" : (r <= 32 * 1024 ? "met" : "NOT met"),
        (c != 1000) ? "  (tierone ran at c=" c ", not 1000)" : ""
    if (q == 1) print "  (--quick: 10x fewer jobs; fixed start-up costs weigh more, compare full runs only)"
}')"

# ---- Redis ceiling --------------------------------------------------------------------------
# What one job costs Redis: tierone RPOP + HSET (inside its batched fetch script) and an HDEL
# field (batched ack); Sidekiq 6.4.1 a BRPOP. 180-byte values ~ one job payload.
rcli flushall >/dev/null
say ""
say "Redis ceiling on this redis-server (redis-benchmark -q -n 100000 -P 16 -d 180 -r 100000, 50 clients, pipeline 16):"
redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -q -n 100000 -P 16 -d 180 -r 100000 -t lpush,rpop,hset \
    2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | sed 's/^/  /' >"$TMP/rb.txt" || true
redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -q -n 100000 -P 16 -r 100000 \
    HDEL myhash element:__rand_int__ 2>/dev/null | tr '\r' '\n' |
    grep -E 'requests per second' | sed 's/^/  /' >>"$TMP/rb.txt" || true
tee -a "$REPORT" <"$TMP/rb.txt"
say "$(awk '{for (i = 1; i <= NF; i++) if ($i == "requests") {v = $(i-1); gsub(/[^0-9.]/, "", v)}}
    /RPOP/ {r = v} /HSET/ {h = v} /HDEL/ {d = v}
    END {if (r && h && d) printf "  one job unbatched = RPOP + HSET + HDEL: %.0f jobs/s (tierone batches all three, so it may exceed this)\n", 1 / (1/r + 1/h + 1/d)}' "$TMP/rb.txt")"
say ""
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
say "per-run results:"
sed 's/^/  /' "$TMP/raw.txt" | tee -a "$REPORT"
kill "$HTTP_PID" 2>/dev/null || true
wait "$HTTP_PID" 2>/dev/null || true
HTTP_PID=""
say "bench_slow_http: $(cat "$TMP/http.err" 2>/dev/null || true) (expected: HttpGet jobs x HttpGet scenarios x runs)"

if [ -z "$OUT" ]; then
    OUT=$(mktemp /tmp/tierone-bench-worker.XXXXXX.txt)
fi
cp "$REPORT" "$OUT"
echo "report written to $OUT" >&2
exit 0
