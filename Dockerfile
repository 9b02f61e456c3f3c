# stagesync container image.
#
#   docker build -t stagesync .
#   docker run -p 8000:8000 -v stagesync-data:/data \
#       -e STAGESYNC_HUBSPOT_CLIENT_SECRET=... stagesync
#
# Both stages use the same base image on purpose: the virtualenv built in the first
# stage links to /usr/local/bin/python3.11, which must exist at the same path at runtime.
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------
# Build stage: build the stagesync wheel and install it with its dependencies
# into a self-contained virtualenv at /opt/venv.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# Only what the wheel needs (see .dockerignore). pyproject.toml names README.md as the
# project readme, so it has to be present for the build.
COPY pyproject.toml README.md ./
COPY receiver ./receiver

RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/stagesync-*.whl \
 && /opt/venv/bin/python -c "import receiver.cli"

# ---------------------------------------------------------------------------
# Runtime stage: the virtualenv, a non-root user and nothing else.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="stagesync" \
      org.opencontainers.image.description="HubSpot contact webhook receiver that syncs lifecycle stages to a CRM"

# Fixed numeric ids so that Kubernetes' runAsNonRoot can verify them and so that
# bind-mounted data directories can be chowned ahead of time (chown 10001:10001).
RUN groupadd --system --gid 10001 stagesync \
 && useradd --system --uid 10001 --gid stagesync --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin stagesync \
 && mkdir -p /data \
 && chown stagesync:stagesync /data \
 && chmod 0750 /data

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STAGESYNC_DATABASE_URL=sqlite:////data/stagesync.db

# The SQLite database (plus its -wal and -shm files) lives here. Unused with PostgreSQL.
VOLUME ["/data"]
WORKDIR /data

USER 10001:10001

EXPOSE 8000

# No curl in the slim image: probe with the standard library. urlopen raises on any
# non-2xx answer or connection error, which makes the check fail.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3); sys.exit(0 if r.status == 200 else 1)"]

CMD ["stagesync", "serve", "--host", "0.0.0.0", "--port", "8000"]
