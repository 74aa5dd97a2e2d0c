#!/usr/bin/env bash
# make-base.sh: builds the base image the Dockerfile starts FROM, without a registry.
#
#   sudo bash docker/make-base.sh [--force]
#
# debootstrap (variant minbase) makes a Debian bookworm root filesystem from Debian's
# archive, trimmed like the registry's "slim" images (no docs, man pages or locales, also
# for packages installed later), and imports it as a local image. This is NOT the
# registry's debian:bookworm-slim: it is built here from the same archive, on the day it
# runs (the build date is in the image's labels).
#
# Cached twice, so a second run is fast: if the image already exists it does nothing; if
# only the rootfs tarball is cached (CACHE_DIR) it imports that (a few seconds).
# --force rebuilds both.
#
# Environment:
#   ENGINE     podman (default when installed) or docker (uses DOCKER_HOST)
#   BASE_IMAGE the tag to create (default localhost/debian:bookworm-slim)
#   MIRROR     Debian mirror (default http://deb.debian.org/debian)
#   SECURITY   security mirror (default http://deb.debian.org/debian-security)
#   CACHE_DIR  where the rootfs tarball is kept (default /var/cache/tierone-docker)
# Needs root (debootstrap) and the debootstrap package.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
CACHE_DIR=${CACHE_DIR:-/var/cache/tierone-docker}
TARBALL="$CACHE_DIR/debian-$SUITE-slim-rootfs.tar"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=docker; fi
fi
# /usr/bin/docker (Debian's 20.10 client) rather than a newer client without buildx.
DOCKER_BIN=docker
[ -x /usr/bin/docker ] && DOCKER_BIN=/usr/bin/docker

log() { printf 'make-base: %s\n' "$*" >&2; }

image_exists() {
  case "$ENGINE" in
    podman) podman image exists "$BASE_IMAGE" ;;
    docker) "$DOCKER_BIN" image inspect "$BASE_IMAGE" >/dev/null 2>&1 ;;
    *) log "unknown ENGINE=$ENGINE (podman or docker)"; exit 2 ;;
  esac
}

# Write the trimmed rootfs tarball to $TARBALL.
make_rootfs() {
  command -v debootstrap >/dev/null 2>&1 || {
    log "debootstrap not found: apt-get install -y debootstrap"
    exit 1
  }
  [ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }
  local root
  root=$(mktemp -d /var/tmp/tierone-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" EXIT
  log "debootstrap --variant=minbase $SUITE from $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    rm -f "$root.log"
    exit 1
  }
  rm -f "$root.log"
  # What the registry's slim images do (debuerreotype --slimify): keep docs, man pages and
  # locales out, now and for every package installed later.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/{groff,info,linda,locale,man}/* "$root"/usr/share/lintian/overrides/*
  cat >"$root/etc/apt/apt.conf.d/docker-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* "$root"/tmp/*
  : >"$root/etc/machine-id"
  mkdir -p "$CACHE_DIR"
  # Numeric owners, sorted names and fixed mtimes of nothing: a plain tar is enough here.
  tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$root"
  trap - EXIT
  log "rootfs cached at $TARBALL ($(du -h "$TARBALL" | cut -f1))"
}

import_rootfs() {
  local created
  created=$(date -u +%Y-%m-%dT%H:%M:%SZ -r "$TARBALL")
  local -a changes=(
    --change 'CMD ["/bin/bash"]'
    --change "LABEL org.opencontainers.image.created=$created"
    --change "LABEL org.opencontainers.image.description=\"debootstrap --variant=minbase $SUITE from $MIRROR, trimmed (not the registry's debian image)\""
  )
  log "importing $TARBALL as $BASE_IMAGE ($ENGINE)"
  case "$ENGINE" in
    podman) podman import "${changes[@]}" "$TARBALL" "$BASE_IMAGE" >/dev/null ;;
    docker) "$DOCKER_BIN" import "${changes[@]}" "$TARBALL" "$BASE_IMAGE" >/dev/null ;;
  esac
}

if [ "$FORCE" -eq 0 ] && image_exists; then
  log "$BASE_IMAGE already exists ($ENGINE); --force rebuilds it"
  exit 0
fi
if [ "$FORCE" -eq 1 ] || [ ! -s "$TARBALL" ]; then
  make_rootfs
fi
import_rootfs
log "done: $BASE_IMAGE"
