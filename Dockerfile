# Bantu in a container: one image for every shape. NOT BUILT OR RUN YET: written on a machine
# without a Docker engine (test/deploy-compose.test.ts checks this file statically); build and
# run it before relying on it.
#
#   docker build -t bantu .
#   docker run -p 8443:8443 -v bantu-data:/var/lib/bantu bantu          # embedded: `bantu start`
#   docker run ... bantu serve files                                     # one service (distributed)
#
# The command is `bantu <arguments>`: `start` by default, `serve <service>` per service in
# compose.yaml.

# Stage 1: production dependencies only. tsx is a runtime dependency (bin/bantu.js runs the
# TypeScript sources through it; there is no build step), so --omit=dev keeps it.
FROM node:20-bookworm-slim AS deps
ENV npm_config_fund=false \
    npm_config_audit=false \
    npm_config_update_notifier=false
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev

# Stage 2: the runtime. It takes node_modules from stage 1 and leaves npm's cache and logs
# behind, and a change to the sources does not reinstall the dependencies.
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    BANTU_DATA_DIR=/var/lib/bantu \
    BANTU_HOST=0.0.0.0 \
    BANTU_PORT=8443 \
    BANTU_SERVICE_HOST=0.0.0.0 \
    BANTU_SERVICE_PORT=8080
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
# The API document a distributed gateway publishes at /openapi.json and /docs.
COPY docs/openapi.json ./docs/
COPY scripts/container-healthcheck.mjs ./scripts/

# Run as the image's unprivileged "node" user (the embedded PostgreSQL refuses root anyway).
# blobs/, backups/ and exports/ exist here, owned by node, because an empty named volume mounted on
# them (compose.yaml shares them between files and backup; exports keeps its zips) copies this ownership; a folder
# Docker creates for the mount would belong to root and be unwritable.
RUN mkdir -p /var/lib/bantu/blobs /var/lib/bantu/backups /var/lib/bantu/exports && chown -R node:node /var/lib/bantu
USER node
VOLUME ["/var/lib/bantu"]
# 8443: the gateway's HTTPS (and `bantu start`); 8080: a service's plain HTTP for the gateway.
EXPOSE 8443 8080

# No curl or wget in the slim image: the probe is Node. It passes when this container's
# process answers /healthz, whichever command runs (see the script).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "scripts/container-healthcheck.mjs", "/healthz"]

# Node is PID 1 and receives SIGTERM itself (no npm or shell in between): Bantu's graceful
# shutdown runs on `docker stop`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/bantu.js"]
CMD ["start"]
