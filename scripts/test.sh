#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run from traps and step() look unreachable to shellcheck
# test.sh: every tierone test, the same way for a developer and for CI (.ci/run calls it).
#
#   sudo bash scripts/test.sh            # deps, build, format-check, suite, then suite under ASan+UBSan
#   bash scripts/test.sh --quick         # skip the sanitizer pass
#   bash scripts/test.sh -R ruby_        # only tests whose ctest name matches (both passes)
#   bash scripts/test.sh --services-only -- ctest --test-dir build-mine -R redis
#                                        # start Redis+PostgreSQL, run one command against them
#
# Steps: install missing Debian packages (scripts/lib/deps.sh) -> configure and build
# (RelWithDebInfo, -Werror) in build/ -> format-check -> start a throwaway redis-server and
# PostgreSQL cluster on free loopback ports (scripts/lib/services.sh) -> ctest -> reset
# their state -> configure and build with -DTIERONE_ASAN=ON -DTIERONE_UBSAN=ON (Debug) in
# build-asan/ -> ctest again -> stop the services -> summary. Tests run one at a time
# (ctest -j1) because they share one Redis and one database.
#
# The last line printed is "N passed, N failed": tests counted by ctest over both passes,
# plus one failure for each other step that failed (build, format-check, ...). The exit
# status is 0 only if every step passed.
#
# Environment: TIERONE_BUILD_DIR (default build), TIERONE_ASAN_BUILD_DIR (default
# build-asan), TIERONE_BUILD_JOBS (default 2), TIERONE_PG_BINDIR (default: newest
# /usr/lib/postgresql/N/bin).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh
# test_plans reads pg_stat_statements (buffers per call of the pipeline's statements)
export SERVICES_PG_PRELOAD=pg_stat_statements

BUILD_DIR=${TIERONE_BUILD_DIR:-build}
ASAN_BUILD_DIR=${TIERONE_ASAN_BUILD_DIR:-build-asan}
JOBS=${TIERONE_BUILD_JOBS:-2}
QUICK=0
REGEX=""
SERVICES_ONLY=0
SERVICES_CMD=()

usage() {
  sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    -R)
      [ $# -ge 2 ] || { echo "test.sh: -R needs a regex" >&2; exit 2; }
      REGEX=$2
      shift
      ;;
    -R?*) REGEX=${1#-R} ;;
    --services-only)
      SERVICES_ONLY=1
      if [ "${2:-}" = "--" ]; then
        shift 2
        SERVICES_CMD=("$@")
        break
      fi
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---------------------------------------------------------------------------------------
# Step bookkeeping and the closing summary.

STEP_NAMES=()
STEP_RESULTS=()
STEP_NOTES=()
STEP_SECONDS=()
TESTS_PASSED=0
TESTS_FAILED=0
STEPS_FAILED=0
START=$SECONDS

# record NAME RESULT(ok|FAILED|skipped) SECONDS NOTE
record() {
  STEP_NAMES+=("$1")
  STEP_RESULTS+=("$2")
  STEP_SECONDS+=("$3")
  STEP_NOTES+=("${4:-}")
}

banner() { printf '\n==> %s\n' "$*"; }

# step NAME CMD...: runs CMD (stdin closed), records the result, returns its status.
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  banner "$name: $*"
  "$@" </dev/null || rc=$?
  if [ "$rc" -eq 0 ]; then
    record "$name" ok $((SECONDS - t0))
  else
    record "$name" FAILED $((SECONDS - t0)) "exit status $rc"
    STEPS_FAILED=$((STEPS_FAILED + 1))
  fi
  return "$rc"
}

summary() {
  local i line failed_names=() total=$((SECONDS - START))
  printf '\n==================== tierone test summary ====================\n'
  for i in "${!STEP_NAMES[@]}"; do
    line=$(printf '  %-20s %-8s %5ss  %s' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}" \
      "${STEP_SECONDS[$i]}" "${STEP_NOTES[$i]}")
    printf '%s\n' "${line%"${line##*[! ]}"}"
    if [ "${STEP_RESULTS[$i]}" = FAILED ]; then
      failed_names+=("${STEP_NAMES[$i]}")
    fi
  done
  if [ "${#failed_names[@]}" -eq 0 ] && [ "$1" -eq 0 ]; then
    printf 'result: OK in %dm%02ds\n' $((total / 60)) $((total % 60))
  else
    printf 'result: FAILED (%s) in %dm%02ds\n' "${failed_names[*]:-exit status $1}" \
      $((total / 60)) $((total % 60))
  fi
  printf '%d passed, %d failed\n' "$TESTS_PASSED" $((TESTS_FAILED + STEPS_FAILED))
}

on_exit() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  services_stop
  if [ "$SERVICES_ONLY" -eq 0 ]; then
    # A step that did not finish (error outside step(), or a signal) still counts as failed.
    if [ "$rc" -ne 0 ] && [ "$STEPS_FAILED" -eq 0 ] && [ "$TESTS_FAILED" -eq 0 ]; then
      record "aborted" FAILED 0 "exit status $rc"
      STEPS_FAILED=$((STEPS_FAILED + 1))
    fi
    summary "$rc"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'echo "test.sh: interrupted" >&2; exit 130' INT
trap 'echo "test.sh: terminated" >&2; exit 143' TERM

# ---------------------------------------------------------------------------------------
# Build and test helpers.

# configure DIR BUILD_TYPE SANITIZERS(ON|OFF)
configure() {
  local dir=$1 type=$2 san=$3 home
  # A build dir configured from another checkout confuses CMake: start it over.
  if [ -f "$dir/CMakeCache.txt" ]; then
    home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$dir/CMakeCache.txt")
    if [ "$home" != "$ROOT" ]; then
      echo "test.sh: $dir was configured for $home; recreating it"
      rm -rf "$dir"
    fi
  fi
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE="$type" \
    -DTIERONE_ASAN="$san" -DTIERONE_UBSAN="$san" -DTIERONE_TESTS=ON
}

build() { cmake --build "$1" -j "$JOBS"; }

# run_ctest NAME DIR [ENV=VALUE...]: runs the suite in DIR, adds to the test counts.
run_ctest() {
  local name=$1 dir=$2 t0=$SECONDS rc=0 log line total failed note
  shift 2
  local -a args=(--test-dir "$dir" --output-on-failure --no-tests=error -j1)
  if [ -n "$REGEX" ]; then
    args+=(-R "$REGEX")
  fi
  log="$dir/ctest-summary.log"
  banner "$name: $* ctest ${args[*]}"
  env "$@" ctest "${args[@]}" </dev/null 2>&1 | tee "$log" || rc=$?
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
  if [ -n "$line" ]; then
    failed=$(sed -E 's/.* ([0-9]+) tests? failed out of.*/\1/' <<<"$line")
    total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
    TESTS_PASSED=$((TESTS_PASSED + total - failed))
    TESTS_FAILED=$((TESTS_FAILED + failed))
    note="$((total - failed)) passed, $failed failed"
    if [ "$failed" -gt 0 ]; then
      note+=": $(sed -n '/tests FAILED:/,$p' "$log" | sed -n -E 's/^[[:space:]]*[0-9]+ - ([^ ]+).*/\1/p' |
        paste -s -d ' ')"
    fi
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
      STEPS_FAILED=$((STEPS_FAILED + 1)) # ctest failed for another reason
    fi
  else
    note="no test summary from ctest (no tests found or ctest crashed)"
    if [ "$rc" -eq 0 ]; then rc=1; fi
    STEPS_FAILED=$((STEPS_FAILED + 1))
  fi
  if [ "$rc" -eq 0 ]; then
    record "$name" ok $((SECONDS - t0)) "$note"
  else
    record "$name" FAILED $((SECONDS - t0)) "$note"
  fi
  return "$rc"
}

# ---------------------------------------------------------------------------------------
# --services-only: Redis+PostgreSQL around one command (or a self-check).

if [ "$SERVICES_ONLY" -eq 1 ]; then
  services_start
  if [ "${#SERVICES_CMD[@]}" -eq 0 ]; then
    env | grep '^TIERONE_TEST_' | sort
    redis-cli -h 127.0.0.1 -p "$TIERONE_TEST_REDIS_PORT" ping
    "$TIERONE_TEST_PG_BINDIR/psql" -X -A -t -c 'SELECT current_user' "$TIERONE_TEST_DATABASE_URL"
    exit 0
  fi
  rc=0
  "${SERVICES_CMD[@]}" || rc=$?
  exit "$rc"
fi

# ---------------------------------------------------------------------------------------
# The run.

step deps deps_install
step helm-tools bash scripts/lib/helm_tools.sh
step configure configure "$BUILD_DIR" RelWithDebInfo OFF
step build build "$BUILD_DIR"
step format-check cmake --build "$BUILD_DIR" --target format-check || true
step services services_start

FAILED_ANY=0
run_ctest ctest "$BUILD_DIR" || FAILED_ANY=1

if [ "$QUICK" -eq 1 ]; then
  record "sanitizer pass" skipped 0 "--quick"
else
  step "services-reset" services_reset
  if step "configure (asan)" configure "$ASAN_BUILD_DIR" Debug ON &&
    step "build (asan)" build "$ASAN_BUILD_DIR"; then
    run_ctest "ctest (asan+ubsan)" "$ASAN_BUILD_DIR" \
      ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 || FAILED_ANY=1
  else
    FAILED_ANY=1
  fi
  # Short libFuzzer runs over the ingest request path (parser, headers, signature, JSON
  # sniff) and over the worker's reading of a webhook; the long runs are reported in the
  # issues' closing notes.
  step "fuzz (ingest, 20 s)" bash fuzz/run.sh 20 || FAILED_ANY=1
  step "fuzz (chatwoot webhook, 10 s)" bash fuzz/run.sh 10 fuzz_chatwoot_webhook || FAILED_ANY=1
fi

banner "stopping services"
services_stop
if [ "$FAILED_ANY" -ne 0 ] || [ "$STEPS_FAILED" -ne 0 ]; then
  exit 1
fi
exit 0
