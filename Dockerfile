# offsite: one image, one container per site.
#
# The command is the same `node dist/src/cli/main.js serve` the integration tests start
# (test/helpers/appliance.ts), reading its configuration from /etc/offsite/site.yaml (the image
# ships deploy/site.yaml there; mount your own over it) with OFFSITE_* environment variables
# overriding the file. test/deploy/config-files.test.ts checks all of this against the repository.
#
#   docker build -t offsite .
#   docker run -d --name site-a -v offsite-a:/data -p 3260:3260 -p 127.0.0.1:9464:9464 \
#     -e OFFSITE_VOLUMES=vol1:10G offsite
#   docker exec site-a node dist/src/cli/main.js status --http 127.0.0.1:9464
#
# The entry point is `node dist/src/cli/main.js`, so any other offsite command runs in the same
# image: `docker run --rm -v offsite-a:/data offsite journal inspect --data /data`.

# --- build: npm ci, then `make build` (TypeScript and the native addons: hole punching, CRC32C, LZ4, journal record writes)
FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
# `make build` runs `npm ci` itself when node_modules/.installed is older than the lock file;
# installing first keeps the dependency layer cached across source changes.
RUN npm ci --no-audit --no-fund && touch node_modules/.installed
COPY Makefile tsconfig.json ./
COPY native ./native
COPY src ./src
# `make build` apt-installs libisal-dev (ISA-L, for the CRC32C addon) and liblz4-dev (for the LZ4
# addon) when they are missing.
RUN make build \
 && test -f dist/src/cli/main.js && test -f native/build/blockio.node && test -f native/build/crc32c.node && test -f native/build/lz4block.node && test -f native/build/records.node \
 && npm prune --omit=dev --no-audit --no-fund

# --- runtime: node, production node_modules, dist/src, the addons (and ISA-L and liblz4, which they link)
FROM node:20-bookworm-slim AS runtime
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libisal2 liblz4-1 \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    OFFSITE_LOG_FORMAT=json
WORKDIR /opt/offsite
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/native/build ./native/build
COPY deploy/site.yaml /etc/offsite/site.yaml
# A fixed uid/gid (10001) so that files you mount (link key, admin token) can be chowned to it.
# /etc/offsite/secrets exists, owned by that user, so a named volume mounted there starts
# writable by it (docker-compose.yml keeps the generated keys in one).
RUN groupadd --system --gid 10001 offsite \
 && useradd --system --uid 10001 --gid offsite --home-dir /data --no-create-home --shell /usr/sbin/nologin offsite \
 && mkdir -p /data /etc/offsite/secrets \
 && chown offsite:offsite /data /etc/offsite/secrets \
 && chmod 700 /data /etc/offsite/secrets
USER offsite
VOLUME ["/data"]
# iSCSI, HTTP (status, metrics, admin API), replication (the port a replica listens on; 7000 in
# deploy/site-b.yaml; nothing listens on it unless configured).
EXPOSE 3260 9464 7000
# GET /status on the HTTP port of OFFSITE_HTTP (default 9464); the slim image has no curl. HTTPS
# first (a site with httpTls; a liveness probe on loopback, so the certificate is not checked),
# then plain HTTP: a plain server drops the TLS attempt silently, where a plain request to an
# HTTPS port would be logged at every probe.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "const p=(process.env.OFFSITE_HTTP||'').split(':').pop()||'9464';const u='//127.0.0.1:'+p+'/status';const done=r=>process.exit(r.statusCode===200?0:1);require('https').get('https:'+u,{rejectUnauthorized:false},done).on('error',()=>require('http').get('http:'+u,done).on('error',()=>process.exit(1)))"]
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["serve", "--config", "/etc/offsite/site.yaml"]
