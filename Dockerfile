# Herald: a release build in a Rust image, run from a slim Debian image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["herald"]
CMD ["serve"]
