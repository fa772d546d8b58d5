#!/usr/bin/env bash
# Makes the rootfs tarballs the tests build on, from Debian's busybox-static packages:
#   target/fixtures/busybox-amd64.tar, target/fixtures/busybox-mips64el.tar
# Tests read them from $KILN_FIXTURES (default: target/fixtures). Idempotent.
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
