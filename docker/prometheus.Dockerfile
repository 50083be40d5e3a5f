# Prometheus 2.42 from Debian's packages, run as its own unprivileged user.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends prometheus curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown prometheus: /prometheus
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
