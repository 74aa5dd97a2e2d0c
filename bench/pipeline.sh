#!/usr/bin/env bash
# pipeline.sh: the support pipeline end to end, tierone-worker against the same chain in
# Ruby Sidekiq (bench/ruby_pipeline.rb), in one run on this machine. See bench/README.md.
#
#   bash bench/pipeline.sh                 # 3 runs of every scenario, medians (~8 minutes)
#   BENCH_RUNS=5 bash bench/pipeline.sh
#   BENCH_FULL=1 bash bench/pipeline.sh    # also Sidekiq -c 2000 in flight (~5 more minutes
#                                          # a run: it stalls on its connection pool)
#
# 1. Builds Release (-DTIERONE_TESTS=OFF) in TIERONE_BENCH_BUILD_DIR (default build-bench).
# 2. Starts a throwaway Redis and PostgreSQL on loopback (scripts/lib/services.sh).
# 3. Per run, every scenario in turn (interleaved, so drift of the machine hits all alike),
#    each a fresh bench_pipeline process (bench/pipeline.c): the fake Chatwoot, LLM, Slack
#    and Linear, a fresh database with the test knowledge base, the real tierone-ingest,
#    and the worker under test. Every turn is a customer question in its own pending
#    conversation; it ends in one reply. Latency = the shim's 202 -> the reply's POST read
#    by the fake Chatwoot; debounce 0.
#      burst     2,000 turns posted as fast as one client can: turns/s, latencies
#      paced     1,000 turns at 200/s: latencies at a load both keep up with
#      inflight  2,000 turns, the model answers after 2 s: peak RSS, time to the last reply
# 4. Prints the medians, the CPU a turn cost each part of the machine (worker, PostgreSQL,
#    shim, Redis, the benchmark's own fakes and client), tierone/Sidekiq ratios, the
#    targets, and every raw line.
#
# Needs: cmake, a C compiler, redis-server, PostgreSQL, Ruby with Sidekiq 6.4.1 and ruby-pg
# (Debian ruby-sidekiq, ruby-pg; installed if missing when run as root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${TIERONE_BENCH_BUILD_DIR:-$ROOT/build-bench}
RUNS=${BENCH_RUNS:-3}
FULL=${BENCH_FULL:-0}
OUT=$(mktemp /tmp/tierone-bench-pipeline.XXXXXX)

say() { printf '%s\n' "$*" | tee -a "$OUT"; }
die() {
  printf 'pipeline.sh: %s\n' "$*" >&2
  exit 1
}

# shellcheck source=scripts/lib/services.sh disable=SC1091
source "$ROOT/scripts/lib/services.sh"
services_install_trap

if ! ruby -e 'require "sidekiq"; require "pg"' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || die "needs Ruby with sidekiq and pg (apt-get install ruby-sidekiq ruby-pg)"
  apt-get install -y -q --no-install-recommends ruby-sidekiq ruby-pg >/dev/null
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

say "tierone pipeline benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
say "versions: $(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /'), $(ruby -e 'require "sidekiq"; require "pg"; print "ruby #{RUBY_VERSION}, sidekiq #{Sidekiq::VERSION}, ruby-pg #{PG::VERSION}"')"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTIERONE_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j2 --target tierone tierone-worker tierone-ingest bench_pipeline >/dev/null
services_start >/dev/null 2>&1 || die "cannot start Redis and PostgreSQL"
export TIERONE_BIN_DIR=$BUILD TIERONE_SOURCE_DIR=$ROOT

# name|arguments of bench_pipeline
SCENARIOS=(
  "burst tierone c=1000 pool=8|burst --turns 2000 --concurrency 1000 --db-pool 8"
  "burst sidekiq c=25 pool=25|burst --turns 2000 --sidekiq --concurrency 25 --db-pool 25"
  "paced tierone c=1000 pool=8|paced --turns 1000 --rate 200 --concurrency 1000 --db-pool 8"
  "paced sidekiq c=25 pool=25|paced --turns 1000 --rate 200 --sidekiq --concurrency 25 --db-pool 25"
  "inflight tierone c=2500 pool=8|inflight --turns 2000 --concurrency 2500 --db-pool 8"
  "inflight sidekiq c=200 pool=100|inflight --turns 2000 --sidekiq --concurrency 200 --db-pool 100"
)
[ "$FULL" = 1 ] && SCENARIOS+=("inflight sidekiq c=2000 pool=150|inflight --turns 2000 --sidekiq --concurrency 2000 --db-pool 150")

declare -A RAW
for run in $(seq 1 "$RUNS"); do
  for s in "${SCENARIOS[@]}"; do
    name=${s%%|*}
    # shellcheck disable=SC2086 # the arguments are words
    line=$("$BUILD/bench_pipeline" ${s#*|} 2>"$OUT.err" | grep '^result' || true)
    [ -n "$line" ] || line="result failed=1 $(tail -n 3 "$OUT.err" | tr '\n' ' ')"
    RAW[$name]+="$line"$'\n'
    say "run $run  $name: ${line#result }"
  done
done

field() { grep -o " $1=[^ ]*" | cut -d= -f2; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "nan" }'; }
# The median of field $2 over scenario $1's complete runs (every turn one reply).
med() {
  printf '%s' "${RAW[$1]}" | awk '{
    t = o = d = ""
    for (i = 1; i <= NF; i++) {
      split($i, kv, "=")
      if (kv[1] == "turns") t = kv[2]
      if (kv[1] == "ok") o = kv[2]
      if (kv[1] == "dup") d = kv[2]
    }
    if (t != "" && t == o && d == "0") print
  }' | field "$2" | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }

say ""
say "medians over $RUNS runs (runs where every turn got exactly one reply):"
printf '%-34s %9s %9s %9s %10s %8s %8s %7s\n' scenario turns/s p50_ms p99_ms rss_MB cpu_s wall_s llm_open | tee -a "$OUT"
for s in "${SCENARIOS[@]}"; do
  n=${s%%|*}
  printf '%-34s %9s %9s %9s %10s %8s %8s %7s\n' "$n" "$(med "$n" turns_per_s)" "$(med "$n" p50_ms)" \
    "$(med "$n" p99_ms)" "$(awk -v k="$(med "$n" rss_kb)" 'BEGIN { printf "%.1f", k / 1024 }')" \
    "$(med "$n" cpu_s)" "$(med "$n" wall_s)" "$(med "$n" llm_open_max)" | tee -a "$OUT"
done

say ""
say "CPU per turn while the measured turns ran (ms; medians): where the machine goes"
printf '%-34s %8s %8s %8s %8s %8s %8s\n' scenario worker pg shim redis bench total | tee -a "$OUT"
for s in "${SCENARIOS[@]}"; do
  n=${s%%|*}
  turns=$(printf '%s' "${RAW[$n]}" | head -n 1 | field turns)
  row=""
  sum=0
  for part in worker pg shim redis bench; do
    v=$(med "$n" "run_${part}_s")
    row+=$(awk -v v="$v" -v t="$turns" 'BEGIN { if (t + 0 > 0 && v != "nan") printf " %8.3f", v * 1000 / t; else printf " %8s", "n/a" }')
    sum=$(awk -v a="$sum" -v v="$v" 'BEGIN { print a + (v == "nan" ? 0 : v) }')
  done
  printf '%-34s%s %8s\n' "$n" "$row" "$(awk -v v="$sum" -v t="$turns" 'BEGIN { if (t + 0 > 0) printf "%.3f", v * 1000 / t; else print "n/a" }')" | tee -a "$OUT"
done
say "  (pg: every postgres process; bench: bench_pipeline itself, i.e. the fake Chatwoot, LLM,"
say "  Slack and Linear and the client posting the webhooks; the parts' medians are taken"
say "  separately, so total is their sum, not one run's)"

say ""
BT=$(med "burst tierone c=1000 pool=8" turns_per_s)
BS=$(med "burst sidekiq c=25 pool=25" turns_per_s)
PT=$(med "paced tierone c=1000 pool=8" p50_ms)
PS=$(med "paced sidekiq c=25 pool=25" p50_ms)
IT=$(med "inflight tierone c=2500 pool=8" rss_kb)
IS=$(med "inflight sidekiq c=200 pool=100" rss_kb)
WT=$(med "inflight tierone c=2500 pool=8" wall_s)
WS=$(med "inflight sidekiq c=200 pool=100" wall_s)
say "ratios tierone/Sidekiq: burst turns/s $(ratio "$BT" "$BS")x; paced p50 $(ratio "$PT" "$PS")x (below 1: faster);"
say "  in flight: peak RSS $(ratio "$IT" "$IS")x, time to the last reply $(ratio "$WT" "$WS")x (below 1: better)"
met() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == "ge") ? v + 0 >= t : (v + 0 > 0 && v + 0 <= t); print ok ? "met" : "MISSED" }'; }
say "targets: burst >= 1000 turns/s: $BT ($(met "$BT" 1000 ge)); paced p50 <= 20 ms: $PT ($(met "$PT" 20 le));"
say "  2,000 in flight with a 2 s model, peak RSS <= 64 MB: $(awk -v k="$IT" 'BEGIN { printf "%.1f", k / 1024 }') MB ($(met "$IT" 65536 le))"
say "report: $OUT"
rm -f "$OUT.err"
