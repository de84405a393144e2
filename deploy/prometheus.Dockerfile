# Prometheus from Debian's `prometheus` package, for docker-compose.yml where Docker Hub's
# prom/prometheus cannot be pulled (docs/operations.md, "Without Docker Hub"):
#   deploy/local-base-image.sh --prometheus hgo-prometheus:bookworm-local
# or, on any Debian bookworm base that has apt sources:
#   docker build -f deploy/prometheus.Dockerfile --build-arg BASE_IMAGE=debian:bookworm-slim \
#       -t hgo-prometheus:bookworm-local deploy
# then PROMETHEUS_IMAGE=hgo-prometheus:bookworm-local docker compose up. The command line
# is the one docker-compose.yml gives prom/prometheus (same flags).
ARG BASE_IMAGE=hgo-python:bookworm-local
FROM ${BASE_IMAGE}
# The prometheus user is made first with a fixed system id (the postinst keeps an existing
# system user, uid 100-999), so USER can be numeric.
# hadolint ignore=DL3008
RUN groupadd --system --gid 990 prometheus \
    && useradd --system --uid 990 --gid prometheus --home-dir /var/lib/prometheus --no-create-home \
        --shell /usr/sbin/nologin prometheus \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /prometheus \
    && chown prometheus:prometheus /prometheus
USER 990:990
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
