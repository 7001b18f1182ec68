#!/usr/bin/env bash
# Regenerates infra/requirements.lock, the constraints every image build installs under.
#
# Inputs: pyproject.toml's `all` extra, infra/requirements-server.in (MLflow server drivers) and
# infra/lock-pins.txt (torch/torchvision as shipped by the PyTorch base image). The target is
# the image's interpreter: CPython 3.12 on x86-64 Linux (manylinux 2.28).
# Needs uv (https://docs.astral.sh/uv/); install it outside the project's venv, e.g.
#   python3 -m venv /tmp/uv && /tmp/uv/bin/pip install uv && PATH=/tmp/uv/bin:$PATH infra/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile pyproject.toml infra/requirements-server.in \
    --extra all \
    --constraint infra/lock-pins.txt \
    --python-version 3.12 \
    --python-platform x86_64-manylinux_2_28 \
    --output-file infra/requirements.lock \
    "$@"
