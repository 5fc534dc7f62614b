#!/usr/bin/env python3
"""Where the test guest's boot time goes under QEMU TCG (docs/benchmarks.md, "Test guest boot").

Boots test/guest/out (make guest) three ways, one after another, each alone on the machine:
from guest.qcow2 on virtio-blk (as the tests' VMs boot), from guest.iso as a CD-ROM, and with
-kernel/-initrd; prints when the serial console shows the firmware handing over ("Booting"),
the kernel starting, /init starting and the guest ready, and the QEMU process's CPU time.
"""
import os
import subprocess
import sys
import time

GUEST = os.environ.get("RAKHSH_GUEST_DIR", os.path.join(os.path.dirname(__file__), "..", "test", "guest", "out"))
MARKS = [b"Booting", b"Linux version", b"Run /init", b"RAKHSH-GUEST: ready"]
WAYS = {
    "virtio-blk disk": ["-drive", "file=%s/guest.qcow2,if=virtio,snapshot=on,format=qcow2" % GUEST],
    "CD-ROM": ["-cdrom", "%s/guest.iso" % GUEST],
    "direct kernel": ["-kernel", "%s/vmlinuz" % GUEST, "-initrd", "%s/initrd.img" % GUEST,
                      "-append", "console=ttyS0,115200 no_timer_check"],
}


def boot(args):
    p = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "256", "-smp", "1"] + args +
                         ["-display", "none", "-serial", "stdio", "-monitor", "none", "-nodefaults", "-vga", "none"],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.set_blocking(p.stdout.fileno(), False)
    start, buf, seen = time.time(), b"", {}
    try:
        while time.time() - start < 120 and MARKS[-1] not in seen:
            data = p.stdout.read(65536)
            if data:
                buf += data
                for m in MARKS:
                    if m in buf and m not in seen:
                        seen[m] = time.time() - start
            time.sleep(0.02)
        with open("/proc/%d/stat" % p.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    finally:
        p.kill()
        p.wait()
    return seen, cpu


def main():
    for name, args in WAYS.items():
        seen, cpu = boot(args)
        if MARKS[-1] not in seen:
            print("%s: the guest was not ready within 120 s" % name)
            sys.exit(1)
        marks = ", ".join("%s %.2f s" % (m.decode(), t) for m, t in sorted(seen.items(), key=lambda x: x[1]))
        print("%-16s %s; CPU %.1f s" % (name + ":", marks, cpu))


if __name__ == "__main__":
    main()
