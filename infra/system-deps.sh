#!/usr/bin/env bash
# Installs the Debian packages the local stack and the test suite run (Postgres, Redis,
# Prometheus, Node.js for the web app, Chromium for its browser tests, nginx in front of the
# edges of `make cluster`) when missing; with `compose`, what `make compose-smoke` needs too.
set -euo pipefail
need=()
# `make compose-smoke` only: containers without a Docker daemon, and the base image's build.
if [ "${1:-}" = compose ]; then
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || test -x /usr/sbin/debootstrap || need+=(debootstrap)
  # The init that `init: true` (the worker) asks for.
  test -x /usr/libexec/podman/catatonit || need+=(catatonit)
fi
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus >/dev/null || need+=(prometheus)
# The web app's build (Node.js 20+ with npm) and its browser tests (Debian's Chromium).
command -v node >/dev/null || need+=(nodejs npm)
command -v chromium >/dev/null || need+=(chromium)
command -v nginx >/dev/null || test -x /usr/sbin/nginx || need+=(nginx)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing: ${need[*]}; install them with your package manager" >&2
  exit 1
fi
echo "installing ${need[*]} (Debian packages)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages start system-wide services; llmchat runs its own on free loopback ports.
# Only the services of the packages installed just now.
services=()
for pkg in "${need[@]}"; do
  case "$pkg" in
    prometheus) services+=(prometheus prometheus-node-exporter) ;;
    *) services+=("$pkg") ;;
  esac
done
for svc in "${services[@]}"; do
  command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1 || true
  service "$svc" stop >/dev/null 2>&1 || true
done
