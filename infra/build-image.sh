#!/usr/bin/env bash
# Builds the project's image under the reference in infra/base/settings.env (MULTIVAE_IMAGE;
# an environment variable of that name overrides it) and pushes it with --push.
#
#   infra/build-image.sh                 # CUDA image on pytorch/pytorch (the default)
#   infra/build-image.sh --push          # ... and push it (docker login to the registry first)
#   MULTIVAE_IMAGE=ghcr.io/you/multivae:0.1.0-cpu infra/build-image.sh --cpu
#                                        # CPU-only image: python:3.12-slim + CPU torch wheels
#   infra/build-image.sh -- --no-cache   # anything after -- goes to docker build
#
# The lock (infra/requirements.lock) is for x86-64 Linux, so the image is built for
# linux/amd64 on any host.
set -euo pipefail
cd "$(dirname "$0")/.."

push=false
cpu=false
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --push) push=true ;;
        --cpu) cpu=true ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

image="${MULTIVAE_IMAGE:-$(sed -n 's/^MULTIVAE_IMAGE=//p' infra/base/settings.env)}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
if [ -z "$image" ] || [ -z "$version" ]; then
    echo "build-image.sh: MULTIVAE_IMAGE (infra/base/settings.env) or the version (pyproject.toml) is missing" >&2
    exit 1
fi

args=(--platform linux/amd64
      --build-arg "MULTIVAE_IMAGE=${image}"
      --build-arg "MULTIVAE_VERSION=${version}"
      --tag "${image}")
if "$cpu"; then
    args+=(--build-arg "BASE_IMAGE=python:3.12-slim"
           --build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
fi

set -x
docker build "${args[@]}" "${extra[@]}" .
if "$push"; then
    docker push "${image}"
fi
