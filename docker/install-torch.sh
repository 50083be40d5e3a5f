#!/usr/bin/env bash
# Installs the torch that requirements-serve.txt pins into the image's environment, before the rest
# of the requirements. Where it resolves to a CUDA build in a CPU image (ACCELERATOR=cpu), as
# PyPI's aarch64 torch does, it goes in without its CUDA packages (GBs, and some do not resolve
# for aarch64 on every index), with stub libraries in their place: docker/torch_cuda_stubs.py.
# A CPU build (download.pytorch.org/whl/cpu, for x86-64 and aarch64 alike) goes in as it is.
#   docker/install-torch.sh REQUIREMENTS   (run by docker/Dockerfile's deps stage)
set -euo pipefail
requirement=$(grep -E '^torch==' "$1")
if [ "${ACCELERATOR:-cpu}" = cuda ]; then
  # The GPU image (KServe's gpu variant): PyPI's x86-64 torch is the CUDA build; it comes with its
  # CUDA packages (several GB). Build it with --build-arg TORCH_INDEX= so that PyPI's is chosen.
  pip install --find-links /wheels ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$requirement"
  exit 0
fi
pip install --find-links /wheels ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} --no-deps "$requirement"
here=$(dirname "$0")
if [ "${ACCELERATOR:-cpu}" = cpu ] && python "$here/torch_cuda_stubs.py" --needs-stubs; then
  echo "$requirement is a CUDA build: installing it for CPU, without its CUDA packages"
  if ! command -v cc >/dev/null || ! command -v readelf >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
  fi
  python "$here/torch_cuda_stubs.py" --install
fi
