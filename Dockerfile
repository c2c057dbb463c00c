# syntax=docker/dockerfile:1
#
# ccgw-bridge image: cargo-chef three-stage build (planner → builder → runtime).
#
# The dependency layer (`cargo chef cook`) is rebuilt only when Cargo.toml / Cargo.lock change,
# so editing src/ recompiles the crate alone. build.rs compiles proto/ with protox (pure Rust);
# the `pool` feature (agent pool on etcd) adds etcd-client, whose build runs Debian's protoc. The builder (Debian 12 "bookworm", glibc 2.36) matches the runtime base
# (distroless cc-debian12), so the dynamically linked binary finds the same glibc.
#
#   docker build -t ccgw-bridge:dev .
#   docker run --rm ccgw-bridge:dev --help

ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78 \
 && apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
# Cargo features of the image (`--build-arg FEATURES=` builds without the agent pool).
ARG FEATURES=pool
# ENV, unlike ARG, reaches the stages built FROM this one. PROTOC overrides .cargo/config.toml's
# (the test venv's protoc), which the image does not have.
ENV BRIDGE_FEATURES=${FEATURES} \
    PROTOC=/usr/bin/protoc
WORKDIR /src
# Cargo.toml keeps line tables in release builds for local profiling; the image does without
# them (the binary drops from ~93 MB to a fraction of that).
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

# Stage 1: a recipe of the manifests only (changes when dependencies change, not when code does).
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# Stage 2: dependencies first (cached layer), then the crate itself.
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --features "$BRIDGE_FEATURES" --bin ccgw-bridge --recipe-path recipe.json
COPY . .
# The commit --version and ccgw_build_info name (build.rs): the context has no .git, so pass it,
# e.g. --build-arg CCGW_COMMIT=$(git rev-parse --short=7 HEAD) (docs/releasing.md).
ARG CCGW_COMMIT=unknown
RUN cargo build --release --locked --features "$BRIDGE_FEATURES" --bin ccgw-bridge \
 && cp target/release/ccgw-bridge /ccgw-bridge

# Stage 3: no shell, no package manager, uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /ccgw-bridge /usr/local/bin/ccgw-bridge
# The API definition ships with the image, for clients that generate stubs from it
# (the bridge also serves it through gRPC server reflection).
COPY proto/ /usr/share/ccgw-bridge/proto/
USER nonroot
# 50051: gRPC API (binds 127.0.0.1 by default: pass --listen 0.0.0.0:50051 to expose it beyond
# the pod). 9090: admin listener (grpc.health.v1, /metrics, /livez, /readyz) for the kubelet.
EXPOSE 50051 9090
# No HEALTHCHECK: Kubernetes probes the admin port (deploy/k8s/pod-sidecar.yaml); distroless
# has no shell or curl to run one anyway.
ENTRYPOINT ["/usr/local/bin/ccgw-bridge"]
