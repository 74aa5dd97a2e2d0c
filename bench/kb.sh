#!/usr/bin/env bash
# kb.sh: the knowledge base's ingest throughput and search latency, each beside a
# database-only floor in the same run: psql \copy of the very same chunk rows (ingest),
# and pgbench running the very same search statement (search).
#
#   bash bench/kb.sh
#
# Corpus: the Node.js API docs in Markdown that Debian ships (/usr/share/doc/nodejs/api/*.md,
# package nodejs-doc / nodejs; 64 files, 3.5 MB), copied KB_INGEST_COPIES times (default
# 2, so >= 5 MB) into separate directories, so every copy is its own set of sources.
# Set KB_CORPUS to another directory of Markdown to use that instead.
#
# 1. Builds Release in $TIERONE_BENCH_BUILD_DIR (default build-release): tierone and
#    bench_kb_search. Starts a throwaway PostgreSQL (scripts/lib/services.sh: loopback,
#    fsync=off, synchronous_commit=off, the same for both sides).
# 2. Ingest, BENCH_RUNS times (default 3), each into a fresh database after `tierone
#    migrate`: `tierone kb ingest CORPUS` (parse, chunk, store: its own summary line
#    gives documents/s, chunks/s, MB/s). Floor: the chunk rows that run stored, exported
#    once, then `\copy` into an empty table with the same columns, generated tsvector and
#    indexes (CREATE TABLE ... (LIKE kb_chunks INCLUDING ALL)); MB/s of the floor counts
#    the same corpus bytes over the \copy time. Ratio = tierone MB/s / \copy MB/s.
# 3. Search: one database with the corpus ingested KB_SEARCH_COPIES times (default: as
#    many as needed for >= 50,000 chunks, hard-linked copies), 1,000 questions made from
#    the corpus headings (fixed seed). Per run: bench_kb_search runs the 1,000 questions
#    one after the other through kb_search (pool of one connection; a lookup of the
#    knowledge base plus the full-text statement), and pgbench (-c 1, -M simple: the parameters are literals in the script) runs
#    1,000 transactions over the first 100 of them (pgbench takes at most 128 scripts),
#    each script the statement kb_search sends with its parameters written in. p50/p99
#    from every transaction's latency (pgbench -l). Ratio = tierone / pgbench.
# 4. Prints the medians, the targets (search p99 <= 20 ms; ingest >= 2 MB/s) as met /
#    MISSED, and every run's raw line.
#
# Environment: BENCH_RUNS (3), KB_CORPUS, KB_INGEST_COPIES (2), KB_SEARCH_COPIES (auto),
# TIERONE_BENCH_BUILD_DIR, TIERONE_KB_CMD (a `tierone` to run instead of the build's),
# TIERONE_BENCH_KEEP (keep the temp dir). Needs PostgreSQL server binaries with pgbench
# (Debian postgresql, postgresql-client), cmake, a C compiler.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${TIERONE_BENCH_BUILD_DIR:-$ROOT/build-release}
RUNS=${BENCH_RUNS:-3}
CORPUS=${KB_CORPUS:-/usr/share/doc/nodejs/api}
INGEST_COPIES=${KB_INGEST_COPIES:-2}
SEARCH_COPIES=${KB_SEARCH_COPIES:-}
MIN_CHUNKS=50000
WORK=$(mktemp -d /tmp/tierone-kb-bench.XXXXXX)
chmod 0755 "$WORK"

say() { printf '%s\n' "$*"; }
die() {
  say "kb.sh: $*" >&2
  exit 1
}

# shellcheck source=scripts/lib/services.sh disable=SC1091
source "$ROOT/scripts/lib/services.sh"

cleanup() {
  set +e
  services_stop
  if [ -n "${TIERONE_BENCH_KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

# ---- build, database ---------------------------------------------------------------------

ls "$CORPUS"/*.md >/dev/null 2>&1 || die "no Markdown in $CORPUS (apt-get install nodejs-doc, or set KB_CORPUS)"
say "building Release in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTIERONE_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j2 --target tierone bench_kb_search >/dev/null
TIERONE=${TIERONE_KB_CMD:-$BUILD/tierone}
services_start_postgres >/dev/null 2>&1 || die "cannot start PostgreSQL"
PGBIN=$TIERONE_TEST_PG_BINDIR
BASE_URL=$TIERONE_TEST_DATABASE_URL
psql_() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
url_of() { printf '%s/%s\n' "${BASE_URL%/*}" "$1"; }
new_db() {
  psql_ "$BASE_URL" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null 2>&1
  "$BUILD/tierone" migrate --database-url "$(url_of "$1")" >/dev/null
}

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
RAM=$(awk '/MemTotal/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo)
say "machine: $(nproc) CPUs, $CPU, $RAM, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
say "PostgreSQL: $("$PGBIN/postgres" --version); pgbench: $("$PGBIN/pgbench" --version)"

# ---- corpus ------------------------------------------------------------------------------

mkdir -p "$WORK/ingest"
for ((i = 1; i <= INGEST_COPIES; i++)); do
  mkdir -p "$WORK/ingest/copy$i"
  cp "$CORPUS"/*.md "$WORK/ingest/copy$i/"
done
BYTES=$(cat "$WORK"/ingest/copy*/*.md | wc -c)
DOCS=$(find "$WORK/ingest" -name '*.md' | wc -l)
MB=$(awk -v b="$BYTES" 'BEGIN { printf "%.2f", b / 1e6 }')
say "corpus: $CORPUS x $INGEST_COPIES = $DOCS documents, $MB MB"
[ "$BYTES" -ge 5000000 ] || die "corpus under 5 MB: raise KB_INGEST_COPIES"

# ---- ingest ------------------------------------------------------------------------------

say ""
say "== ingest (tierone kb ingest vs psql \\copy of the same chunk rows), $RUNS runs"
T_MBS=() T_DOCS=() T_CHUNKS=() C_MBS=() C_ROWS=() RAW=()
for ((r = 1; r <= RUNS; r++)); do
  db=kbbench_ingest_$r
  new_db "$db"
  url=$(url_of "$db")
  line=$("$TIERONE" kb ingest "$WORK/ingest" --database-url "$url" 2>"$WORK/ingest.err" | tail -n 2 | grep '^kb ingest: [0-9]') ||
    die "ingest failed: $(tail -n 5 "$WORK/ingest.err")"
  grep -q ' 0 failed' <<<"$line" || die "documents failed: $line"
  docs_s=$(sed -E 's/.*\(([0-9.]+) documents\/s.*/\1/' <<<"$line")
  chunks_s=$(sed -E 's/.* ([0-9.]+) chunks\/s.*/\1/' <<<"$line")
  mb_s=$(sed -E 's/.* ([0-9.]+) MB\/s.*/\1/' <<<"$line")
  chunks=$(psql_ "$url" -At -c "SELECT count(*) FROM kb_chunks")
  [ -f "$WORK/chunks.tsv" ] || psql_ "$url" -c "\\copy (SELECT document_id, kb_id, ordinal, heading_path, content, ts_config FROM kb_chunks) TO '$WORK/chunks.tsv'"
  psql_ "$url" -c "CREATE TABLE copy_chunks (LIKE kb_chunks INCLUDING ALL)" >/dev/null
  t0=$(date +%s%N)
  psql_ "$url" -c "\\copy copy_chunks (document_id, kb_id, ordinal, heading_path, content, ts_config) FROM '$WORK/chunks.tsv'"
  t1=$(date +%s%N)
  copy_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  copy_mbs=$(awk -v m="$MB" -v s="$copy_s" 'BEGIN { printf "%.2f", m / s }')
  copy_rows=$(awk -v n="$chunks" -v s="$copy_s" 'BEGIN { printf "%.0f", n / s }')
  T_MBS+=("$mb_s") T_DOCS+=("$docs_s") T_CHUNKS+=("$chunks_s") C_MBS+=("$copy_mbs") C_ROWS+=("$copy_rows")
  RAW+=("ingest run $r: $line | \\copy $chunks rows in $copy_s s ($copy_rows rows/s, $copy_mbs MB/s)")
  say "  run $r: tierone $mb_s MB/s ($docs_s documents/s, $chunks_s chunks/s); \\copy $copy_mbs MB/s ($copy_rows rows/s)"
  psql_ "$BASE_URL" -c "DROP DATABASE $db" >/dev/null
done
I_MBS=$(printf '%s\n' "${T_MBS[@]}" | median)
I_DOCS=$(printf '%s\n' "${T_DOCS[@]}" | median)
I_CHUNKS=$(printf '%s\n' "${T_CHUNKS[@]}" | median)
I_CMBS=$(printf '%s\n' "${C_MBS[@]}" | median)
I_CROWS=$(printf '%s\n' "${C_ROWS[@]}" | median)
CHUNKS_PER_COPY=$((chunks / INGEST_COPIES))

# ---- search ------------------------------------------------------------------------------

if [ -z "$SEARCH_COPIES" ]; then
  SEARCH_COPIES=$(((MIN_CHUNKS + CHUNKS_PER_COPY - 1) / CHUNKS_PER_COPY))
fi
say ""
say "== search (1,000 questions, k=5; tierone kb_search vs pgbench of the same statement), $RUNS runs"
mkdir -p "$WORK/search"
for ((i = 1; i <= SEARCH_COPIES; i++)); do
  mkdir -p "$WORK/search/copy$i"
  cp -l "$CORPUS"/*.md "$WORK/search/copy$i/" 2>/dev/null || cp "$CORPUS"/*.md "$WORK/search/copy$i/"
done
new_db kbbench_search
SURL=$(url_of kbbench_search)
"$TIERONE" kb ingest "$WORK/search" --kb bench --database-url "$SURL" >/dev/null 2>"$WORK/search.err" ||
  die "search corpus ingest failed: $(tail -n 5 "$WORK/search.err")"
NCHUNKS=$(psql_ "$SURL" -At -c "SELECT count(*) FROM kb_chunks")
say "  knowledge base: $SEARCH_COPIES copies, $NCHUNKS chunks"
[ "$NCHUNKS" -ge "$MIN_CHUNKS" ] || die "only $NCHUNKS chunks: raise KB_SEARCH_COPIES"

# Questions: headings of the corpus, markup stripped, deduplicated, a fixed shuffle, as
# three kinds of question.
cat "$CORPUS"/*.md | grep -E '^#{2,4} ' | sed -E 's/^#+ //; s/[][`()<>{},.:;*"!?=|\\]/ /g; s/  +/ /g; s/^ //; s/ $//' |
  awk 'length($0) > 3 && !seen[$0]++' |
  awk 'BEGIN { srand(42) } { printf "%.8f\t%s\n", rand(), $0 }' | sort -k1,1 | cut -f2- | awk 'NR <= 1000' |
  awk '{ k = NR % 3; if (k == 0) print "how do I use " $0; else if (k == 1) print $0; else print "what does " $0 " do" }' \
    >"$WORK/questions.txt"
NQ=$(wc -l <"$WORK/questions.txt")
[ "$NQ" -ge 1000 ] || die "only $NQ questions"
mkdir -p "$WORK/pgb"
"$BUILD/bench_kb_search" pgbench "$SURL" bench "$WORK/questions.txt" 100 "$WORK/pgb"
PGB_ARGS=()
for ((i = 0; i < 100; i++)); do PGB_ARGS+=(-f "$WORK/pgb/q$i.sql@1"); done

S_P50=() S_P99=() P_P50=() P_P99=()
for ((r = 1; r <= RUNS; r++)); do
  line=$("$BUILD/bench_kb_search" run "$SURL" bench "$WORK/questions.txt")
  p50=$(awk '{ print $4 }' <<<"$line")
  p99=$(awk '{ print $6 }' <<<"$line")
  rm -f "$WORK"/pgblog*
  (cd "$WORK" && "$PGBIN/pgbench" -n -M simple -c 1 -t 1000 -l --log-prefix=pgblog "${PGB_ARGS[@]}" "$SURL" >"$WORK/pgbench.out" 2>&1) ||
    die "pgbench failed: $(tail -n 5 "$WORK/pgbench.out")"
  read -r pp50 pp99 < <(cat "$WORK"/pgblog* | awk '{ print $3 }' | sort -n |
    awk '{ v[NR] = $1 } END { printf "%.3f %.3f\n", v[int((NR + 1) / 2)] / 1000, v[int((NR * 99 + 99) / 100)] / 1000 }')
  S_P50+=("$p50") S_P99+=("$p99") P_P50+=("$pp50") P_P99+=("$pp99")
  RAW+=("search run $r: tierone $line | pgbench p50_ms $pp50 p99_ms $pp99 ($(grep -E '^tps' "$WORK/pgbench.out" | head -n 1))")
  say "  run $r: tierone p50 $p50 ms p99 $p99 ms; pgbench p50 $pp50 ms p99 $pp99 ms"
done
M_P50=$(printf '%s\n' "${S_P50[@]}" | median)
M_P99=$(printf '%s\n' "${S_P99[@]}" | median)
M_PP50=$(printf '%s\n' "${P_P50[@]}" | median)
M_PP99=$(printf '%s\n' "${P_P99[@]}" | median)

# ---- report ------------------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
met() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == "le" ? v <= t : v >= t); print (ok ? "met" : "MISSED") }'; }
say ""
say "== medians of $RUNS runs"
say "ingest ($DOCS documents, $MB MB, $chunks chunks):"
say "  tierone kb ingest   $I_MBS MB/s   $I_DOCS documents/s   $I_CHUNKS chunks/s"
say "  psql \\copy (floor)  $I_CMBS MB/s   $I_CROWS rows/s"
say "  ratio tierone / \\copy: $(ratio "$I_MBS" "$I_CMBS")"
say "search ($NCHUNKS chunks, 1,000 questions, k=5):"
say "  tierone kb_search   p50 $M_P50 ms   p99 $M_P99 ms"
say "  pgbench (floor)     p50 $M_PP50 ms   p99 $M_PP99 ms"
say "  ratio tierone / pgbench: p50 $(ratio "$M_P50" "$M_PP50"), p99 $(ratio "$M_P99" "$M_PP99")"
say "targets: search p99 <= 20 ms: $(met "$M_P99" 20 le); ingest >= 2 MB/s: $(met "$I_MBS" 2 ge)"
say ""
say "raw:"
printf '  %s\n' "${RAW[@]}"
