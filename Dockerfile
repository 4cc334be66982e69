# syntax=docker/dockerfile:1
# ambit's container image, a drop-in for Istio's ztunnel image: Istio's ztunnel chart sets only
# the arguments (`proxy ztunnel`), so the entrypoint is the binary, and the working directory is
# `/` because ztunnel's default paths are relative (`./var/run/secrets/tokens/istio-token`,
# `./var/run/secrets/istio/root-cert.pem`, `./etc/istio/config/mesh`).
#
#   docker build -t <registry>/ambit:<tag> .
#   helm upgrade ztunnel istio/ztunnel --set image=<registry>/ambit:<tag>   # Istio's chart
#   helm install ztunnel deploy/helm/ambit --set hub=<registry> --set tag=<tag>   # ambit's

ARG RUST_VERSION=1.95

# --- build: the release binary, dependencies cached across builds -------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The binary is also linked under the name Istio's image has, for tooling that execs it by path.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ambit --bin ambit \
    && mkdir -p /out/usr/local/bin \
    && cp target/release/ambit /out/usr/local/bin/ambit \
    && ln -s ambit /out/usr/local/bin/ztunnel

# --- runtime: glibc, libgcc and CA certificates (for XDS_ROOT_CA=SYSTEM), nothing else -----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
WORKDIR /
# Non-root by default (dedicated mode needs no capability). In-pod mode needs CAP_NET_ADMIN,
# CAP_SYS_ADMIN and CAP_NET_RAW effective, which Kubernetes grants only to uid 0: both charts
# set `runAsUser: 0` with exactly those capabilities, as Istio's does.
USER 65532:65532
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/ambit"]
CMD ["proxy", "ztunnel"]
