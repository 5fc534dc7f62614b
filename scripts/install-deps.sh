#!/usr/bin/env bash
# Installs the Debian 12 packages Rakhsh runs with and its tests use. Safe to run again.
set -euo pipefail

PKGS=(
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools   # hypervisor, disk tools, firmware, vTPM
  dnsmasq-base nftables iproute2                       # networking
  etcd-server                                          # the etcd store (tests start their own)
  xorriso genisoimage cpio mtools                      # test guest and config ISOs
  grub-common grub-pc-bin grub-efi-amd64-bin binutils  # test guest boot loaders
  util-linux                                           # prlimit for qemu-img under rlimits
  xz-utils gzip                                        # .xz image imports (xz --memlimit), test images
  docker-registry python3                              # OCI registry for containerdisk tests (python3: htpasswd)
  make git ca-certificates curl
)

if ! command -v go >/dev/null 2>&1; then
  echo "install-deps: Go 1.26 or newer is needed on PATH (https://go.dev/doc/install)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server enables a system etcd on 2379; the tests start their own on free ports.
if systemctl is-enabled etcd >/dev/null 2>&1; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
echo "install-deps: ok"
