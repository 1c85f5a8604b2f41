# offsite: one image, one container per site. The entry command is the same
# `node dist/src/cli/main.js serve` that the integration tests start.

FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json Makefile ./
COPY native ./native
COPY src ./src
COPY test ./test
COPY bench ./bench
RUN make native/build/blockio.node NODE_INCLUDE=/usr/local/include/node \
 && node_modules/.bin/tsc -p tsconfig.json \
 && npm prune --omit=dev

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production \
    OFFSITE_DATA=/data \
    OFFSITE_ISCSI=0.0.0.0:3260 \
    OFFSITE_HTTP=0.0.0.0:9464 \
    OFFSITE_LOG_FORMAT=json
WORKDIR /opt/offsite
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/native/build ./native/build
RUN groupadd --system offsite && useradd --system --gid offsite --home /data offsite \
 && mkdir -p /data && chown offsite:offsite /data
USER offsite
VOLUME ["/data"]
EXPOSE 3260 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9464/status').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["serve"]
