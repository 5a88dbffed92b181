# syntax=docker/dockerfile:1
# The stand-in service under PM2, as on a staging host: Python (Debian bookworm's 3.11) with the
# project installed from constraints.txt, Node 22 with PM2 from tools/node/package-lock.json, and
# `pm2-runtime` as PID 1 running docker/standin.ecosystem.config.json.
# Build context: the repository root (docker/compose.yaml sets it); what is sent is limited by
# docker/standin.Dockerfile.dockerignore.
FROM node:22-bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv socat ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# PM2 at the version the embedded stack uses (npm ci: exactly what the lockfile says).
COPY tools/node/package.json tools/node/package-lock.json /opt/node-tools/
RUN cd /opt/node-tools \
 && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error \
 && npm cache clean --force

# The project, pinned as `./run` pins it (without the test extras).
WORKDIR /opt/baileys-resilience
COPY pyproject.toml constraints.txt ./
COPY resilience ./resilience
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt . \
 && /opt/venv/bin/python -c "import resilience.drill.standin.service"
COPY docker/entrypoint.py docker/standin.ecosystem.config.json ./docker/

RUN mkdir -p /srv/service/logs && chown -R node:node /srv/service
ENV PATH=/opt/venv/bin:/opt/node-tools/node_modules/.bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PM2_HOME=/home/node/.pm2 \
    STANDIN_WORKDIR=/srv/service
USER node
WORKDIR /srv/service
# 8081: the socat forwarder to the stand-in's /health and /metrics (it listens on 127.0.0.1:8080).
EXPOSE 8081
ENTRYPOINT ["/opt/venv/bin/python", "/opt/baileys-resilience/docker/entrypoint.py"]
CMD ["serve"]
