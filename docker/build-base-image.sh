#!/usr/bin/env bash
# Builds the project's base image without any image registry: a Debian bookworm root filesystem
# (debootstrap) with Python 3.11 (venv) and a Java 17 runtime, imported as model-serving-base.
# Where a registry is reachable this is not needed: the Dockerfile's default base is public.
# Usage: docker/build-base-image.sh [TAG]   (needs root, debootstrap and a running Docker engine)
set -euo pipefail
tag=${1:-model-serving-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists"
  exit 0
fi
root=$(mktemp -d /var/tmp/model-serving-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (a few minutes)"
debootstrap --variant=minbase \
  --include=python3,python3-venv,openjdk-17-jre-headless,ca-certificates,curl \
  bookworm "$root" "$mirror"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$tag"
docker image ls "$tag"
