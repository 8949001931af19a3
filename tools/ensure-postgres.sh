#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, pg_ctl, postgres) for the state-backend tests, which start
# a private server (tests/postgres.py): Debian's postgresql package, installed when missing.
# Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH; either place will do.
# `make test` runs this first.
set -euo pipefail

bindir() {  # where all three are, or nothing
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null; then
    dirname "$(command -v postgres)"
    return 0
  fi
  local dir
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

if ! dir=$(bindir); then
  "$(dirname "$0")/apt-install.sh" "initdb/pg_ctl/postgres" postgresql
  dir=$(bindir) || {
    echo "error: installed the postgresql package but found no initdb/pg_ctl/postgres on PATH or in /usr/lib/postgresql/*/bin" >&2
    exit 1
  }
fi
"$dir/postgres" --version
