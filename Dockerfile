# Bantu in a container. NOT BUILT OR RUN YET: it was written on a machine without a Docker
# engine; treat it as a starting point and test it before relying on it.
#
#   docker build -t bantu .
#   docker run -p 8443:8443 -v bantu-data:/var/lib/bantu bantu
#
# Embedded mode by default (one process, embedded PostgreSQL under /var/lib/bantu); set
# DATABASE_URL and REDIS_URL (and later NATS_URL) for external services: see compose.yaml.
FROM node:20-bookworm-slim

ENV NODE_ENV=production \
    BANTU_DATA_DIR=/var/lib/bantu \
    BANTU_HOST=0.0.0.0 \
    BANTU_PORT=8443 \
    npm_config_fund=false \
    npm_config_audit=false \
    npm_config_update_notifier=false

WORKDIR /app

# Dependencies first, for layer caching. tsx is a runtime dependency (bin/bantu.js runs the
# TypeScript sources through it, there is no build step), so --omit=dev keeps it.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force

COPY bin ./bin
COPY src ./src
COPY tsconfig.json ./

# Run as the image's unprivileged "node" user: the embedded PostgreSQL refuses root anyway.
RUN mkdir -p /var/lib/bantu && chown node:node /var/lib/bantu
USER node
VOLUME ["/var/lib/bantu"]
EXPOSE 8443

# Liveness over HTTPS on loopback. The certificate may be self-signed or the operator's
# own (issued for a public name), so this one check does not verify it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "require('https').get({host:'127.0.0.1',port:process.env.BANTU_PORT||8443,path:'/healthz',rejectUnauthorized:false,timeout:4000},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"]

# Node forwards SIGTERM to Bantu's graceful shutdown (no npm wrapper in between).
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/bantu.js"]
CMD ["start"]
