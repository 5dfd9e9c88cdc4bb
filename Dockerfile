# syntax=docker/dockerfile:1
# Agora's image: the official Ray image (same Ray and Python as uv.lock), our locked
# dependencies in a virtualenv built in a first stage, run as Ray's non-root user.
# Used by cluster/k8s/ (KubeRay starts `ray start` in it) and built in CI.
#   docker build -t agora:dev .
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311

FROM ${RAY_IMAGE} AS build
USER root
ENV UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never
RUN python -m pip install --no-cache-dir uv==0.13.9
WORKDIR /opt/agora
# Dependencies first (cached while only our code changes), exactly as locked.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --python "$(command -v python)"
COPY actors ./actors
COPY serve ./serve
COPY streams ./streams
COPY ledger ./ledger
COPY cluster ./cluster
COPY README.md ./
RUN uv sync --frozen --no-dev --no-editable --python "$(command -v python)"

FROM ${RAY_IMAGE} AS runtime
USER root
# HAProxy: Ray Serve's fast ingress (RAY_SERVE_ENABLE_HA_PROXY=1, docs/PERFORMANCE.md).
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build --chown=1000:100 /opt/agora /opt/agora
ENV PATH=/opt/agora/.venv/bin:$PATH \
    AGORA_VAR_DIR=/home/ray/agora-var \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/agora
# Ray's image user (uid 1000), never root at run time.
USER 1000
RUN mkdir -p /home/ray/agora-var
EXPOSE 8000 6380
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["agora", "status"]
