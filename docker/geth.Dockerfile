# The geth node image: geth v1.13.15, the last release with Clique sealing (DESIGN.md).
# Users: the official image, pinned (never `latest`). Offline: GETH_IMAGE is
# docker/geth-local.Dockerfile's image (Debian base + the geth built by `make setup`).
ARG GETH_IMAGE=ethereum/client-go:v1.13.15
FROM ${GETH_IMAGE}
LABEL org.opencontainers.image.title="energy-chain-lab geth node"
EXPOSE 8545 8546 30303
ENTRYPOINT ["geth"]
