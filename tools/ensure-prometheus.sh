#!/usr/bin/env bash
# Prometheus and promtool for the deploy tests (tests/deploy/): Debian's prometheus package,
# installed when missing. `make test` runs this first.
set -euo pipefail
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  "$(dirname "$0")/apt-install.sh" "prometheus/promtool" prometheus
  command -v prometheus >/dev/null && command -v promtool >/dev/null || {
    echo "error: installed the prometheus package but prometheus/promtool are still not on PATH" >&2
    exit 1
  }
fi
prometheus --version 2>&1 | sed -n 1p
