#!/usr/bin/env bash
# Makes the rootfs tarballs the tests build on:
#   target/fixtures/busybox-{amd64,mips64el}.tar   from Debian's busybox-static packages
#   target/fixtures/debian12-minbase-{amd64,mips64el}.tar.zst   Debian 12 minbase roots (debootstrap;
#     the foreign one's second stage under qemu-user). A ready-made copy in $KILN_SHARED_ROOTFS
#     (default: ../shared/rootfs beside the checkout) is used instead when there is one.
# Tests read them from $KILN_FIXTURES (default: target/fixtures). Idempotent.
# `make-fixtures.sh busybox` makes only the busybox roots (the quick start needs no more).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${KILN_FIXTURES:-$PWD/target/fixtures}
mkdir -p "$out"
for arch in amd64 mips64el; do
  tarball=$out/busybox-$arch.tar
  [ -s "$tarball" ] && continue
  if [ "$arch" != "$(dpkg --print-architecture)" ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    dpkg --add-architecture "$arch"
    apt-get update -qq
  fi
  work=$(mktemp -d); chmod 755 "$work"
  (cd "$work" && apt-get download -qq "busybox-static:$arch" >/dev/null)
  dpkg -x "$work"/busybox-static_*.deb "$work/x"
  root=$work/root
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,var/tmp}
  cp "$work/x/bin/busybox" "$root/bin/busybox"
  # a fixed applet list: the binary may be foreign, so it is not asked for its own
  for applet in sh ash ls cat echo cp mv rm mkdir rmdir ln chmod chown touch sleep true false test env \
      pwd id whoami uname sed awk grep head tail wc sort uniq cut tr find xargs tar gzip gunzip dd seq \
      sha256sum md5sum stat du df printf date hostname readlink basename dirname expr which ps kill \
      mount umount ip ping wget nc mknod chroot yes; do
    ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\napp:x:1000:\n' > "$root/etc/group"
  chmod 1777 "$root/tmp" "$root/var/tmp"; chmod 700 "$root/root"
  tar --sort=name --mtime='2024-01-01 00:00:00Z' --owner=0 --group=0 --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"
  echo "made $tarball" >&2
done

# Debian 12 minbase roots, for the tests that run apt-get in a RUN step.
[ "${1:-}" = busybox ] && exit 0
shared=${KILN_SHARED_ROOTFS:-$PWD/../shared/rootfs}
for arch in amd64 mips64el; do
  tarball=$out/debian12-minbase-$arch.tar.zst
  [ -s "$tarball" ] && continue
  if [ -s "$shared/debian12-minbase-$arch.tar.zst" ]; then
    cp "$shared/debian12-minbase-$arch.tar.zst" "$tarball.tmp"; chmod 644 "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    echo "copied $tarball from $shared" >&2
    continue
  fi
  work=$(mktemp -d); chmod 755 "$work"
  root=$work/root
  if [ "$arch" = "$(dpkg --print-architecture)" ]; then
    debootstrap --variant=minbase bookworm "$root" >"$work/log" 2>&1 || { tail -20 "$work/log" >&2; exit 1; }
  else
    # the second stage runs the foreign dpkg under qemu-user (install-deps registered the handler)
    debootstrap --variant=minbase --foreign --arch="$arch" bookworm "$root" >"$work/log" 2>&1 \
      && chroot "$root" /debootstrap/debootstrap --second-stage >>"$work/log" 2>&1 \
      || { tail -20 "$work/log" >&2; exit 1; }
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/debootstrap
  tar --sort=name --numeric-owner -C "$root" -cf - . | zstd -10 -T0 -q -o "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"
  echo "made $tarball" >&2
done
