# One image for every pipeline component and for Ray workers.
# CPU by default; for GPUs build FROM an image with CUDA drivers and pip resolves CUDA torch wheels.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MULTIVAE_CACHE=/var/cache/multivae

WORKDIR /opt/multivae
COPY pyproject.toml README.md ./
COPY multivae ./multivae
RUN pip install ".[all]" && multivae --help > /dev/null

RUN useradd --create-home --uid 1000 multivae && mkdir -p "$MULTIVAE_CACHE" \
    && chown multivae "$MULTIVAE_CACHE"
USER multivae
ENTRYPOINT ["multivae"]
CMD ["--help"]
