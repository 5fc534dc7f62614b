#!/bin/bash
# Boot the test guest built by build.sh under QEMU (TCG) and check its markers.
#
#   test/guest/boot-test.sh OUTDIR
#
# Each run gets its serial console through a pair of FIFOs (so the test can
# also type into the shell) and a QMP unix socket (for system_powerdown).
# Ends with "N passed, N failed"; exits non-zero if any check failed.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
OUT=$(cd "$1" && pwd)
for f in guest.iso guest.qcow2 vmlinuz initrd.img; do
	[ -f "$OUT/$f" ] || { echo "boot-test.sh: $OUT/$f missing; run build.sh first" >&2; exit 2; }
done

RUNS=${RUNS:-}                      # only these runs (space-separated names), default all
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}   # seconds from QEMU start to the ready marker
OFF_TIMEOUT=${OFF_TIMEOUT:-30}      # seconds from system_powerdown to QEMU exit
OVMF_CODE=/usr/share/OVMF/OVMF_CODE.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS.fd

log() { echo "boot-test.sh: $*" >&2; }

# ---------------------------------------------------------------- host tools
apt_ok() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]; }
apt_install() {
	local missing=() p try
	for p in "$@"; do apt_ok "$p" || missing+=("$p"); done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ -f /tmp/apt.log ]; then
		for try in $(seq 600); do grep -q '^done' /tmp/apt.log 2>/dev/null && break; sleep 1; done
	fi
	log "apt-get install ${missing[*]}"
	for try in 1 2 3; do
		DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 install -y \
			--no-install-recommends "${missing[@]}" >&2 && return 0
		apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || true
		sleep $((try * 2))
	done
	return 1
}
# QMP client: python3 where there is one, else socat (QMP_CLIENT overrides).
QMP_CLIENT=${QMP_CLIENT:-$(command -v python3 >/dev/null && echo python3 || echo socat)}
pkgs=(qemu-system-x86 qemu-utils xorriso ovmf)
[ "$QMP_CLIENT" = socat ] && pkgs+=(socat)
apt_install "${pkgs[@]}"

# ---------------------------------------------------------------- bookkeeping
TMP=$(mktemp -d /tmp/rakhsh-guest-test.XXXXXX)
declare -A VMPID=() CATPID=() T0=()
STARTED=()   # every PID this script started, killed on exit if still there
PASS=0 FAIL=0
SUMMARY=()

cleanup() {
	local p
	for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "${KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%01d' $(($1 / 1000)) $((($1 % 1000) / 100)); }

check() { # check NAME OK(0/1) DETAIL
	if [ "$2" = 0 ]; then
		PASS=$((PASS + 1)); SUMMARY+=("PASS $1 ${3:-}")
		echo "PASS $1 ${3:-}"
	else
		FAIL=$((FAIL + 1)); SUMMARY+=("FAIL $1 ${3:-}")
		echo "FAIL $1 ${3:-}"
	fi
}

# start_vm NAME QEMU-ARGS...: start QEMU in the background.
start_vm() {
	local name=$1 d=$TMP/$1
	shift
	mkdir -p "$d"
	mkfifo "$d/serial.in" "$d/serial.out"
	cat "$d/serial.out" >"$d/serial.log" &
	CATPID[$name]=$!; STARTED+=($!)
	T0[$name]=$(now_ms)
	qemu-system-x86_64 -machine q35,accel=tcg -nodefaults -no-user-config -display none \
		-m 256 -smp 1 \
		-chardev "pipe,id=ser0,path=$d/serial" -serial chardev:ser0 \
		-qmp "unix:$d/qmp.sock,server=on,wait=off" \
		"$@" >"$d/qemu.log" 2>&1 &
	VMPID[$name]=$!; STARTED+=($!)
}

want() { [ -z "$RUNS" ] || [[ " $RUNS " == *" $1 "* ]]; }

alive() { kill -0 "${VMPID[$1]}" 2>/dev/null; }

# wait_for NAME REGEX TIMEOUT: wait for a serial line; prints ms since start.
wait_for() {
	local name=$1 re=$2 limit=$(($(now_ms) + $3 * 1000))
	while [ "$(now_ms)" -lt $limit ]; do
		if grep -aqE -- "$re" "$TMP/$name/serial.log" 2>/dev/null; then
			echo $(($(now_ms) - T0[$name]))
			return 0
		fi
		alive "$name" || { grep -aqE -- "$re" "$TMP/$name/serial.log" 2>/dev/null && { echo $(($(now_ms) - T0[$name])); return 0; }; return 1; }
		sleep 0.2
	done
	return 1
}

has() { grep -aqE -- "$2" "$TMP/$1/serial.log" 2>/dev/null; }

# qmp NAME COMMAND [ARGUMENTS-JSON]: send one QMP command (after capabilities
# negotiation); fails if QEMU answers with an error.
qmp() {
	local sock=$TMP/$1/qmp.sock args=${3:-'{}'} n
	if [ "$QMP_CLIENT" = python3 ]; then
		python3 - "$sock" "$2" "$args" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
def reply():
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            return msg
f.readline()  # greeting
for cmd, args in (("qmp_capabilities", {}), (sys.argv[2], json.loads(sys.argv[3]))):
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n"); f.flush()
    r = reply()
    if "error" in r:
        sys.exit("qmp %s: %s" % (cmd, r["error"]))
PY
	else
		# Both commands must be answered with "return".
		n=$(printf '{"execute":"qmp_capabilities"}\n{"execute":"%s","arguments":%s}\n' "$2" "$args" |
			socat -t 2 - "UNIX-CONNECT:$sock" | grep -c '"return"' || true)
		[ "${n:-0}" -ge 2 ]
	fi
}

# stop_vm NAME: system_powerdown, expect the marker and QEMU to exit by itself.
stop_vm() {
	local name=$1 t ms limit rc=0
	t=$(now_ms)
	if ! qmp "$name" system_powerdown; then
		check "$name/powerdown" 1 "(QMP system_powerdown failed)"
	else
		if ms=$(wait_for "$name" '^RAKHSH-GUEST: powerdown' "$OFF_TIMEOUT"); then
			check "$name/powerdown-marker" 0
		else
			check "$name/powerdown-marker" 1
		fi
	fi
	limit=$(($(now_ms) + OFF_TIMEOUT * 1000))
	while alive "$name" && [ "$(now_ms)" -lt $limit ]; do sleep 0.2; done
	if alive "$name"; then
		check "$name/exit" 1 "(still running ${OFF_TIMEOUT}s after system_powerdown)"
		kill "${VMPID[$name]}" 2>/dev/null || true
		wait "${VMPID[$name]}" 2>/dev/null || true
	else
		wait "${VMPID[$name]}" || rc=$?
		check "$name/exit" $rc "(qemu exit $rc, $(secs $(($(now_ms) - t)))s after system_powerdown)"
	fi
	wait "${CATPID[$name]}" 2>/dev/null || true
}

# boot NAME QEMU-ARGS...: start and wait for ready; records the boot time.
boot() {
	local name=$1 ms
	start_vm "$@"
	local b=?
	b=$(wait_for "$name" '^RAKHSH-GUEST: booted' "$BOOT_TIMEOUT") && b=$(secs "$b") || true
	if ms=$(wait_for "$name" '^RAKHSH-GUEST: ready' "$BOOT_TIMEOUT"); then
		check "$name/ready" 0 "(/init started at ${b}s, ready at $(secs "$ms")s)"
		return 0
	fi
	check "$name/ready" 1 "(no ready marker within ${BOOT_TIMEOUT}s)"
	echo "---- last serial lines of $name:"; tail -n 25 "$TMP/$name/serial.log" | tr -d '\r' || true
	echo "---- qemu output:"; tail -n 10 "$TMP/$name/qemu.log" || true
	kill "${VMPID[$name]}" 2>/dev/null || true
	wait "${VMPID[$name]}" 2>/dev/null || true
	wait "${CATPID[$name]}" 2>/dev/null || true
	return 1
}

expect() { # expect NAME CHECK REGEX
	if has "$1" "$3"; then check "$1/$2" 0; else check "$1/$2" 1 "(no line matching /$3/)"; fi
}

ISO=$OUT/guest.iso
QCOW=$OUT/guest.qcow2
# cdrom FILE ID PORT: sets CD to the QEMU arguments of a CD-ROM on AHCI port PORT.
cdrom() { CD=(-drive "file=$1,if=none,id=$2,media=cdrom,readonly=on" -device "ide-cd,drive=$2,bus=ide.$3"); }

# NoCloud seed used by runs 2 and 3: user-data is a shell script.
seed=$TMP/seed
mkdir -p "$seed"
cat >"$seed/user-data" <<'EOF'
#!/bin/sh
# RAKHSH-MARKER hello-from-user-data
echo "script ran on $(hostname)"
EOF
printf 'instance-id: boot-test-0001\nlocal-hostname: seeded-guest\n' >"$seed/meta-data"
xorriso -as mkisofs -quiet -o "$TMP/cidata.iso" -V cidata -J -r "$seed" 2>/dev/null

# 1. ISO as a CD-ROM (AHCI), BIOS; no NIC; interactive shell; power button.
cdrom "$ISO" cd0 0
if want bios-cdrom && boot bios-cdrom "${CD[@]}"; then
	expect bios-cdrom booted '^RAKHSH-GUEST: booted'
	expect bios-cdrom tpm-absent '^RAKHSH-GUEST: tpm=absent'
	expect bios-cdrom cidata-absent '^RAKHSH-GUEST: cidata=absent'
	expect bios-cdrom live-report '^RAKHSH-GUEST: cpus=[0-9]+ memtotal=[0-9]+'
	sleep 1
	printf 'echo hi-from-$((6*7))\n' >"$TMP/bios-cdrom/serial.in"
	if wait_for bios-cdrom '^hi-from-42' 20 >/dev/null; then check bios-cdrom/console-shell 0; else check bios-cdrom/console-shell 1; fi
	stop_vm bios-cdrom
fi

# 2. qcow2 as a virtio disk, BIOS; virtio-net on user networking (DHCP);
#    the cidata ISO as a second virtio disk.
if want bios-disk-net && boot bios-disk-net \
	-drive "file=$QCOW,if=none,id=hd0,format=qcow2,snapshot=on" -device virtio-blk-pci,drive=hd0 \
	-drive "file=$TMP/cidata.iso,if=none,id=hd1,format=raw,readonly=on" -device virtio-blk-pci,drive=hd1 \
	-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0; then
	expect bios-disk-net ip '^RAKHSH-GUEST: ip=10\.0\.2\.15 iface=eth0'
	expect bios-disk-net cidata-vdb '^RAKHSH-GUEST: cidata dev=/dev/vdb'
	expect bios-disk-net userdata '^RAKHSH-GUEST: userdata # RAKHSH-MARKER hello-from-user-data'
	expect bios-disk-net disk-vda "^RAKHSH-GUEST: disk vda $(stat -c %s "$ISO")([^0-9]|$)"
	stop_vm bios-disk-net
fi

# 3. ISO CD-ROM plus the cidata ISO as a second CD-ROM; e1000 with DHCP and a
#    virtio NIC with nothing behind it (no DHCP).
cdrom "$ISO" cd0 0
cd0=("${CD[@]}")
cdrom "$TMP/cidata.iso" cd1 1
if want cidata && boot cidata "${cd0[@]}" "${CD[@]}" \
	-netdev user,id=n0,restrict=on -device e1000,netdev=n0 \
	-device virtio-net-pci,mac=52:54:00:00:00:99; then
	expect cidata cidata-sr1 '^RAKHSH-GUEST: cidata dev=/dev/sr1'
	expect cidata userdata '^RAKHSH-GUEST: userdata # RAKHSH-MARKER hello-from-user-data'
	expect cidata userscript '^RAKHSH-GUEST: userscript script ran on seeded-guest'
	expect cidata instance-id '^RAKHSH-GUEST: instance-id boot-test-0001'
	expect cidata ip-e1000 '^RAKHSH-GUEST: ip=10\.0\.2\.15 iface=eth[0-9]'
	expect cidata no-dhcp '^RAKHSH-GUEST: no-dhcp iface=eth[0-9]'
	stop_vm cidata
fi

# 4. Direct kernel boot (what unit tests use).
if want kernel && boot kernel -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" -append console=ttyS0; then
	stop_vm kernel
fi

# 5. DHCP that only answers later: the NIC's link is down at boot (no-dhcp),
#    then comes up; udhcpc, still trying in the background, gets the lease.
if want dhcp-late; then
	start_vm dhcp-late -S -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" -append console=ttyS0 \
		-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0
	for i in $(seq 50); do [ -S "$TMP/dhcp-late/qmp.sock" ] && break; sleep 0.1; done
	if qmp dhcp-late set_link '{"name":"n0","up":false}' && qmp dhcp-late cont; then
		if wait_for dhcp-late '^RAKHSH-GUEST: ready' "$BOOT_TIMEOUT" >/dev/null; then
			expect dhcp-late no-dhcp-first '^RAKHSH-GUEST: no-dhcp iface=eth0'
			qmp dhcp-late set_link '{"name":"n0","up":true}'
			if wait_for dhcp-late '^RAKHSH-GUEST: ip=10\.0\.2\.15 iface=eth0' 90 >/dev/null; then
				check dhcp-late/ip-later 0
			else
				check dhcp-late/ip-later 1 "(no ip= marker within 90s of the link coming up)"
			fi
		else
			check dhcp-late/ready 1
		fi
		stop_vm dhcp-late
	else
		check dhcp-late/qmp 1 "(set_link/cont failed)"
		kill "${VMPID[dhcp-late]}" 2>/dev/null || true
	fi
fi

# 6. UEFI (OVMF): the ISO as a CD-ROM, and the qcow2 as a virtio disk.
if [ -f "$OVMF_CODE" ] && [ -f "$OVMF_VARS" ]; then
	for kind in cdrom disk; do
		want "uefi-$kind" || continue
		cp "$OVMF_VARS" "$TMP/vars-$kind.fd"
		fw=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE"
			-drive "if=pflash,format=raw,file=$TMP/vars-$kind.fd")
		if [ $kind = cdrom ]; then
			cdrom "$ISO" cd0 0
			media=("${CD[@]}")
		else
			media=(-drive "file=$QCOW,if=none,id=hd0,format=qcow2,snapshot=on" -device virtio-blk-pci,drive=hd0)
		fi
		if boot "uefi-$kind" "${fw[@]}" "${media[@]}"; then
			stop_vm "uefi-$kind"
		fi
	done
else
	echo "SKIP uefi (ovmf not installed)"
fi

# 7. TPM, only where swtpm is installed.
if ! want tpm; then
	:
elif command -v swtpm >/dev/null; then
	mkdir -p "$TMP/tpmstate"
	swtpm socket --tpm2 --tpmstate "dir=$TMP/tpmstate" --ctrl "type=unixio,path=$TMP/swtpm.sock" \
		--daemon --pid "file=$TMP/swtpm.pid" 2>/dev/null || true
	for i in $(seq 50); do [ -S "$TMP/swtpm.sock" ] && break; sleep 0.1; done
	[ -f "$TMP/swtpm.pid" ] && STARTED+=("$(cat "$TMP/swtpm.pid")")
	if boot tpm -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" -append console=ttyS0 \
		-chardev "socket,id=chrtpm,path=$TMP/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
		-device tpm-tis,tpmdev=tpm0; then
		expect tpm tpm-present '^RAKHSH-GUEST: tpm=present'
		stop_vm tpm
	fi
else
	echo "SKIP tpm (swtpm not installed)"
fi

echo
echo "summary:"
printf '  %s\n' "${SUMMARY[@]}"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
