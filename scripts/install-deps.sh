#!/usr/bin/env bash
# Installs the Debian 12 packages Rakhsh runs with and its tests use. Safe to run again.
set -euo pipefail

PKGS=(
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools   # hypervisor, disk tools, firmware, vTPM
  dnsmasq-base nftables iproute2                       # networking
  etcd-server                                          # the etcd store (tests start their own)
  prometheus                                           # metrics tests: prometheus and promtool (tests start their own)
  xorriso genisoimage cpio mtools                      # test guest and config ISOs
  grub-common grub-pc-bin grub-efi-amd64-bin binutils  # test guest boot loaders
  util-linux                                           # prlimit for qemu-img under rlimits
  xz-utils gzip                                        # .xz image imports (xz --memlimit), test images
  docker-registry python3                              # OCI registry for containerdisk tests (python3: htpasswd)
  make git ca-certificates curl unzip
  gcc libc6-dev                                        # cgo: the C zstd library of the backup chunk store
  chromium                                             # the web UI's browser tests (test/e2e/ui_test.go)
)
GO_VERSION=1.26.8   # installed into /usr/local/go when no Go >= 1.26 is on PATH
# go.sum hash of golang.org/toolchain@v0.0.1-go1.26.8.linux-amd64, checked after the download.
GO_H1_AMD64="h1:ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM="

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# kubectl for the kubectl compatibility tests: Debian's kubernetes-client, unless a kubectl
# is on PATH already (some images ship a newer one).
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's prometheus package starts a server on :9090 where an init system runs services; the
# tests start their own on loopback, so the packaged one is stopped and kept from starting.
if [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null 2>&1 && $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

# Go: Debian 12 ships 1.19, so the toolchain comes from the Go module proxy, which serves every
# release as the module golang.org/toolchain (what `GOTOOLCHAIN` downloads), over HTTPS.
go_ok() {
  command -v go >/dev/null 2>&1 || return 1
  local v
  v=$(go env GOVERSION 2>/dev/null | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/')
  set -- $v
  [ "${1:-0}" -gt 1 ] || { [ "${1:-0}" -eq 1 ] && [ "${2:-0}" -ge 26 ]; }
}
if ! go_ok; then
  proxy=$(printf '%s' "${GOPROXY:-https://proxy.golang.org}" | cut -d, -f1)
  case "$proxy" in https://*) ;; *) proxy=https://proxy.golang.org ;; esac
  arch=$(dpkg --print-architecture)
  if [ "$arch" != amd64 ]; then
    echo "install-deps: no pinned Go toolchain for $arch; install Go ${GO_VERSION} by hand" >&2
    exit 1
  fi
  mod="v0.0.1-go${GO_VERSION}.linux-${arch}"
  tmp=$(mktemp -d)
  echo "install-deps: installing Go ${GO_VERSION} from ${proxy} into /usr/local/go"
  curl -fsSL --retry 3 -o "$tmp/go.zip" "${proxy}/golang.org/toolchain/@v/${mod}.zip"
  got=$(python3 "$(dirname "$0")/go-modhash.py" "$tmp/go.zip")
  if [ "$got" != "$GO_H1_AMD64" ]; then
    echo "install-deps: the Go toolchain download has hash $got, want $GO_H1_AMD64" >&2
    exit 1
  fi
  unzip -q "$tmp/go.zip" -d "$tmp/x"
  $SUDO rm -rf /usr/local/go
  $SUDO mv "$tmp/x/golang.org/toolchain@${mod}" /usr/local/go
  $SUDO chmod -R a+rX /usr/local/go
  chmod +x /usr/local/go/bin/* /usr/local/go/pkg/tool/*/* 2>/dev/null || true
  $SUDO ln -sf /usr/local/go/bin/go /usr/local/go/bin/gofmt /usr/local/bin/
  rm -rf "$tmp"
  hash -r
  go_ok || { echo "install-deps: Go ${GO_VERSION} did not install" >&2; exit 1; }
fi

# The unprivileged users QEMU and dnsmasq run as (rakhsh serve --qemu-user, --dnsmasq-user).
# The agent makes them too when they are missing; dnsmasq-base already made "dnsmasq".
if ! getent passwd rakhsh-qemu >/dev/null; then
  groups=()
  getent group kvm >/dev/null && groups=(--groups kvm)
  echo "install-deps: creating the system user rakhsh-qemu"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --comment "Rakhsh unprivileged service user" "${groups[@]}" rakhsh-qemu
fi
getent passwd dnsmasq >/dev/null || $SUDO useradd --system --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin --comment "Rakhsh unprivileged service user" dnsmasq

# Debian's etcd-server enables a system etcd on 2379; the tests start their own on free ports.
if systemctl is-enabled etcd >/dev/null 2>&1; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
echo "install-deps: ok"
