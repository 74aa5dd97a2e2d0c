#!/usr/bin/env bash
# smoke-test.sh: builds the image and proves it runs the way Kubernetes will run it.
#
#   sudo bash docker/smoke-test.sh            # about 3-5 minutes the first time
#
# 1. the base image (docker/make-base.sh: debootstrap + import, cached), then the image
#    from docker/Dockerfile, timed, and its size;
# 2. a throwaway Redis and PostgreSQL on the host loopback (scripts/lib/services.sh); the
#    containers use host networking, so no bridge or iptables rules are created;
# 3. `tierone migrate` in a container applies the migrations shipped in the image;
# 4. tierone-ingest, then tierone-worker, each with --read-only, --tmpfs /tmp,
#    --cap-drop ALL and no-new-privileges: every process in the container runs as a
#    non-root uid (read from /proc/PID/status on the host), / is not writable and the
#    spool volume is, GET /healthz answers 200 from the host, `--healthcheck` inside the
#    container exits 0 and the image's HEALTHCHECK passes (the worker also registers
#    in Redis as a Sidekiq process);
# 5. `stop -t 30` (SIGTERM, SIGKILL after 30 s) stops each one with exit code 0 well
#    within the grace period, measured.
# Prints the timings and the image size, and removes its containers, volumes, servers and
# temp files (the base image, its cached rootfs and the engine's build cache stay, so a
# second run builds in seconds; KEEP_IMAGE=1 also keeps the image). Every container uses
# host networking, the build too: no bridge or iptables rules are left behind.
#
# Not part of the CI test command (too slow). Needs root, podman (preferred) or a running
# Docker engine (ENGINE=docker, DOCKER_HOST), redis-server, PostgreSQL and curl.
# The podman packages (Debian bookworm):
#   apt-get install -y --no-install-recommends podman buildah runc crun uidmap \
#     fuse-overlayfs slirp4netns iptables debootstrap
# podman needs two settings on this kind of machine (no CAP_SYS_RESOURCE, hybrid
# cgroups): lower default rlimits and the runc runtime; they go into a containers.conf of
# our own (CONTAINERS_CONF), nothing global is changed.
#
# Environment: ENGINE (podman|docker), IMAGE (default localhost/tierone:smoke), CONTEXT
# (a prepared build context instead of a copy of the repository's sources),
# BASE_IMAGE (default localhost/debian:bookworm-slim), KEEP_IMAGE=1, GRACE (default 30).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-localhost/tierone:smoke}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
GRACE=${GRACE:-30}
if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=docker; fi
fi
export ENGINE BASE_IMAGE

PASSED=0
FAILED=0
CONTAINERS=()
WORK=$(mktemp -d /tmp/tierone-smoke.XXXXXX)

say() { printf 'smoke: %s\n' "$*" >&2; }
ok() {
  PASSED=$((PASSED + 1))
  printf 'ok   %s\n' "$*"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL %s\n' "$*"
}
check() { # check DESCRIPTION CMD...: ok when CMD succeeds
  local what=$1
  shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}

case "$ENGINE" in
  podman)
    cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
EOF
    export CONTAINERS_CONF="$WORK/containers.conf"
    engine() { podman "$@"; }
    # --network host for RUN apt-get: no CNI bridge or iptables chains are created.
    BUILD_FLAGS=(--pull=never --format docker --network host)
    # No systemd here: no health timers; `podman healthcheck run` checks by hand.
    HEALTH_FLAGS=(--health-interval disable)
    ;;
  docker)
    DOCKER_BIN=docker
    [ -x /usr/bin/docker ] && DOCKER_BIN=/usr/bin/docker # 20.10: builds without buildx
    engine() { "$DOCKER_BIN" "$@"; }
    # Host network for RUN apt-get: works with a dockerd started with --bridge=none.
    BUILD_FLAGS=(--network host)
    # dockerd runs HEALTHCHECK itself: check every second instead of every 15 s.
    HEALTH_FLAGS=(--health-interval 1s --health-start-period 0s)
    ;;
  *)
    say "unknown ENGINE=$ENGINE"
    exit 2
    ;;
esac

# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

cleanup() {
  local c
  for c in "${CONTAINERS[@]}"; do
    engine rm -f -v "$c" >/dev/null 2>&1 || true
  done
  if [ "${KEEP_IMAGE:-0}" != 1 ]; then
    engine rmi -f "$IMAGE" >/dev/null 2>&1 || true
  fi
  services_stop
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# ---- 1. images ----
t0=$(now)
bash "$ROOT/docker/make-base.sh"
T_BASE=$(since "$t0")

# A clean build context: only what the Dockerfile copies (the repository holds build
# directories that would otherwise be sent to the engine).
# CONTEXT=dir builds from a prepared copy instead.
if [ -n "${CONTEXT:-}" ]; then
  cp -a "$CONTEXT" "$WORK/context"
else
  mkdir -p "$WORK/context"
  (cd "$ROOT" && cp -a CMakeLists.txt lib queues worker ingest cli migrations "$WORK/context/")
fi
t0=$(now)
if ! engine build "${BUILD_FLAGS[@]}" --build-arg BASE="$BASE_IMAGE" -f "$ROOT/docker/Dockerfile" \
  -t "$IMAGE" "$WORK/context" >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log"
  say "image build failed (log above)"
  exit 1
fi
T_BUILD=$(since "$t0")
SIZE_BYTES=$(engine image inspect --format '{{.Size}}' "$IMAGE")
SIZE_MB=$(awk -v b="$SIZE_BYTES" 'BEGIN { printf "%.1f", b / 1000000 }')
ok "image $IMAGE built in ${T_BUILD}s, ${SIZE_MB} MB"
check "image HEALTHCHECK kept" \
  test -n "$(engine image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -o tierone-worker)"
check "image user is numeric non-root (10001:10001)" \
  test "$(engine image inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001"

# ---- 2. services ----
services_start >/dev/null
REDIS_URL=$TIERONE_TEST_REDIS_URL
say "redis $REDIS_URL, postgres on port $TIERONE_TEST_PG_PORT"

# ---- helpers ----
RUN_FLAGS=(--network host --read-only --tmpfs /tmp --cap-drop ALL
  --security-opt no-new-privileges)

# Every process of container $1 runs as a non-root uid: real, effective, saved and fs uid
# from /proc/PID/status on the host, for the container's init (tini) and its children.
all_non_root() {
  local pid p uids n=0
  pid=$(engine inspect --format '{{.State.Pid}}' "$1")
  [ -n "$pid" ] && [ "$pid" != 0 ] || return 1
  for p in $pid $(cat "/proc/$pid/task/$pid/children" 2>/dev/null); do
    uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$p/status")
    say "pid $p ($(tr -d '\0' <"/proc/$p/comm")) uids: $uids"
    for u in $uids; do [ "$u" != 0 ] || return 1; done
    n=$((n + 1))
  done
  [ "$n" -ge 2 ] # tini and the daemon
}

# Poll GET url until it answers 200 or 20 s pass.
wait_200() {
  local i
  for ((i = 0; i < 200; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# The engine's verdict from the container's HEALTHCHECK: podman runs it on demand (no
# systemd timers here), dockerd runs it itself and we wait for "healthy" (20 s at most).
healthy() {
  local i status
  if [ "$ENGINE" = podman ]; then
    podman healthcheck run "$1"
    return
  fi
  for ((i = 0; i < 200; i++)); do
    status=$(engine inspect --format '{{.State.Health.Status}}' "$1")
    [ "$status" = healthy ] && return 0
    sleep 0.1
  done
  say "health status: $status"
  return 1
}

# Start a detached container (engine run -d ARGS...); its chatter (podman's "unable to
# get systemd connection" for health timers) goes to a log, shown only on failure.
start() {
  if ! engine run -d "$@" >"$WORK/run.log" 2>&1; then
    sed 's/^/    /' "$WORK/run.log"
    say "cannot start container: engine run $*"
    exit 1
  fi
}

# Stop container $1 with the grace period; prints the seconds; ok when it exits with 0
# within the grace period.
stop_within_grace() {
  local c=$1 t0 secs code
  t0=$(now)
  engine stop -t "$GRACE" "$c" >/dev/null 2>"$WORK/stop.log"
  secs=$(since "$t0")
  code=$(engine inspect --format '{{.State.ExitCode}}' "$c")
  STOP_SECS=$secs
  if [ "$code" = 0 ] && awk -v s="$secs" -v g="$GRACE" 'BEGIN { exit !(s < g) }'; then
    ok "$2 stopped by SIGTERM in ${secs}s (grace ${GRACE}s), exit code $code"
  else
    fail "$2 stop: ${secs}s, exit code $code"
    engine logs --tail 20 "$c" 2>&1 | sed 's/^/    /'
  fi
}

# Port that nothing listens on (from services.sh).
port() { services_free_port; }

# ---- 3. migrate ----
if engine run --rm --network host -e TIERONE_DATABASE_URL="$TIERONE_TEST_DATABASE_URL" \
  --read-only --cap-drop ALL "$IMAGE" tierone migrate >"$WORK/migrate.log" 2>&1; then
  ok "tierone migrate applied the image's migrations"
else
  fail "tierone migrate"
  sed 's/^/    /' "$WORK/migrate.log"
fi
MIGS=("$ROOT"/migrations/*.sql)
NMIG=${#MIGS[@]}
applied() {
  local n
  n=$("$TIERONE_TEST_PG_BINDIR/psql" -X -At "$TIERONE_TEST_DATABASE_URL" \
    -c 'SELECT count(*) FROM schema_migrations' 2>/dev/null) || return 1
  say "schema_migrations: $n row(s), repository: $NMIG file(s)"
  [ "$n" = "$NMIG" ]
}
check "every migration recorded in schema_migrations" applied

# ---- 4+5. ingest ----
IN_PORT=$(port)
IN_ADMIN=$(port)
C=tierone-smoke-ingest-$$
CONTAINERS+=("$C")
start --name "$C" "${RUN_FLAGS[@]}" "${HEALTH_FLAGS[@]}" \
  --health-cmd '/usr/local/bin/tierone-ingest --healthcheck' \
  -e TIERONE_REDIS_URL="$REDIS_URL" -e TIERONE_LISTEN_HOST=127.0.0.1 \
  -e TIERONE_LISTEN_PORT="$IN_PORT" -e TIERONE_ADMIN_HOST=127.0.0.1 \
  -e TIERONE_ADMIN_PORT="$IN_ADMIN" -e TIERONE_WEBHOOK_SECRETS=smoke-test-secret-0123456789 \
  "$IMAGE" tierone-ingest
check "ingest /healthz answers 200 on the host (admin port $IN_ADMIN)" \
  wait_200 "http://127.0.0.1:$IN_ADMIN/healthz"
check "ingest webhook port $IN_PORT answers /healthz too" wait_200 "http://127.0.0.1:$IN_PORT/healthz"
check "ingest: every process runs as non-root" all_non_root "$C"
root_read_only() { ! engine exec "$1" touch /probe 2>/dev/null; }
check "ingest: root filesystem is read-only" root_read_only "$C"
check "ingest: spool volume is writable by the user" \
  engine exec "$C" touch /var/spool/tierone/probe
check "ingest: --healthcheck inside the container exits 0" \
  engine exec "$C" tierone-ingest --healthcheck
check "ingest: $ENGINE reports the container healthy (HEALTHCHECK overridden for ingest)" \
  healthy "$C"
stop_within_grace "$C" ingest
STOP_INGEST=$STOP_SECS

# ---- 4+5. worker (the image's default command) ----
W_ADMIN=$(port)
C=tierone-smoke-worker-$$
CONTAINERS+=("$C")
start --name "$C" "${RUN_FLAGS[@]}" "${HEALTH_FLAGS[@]}" \
  -e TIERONE_REDIS_URL="$REDIS_URL" -e TIERONE_ADMIN_HOST=127.0.0.1 \
  -e TIERONE_ADMIN_PORT="$W_ADMIN" -e TIERONE_SHUTDOWN_TIMEOUT=10s "$IMAGE"
check "worker /healthz answers 200 on the host (admin port $W_ADMIN)" \
  wait_200 "http://127.0.0.1:$W_ADMIN/healthz"
check "worker /readyz answers 200 (Redis reachable)" wait_200 "http://127.0.0.1:$W_ADMIN/readyz"
check "worker: every process runs as non-root" all_non_root "$C"
check "worker: --healthcheck inside the container exits 0" \
  engine exec "$C" tierone-worker --healthcheck
check "worker: $ENGINE reports the container healthy (the image's HEALTHCHECK)" healthy "$C"
registered() {
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$(redis-cli -u "$REDIS_URL" scard processes)" -ge 1 ] && return 0
    sleep 0.1
  done
  return 1
}
check "worker registered in Redis as a Sidekiq process" registered
stop_within_grace "$C" worker
STOP_WORKER=$STOP_SECS
check "worker unregistered from Redis on shutdown" \
  test "$(redis-cli -u "$REDIS_URL" scard processes)" = 0

# ---- summary ----
printf '\nengine %s | base image %ss | image build %ss | image %s MB | stop: ingest %ss, worker %ss\n' \
  "$ENGINE" "$T_BASE" "$T_BUILD" "$SIZE_MB" "$STOP_INGEST" "$STOP_WORKER"
printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
[ "$FAILED" -eq 0 ]
