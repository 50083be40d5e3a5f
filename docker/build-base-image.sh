#!/usr/bin/env bash
# Builds the project's base image without any image registry: a Debian bookworm root filesystem
# (debootstrap) with Python 3.11 (venv) and a Java 17 runtime, imported as model-serving-base.
# Where a registry is reachable this is not needed: the Dockerfile's default base is public.
# Usage: docker/build-base-image.sh [TAG]   (needs root, debootstrap and a running Docker engine)
#   ARCH=arm64 docker/build-base-image.sh    an arm64 (Graviton) base on an x86 machine: needs
#   qemu-user-static registered with binfmt_misc (docker/enable-arm64-emulation.sh does that)
set -euo pipefail
arch=${ARCH:-$(dpkg --print-architecture)}
native=$(dpkg --print-architecture)
tag=${1:-model-serving-base:bookworm$([ "$arch" = "$native" ] || echo "-$arch")}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists"
  exit 0
fi
root=$(mktemp -d /var/tmp/model-serving-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (a few minutes)"
debootstrap --arch="$arch" --variant=minbase \
  --include=python3,python3-venv,openjdk-17-jre-headless,ca-certificates,curl \
  bookworm "$root" "$mirror"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
if [ "$arch" = "$native" ]; then
  tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$tag"
else
  # `docker import` labels the image with the engine's own architecture (Docker 20.10 ignores
  # --platform there); the classic builder, FROM scratch, labels it with the one asked for. arm64
  # with its variant (v8): without it BuildKit does not match the local image and asks a registry.
  context=$(mktemp -d /var/tmp/model-serving-base-context.XXXXXX)
  trap 'rm -rf "$root" "$context"' EXIT
  tar -C "$root" -cf "$context/rootfs.tar" .
  printf 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\n' > "$context/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q --platform "linux/$arch$([ "$arch" = arm64 ] && echo /v8)" \
    -t "$tag" "$context"
fi
docker image ls "$tag"
