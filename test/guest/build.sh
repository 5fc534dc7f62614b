#!/bin/bash
# Build the Rakhsh test guest from Debian packages.
#
#   test/guest/build.sh OUTDIR
#
# Outputs in OUTDIR: guest.iso (hybrid: CD-ROM or hard disk, BIOS or UEFI),
# guest.qcow2 (the same image as qcow2), vmlinuz and initrd.img (for -kernel).
# Downloads are cached in OUTDIR/cache. Nothing is rebuilt while every output
# is newer than this script and the files under rootfs/.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
CACHE=$OUT/cache

# Host tools needed to build (Debian package names).
BUILD_PKGS=(grub-common grub-pc-bin grub-efi-amd64-bin mtools xorriso qemu-utils cpio gzip binutils)
# Guest contents: downloaded and unpacked, never installed on the host.
KERNEL_META=linux-image-amd64
BUSYBOX_PKG=busybox-static
STUB_PKG=systemd-boot-efi   # linuxx64.efi.stub, for the UEFI boot path
QGA_PKG=qemu-guest-agent    # qemu-ga; its shared libraries are the host's (same Debian release)

# Kernel modules the guest loads (dependencies are added automatically).
# The generic kernel is used rather than the cloud one: the cloud kernel has
# no AHCI (the q35 CD-ROM controller) and no e1000/e1000e.
MODULES=(
	virtio_pci virtio_blk virtio_scsi virtio_net virtio_console virtio_rng virtio_balloon virtio_mem
	scsi_mod sd_mod sr_mod cdrom libata ahci ata_piix nvme
	isofs fat vfat nls_cp437 nls_iso8859_1 nls_utf8 nls_ascii
	e1000 e1000e
	button evdev
)

log() { echo "build.sh: $*" >&2; }

# ---------------------------------------------------------------- up to date?
outputs=("$OUT/guest.iso" "$OUT/guest.qcow2" "$OUT/vmlinuz" "$OUT/initrd.img")
inputs=("$HERE/build.sh")
while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$HERE/rootfs" -print0)
up_to_date=1
for o in "${outputs[@]}"; do
	[ -e "$o" ] || { up_to_date=0; break; }
	for i in "${inputs[@]}"; do
		[ "$o" -nt "$i" ] || { up_to_date=0; break 2; }
	done
done
if [ $up_to_date = 1 ]; then
	log "outputs in $OUT are up to date"
	exit 0
fi

# ---------------------------------------------------------------- apt helpers
# Another apt run may be going on (e.g. a provisioning step logging to
# /tmp/apt.log and ending it with a "done" line): wait for it, and let apt
# itself wait for the dpkg lock.
wait_for_other_apt() {
	local n=0
	if [ -f /tmp/apt.log ]; then
		while ! grep -q '^done' /tmp/apt.log 2>/dev/null; do
			[ $n -eq 0 ] && log "waiting for the apt run logging to /tmp/apt.log"
			n=$((n + 1))
			[ $n -gt 600 ] && { log "gave up waiting for /tmp/apt.log"; break; }
			sleep 1
		done
	fi
}

APT_OPTS=(-o DPkg::Lock::Timeout=300 -o APT::Sandbox::User=root -q)
apt_updated=0
apt_update() {
	[ $apt_updated = 1 ] && return 0
	log "apt-get update"
	apt-get "${APT_OPTS[@]}" update >&2 || return 1
	apt_updated=1
}

apt_install() {
	local missing=() p try
	for p in "$@"; do
		[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	wait_for_other_apt
	log "apt-get install ${missing[*]}"
	for try in 1 2 3 4 5; do
		if DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y \
			--no-install-recommends "${missing[@]}" >&2; then
			return 0
		fi
		apt_update || true
		sleep $((try * 2))
	done
	log "could not install ${missing[*]}"
	return 1
}

# apt_download PKG: fetch PKG's .deb into $CACHE (once) and print its path.
apt_download() {
	local pkg=$1 f try
	f=$(find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
	if [ -n "$f" ]; then echo "$f"; return 0; fi
	for try in 1 2 3; do
		if (cd "$CACHE" && apt-get "${APT_OPTS[@]}" download "$pkg" >&2); then
			find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1
			return 0
		fi
		wait_for_other_apt
		apt_update || true
		sleep $try
	done
	log "could not download $pkg"
	return 1
}

# ---------------------------------------------------------------- build
start=$(date +%s)
apt_install "${BUILD_PKGS[@]}"
mkdir -p "$CACHE"

# The kernel metapackage is only looked at to learn the real image package;
# once that is cached it is used as is (no network needed).
kdeb=$(find "$CACHE" -maxdepth 1 -name 'linux-image-[0-9]*-amd64_*.deb' | sort -V | tail -n 1)
if [ -z "$kdeb" ]; then
	meta=$(apt_download "$KERNEL_META")
	kpkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p')
	kpkg=${kpkg%%$'\n'*}
	[ -n "$kpkg" ] || { log "cannot find the kernel package in $meta"; exit 1; }
	kdeb=$(apt_download "$kpkg")
fi
bbdeb=$(apt_download "$BUSYBOX_PKG")
stubdeb=$(apt_download "$STUB_PKG")
qgadeb=$(apt_download "$QGA_PKG")
log "kernel: $(basename "$kdeb"); busybox: $(basename "$bbdeb")"

WORK=$OUT/.work
rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/busybox" "$WORK/root" "$WORK/iso/boot/grub"
trap 'rm -rf "$WORK"' EXIT

dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$WORK/kernel" --wildcards './boot/vmlinuz-*' './lib/modules/*'
dpkg-deb -x "$bbdeb" "$WORK/busybox"
mkdir -p "$WORK/stub"
dpkg-deb --fsys-tarfile "$stubdeb" | tar -x -C "$WORK/stub" --wildcards '*/linuxx64.efi.stub'
stub=$(find "$WORK/stub" -name linuxx64.efi.stub)
vmlinuz=$(find "$WORK/kernel/boot" -name 'vmlinuz-*' | sort -V | tail -n 1)
kver=${vmlinuz##*/vmlinuz-}
moddir=$WORK/kernel/lib/modules/$kver

# Map module names (with '-' folded to '_') to their files.
declare -A modpath=()
while IFS= read -r f; do
	n=${f##*/}; n=${n%.ko}; n=${n//-/_}
	modpath[$n]=$f
done < <(find "$moddir/kernel" -name '*.ko')

# Depth-first walk over the "depends=" entries of each module's .modinfo
# section, so every module comes after the modules it needs.
declare -A seen=()
load_order=()
add_module() {
	local n=${1//-/_} f deps d
	[ -n "${seen[$n]:-}" ] && return 0
	seen[$n]=1
	f=${modpath[$n]:-}
	if [ -z "$f" ]; then
		log "module $n: not a module in $kver (built in or absent), skipped"
		return 0
	fi
	deps=$(tr '\0' '\n' <"$f" | sed -n 's/^depends=//p')
	deps=${deps%%$'\n'*}
	for d in ${deps//,/ }; do add_module "$d"; done
	load_order+=("$f")
}
for m in "${MODULES[@]}"; do add_module "$m"; done

R=$WORK/root
mkdir -p "$R"/{bin,dev,etc,lib/modules,proc,root,run,sys,tmp,mnt}
ln -s bin "$R/sbin"
mkdir -p "$R/usr"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"
cp "$WORK/busybox/bin/busybox" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
	[ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
done
: >"$R/lib/modules/load.order"
for f in "${load_order[@]}"; do
	cp "$f" "$R/lib/modules/"
	n=${f##*/}
	case $n in
	scsi_mod.ko) echo "$n scan=sync" ;;  # SCSI devices exist when insmod returns
	*) echo "$n" ;;
	esac >>"$R/lib/modules/load.order"
done
# qemu-ga (the guest agent) and the shared libraries it needs, as ldd finds them on this
# Debian host, in /lib/x86_64-linux-gnu with the loader in /lib64. /init starts it.
mkdir -p "$WORK/qga" "$R/lib/x86_64-linux-gnu" "$R/lib64"
dpkg-deb --fsys-tarfile "$qgadeb" | tar -x -C "$WORK/qga" ./usr/sbin/qemu-ga
cp "$WORK/qga/usr/sbin/qemu-ga" "$R/bin/qemu-ga"
ldd "$WORK/qga/usr/sbin/qemu-ga" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' |
	while read -r lib; do
		case $lib in
		*/ld-linux-x86-64.so.2) cp -L "$lib" "$R/lib64/ld-linux-x86-64.so.2" ;;
		*) cp -L "$lib" "$R/lib/x86_64-linux-gnu/" ;;
		esac
	done
# The binary must run from the initramfs as built (fails the build otherwise).
chroot "$R" /bin/qemu-ga --version >/dev/null || { log "qemu-ga does not run in the guest root"; exit 1; }
# rootfs/bin/chpasswd and shutdown replace busybox's links (cp would write through them).
rm -f "$R/bin/chpasswd" "$R/bin/shutdown"
cp -a "$HERE/rootfs/." "$R/"
chmod 755 "$R/init" "$R/etc/acpi/PWRF/00000080" "$R/etc/rakhsh/dhcp" "$R/bin/chpasswd" "$R/bin/shutdown"
chmod 600 "$R/etc/shadow"
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
echo "$kver" >"$R/etc/rakhsh/kernel-version"

(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 -n) >"$WORK/initrd.img"
cp "$vmlinuz" "$WORK/vmlinuz"

# no_timer_check: under software emulation on a loaded host the kernel's IO-APIC timer
# check can miss its ticks and panic ("IO-APIC + timer doesn't work!"), as seen with 20
# guests booting at once on 2 CPUs; the check is only a probe for broken hardware.
# memhp_default_state: memory the kernel hot-adds (virtio-mem) comes online at once, in the
# movable zone, so that it can be unplugged again.
CMDLINE="console=ttyS0,115200 no_timer_check memhp_default_state=online_movable"

# UEFI path: a unified kernel image (systemd-stub + kernel + initrd + command
# line in one PE file) that GRUB chainloads. GRUB's own "linux" command on
# UEFI reads the kernel into GRUB's heap, which is too small with -m 256
# ("error: out of memory"); the stub instead gets its memory from the firmware.
printf '%s' "$CMDLINE" >"$WORK/cmdline.txt"
stub_end=0
while read -r size vma; do
	e=$((16#$vma + 16#$size))
	[ $e -gt $stub_end ] && stub_end=$e
done < <(objdump -h "$stub" | awk '$1 ~ /^[0-9]+$/ { print $3, $4 }')
next=$(((stub_end + 0xfff) & ~0xfff))
uki_args=()
for sec in cmdline:"$WORK/cmdline.txt" linux:"$WORK/vmlinuz" initrd:"$WORK/initrd.img"; do
	uki_args+=(--add-section ".${sec%%:*}=${sec#*:}" --change-section-vma ".${sec%%:*}=$(printf '0x%x' $next)")
	next=$(((next + $(stat -c %s "${sec#*:}") + 0xfff) & ~0xfff))
done
objcopy "${uki_args[@]}" "$stub" "$WORK/iso/boot/rakhsh.efi"

# ISO: GRUB for BIOS (El Torito + hybrid MBR) and UEFI (EFI system partition),
# both on the serial console, booting at once.
cp "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/iso/boot/"
cat >"$WORK/iso/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
set default=0
if [ "\$grub_platform" = efi ]; then
	menuentry "Rakhsh test guest (UEFI)" {
		chainloader /boot/rakhsh.efi
	}
else
	menuentry "Rakhsh test guest" {
		linux /boot/vmlinuz $CMDLINE
		initrd /boot/initrd.img
	}
fi
EOF
grub-mkrescue -o "$WORK/guest.iso" --compress=xz --fonts= --locales= --themes= \
	"$WORK/iso" -- -volid RAKHSH_GUEST >"$WORK/grub-mkrescue.log" 2>&1 ||
	{ cat "$WORK/grub-mkrescue.log" >&2; exit 1; }
qemu-img convert -f raw -O qcow2 "$WORK/guest.iso" "$WORK/guest.qcow2"

for o in vmlinuz initrd.img guest.iso guest.qcow2; do mv -f "$WORK/$o" "$OUT/$o"; done
log "built in $(($(date +%s) - start))s: kernel $kver, ${#load_order[@]} modules"
ls -l "${outputs[@]}" >&2
