# Herald and its example backend: one build, two small runtime images.
#   docker build -t herald .                              # the gateway (the last stage)
#   docker build -t herald-example-backend --target backend .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald --bin herald-example-backend

# The example backend (docker-compose.yml's `backend`).
FROM debian:bookworm-slim AS backend
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald-example-backend /usr/local/bin/herald-example-backend
USER 65534:65534
EXPOSE 3000
ENV BACKEND_LISTEN=0.0.0.0:3000
ENTRYPOINT ["herald-example-backend"]

# The gateway: non-root, no shell tools needed; `herald health` is its own health check.
FROM debian:bookworm-slim AS herald
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER 65534:65534
EXPOSE 8080
# Liveness: the process answers /healthz on its plain-HTTP port. (With TLS on the port, point
# --url at https:// or check from outside.)
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
    CMD ["herald", "health", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["herald"]
CMD ["serve"]
