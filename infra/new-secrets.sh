#!/usr/bin/env bash
# Writes the secret files of an overlay, infra/overlays/<overlay>/secrets/*.env (gitignored),
# from their *.env.example files. Existing files are kept; --force rewrites them.
#
#   infra/new-secrets.sh local   # every value generated: Ray token, PostgreSQL password, MinIO
#                                # keys, and the MLflow URIs that use them
#   infra/new-secrets.sh gpu     # Ray token generated; fill in secrets/mlflow.env yourself
#                                # (your PostgreSQL and S3 credentials)
#
# HF_TOKEN is taken from the environment when set (the pipeline's register step needs it).
set -euo pipefail
cd "$(dirname "$0")/.."

overlay="${1:-}"
force=false
[ "${2:-}" = "--force" ] && force=true
dir="infra/overlays/${overlay}/secrets"
if [ -z "$overlay" ] || [ ! -d "$dir" ]; then
    echo "usage: infra/new-secrets.sh local|gpu [--force]" >&2
    exit 2
fi
namespace="$(sed -n 's/^MULTIVAE_NAMESPACE=//p' infra/base/settings.env)"

random() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

write() {  # write FILE: the content on stdin, unless FILE exists (and no --force)
    if [ -e "$dir/$1" ] && ! "$force"; then
        echo "kept     $dir/$1"
        cat > /dev/null
        return
    fi
    (umask 077 && cat > "$dir/$1")
    echo "written  $dir/$1"
}

printf 'auth_token=%s\n' "$(random 32)" | write ray-auth.env
printf 'HF_TOKEN=%s\n' "${HF_TOKEN:-}" | write hf-token.env

if [ "$overlay" = local ]; then
    # Reuse a kept PostgreSQL password, so that the MLflow URI below still matches it.
    password="$(sed -n 's/^POSTGRES_PASSWORD=//p' "$dir/postgres.env" 2>/dev/null || true)"
    { [ -n "$password" ] && ! "$force"; } || password="$(random 24)"
    printf 'POSTGRES_USER=mlflow\nPOSTGRES_PASSWORD=%s\nPOSTGRES_DB=mlflow\n' "$password" \
        | write postgres.env
    {
        printf 'MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:%s@mlflow-postgres.%s.svc.cluster.local:5432/mlflow\n' \
            "$password" "$namespace"
        printf 'MLFLOW_ARTIFACTS_DESTINATION=s3://mlflow\n'
        printf 'MLFLOW_S3_ENDPOINT_URL=http://mlflow-minio.%s.svc.cluster.local:9000\n' "$namespace"
        printf 'AWS_ACCESS_KEY_ID=multivae-%s\n' "$(random 6)"
        printf 'AWS_SECRET_ACCESS_KEY=%s\n' "$(random 24)"
    } | write mlflow.env
else
    write mlflow.env < "$dir/mlflow.env.example"
    echo "now fill in $dir/mlflow.env (PostgreSQL URI, S3 bucket, endpoint and keys)"
fi
[ -n "${HF_TOKEN:-}" ] || echo "HF_TOKEN was not set: put your Hub token in $dir/hf-token.env to publish models"
