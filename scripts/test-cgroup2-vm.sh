#!/usr/bin/env bash
# Runs kiln's cgroup-limit tests on a pure cgroup v2 machine: a KVM guest
# booted from Debian 12's kernel whose root is this machine's own
# filesystem, shared read-only over 9p (tmpfs on /tmp, /run and the like).
# The guest mounts cgroup2 with every controller, so it tests what a host
# with cgroup v1 (or hybrid) cannot: limits for root steps through v2, and
# rootless limits in a subtree delegated to the user as systemd's
# `Delegate=yes` gives one.
#
# Installs qemu-system-x86 and fetches the kernel package
# from Debian's archive. Usage: scripts/test-cgroup2-vm.sh (after
# scripts/test.sh, or at least make-fixtures.sh and make-test-users.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$repo/target/cgroup2-vm
mkdir -p "$work"

# TCG (emulation) by default: it needs nothing of the host, and the tests
# take seconds. KILN_VM_ACCEL=kvm is faster where nested KVM works (on this
# project's own CI machine a KVM guest hangs before its first message).
case ${KILN_VM_ACCEL:-tcg} in
  kvm) accel=(-enable-kvm -cpu host) ;;
  *) accel=(-accel tcg,thread=multi -cpu max) ;;
esac
command -v qemu-system-x86_64 >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86 >&2

# The kernel: Debian 12's, unpacked (not installed: the host keeps its own).
kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[^ ]*\)/\1/p' | head -1)
kver=${kpkg#linux-image-}
if [ ! -f "$work/kernel/boot/vmlinuz-$kver" ]; then
  (cd "$work" && rm -f linux-image-*.deb && apt-get download "$kpkg" >&2 &&
    dpkg -x linux-image-*.deb kernel && rm -f linux-image-*.deb)
fi
mods=$work/kernel/lib/modules/$kver/kernel

# The test binaries, built here; the guest runs them from the shared root.
export KILN_FIXTURES=${KILN_FIXTURES:-$repo/target/fixtures}
binaries=$(cargo test --no-run --message-format=json --test build_basic --test build_rootless \
  -p kiln --package kiln-executor --test sandbox 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])')

# What the guest runs as PID 1 once its root is the shared filesystem.
cat >"$work/stage2.sh" <<EOF
#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for dir in /tmp /run /var/tmp /root $repo/target/executor-tests; do mount -t tmpfs tmpfs \$dir; done
mkdir -p /dev/pts /dev/shm /dev/net && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
chmod 0666 /dev/net/tun
ip link set lo up
echo 1 > /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || true
echo "guest: kernel \$(uname -r), cgroup controllers: \$(cat /sys/fs/cgroup/cgroup.controllers)"
export CI=1 KILN_FIXTURES=$KILN_FIXTURES HOME=/root
status=0
# A test that runs past its time has its processes listed with where each
# thread waits (wchan), so a hang in CI says where it is.
dump_after() {
  sleep "\$1"
  echo "guest: a test has run for \$1 s; its processes, thread by thread (pid tid comm wchan command):"
  for p in /proc/[0-9]*; do
    cmd=\$(tr '\\0' ' ' <"\$p/cmdline" 2>/dev/null) && [ -n "\$cmd" ] || continue
    for t in "\$p"/task/*; do
      echo "guest:   \${p#/proc/} \${t##*/} \$(cat "\$t/comm" 2>/dev/null) \$(cat "\$t/wchan" 2>/dev/null) \${cmd:0:120}"
    done
  done
}
run() {
  echo "guest: \$*"
  dump_after 240 & local dog=\$!
  "\$@" || status=1
  kill \$dog 2>/dev/null
}
$(while read -r name exe; do
  case $name in
    build_basic) echo "run $exe --test-threads 1 resource_limits_bound_run_steps" ;;
    build_rootless) echo "run $exe --test-threads 1 rootless_limits_apply_in_a_delegated_cgroup_v2_subtree rootless_steps_see_their_ids_devices_and_networks" ;;
    sandbox) echo "run $exe --test-threads 1 memory_limit limits" ;;
  esac
done <<<"$binaries")
echo "guest: exit \$status"
echo o > /proc/sysrq-trigger

EOF
chmod +x "$work/stage2.sh"

# A small initramfs: busybox, the modules a 9p root needs, and an init
# that mounts the shared root and switches to it.
initrd=$work/initrd
rm -rf "$initrd" && mkdir -p "$initrd"/{bin,mods,proc,sys,dev,newroot}
cp /bin/busybox "$initrd/bin/busybox"
order="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
  drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/9p/9pnet net/9p/9pnet_virtio
  fs/netfs/netfs fs/fscache/fscache fs/9p/9p fs/overlayfs/overlay drivers/net/tun"
for m in $order; do cp "$mods/$m.ko" "$initrd/mods/"; done
cat >"$initrd/init" <<EOF
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(for m in $order; do printf '%s ' "${m##*/}"; done); do /bin/busybox insmod /mods/\$m.ko || echo "initrd: insmod \$m failed"; done
/bin/busybox mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=524288,cache=loose hostroot /newroot
/bin/busybox mount --move /dev /newroot/dev
/bin/busybox umount /proc
exec /bin/busybox switch_root /newroot $work/stage2.sh
EOF
chmod +x "$initrd/init"
(cd "$initrd" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initrd.img")

log=$work/guest.log
timeout 1200 qemu-system-x86_64 "${accel[@]}" -smp 2 -m 4096 -nographic -no-reboot \
  -kernel "$work/kernel/boot/vmlinuz-$kver" -initrd "$work/initrd.img" \
  -append "console=ttyS0 panic=-1 loglevel=4 systemd.unified_cgroup_hierarchy=1" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -nic none </dev/null 2>&1 | tee "$log" | grep --line-buffered -E "^(guest|test |test result|running|failures|---- |thread|initrd)" >&2 || true
grep -q "^guest: exit 0" "$log" || {
  echo "test-cgroup2-vm: the guest's tests failed or did not finish; see $log" >&2
  exit 1
}
echo "test-cgroup2-vm: the cgroup v2 tests passed in the guest" >&2
