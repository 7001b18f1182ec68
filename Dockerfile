# syntax=docker/dockerfile:1
# One image for every Kubeflow component, every Ray head and worker, and the MLflow server.
#
# Default: the official PyTorch CUDA runtime image, whose torch 2.14.1 (CUDA 13.0) is the one
# infra/requirements.lock pins, so torch and its CUDA libraries are used as shipped, never
# reinstalled. CPU-only image (python:3.12-slim + CPU torch wheels):
#   infra/build-image.sh --cpu            (or see docs/deploy.md for the plain docker command)
# Build through infra/build-image.sh: it passes MULTIVAE_IMAGE from infra/base/settings.env.

ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Extra index for torch wheels (the CPU build: https://download.pytorch.org/whl/cpu); empty: PyPI.
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# --system-site-packages: the base image's torch and torchvision stay visible (and satisfy the
# lock) instead of being downloaded again. --without-pip: the base's own pip drives the venv, so
# no ensurepip is needed (Ubuntu's system Python ships without it).
RUN python3 -m venv --system-site-packages --without-pip /opt/venv
COPY infra/requirements.lock infra/requirements-server.in ./infra/
COPY pyproject.toml README.md ./
COPY multivae ./multivae
# The smoke test fails the build when torch and torchvision do not fit together (their compiled
# ops must come from one build) and prints where torch comes from: the base image's
# /usr/.../site-packages, not /opt/venv, when the base tag matches the lock.
RUN python3 -m pip --python /opt/venv/bin/python install --no-cache-dir \
        ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        --constraint infra/requirements.lock \
        --requirement infra/requirements-server.in \
        ".[all]" \
    && /opt/venv/bin/python -c "import torch, torchvision.ops; print('torch', torch.__version__, torch.__file__)" \
    && /opt/venv/bin/multivae --help > /dev/null

FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG MULTIVAE_IMAGE=ghcr.io/multivae/multivae:0.1.0
ARG MULTIVAE_VERSION=0.1.0
LABEL org.opencontainers.image.ref.name="${MULTIVAE_IMAGE}" \
      org.opencontainers.image.version="${MULTIVAE_VERSION}" \
      org.opencontainers.image.title="multivae" \
      org.opencontainers.image.description="Multimodal VAEs for partially observed data: the library, its CLI, Ray Train/Tune workers, Kubeflow components and the MLflow server." \
      org.opencontainers.image.source="https://github.com/multivae/multivae" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MULTIVAE_CACHE=/var/cache/multivae
COPY --from=builder /opt/venv /opt/venv
COPY examples /opt/multivae/examples
# uid 1000 is the user in every manifest (runAsUser); Ubuntu-based images already give that uid
# to a user named "ubuntu", which is removed first. The profile.d line keeps the venv on PATH in
# login shells (KubeRay can start Ray through `bash -l`, which resets PATH on Debian).
RUN existing="$(getent passwd 1000 | cut -d: -f1)" \
    && if [ -n "${existing}" ]; then userdel "${existing}"; fi \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash multivae \
    && mkdir -p "${MULTIVAE_CACHE}" /mnt/multivae \
    && chown 1000:1000 "${MULTIVAE_CACHE}" /mnt/multivae \
    && echo "export PATH=/opt/venv/bin:\${PATH}" > /etc/profile.d/multivae-venv.sh
USER 1000:1000
WORKDIR /home/multivae
ENTRYPOINT ["multivae"]
CMD ["--help"]
