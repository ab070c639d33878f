# Offline stand-in for ethereum/client-go:v1.13.15 on machines with no registry: a local
# Debian base (BASE_IMAGE, same glibc as the host that built geth) + tools/bin/geth, which
# lab/images.py stages as geth/geth in the build context.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY geth/geth /usr/local/bin/geth
RUN geth version | grep -q '^Version: 1.13.15'
ENTRYPOINT ["geth"]
