#!/usr/bin/env bash
# Lets an x86-64 machine run arm64 (Graviton) binaries: Debian's qemu-user-static, registered with
# the kernel's binfmt_misc with the F flag (the interpreter is opened once, at registration, so
# it works inside chroots and containers too). Needs root. Nothing to do on an arm64 machine.
set -euo pipefail
[ "$(uname -m)" = aarch64 ] && { echo "native arm64: no emulation needed"; exit 0; }
if ! [ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] && ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    qemu-user-static binfmt-support >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
  echo "qemu-aarch64 is not registered with the F flag; see /proc/sys/fs/binfmt_misc" >&2; exit 1; }
echo "arm64 emulation: $(head -1 /proc/sys/fs/binfmt_misc/qemu-aarch64), $(grep interpreter /proc/sys/fs/binfmt_misc/qemu-aarch64)"
