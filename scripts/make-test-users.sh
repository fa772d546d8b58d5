#!/usr/bin/env bash
# The unprivileged users the rootless tests run kiln as: kiln-test, with a
# subordinate id range (newuidmap/newgidmap map it), and kiln-test-nosub,
# without one. Idempotent; needs root.
set -euo pipefail
if ! id kiln-test >/dev/null 2>&1; then
  useradd -m -s /bin/sh kiln-test
fi
grep -q '^kiln-test:' /etc/subuid 2>/dev/null || usermod --add-subuids 100000-165535 kiln-test
grep -q '^kiln-test:' /etc/subgid 2>/dev/null || usermod --add-subgids 100000-165535 kiln-test
if ! id kiln-test-nosub >/dev/null 2>&1; then
  useradd -m -s /bin/sh kiln-test-nosub
fi
# useradd may give new users a range (SUB_UID_COUNT): this one must have none.
sed -i '/^kiln-test-nosub:/d' /etc/subuid /etc/subgid
# The users run the kiln binary and read the fixtures from this checkout: a
# private directory above it (a clone under /root) gets search permission
# for others, nothing more, so that they can reach it.
as_test_user() { setpriv --reuid=kiln-test --regid="$(id -g kiln-test)" --init-groups -- "$@"; }
dir=""
IFS=/ read -ra parts <<<"${PWD#/}"
for part in "${parts[@]}"; do
  dir="$dir/$part"
  if ! as_test_user test -x "$dir"; then
    echo "make-test-users: giving others search permission on $dir (the test users run kiln from below it)" >&2
    chmod o+x "$dir"
  fi
done
for user in kiln-test kiln-test-nosub; do
  if ! setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- test -r "$PWD/Cargo.toml"; then
    echo "make-test-users: $user cannot read $PWD: the rootless tests need the checkout readable by other users" >&2
    exit 1
  fi
done
