#!/usr/bin/env bash
# HTTP client benchmark: lib/http_client (libcurl multi on libuv, bench/http_client.c)
# against wrk (the C load-generator baseline) and Ruby Net::HTTP with threads (the
# Sidekiq-world way), in the same run, against one local server that answers every
# request after 50 ms (bench/slow_http.c). See bench/README.md for what the numbers mean.
#
#   bench/http_client.sh [--runs N] [--quick] [--out FILE]
#
#   --runs N    repetitions of every scenario (interleaved); the table shows medians (3)
#   --quick     5x fewer requests and 2 s wrk runs: checks that the script works
#   --out FILE  also write the report to FILE
#
# Environment: BUILD_DIR (default <repo>/build-bench), BUILD_TYPE (default Release),
# HTTP_DELAY_MS (default 50), WRK_SECONDS (default 5), RUBY_THREADS (default 1000),
# TIERONE_RECV_BUFFER (http_client_opts.recv_buffer_size for our client; default 0 = curl's
# 16 KiB). Needs: cmake, a C compiler, wrk (Debian `wrk`), ruby, GNU time (/usr/bin/time).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$REPO/build-bench}
BUILD_TYPE=${BUILD_TYPE:-Release}
DELAY_MS=${HTTP_DELAY_MS:-50}
WRK_SECONDS=${WRK_SECONDS:-5}
RUBY_THREADS=${RUBY_THREADS:-1000}
RECV_BUFFER=${TIERONE_RECV_BUFFER:-0}
RUNS=3
QUICK=0
OUT=""

while [ $# -gt 0 ]; do
    case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --runs=*) RUNS=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "http_client.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$RUNS" in '' | *[!0-9]* | 0) echo "http_client.sh: --runs needs a positive integer" >&2; exit 2 ;; esac

# Requests per scenario: 10 rounds of the concurrency for our client; Ruby gets 20 rounds.
if [ "$QUICK" = 1 ]; then
    ROUNDS=2
    RUBY_ROUNDS=4
    WRK_SECONDS=2
else
    ROUNDS=10
    RUBY_ROUNDS=20
fi

for tool in cmake wrk ruby /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "http_client.sh: $tool not found (Debian: wrk, ruby, time)" >&2; exit 2; }
done

# 10,000 connections need 10,000 descriptors in the client and in the server (which raise
# their own soft limit); wrk inherits ours.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt 10100 ]; then
    echo "http_client.sh: RLIMIT_NOFILE hard limit $NOFILE < 10100: raise it (ulimit -Hn)" >&2
    exit 2
fi

# ---- cleanup: everything this script starts is stopped on any exit -------------------------
TMP=$(mktemp -d /tmp/tierone-bench-http.XXXXXX)
SRV_PID=""
RUN_PID=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local pid
    for pid in "$RUN_PID" "$SRV_PID"; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    done
    for pid in "$RUN_PID" "$SRV_PID"; do
        if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REPORT=$TMP/report.txt
say() { printf '%s\n' "$*" | tee -a "$REPORT"; }

# ---- build ----------------------------------------------------------------------------------
echo "building $BUILD_TYPE in $BUILD_DIR ..." >&2
if ! { cmake -S "$REPO" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DTIERONE_TESTS=OFF &&
    cmake --build "$BUILD_DIR" -j2 --target bench_http_client bench_slow_http; } \
    >"$TMP/build.log" 2>&1; then
    cat "$TMP/build.log" >&2
    echo "http_client.sh: build failed" >&2
    exit 1
fi
CLIENT=$BUILD_DIR/bench_http_client
SLOW=$BUILD_DIR/bench_slow_http

# ---- the Ruby competitor: Net::HTTP, one keep-alive session per thread ------------------------
cat >"$TMP/ruby_http.rb" <<'EOF'
# ruby_http.rb URL TOTAL THREADS: TOTAL GETs over THREADS threads, each with its own
# keep-alive Net::HTTP session (opened on its first request, reopened after an error);
# threads take request numbers from a shared counter. Prints the same JSON line as
# bench_http_client.
require "net/http"
url = URI(ARGV[0])
total = Integer(ARGV[1])
nthreads = [Integer(ARGV[2]), total].min
lock = Mutex.new
taken = 0
ok = 0
errors = 0
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
cpu0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
threads = Array.new(nthreads) do
  Thread.new do
    http = nil
    my_ok = 0
    my_err = 0
    loop do
      more = lock.synchronize { taken < total && (taken += 1) }
      break unless more
      begin
        http ||= Net::HTTP.start(url.host, url.port, read_timeout: 60, open_timeout: 60)
        res = http.request(Net::HTTP::Get.new(url.request_uri))
        if res.code == "200" && res.body == "ok\n"
          my_ok += 1
        else
          my_err += 1
        end
      rescue StandardError => e
        my_err += 1
        warn "ruby_http: #{e.class}: #{e.message}" if my_err <= 3
        begin
          http&.finish
        rescue StandardError
          nil
        end
        http = nil
      end
    end
    http&.finish
    lock.synchronize do
      ok += my_ok
      errors += my_err
    end
  end
end
threads.each(&:join)
secs = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu0
hwm = File.read("/proc/self/status")[/^VmHWM:\s+(\d+)/, 1].to_i
printf("{\"impl\":\"ruby\",\"concurrency\":%d,\"requests\":%d,\"ok\":%d,\"errors\":%d," \
       "\"seconds\":%.3f,\"req_s\":%.0f,\"rss_inflight_kb\":-1,\"hwm_kb\":%d,\"cpu_s\":%.2f," \
       "\"loop_close\":-1}\n", nthreads, ok + errors, ok, errors, secs, (ok + errors) / secs,
       hwm, cpu)
EOF

# ---- slow HTTP server -----------------------------------------------------------------------
"$SLOW" 0 "$DELAY_MS" >"$TMP/srv.out" 2>"$TMP/srv.err" &
SRV_PID=$!
for _ in $(seq 1 100); do
    grep -q '^port ' "$TMP/srv.out" 2>/dev/null && break
    sleep 0.02
done
PORT=$(awk '/^port / {print $2}' "$TMP/srv.out")
[ -n "$PORT" ] || { echo "http_client.sh: bench_slow_http did not start" >&2; cat "$TMP/srv.err" >&2; exit 1; }
URL=http://127.0.0.1:$PORT/

srv_cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$SRV_PID/stat"; }
jf() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; } # a field of a JSON line
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan";
        else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

say "tierone HTTP client benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
say "versions: $(curl-config --version 2>/dev/null || echo 'libcurl ?'), libuv $(pkg-config --modversion libuv 2>/dev/null || echo '?'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(ruby -e 'print "ruby #{RUBY_VERSION}"')"
say "server: bench_slow_http on 127.0.0.1:$PORT, answers after $DELAY_MS ms; runs: $RUNS (medians); RLIMIT_NOFILE $NOFILE"
say "tierone recv_buffer_size: $RECV_BUFFER (0 = curl's 16 KiB)"

# ---- scenarios: impl|concurrency|requests (wrk: seconds) ------------------------------------
SCENARIOS=(
    "tierone|10000|$((10000 * ROUNDS))"
    "wrk|10000|$WRK_SECONDS"
    "tierone|5000|$((5000 * ROUNDS))"
    "wrk|5000|$WRK_SECONDS"
    "tierone|$RUBY_THREADS|$((RUBY_THREADS * RUBY_ROUNDS))"
    "ruby|$RUBY_THREADS|$((RUBY_THREADS * RUBY_ROUNDS))"
)

# One scenario; leaves a JSON line in $LINE (plus srv_cpu_s, the server's CPU seconds).
run_one() {
    local impl=$1 conc=$2 n=$3 s0 s1 rc=0
    s0=$(srv_cpu)
    case "$impl" in
    tierone)
        "$CLIENT" "$URL" "$n" "$conc" "$RECV_BUFFER" >"$TMP/out" 2>"$TMP/err" &
        RUN_PID=$!
        wait "$RUN_PID" || rc=$?
        LINE=$(grep '^{' "$TMP/out" | tail -1 || true)
        ;;
    wrk)
        /usr/bin/time -f 'time %M %U %S' -o "$TMP/time" \
            wrk -t2 -c"$conc" -d"${n}s" --timeout 30s "$URL" >"$TMP/out" 2>"$TMP/err" &
        RUN_PID=$!
        wait "$RUN_PID" || rc=$?
        local req secs rps errs non2xx maxrss cpu
        req=$(awk '/requests in/ {print $1}' "$TMP/out")
        secs=$(awk '/requests in/ {sub(/s,$/, "", $4); print $4}' "$TMP/out")
        rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$TMP/out")
        errs=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$TMP/out")
        non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/out")
        read -r _ maxrss u s <"$TMP/time" || true
        cpu=$(awk -v u="${u:-0}" -v s="${s:-0}" 'BEGIN {printf "%.2f", u + s}')
        errs=$((${errs:-0} + ${non2xx:-0}))
        if [ -n "$rps" ]; then
            LINE="{\"impl\":\"wrk\",\"concurrency\":$conc,\"requests\":$req,\"ok\":$((req - errs)),\"errors\":$errs,\"seconds\":$secs,\"req_s\":$rps,\"rss_inflight_kb\":-1,\"hwm_kb\":${maxrss:--1},\"cpu_s\":$cpu,\"loop_close\":-1}"
        else
            LINE=""
        fi
        ;;
    ruby)
        ruby "$TMP/ruby_http.rb" "$URL" "$n" "$conc" >"$TMP/out" 2>"$TMP/err" &
        RUN_PID=$!
        wait "$RUN_PID" || rc=$?
        LINE=$(grep '^{' "$TMP/out" | tail -1 || true)
        ;;
    esac
    RUN_PID=""
    s1=$(srv_cpu)
    if [ -z "$LINE" ] || [ "$rc" != 0 ]; then
        echo "http_client.sh: $impl c=$conc failed (rc=$rc):" >&2
        tail -5 "$TMP/err" >&2
        LINE=${LINE:-"{\"impl\":\"$impl\",\"concurrency\":$conc,\"failed\":1}"}
    fi
    LINE="${LINE%\}},\"srv_cpu_s\":$(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.2f", b - a}'),\"rc\":$rc}"
    sleep 1 # let the server see the closed connections before the next scenario
}

declare -A RATE RSS INFL CPUREQ SRVREQ CPUPCT SRVPCT OKS
for run in $(seq 1 "$RUNS"); do
    for sc in "${SCENARIOS[@]}"; do
        IFS='|' read -r impl conc n <<<"$sc"
        key="$impl|$conc"
        echo "run $run/$RUNS: $impl c=$conc ..." >&2
        run_one "$impl" "$conc" "$n"
        echo "  $LINE" >&2
        printf 'run %s %s c=%s: %s\n' "$run" "$impl" "$conc" "$LINE" >>"$TMP/raw.txt"
        good=1
        [ "$(jf rc "$LINE")" = 0 ] || good=0
        [ "$(jf errors "$LINE")" = 0 ] || good=0
        req=$(jf requests "$LINE")
        [ -n "$req" ] && [ "$req" != 0 ] || good=0
        if [ "$impl" = tierone ] && [ "$(jf loop_close "$LINE")" != 0 ]; then good=0; fi
        if [ "$good" = 1 ]; then
            secs=$(jf seconds "$LINE")
            RATE[$key]="${RATE[$key]:-} $(jf req_s "$LINE")"
            RSS[$key]="${RSS[$key]:-} $(jf hwm_kb "$LINE")"
            INFL[$key]="${INFL[$key]:-} $(jf rss_inflight_kb "$LINE")"
            CPUREQ[$key]="${CPUREQ[$key]:-} $(awk -v c="$(jf cpu_s "$LINE")" -v n="$req" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
            SRVREQ[$key]="${SRVREQ[$key]:-} $(awk -v c="$(jf srv_cpu_s "$LINE")" -v n="$req" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
            CPUPCT[$key]="${CPUPCT[$key]:-} $(awk -v c="$(jf cpu_s "$LINE")" -v s="$secs" 'BEGIN {printf "%.0f", 100 * c / s}')"
            SRVPCT[$key]="${SRVPCT[$key]:-} $(awk -v c="$(jf srv_cpu_s "$LINE")" -v s="$secs" 'BEGIN {printf "%.0f", 100 * c / s}')"
            OKS[$key]=$((${OKS[$key]:-0} + 1))
        fi
    done
done

# ---- report ---------------------------------------------------------------------------------
say ""
say "Medians of $RUNS runs (tierone/Ruby: N requests, req/s = N / (first sent .. last answered);"
say "wrk: ${WRK_SECONDS} s runs, its own Requests/sec). RSS in MB; CPU = user+system of the client"
say "process, us per request and % of one core over the run; srv = bench_slow_http's CPU."
fmt='%-8s %6s %9s %9s %9s %8s %8s %8s %8s %5s\n'
# shellcheck disable=SC2059
say "$(printf "$fmt" client c req/s peakRSS RSS@c cpu_us cpu_% srv_us srv_% ok)"
declare -A M_RATE M_RSS M_INFL
for sc in "${SCENARIOS[@]}"; do
    IFS='|' read -r impl conc n <<<"$sc"
    key="$impl|$conc"
    if [ -z "${OKS[$key]:-}" ]; then
        M_RATE[$key]=nan M_RSS[$key]=nan M_INFL[$key]=nan
        # shellcheck disable=SC2059
        say "$(printf "$fmt" "$impl" "$conc" failed - - - - - - "0/$RUNS")"
        continue
    fi
    # shellcheck disable=SC2086
    {
        M_RATE[$key]=$(median ${RATE[$key]})
        M_RSS[$key]=$(median ${RSS[$key]})
        M_INFL[$key]=$(median ${INFL[$key]})
        cpu=$(median ${CPUREQ[$key]})
        srv=$(median ${SRVREQ[$key]})
        cpct=$(median ${CPUPCT[$key]})
        spct=$(median ${SRVPCT[$key]})
    }
    infl=-
    if awk -v x="${M_INFL[$key]}" 'BEGIN {exit !(x > 0)}'; then
        infl=$(awk -v x="${M_INFL[$key]}" 'BEGIN {printf "%.1f", x / 1024}')
    fi
    # shellcheck disable=SC2059
    say "$(printf "$fmt" "$impl" "$conc" "${M_RATE[$key]}" \
        "$(awk -v x="${M_RSS[$key]}" 'BEGIN {printf "%.1f", x / 1024}')" "$infl" "$cpu" "$cpct" \
        "$srv" "$spct" "${OKS[$key]}/$RUNS")"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "nan" || b == "nan" || b == 0) print "nan"; else printf "%.2f", a / b}'; }
say ""
say "Ratios (tierone / competitor; rate above 1 = tierone faster, RSS below 1 = tierone smaller):"
say "  c=10000 vs wrk c=10000:   rate $(ratio "${M_RATE[tierone|10000]}" "${M_RATE[wrk|10000]}"), peak RSS $(ratio "${M_RSS[tierone|10000]}" "${M_RSS[wrk|10000]}")"
say "  c=5000  vs wrk c=5000:    rate $(ratio "${M_RATE[tierone|5000]}" "${M_RATE[wrk|5000]}"), peak RSS $(ratio "${M_RSS[tierone|5000]}" "${M_RSS[wrk|5000]}")"
say "  c=$RUBY_THREADS  vs Ruby $RUBY_THREADS threads: rate $(ratio "${M_RATE[tierone|$RUBY_THREADS]}" "${M_RATE[ruby|$RUBY_THREADS]}"), peak RSS $(ratio "${M_RSS[tierone|$RUBY_THREADS]}" "${M_RSS[ruby|$RUBY_THREADS]}")"
say "  c=10000 vs Ruby $RUBY_THREADS threads: rate $(ratio "${M_RATE[tierone|10000]}" "${M_RATE[ruby|$RUBY_THREADS]}"), peak RSS $(ratio "${M_RSS[tierone|10000]}" "${M_RSS[ruby|$RUBY_THREADS]}")"

verdict() { if awk "BEGIN {exit !($1)}"; then echo met; else echo NOT met; fi; }
r10=${M_RATE[tierone|10000]}
m5=${M_RSS[tierone|5000]}
say ""
say "Targets (issue 4): c=10000 >= 15,000 req/s: $(verdict "\"$r10\" != \"nan\" && $r10 >= 15000") ($r10);" \
    "peak RSS at 5,000 in flight <= 64 MB: $(verdict "\"$m5\" != \"nan\" && $m5 <= 65536") ($(awk -v x="$m5" 'BEGIN {printf "%.1f", x / 1024}') MB);" \
    "uv_loop_close() == 0 in every tierone run: $(if grep 'tierone' "$TMP/raw.txt" | grep -qv '"loop_close":0'; then echo NOT met; else echo met; fi)"
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
say ""
say "Raw runs:"
while IFS= read -r l; do say "  $l"; done <"$TMP/raw.txt"
kill "$SRV_PID" 2>/dev/null || true
wait "$SRV_PID" 2>/dev/null || true
SRV_PID=""
say "$(cat "$TMP/srv.err")"
if [ -n "$OUT" ]; then
    cp "$REPORT" "$OUT"
    echo "report written to $OUT" >&2
fi
