#!/usr/bin/env bash
# Prometheus and promtool for the deploy tests (tests/deploy/): Debian's prometheus package,
# installed when missing. `make test` runs this first.
set -euo pipefail
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "error: prometheus/promtool not found and no apt-get: install Prometheus (Debian's prometheus package) so that both are on PATH" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "error: prometheus/promtool not found; installing Debian's prometheus package needs root (run as root or with passwordless sudo, or: apt-get install -y prometheus)" >&2
      exit 1
    fi
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  command -v prometheus >/dev/null && command -v promtool >/dev/null || {
    echo "error: installed the prometheus package but prometheus/promtool are still not on PATH" >&2
    exit 1
  }
fi
prometheus --version 2>&1 | sed -n 1p
