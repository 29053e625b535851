# rewardpoints: the Reward-points Service API on port 8000.
#
#   docker build -t rewardpoints .
#   docker run -p 8000:8000 -v rewardpoints-data:/data -e REWARDPOINTS_JWT_SECRET=... rewardpoints
#
# With no REWARDPOINTS_DATABASE_URL it runs its own PostgreSQL cluster in the /data volume
# (created on first start, stopped when the service stops), as the image's unprivileged user;
# see docker-compose.yml for a separate PostgreSQL. `serve` applies pending migrations before
# it listens.

ARG PYTHON_IMAGE=python:3.12-slim

# ---- build: install the project and its dependencies into a virtualenv ---------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv

WORKDIR /src
# Only what the wheel is built from: the package, its metadata and the Alembic scripts
# (pyproject's force-include puts migrations/ into the wheel as rewardpoints/migrations).
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
RUN /opt/venv/bin/pip install .

# ---- runtime: the virtualenv and a non-root user, nothing else -----------------------------
FROM ${PYTHON_IMAGE}

RUN groupadd --system --gid 10001 rewardpoints \
 && useradd --system --uid 10001 --gid rewardpoints --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin rewardpoints \
 && mkdir /data \
 && chown rewardpoints:rewardpoints /data \
 && chmod 0750 /data

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REWARDPOINTS_DATA_DIR=/data \
    REWARDPOINTS_DEV_SECRET_FILE=/data/dev-secret

USER rewardpoints
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

# Liveness over loopback with the standard library (the slim image has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["rewardpoints"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
