#!/bin/sh
# Create the secret files that deploy/compose.yaml and deploy/k8s/kustomization.yaml read:
#   DIR/admin-tokens   lockgate's admin token file (--admin-token-file): one `name:token:role` per
#                      line, for the retrain worker (`retrain`) and for people (`ops`)
#   DIR/retrain-token  the retrain worker's token alone (it reads LOCKGATE_ADMIN_TOKEN)
#   DIR/state-url      only when POSTGRESQL_URL is given (deploy/k8s needs it)
#
#   deploy/make-secrets.sh deploy/compose/secrets
#   deploy/make-secrets.sh deploy/k8s/secrets 'postgresql://lockgate:PASSWORD@HOST:5432/lockgate'
#
# Files that exist are kept: delete them to rotate. DIR is made private (0700); the files are
# 0644 inside it because compose bind-mounts them for the image's unprivileged user.
set -eu

dir=${1:?usage: make-secrets.sh DIR [POSTGRESQL_URL]}
url=${2:-}

token() {
    od -An -vtx1 -N24 /dev/urandom | tr -d ' \n'
}

mkdir -p "$dir"
chmod 700 "$dir"
if [ ! -f "$dir/admin-tokens" ] || [ ! -f "$dir/retrain-token" ]; then
    retrain=$(token)
    printf '%s' "$retrain" >"$dir/retrain-token" # no newline: it becomes an env value
    printf 'retrain:%s:operator\nops:%s:admin\n' "$retrain" "$(token)" >"$dir/admin-tokens"
    chmod 644 "$dir/retrain-token" "$dir/admin-tokens"
    echo "wrote $dir/admin-tokens and $dir/retrain-token"
fi
if [ -n "$url" ]; then
    printf '%s' "$url" >"$dir/state-url"
    chmod 644 "$dir/state-url"
    echo "wrote $dir/state-url"
fi
