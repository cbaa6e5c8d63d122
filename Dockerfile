# Flowline server image. Sources are TypeScript run through tsx (a production dependency), so
# there is no build step: the image is the production dependencies plus the source tree.
#
#   docker build --build-arg FLOWLINE_IMAGE_TAG=flowline:0.2.0 -t flowline:0.2.0 .
#   docker run --init -p 3000:3000 -e DATABASE_URL=... -e REDIS_URL=... flowline          # all roles
#   docker run --init flowline worker --queues default                                    # one role
#
# Configuration comes from the environment, or from /app/flowline.config.yaml (mount it, or set
# FLOWLINE_CONFIG to a mounted path). Run with --init (compose: `init: true`) so that worker
# processes started by `up`/`workers` are reaped and signals reach node promptly.
FROM node:20-bookworm-slim

ENV NODE_ENV=production \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false

WORKDIR /app

# Dependencies first, so editing sources does not invalidate this layer.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force

COPY . .

# The code stays owned by root and read-only to the process; it runs as the image's `node` user.
USER node

# The tag this image is built as, reported by `flowline --version` and /readyz.
ARG FLOWLINE_IMAGE_TAG=""
ENV FLOWLINE_IMAGE_TAG=$FLOWLINE_IMAGE_TAG

# Inside a container the network namespace is the boundary: listen on every interface so a
# published port reaches the API (the default outside containers is 127.0.0.1).
ENV HOST=0.0.0.0 \
    PORT=3000
EXPOSE 3000

# Meaningful for `up` and `api`; services running other roles disable it (see docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.PORT || 3000}/healthz`, { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

ENTRYPOINT ["node", "bin/flowline.js"]
CMD ["up"]
