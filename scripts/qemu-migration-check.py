#!/usr/bin/env python3
"""Live-migrates the test guest between two plain QEMU processes on this host, without Rakhsh,
and says whether the guest still runs on the target.

The guest prints a tick every second on its serial port; after the switch-over the target
must go on ticking. The stream is capped (8 MiB/s by default) so that it takes several passes
over memory. With --raise, the source's downtime-limit starts at 50 ms and is raised while the
stream runs (100, 200, 300 ms, every two passes): what the source agent does under KVM, and what
corrupted the guest under QEMU 7.2/TCG (see docs/migration.md). Without it, the limit is set
once before the stream (50 ms, as the agent does under TCG).

    scripts/qemu-migration-check.py --runs 5            # the limit set once
    scripts/qemu-migration-check.py --runs 5 --raise    # raised mid-stream

Needs qemu-system-x86_64, qemu-img and the test guest (make guest). About a minute a run.
"""
import argparse, json, os, re, shutil, socket, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST = os.path.join(os.environ.get('RAKHSH_GUEST_DIR', os.path.join(HERE, '..', 'test', 'guest', 'out')), 'guest.iso')


def qemu_args(d, tag, accel, incoming, mem='256'):
    """The device set the agent gives a VM (without its NIC), sockets under d."""
    a = ['qemu-system-x86_64', '-name', 'check-' + tag, '-machine', 'q35,vmport=off', '-accel', accel,
         '-cpu', 'max', '-smp', '1', '-m', mem, '-nodefaults', '-no-user-config', '-S',
         '-display', 'none', '-vnc', 'none', '-rtc', 'base=utc', '-nic', 'none',
         '-chardev', f'socket,id=qmp,path={d}/{tag}.qmp,server=on,wait=off', '-mon', 'chardev=qmp,mode=control',
         '-chardev', f'socket,id=ser,path={d}/{tag}.serial,server=on,wait=off', '-serial', 'chardev:ser',
         '-device', 'VGA,vgamem_mb=16', '-device', 'qemu-xhci,id=usb', '-device', 'usb-tablet,bus=usb.0',
         '-device', 'virtio-serial-pci,id=vs0',
         '-chardev', f'socket,id=qga,path={d}/{tag}.qga,server=on,wait=off',
         '-device', 'virtserialport,bus=vs0.0,chardev=qga,name=org.qemu.guest_agent.0',
         '-object', 'rng-random,id=rng,filename=/dev/urandom', '-device', 'virtio-rng-pci,rng=rng',
         '-device', 'pvpanic',
         '-blockdev', json.dumps({'driver': 'file', 'node-name': 'iso-f', 'filename': GUEST, 'read-only': True}),
         '-blockdev', json.dumps({'driver': 'raw', 'node-name': 'iso', 'file': 'iso-f', 'read-only': True}),
         '-device', 'ide-cd,drive=iso,bus=ide.0,bootindex=1',
         '-blockdev', json.dumps({'driver': 'file', 'node-name': 'disk-f', 'filename': d + '/disk.qcow2'}),
         '-blockdev', json.dumps({'driver': 'qcow2', 'node-name': 'disk', 'file': 'disk-f'}),
         '-device', 'virtio-blk-pci,drive=disk,bootindex=2', '-device', 'virtio-scsi-pci']
    for i in range(4):
        a += ['-device', f'pcie-root-port,id=hp{i},chassis={i + 1}']
    return a + (['-incoming', 'defer'] if incoming else [])


class Monitor:
    def __init__(self, path):
        deadline = time.time() + 10
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        self.rd = self.sock.makefile('r')
        self.rd.readline()  # greeting
        self.run('qmp_capabilities')

    def run(self, cmd, **args):
        self.sock.sendall(json.dumps({'execute': cmd, 'arguments': args}).encode() + b'\n')
        while True:
            msg = json.loads(self.rd.readline())
            if 'error' in msg:
                raise RuntimeError(f'{cmd}: {msg["error"]}')
            if 'return' in msg:
                return msg['return']

    def close(self):
        self.rd.close()
        self.sock.close()


class Serial:
    """Reads a serial socket into a buffer; write types on the console."""
    def __init__(self, path):
        self.data = b''
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                b = self.sock.recv(65536)
            except OSError:
                return
            if not b:
                return
            self.data += b

    def tick(self):
        ticks = [int(x) for x in re.findall(rb'RKTICK (\d+)', self.data)]
        return max(ticks, default=0)

    def close(self):
        self.sock.close()


def wait_for(what, cond, limit):
    deadline = time.time() + limit
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def one_run(d, opts):
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', d + '/disk.qcow2', '64M'], check=True)
    procs = []
    try:
        procs.append(subprocess.Popen(qemu_args(d, 'src', opts.accel, False, opts.mem), stdout=open(d + '/src.log', 'w'), stderr=subprocess.STDOUT))
        src = Monitor(d + '/src.qmp')
        ser = Serial(d + '/src.serial')
        src.run('cont')
        wait_for('the guest to boot', lambda: b'RAKHSH-GUEST: ready' in ser.data, 180)
        time.sleep(2)
        ser.sock.sendall(b'\n(i=0; while true; do i=$((i+1)); echo RKTICK $i; sleep 1; done) &\n')
        wait_for('the first ticks', lambda: ser.tick() >= 3, 60)

        procs.append(subprocess.Popen(qemu_args(d, 'dst', opts.accel, True, opts.mem), stdout=open(d + '/dst.log', 'w'), stderr=subprocess.STDOUT))
        dst = Monitor(d + '/dst.qmp')
        with socket.socket() as s:  # a free loopback port
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        dst.run('migrate-incoming', uri=f'tcp:127.0.0.1:{port}')
        limit = 50
        src.run('migrate-set-parameters', **{'downtime-limit': limit, 'max-bandwidth': opts.bandwidth << 20})
        src.run('migrate', uri=f'tcp:127.0.0.1:{port}')
        while True:
            st = src.run('query-migrate')
            if st.get('status') in ('completed', 'failed', 'cancelled'):
                break
            passes = st.get('ram', {}).get('dirty-sync-count', 0)
            if opts.raise_limit:
                want = min(300, 50 << max(0, (passes - 1) // 2))
                if want != limit:
                    src.run('migrate-set-parameters', **{'downtime-limit': want})
                    limit = want
            time.sleep(0.2)
        if st['status'] != 'completed':
            return f'migration {st["status"]}'
        before = ser.tick()
        src.run('quit')
        ser.close()
        src.close()
        wait_for('the target to load', lambda: dst.run('query-status')['status'] != 'inmigrate', 30)
        tser = Serial(d + '/dst.serial')
        dst.run('cont')
        time.sleep(opts.watch)
        after = tser.tick()
        passes = st.get('ram', {}).get('dirty-sync-count')
        if after > before:
            return f'ok: ticks {before} -> {after} ({passes} passes, downtime {st.get("downtime")} ms)'
        regs = dst.run('human-monitor-command', **{'command-line': 'info registers'})
        rip = re.search(r'RIP=\S+ RFL=\S+', regs)
        return f'BROKEN: no tick after {before} in {opts.watch}s ({passes} passes; {rip.group(0) if rip else ""})'
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=1)
    ap.add_argument('--raise', dest='raise_limit', action='store_true', help='raise the downtime limit mid-stream')
    ap.add_argument('--bandwidth', type=int, default=8, help='MiB/s (default 8)')
    ap.add_argument('--accel', default='tcg,thread=multi')
    ap.add_argument('--mem', default='256', help='-m of both QEMUs (default 256)')
    ap.add_argument('--watch', type=int, default=20, help='seconds the target is watched')
    opts = ap.parse_args()
    if not os.path.exists(GUEST):
        sys.exit(f'{GUEST}: no test guest (make guest)')
    broken = 0
    for i in range(opts.runs):
        d = tempfile.mkdtemp(prefix='rk-migcheck-')
        try:
            res = one_run(d, opts)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        broken += not res.startswith('ok')
        print(f'run {i + 1}: {res}', flush=True)
    print(f'{broken} of {opts.runs} broken')
    sys.exit(1 if broken else 0)


if __name__ == '__main__':
    main()
