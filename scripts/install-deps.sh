#!/usr/bin/env bash
# Installs the Debian packages kiln's tests use as real peers and fixtures, when missing.
# Needs root on Debian 12; a no-op when everything is already there.
set -euo pipefail
need=()
for pkg in busybox-static libseccomp-dev gcc libc6-dev qemu-user-static skopeo umoci zstd xz-utils bzip2 docker-registry openssl debootstrap slirp4netns iproute2 openssh-client git tmux uidmap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # the registry package starts a service on :5000; the tests start their own registries
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
# qemu-user through binfmt_misc, with the F flag, so foreign binaries run inside sandboxes
if [ "$(id -u)" = 0 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  for arch in mips64el aarch64 arm riscv64; do
    conf=/usr/lib/binfmt.d/qemu-$arch.conf
    if [ -e "$conf" ] && [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$arch" ]; then
      cat "$conf" > /proc/sys/fs/binfmt_misc/register || true
    fi
  done
fi
