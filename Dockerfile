# Drover's binaries in one image: driver, vendor-bridge, http-gateway,
# controller-sim, fleet and the operator CLI drover, in /usr/local/bin. docker-compose.yml
# builds it; by hand:
#
#   docker build -t drover .
#
# Needs BuildKit (the default builder of current Docker) for the cache
# mounts below. There is deliberately no `# syntax=` line: it would make
# BuildKit pull a Dockerfile frontend image, which an offline builder (CI,
# deploy/stand-in-images) cannot; the built-in frontend understands
# `RUN --mount`.

# The builder and the runtime are the same Debian release, so the binaries
# link against the glibc they run with.
ARG DEBIAN_RELEASE=bookworm
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# Downloaded crates and target/ live in BuildKit cache mounts that outlive
# the build: after a source change only Drover's own crates recompile.
# --locked builds exactly what Cargo.lock says. target/ is a cache mount, so
# the binaries are copied out of it within the same step.
#
# Cargo rebuilds a crate when a source file is newer than its last build,
# but a file changed while a build ran (or copied with an old mtime) is older
# than the cached build of its old content, and the image would silently
# keep the old code. So target/ also keeps the checksums of the sources it
# was built from, and a file whose checksum changed is touched first.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    { sha256sum --check --quiet target/source-checksums 2>/dev/null \
        | sed -n 's/: FAILED$//p' | xargs -r -d '\n' touch -c; } \
 && cargo build --release --locked -p driver -p vendor-bridge -p http-gateway -p controller-sim -p fleet -p drover-cli \
 && find . -path ./target -prune -o -type f -print0 | xargs -0 sha256sum > target/source-checksums \
 && mkdir -p /out \
 && cp target/release/driver target/release/vendor-bridge target/release/http-gateway target/release/controller-sim target/release/fleet target/release/drover /out/

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: Sentry (and any TLS endpoint) is reached over HTTPS.
# The compose health checks are the binaries' own `--health`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so that files on shared volumes (UPLOAD_DIR, FILES_DIR) belong
# to the same user in every container. Both directories exist in the image so
# that a new named volume mounted there starts out owned by that user.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/drover --shell /usr/sbin/nologin drover \
 && mkdir -p /var/lib/drover/uploads /var/lib/drover/files \
 && chown -R drover:drover /var/lib/drover
COPY --from=builder /out/ /usr/local/bin/
USER drover
WORKDIR /var/lib/drover
# Every service names its binary (`command: ["driver"]`); alone, the image
# explains itself.
CMD ["driver", "--help"]
