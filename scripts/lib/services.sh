# shellcheck shell=bash
# services.sh: a throwaway redis-server and PostgreSQL cluster for the tests.
#
# Both listen on free ports on 127.0.0.1 only, keep their data in one temp dir under /tmp,
# and are stopped by pid (never by name), so several runs can share a machine.
#
#   source scripts/lib/services.sh
#   services_install_trap      # stop everything on EXIT, INT and TERM
#   services_start             # redis + postgres; exports the variables below
#   ...                        # run tests
#   services_reset             # fresh state between passes: FLUSHALL, recreate database
#   services_stop              # idempotent; the trap calls it too
#
# Exports after services_start:
#   TIERONE_TEST_REDIS_URL     redis://127.0.0.1:PORT/0
#   TIERONE_TEST_REDIS_PORT    PORT
#   TIERONE_TEST_DATABASE_URL  postgresql://tierone:PASSWORD@127.0.0.1:PORT/tierone
#   TIERONE_TEST_PG_PORT       PORT
#   TIERONE_TEST_PG_BINDIR     /usr/lib/postgresql/N/bin (psql, pg_dump, ... of the server's version)
#   TIERONE_TEST_PG_SOCKET_DIR the Unix socket's directory (local connections are trusted)
#
# PostgreSQL refuses to run as root, so as root initdb/pg_ctl run as the `postgres` system
# user (created if missing) through runuser; as any other user they run as that user.
# The cluster's superuser is `postgres` (trust over the unix socket in the temp dir only);
# the role `tierone` (LOGIN CREATEDB, owner of database `tierone`) logs in over TCP with a
# password (scram-sha-256), as production does.
# SERVICES_PG_PRELOAD (e.g. pg_stat_statements): shared_preload_libraries for the cluster;
# with pg_stat_statements its view exists in every database created from template1
# (scripts/test.sh sets it for test_plans; the benchmarks leave it off).

SERVICES_DIR=""        # temp dir holding everything
SERVICES_REDIS_PID=""  # pid of redis-server (a child of this shell)
SERVICES_PG_DATA=""    # data dir of the running cluster, empty when none
SERVICES_PG_PID=""     # postmaster pid
SERVICES_PG_USER=""    # OS user that owns the cluster
SERVICES_PG_PASSWORD="tierone-test"

services_log() { printf 'services: %s\n' "$*" >&2; }

# Prints a port in 20000-32767 (below Linux's ephemeral range) that nothing listens on.
# Another process may still take it before we bind: the start functions retry on failure.
services_free_port() {
  local port i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + (RANDOM % 12768)))
    if command -v ss >/dev/null 2>&1; then
      if [ -n "$(ss -Htln "sport = :$port" 2>/dev/null)" ]; then
        continue
      fi
    fi
    # A connect that succeeds means something listens there (also catches 0.0.0.0).
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      continue
    fi
    printf '%s\n' "$port"
    return 0
  done
  services_log "no free port found"
  return 1
}

# Creates SERVICES_DIR once. World-traversable so the postgres user reaches its subdir.
services_tmpdir() {
  if [ -z "$SERVICES_DIR" ]; then
    SERVICES_DIR=$(mktemp -d /tmp/tierone-services.XXXXXX) || return 1
    chmod 0711 "$SERVICES_DIR"
  fi
}

# Waits until redis on port $1 answers PONG, the process $2 still alive, deadline $3 s.
services_wait_redis() {
  local port=$1 pid=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# Starts redis-server in the background on a free port. Exports TIERONE_TEST_REDIS_*.
services_start_redis() {
  local dir port attempt
  services_tmpdir || return 1
  dir="$SERVICES_DIR/redis"
  mkdir -p "$dir"
  for attempt in 1 2 3 4 5; do
    port=$(services_free_port) || return 1
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$dir" --daemonize no --logfile "$dir/redis.log" \
      </dev/null >>"$dir/redis.out" 2>&1 &
    SERVICES_REDIS_PID=$!
    if services_wait_redis "$port" "$SERVICES_REDIS_PID" 20; then
      export TIERONE_TEST_REDIS_PORT="$port"
      export TIERONE_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
      services_log "redis-server pid $SERVICES_REDIS_PID on 127.0.0.1:$port"
      return 0
    fi
    services_log "redis-server did not start on port $port (attempt $attempt); log tail:"
    tail -n 5 "$dir/redis.log" "$dir/redis.out" >&2 2>/dev/null || true
    services_stop_redis
  done
  return 1
}

services_stop_redis() {
  local pid=$SERVICES_REDIS_PID i
  [ -n "$pid" ] || return 0
  SERVICES_REDIS_PID=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do # 10 s
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
      services_log "redis-server $pid ignored TERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  unset TIERONE_TEST_REDIS_URL TIERONE_TEST_REDIS_PORT
}

# Prints the newest /usr/lib/postgresql/N/bin that has initdb (or $TIERONE_PG_BINDIR).
# Absolute paths on purpose: wrappers named pg_ctl/initdb may come first in PATH.
services_pg_bindir() {
  local dir candidate
  if [ -n "${TIERONE_PG_BINDIR:-}" ]; then
    printf '%s\n' "$TIERONE_PG_BINDIR"
    return 0
  fi
  dir=$(for candidate in /usr/lib/postgresql/*/bin; do
    if [ -x "$candidate/initdb" ]; then printf '%s\n' "$candidate"; fi
  done | sort -V | tail -n 1)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    services_log "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (package postgresql)"
    return 1
  fi
  printf '%s\n' "$dir"
}

# Runs "$@" as the cluster's owner.
services_as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$SERVICES_PG_USER" -- "$@"
  else
    "$@"
  fi
}

# Picks (and as root, creates if needed) the OS user that owns the cluster.
services_pg_user() {
  if [ "$(id -u)" -ne 0 ]; then
    SERVICES_PG_USER=$(id -un)
    return 0
  fi
  SERVICES_PG_USER=postgres
  if ! id -u postgres >/dev/null 2>&1; then
    services_log "creating system user postgres"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
      --shell /usr/sbin/nologin postgres || return 1
  fi
}

# Runs SQL $1 as the superuser over the cluster's unix socket, in database $2 (default postgres).
services_pg_sql() {
  services_as_pg "$TIERONE_TEST_PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
    -h "$SERVICES_DIR/pg/sock" -p "$TIERONE_TEST_PG_PORT" -U postgres -d "${2:-postgres}" -c "$1"
}

# initdb into $SERVICES_DIR/pg/data (once).
services_pg_initdb() {
  local pg=$SERVICES_DIR/pg pwfile
  rm -rf "$pg"
  mkdir -p "$pg/sock"
  pwfile="$pg/pwfile"
  printf '%s\n' "$SERVICES_PG_PASSWORD" >"$pwfile"
  chown -R "$SERVICES_PG_USER" "$pg" 2>/dev/null || true
  chmod 0700 "$pg"
  if ! services_as_pg "$TIERONE_TEST_PG_BINDIR/initdb" -D "$pg/data" -U postgres \
    --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C --no-sync >"$SERVICES_DIR/initdb.log" 2>&1; then
    services_log "initdb failed:"
    cat "$SERVICES_DIR/initdb.log" >&2
    return 1
  fi
  rm -f "$pwfile"
  # TCP clients on loopback only, with a password.
  services_as_pg sh -c "printf '%s\n' \
    'local all all trust' \
    'host all all 127.0.0.1/32 scram-sha-256' >'$pg/data/pg_hba.conf'"
}

# pg_ctl start on port $1; waits until ready. Returns 1 if the server did not come up.
services_pg_ctl_start() {
  local port=$1 pg=$SERVICES_DIR/pg rc=0
  SERVICES_PG_DATA="$pg/data" # set first: a half-started server is still stopped
  services_as_pg "$TIERONE_TEST_PG_BINDIR/pg_ctl" -D "$pg/data" -l "$pg/postgres.log" \
    -w -t 60 -s \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$pg/sock \
-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200\
${SERVICES_PG_PRELOAD:+ -c shared_preload_libraries=$SERVICES_PG_PRELOAD}" \
    start </dev/null >/dev/null 2>&1 || rc=1
  SERVICES_PG_PID=$(head -n 1 "$pg/data/postmaster.pid" 2>/dev/null || true)
  [ "$rc" -eq 0 ] || return 1
  local deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    if "$TIERONE_TEST_PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# Starts a PostgreSQL cluster on a free port. Exports TIERONE_TEST_DATABASE_URL and friends.
services_start_postgres() {
  local port attempt
  services_tmpdir || return 1
  TIERONE_TEST_PG_BINDIR=$(services_pg_bindir) || return 1
  export TIERONE_TEST_PG_BINDIR
  services_pg_user || return 1
  services_pg_initdb || return 1
  for attempt in 1 2 3 4 5; do
    port=$(services_free_port) || return 1
    if services_pg_ctl_start "$port"; then
      export TIERONE_TEST_PG_PORT="$port"
      services_pg_sql "CREATE ROLE tierone LOGIN CREATEDB PASSWORD '$SERVICES_PG_PASSWORD'" || return 1
      # The tests drop their databases WITH (FORCE), which must also end an autovacuum
      # worker that happens to be in one; that takes pg_signal_backend.
      services_pg_sql "GRANT pg_signal_backend TO tierone" || return 1
      if [[ ",${SERVICES_PG_PRELOAD:-}," == *,pg_stat_statements,* ]]; then
        # in template1, so every database a test creates has the view
        services_pg_sql "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" template1 || return 1
      fi
      services_pg_create_db || return 1
      export TIERONE_TEST_DATABASE_URL="postgresql://tierone:$SERVICES_PG_PASSWORD@127.0.0.1:$port/tierone"
      export TIERONE_TEST_PG_SOCKET_DIR="$SERVICES_DIR/pg/sock" # trust, for any role
      if ! "$TIERONE_TEST_PG_BINDIR/psql" -X -q -t -c 'SELECT 1' "$TIERONE_TEST_DATABASE_URL" >/dev/null; then
        services_log "cannot log in as tierone over TCP"
        return 1
      fi
      services_log "postgres pid $SERVICES_PG_PID on 127.0.0.1:$port (data $SERVICES_PG_DATA)"
      return 0
    fi
    services_log "postgres did not start on port $port (attempt $attempt); log tail:"
    tail -n 5 "$SERVICES_DIR/pg/postgres.log" >&2 || true
    services_stop_postgres
  done
  return 1
}

services_pg_create_db() {
  services_pg_sql "CREATE DATABASE tierone OWNER tierone"
}

services_stop_postgres() {
  local data=$SERVICES_PG_DATA pid=$SERVICES_PG_PID i
  [ -n "$data" ] || return 0
  SERVICES_PG_DATA=""
  SERVICES_PG_PID=""
  if [ -f "$data/postmaster.pid" ]; then
    if ! services_as_pg "$TIERONE_TEST_PG_BINDIR/pg_ctl" -D "$data" -m fast -w -t 30 -s stop \
      </dev/null >/dev/null 2>&1; then
      services_log "pg_ctl stop failed; killing postmaster $pid"
      if [ -n "$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  fi
  # Wait for the postmaster itself to be gone (pg_ctl -w normally did).
  if [ -n "$pid" ]; then
    for ((i = 0; i < 200; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
  fi
  unset TIERONE_TEST_DATABASE_URL TIERONE_TEST_PG_PORT
}

# Redis and PostgreSQL. Either both run afterwards, or neither does and it returns 1.
services_start() {
  if services_start_redis && services_start_postgres; then
    return 0
  fi
  services_stop
  return 1
}

# Fresh state for another test pass on the same servers.
services_reset() {
  if [ -n "$SERVICES_REDIS_PID" ]; then
    redis-cli -h 127.0.0.1 -p "$TIERONE_TEST_REDIS_PORT" flushall >/dev/null || return 1
  fi
  if [ -n "$SERVICES_PG_DATA" ]; then
    services_pg_sql "DROP DATABASE IF EXISTS tierone WITH (FORCE)" || return 1
    services_pg_create_db || return 1
  fi
}

# Stops both servers by pid and removes the temp dir. Safe to call more than once.
services_stop() {
  services_stop_redis
  services_stop_postgres
  if [ -n "$SERVICES_DIR" ]; then
    rm -rf "$SERVICES_DIR"
    SERVICES_DIR=""
  fi
}

# Stops everything when the shell exits or is interrupted. A caller with its own EXIT
# trap calls services_stop from it instead.
services_install_trap() {
  trap 'services_stop' EXIT
  trap 'services_stop; trap - INT; kill -INT $$' INT
  trap 'services_stop; trap - TERM; kill -TERM $$' TERM
}
