#!/usr/bin/env bash
# A C compiler and Python's headers, for the one compiled module (src/lockgate/monitor/
# _ringwrite.c, built by setup.py): Debian's gcc and python3-dev, installed when missing.
# The Makefile runs this before installing lockgate. Usage: tools/ensure-compiler.sh PYTHON
set -euo pipefail
python=${1:-python3}
headers() { "$python" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; }
if ! command -v cc >/dev/null || ! headers; then
  "$(dirname "$0")/apt-install.sh" "a C compiler or Python's headers" gcc libc6-dev python3-dev
  command -v cc >/dev/null && headers || {
    echo "error: installed gcc and python3-dev but still no cc or Python.h for $python" >&2
    exit 1
  }
fi
