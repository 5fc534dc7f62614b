#!/usr/bin/env bash
# Runs the README's test command (make test) as it would run on the three kinds of machine the
# suite must pass on, simulated on this one (as root, each in a private mount namespace):
#   nokvm      no /dev/kvm at all: /dev is replaced by a copy without kvm
#   deadkvm    a /dev/kvm that opens but cannot run a vCPU: an empty file bind-mounted over it
#   slowkvm    a /dev/kvm that starts vCPUs but barely runs guests: QEMU's -cpu host is turned
#              into qemu64, which on a nested host without EPT support for it runs the probe
#              hundreds of times slower than TCG (needs a working /dev/kvm)
# In deadkvm and slowkvm the device is open to every user (as group kvm with mode 0660 is on
# a host where KVM works), since QEMU runs as its own user and must be able to open it.
# Usage: scripts/test-kvm-variants.sh VARIANT [make target, default test]
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:?usage: $0 nokvm|deadkvm|slowkvm [make target]}
target=${2:-test}
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
work=$(mktemp -d /tmp/rakhsh-kvm-variant.XXXXXX)
chmod 755 "$work" # the QEMU user runs the slowkvm shim from here
trap 'rm -rf "$work"' EXIT

case "$variant" in
nokvm)
  exec unshare -m --propagation private bash -euo pipefail -c '
    work=$1; target=$2
    mkdir "$work/dev"
    mount -t tmpfs -o mode=755 tmpfs "$work/dev"
    cp -a /dev/. "$work/dev/" 2>/dev/null || true
    rm -f "$work/dev/kvm"
    for m in pts shm mqueue hugepages; do
      if mountpoint -q "/dev/$m"; then mkdir -p "$work/dev/$m"; mount --rbind "/dev/$m" "$work/dev/$m"; fi
    done
    mount --rbind "$work/dev" /dev
    test ! -e /dev/kvm
    echo "test-kvm-variants: /dev/kvm hidden"
    make "$target"' _ "$work" "$target"
  ;;
deadkvm)
  exec unshare -m --propagation private bash -euo pipefail -c '
    work=$1; target=$2
    : >"$work/kvm"
    chmod 666 "$work/kvm"
    mount --bind "$work/kvm" /dev/kvm
    echo "test-kvm-variants: /dev/kvm is an empty file"
    make "$target"' _ "$work" "$target"
  ;;
slowkvm)
  real=$(command -v qemu-system-x86_64)
  mkdir "$work/bin"
  cat >"$work/bin/qemu-system-x86_64" <<SHIM
#!/bin/bash
# test-kvm-variants slowkvm: -cpu host becomes qemu64 under KVM.
args=("\$@")
for i in "\${!args[@]}"; do
  case "\${args[\$i]}" in host|host,*) args[\$i]=qemu64\${args[\$i]#host} ;; esac
done
exec $real "\${args[@]}"
SHIM
  chmod 755 "$work/bin" "$work/bin/qemu-system-x86_64"
  echo "test-kvm-variants: -cpu host runs as qemu64"
  exec unshare -m --propagation private bash -euo pipefail -c '
    work=$1; target=$2
    mkdir "$work/dev"
    mount -t tmpfs -o mode=755 tmpfs "$work/dev"
    cp -a /dev/. "$work/dev/" 2>/dev/null || true
    chmod 666 "$work/dev/kvm"
    for m in pts shm mqueue hugepages; do
      if mountpoint -q "/dev/$m"; then mkdir -p "$work/dev/$m"; mount --rbind "/dev/$m" "$work/dev/$m"; fi
    done
    mount --rbind "$work/dev" /dev
    PATH="$work/bin:$PATH" make "$target"' _ "$work" "$target"
  ;;
*)
  echo "unknown variant $variant: nokvm, deadkvm or slowkvm" >&2
  exit 2
  ;;
esac
