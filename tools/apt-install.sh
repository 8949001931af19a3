#!/usr/bin/env bash
# Install Debian packages for the test suite's real services (`tools/apt-install.sh WHAT PKG...`):
# as root, or with passwordless sudo; otherwise say what to run. WHAT names the missing tools in
# the messages. Used by tools/ensure-*.sh.
set -euo pipefail
what=$1
shift
if ! command -v apt-get >/dev/null; then
  echo "error: $what not found and no apt-get: install Debian's $* (or an equivalent) first" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "error: $what not found; installing Debian's $* needs root (run as root or with passwordless sudo, or: apt-get install -y $*)" >&2
    exit 1
  fi
fi
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
