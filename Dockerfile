# syntax=docker/dockerfile:1
#
# etcd-elector container image.
#
#   docker build -t etcd-elector:dev .
#   docker run --rm etcd-elector:dev --help
#
# Two stages: a Rust builder on Debian bookworm, and a distroless runtime that
# holds only the binary (no shell, no package manager) and runs as non-root.
# The binary handles SIGTERM itself as PID 1, so no init process is needed.

# Keep in step with the toolchain the project is tested with.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder

# etcd-client generates its gRPC code with protoc at build time. The version
# pin accepts Debian's security revisions of protobuf 3.21 (bookworm's).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler=3.21.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit. Bench, test and example
# targets are dropped from the manifest (their files are not in the build
# context, and the image needs none of them); the final build below uses the
# same filtered manifest. Stub sources stand in for the library and binary.
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[\[(bench|test|example)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
        Cargo.toml > Cargo.build.toml \
    && mv Cargo.build.toml Cargo.toml \
    && mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin etcd-elector \
    && rm -rf src

# The real sources. Touch them so that cargo never mistakes them for the
# stubs it has just built, whatever timestamps the build context carries.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin etcd-elector \
    && install -m 0755 target/release/etcd-elector /usr/local/bin/etcd-elector

# glibc and libgcc only: what a Rust binary built on bookworm links against.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="etcd-elector" \
      org.opencontainers.image.description="Leader-election sidecar for Kubernetes on etcd leases" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /usr/local/bin/etcd-elector /usr/local/bin/etcd-elector

# The distroless "nonroot" user, by number so that Kubernetes can verify
# runAsNonRoot without resolving names.
USER 65532:65532

# /leader (readiness), /healthz (liveness), /metrics, /status and /.
EXPOSE 4040

ENTRYPOINT ["/usr/local/bin/etcd-elector"]
