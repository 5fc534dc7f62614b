#!/bin/bash
# Build a Secure Boot variant of the Rakhsh test guest from Debian's signed boot chain.
#
#   test/guest/build-secureboot.sh OUTDIR
#
# Needs OUTDIR/vmlinuz and OUTDIR/initrd.img from test/guest/build.sh (Debian's
# kernel package ships the kernel signed by Debian's Secure Boot CA). Writes
# OUTDIR/guest-secureboot.img: a raw disk holding one FAT file system (no
# partition table; OVMF reads it as a whole-disk volume) with
#
#   EFI/BOOT/BOOTX64.EFI   shim, signed by Microsoft's UEFI CA (shim-signed)
#   EFI/BOOT/grubx64.efi   GRUB, signed by Debian (grub-efi-amd64-signed)
#   EFI/debian/grub.cfg    boots /vmlinuz with /initrd.img, console on ttyS0
#   vmlinuz, initrd.img    the test guest's kernel and initramfs
#
# Under OVMF with Microsoft's keys enrolled (OVMF_VARS_4M.ms.fd) this chain is
# accepted: shim checks GRUB, GRUB checks the kernel through shim, and the
# kernel reports "secureboot: Secure boot enabled" and locks itself down. The
# initramfs is not signed (Secure Boot does not cover it). GRUB 2.06 needs more
# than 256 MiB of guest memory to load the kernel here; 320 MiB is enough.
# The .deb files are downloaded (not installed) into OUTDIR/cache.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$(cd "$1" && pwd)
CACHE=$OUT/cache/secureboot
IMG=$OUT/guest-secureboot.img
log() { echo "build-secureboot.sh: $*" >&2; }

for f in vmlinuz initrd.img; do
	[ -f "$OUT/$f" ] || { log "$OUT/$f missing: run test/guest/build.sh $OUT first"; exit 1; }
done
if [ -f "$IMG" ] && [ "$IMG" -nt "$OUT/vmlinuz" ] && [ "$IMG" -nt "$OUT/initrd.img" ] && [ "$IMG" -nt "$HERE/build-secureboot.sh" ]; then
	log "$IMG is up to date"
	exit 0
fi
for tool in mformat mmd mcopy; do
	command -v "$tool" >/dev/null || { log "$tool missing: apt-get install mtools"; exit 1; }
done

mkdir -p "$CACHE"
(
	cd "$CACHE"
	for pkg in shim-signed grub-efi-amd64-signed; do
		ls "${pkg}"_*.deb >/dev/null 2>&1 || apt-get download "$pkg" >/dev/null 2>&1 || { log "apt-get download $pkg failed"; exit 1; }
	done
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for d in "$CACHE"/shim-signed_*.deb "$CACHE"/grub-efi-amd64-signed_*.deb; do
	dpkg-deb -x "$d" "$work/x"
done
shim=$work/x/usr/lib/shim/shimx64.efi.signed
grub=$work/x/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
for f in "$shim" "$grub"; do
	[ -f "$f" ] || { log "$f not found in the packages"; exit 1; }
done
printf 'set timeout=0\nlinux /vmlinuz console=ttyS0 no_timer_check\ninitrd /initrd.img\nboot\n' >"$work/grub.cfg"

tmp=$IMG.tmp
rm -f "$tmp"
truncate -s 48M "$tmp"
mformat -i "$tmp" -v RKSECBOOT -h 64 -s 32 -t 48 ::
mmd -i "$tmp" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$tmp" "$shim" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$tmp" "$grub" ::/EFI/BOOT/grubx64.efi
# The signed GRUB looks in its built-in prefix (/EFI/debian), then next to itself.
mcopy -i "$tmp" "$work/grub.cfg" ::/EFI/debian/grub.cfg
mcopy -i "$tmp" "$work/grub.cfg" ::/EFI/BOOT/grub.cfg
mcopy -i "$tmp" "$OUT/vmlinuz" ::/vmlinuz
mcopy -i "$tmp" "$OUT/initrd.img" ::/initrd.img
mv "$tmp" "$IMG"
log "wrote $IMG"
