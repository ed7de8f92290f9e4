# syntax=docker/dockerfile:1
#
# etcd-elector container image.
#
#   docker build -t etcd-elector:dev .
#   docker run --rm etcd-elector:dev --help
#
# Prerequisites: Docker (or another BuildKit builder) with network access to
# Docker Hub and gcr.io (the two base images), Debian's package mirror (the
# builder installs protoc) and crates.io. Nothing on the host beyond that: the
# build context is Cargo.toml, Cargo.lock, src/, crates/elector-testkit (only
# its manifest is read) and scripts/deps.sh.
#
# Multi-arch: the builder compiles for the platform it runs on, so build each
# architecture natively or under emulation with buildx, which sets
# TARGETARCH/TARGETPLATFORM per platform:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t REGISTRY/etcd-elector:TAG --push .
#
# Two stages: a Rust builder on Debian bookworm, and a distroless runtime that
# holds only the binary (no shell, no package manager) and runs as non-root.
# The binary handles SIGTERM itself as PID 1, so no init process is needed.
#
# CI runs this builder stage's WORKDIR, COPY and RUN lines as written, in a
# fresh minimal Debian root (.ci/fresh-root.sh image), so a build dependency
# missing here fails CI too.

# Keep in step with the toolchain the project is tested with.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder

WORKDIR /build

# Build dependencies come from the same script as the README's commands and
# CI: a C toolchain (already in this image) and protoc with protobuf's
# well-known types (Debian's protobuf-compiler and libprotobuf-dev), which
# etcd-client's build script runs. The script checks that protoc compiles a
# .proto importing google/protobuf/descriptor.proto.
COPY scripts/deps.sh ./scripts/
RUN scripts/deps.sh build && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit. Bench, test and example
# targets are dropped from the manifest (their files are not in the build
# context, and the image needs none of them); the final build below uses the
# same filtered manifest. Stub sources stand in for the library and binary.
COPY Cargo.toml Cargo.lock ./
# The dev-only test kit is a workspace member: cargo reads its manifest to
# resolve Cargo.lock with --locked; the image never builds it.
COPY crates/elector-testkit ./crates/elector-testkit
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
# Where the source lives; pass --build-arg SOURCE=... for a fork.
ARG SOURCE=https://github.com/etcd-elector/etcd-elector
LABEL org.opencontainers.image.title="etcd-elector" \
      org.opencontainers.image.source="${SOURCE}" \
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
