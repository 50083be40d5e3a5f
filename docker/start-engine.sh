#!/usr/bin/env bash
# Makes sure a Docker engine answers, for tests/test_docker.py and `make compose-up`. Where none
# runs (as on this project's CI machines), installs Debian's docker.io and debootstrap (as root)
# and starts dockerd by hand: no bridge network and no iptables rules, since containers here use
# the host's network (docker/compose.host.yml) and private address ranges are off-limits.
set -euo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "no Docker engine answers, and only root can start one here" >&2
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing docker.io and debootstrap from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi
log=${DOCKERD_LOG:-/var/log/dockerd-model-serving.log}
echo "starting dockerd (log: $log)"
nohup dockerd --iptables=false --ip6tables=false --bridge=none \
  --data-root "${DOCKER_DATA_ROOT:-/var/lib/docker-model-serving}" >"$log" 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    docker info --format 'Docker engine {{.ServerVersion}} ({{.Driver}}) is up'
    exit 0
  fi
  sleep 1
done
echo "dockerd did not come up; its log:" >&2
tail -20 "$log" >&2
exit 1
