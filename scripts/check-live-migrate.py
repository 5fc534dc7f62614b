#!/usr/bin/env python3
# Check by hand that QEMU migrates a guest whose vCPUs and virtio-mem memory were changed
# live to a target started the way the node agent starts one (internal/agent/live.go,
# incomingShape): -smp BOOT,maxcpus=SLOTS, a -device per hot-added vCPU, and the virtio-mem
# requested-size the source's guest has plugged. Then the target takes further live changes.
#
#   scripts/check-live-migrate.py test/guest/out
#
# Boots the test guest twice under TCG (run it under the e2e lock). Prints OK at the end if
# the migration and the changes after it work. The target boots with the source's -smp 1 and
# gets the two hot-added vCPUs as -device arguments in their slots, with the source's ids: a
# target booted with -smp 3 instead is refused by QEMU 7.2 (its virtio-blk gets 3 queues
# where the source has one: "Failed to load virtio-blk:virtio").
import socket, json, sys, time, subprocess, os, re, tempfile
D=tempfile.mkdtemp(prefix='rkmig')
G=os.path.abspath(os.path.join(sys.argv[1] if len(sys.argv) > 1 else 'test/guest/out', 'guest.qcow2'))
class Q:
    def __init__(s, path):
        for i in range(100):
            try:
                s.s = socket.socket(socket.AF_UNIX); s.s.connect(path); break
            except Exception: time.sleep(0.1)
        s.f = s.s.makefile('rw'); s.rd(); s.x('qmp_capabilities')
    def rd(s):
        while True:
            l = json.loads(s.f.readline())
            if 'event' in l: continue
            return l
    def x(s, cmd, **a):
        s.f.write(json.dumps({"execute":cmd, "arguments":a})+"\n"); s.f.flush(); r = s.rd()
        if 'error' in r: raise Exception(cmd+': '+str(r))
        return r['return']
import atexit
procs=[]
def _cleanup():
    for p in procs:
        if p.poll() is None: p.kill()
atexit.register(_cleanup)
def qemu(name, smp, req, incoming=None, extra=()):
    args = ['qemu-system-x86_64','-machine','q35','-accel','tcg,thread=multi','-cpu','max',
      '-smp',smp,'-m','size=256M,maxmem=1024M','-nodefaults','-display','none',
      '-object','memory-backend-ram,id=vmem0mem,size=768M',
      '-device','virtio-mem-pci,id=vmem0,memdev=vmem0mem,block-size=2M,requested-size=%dM'%req,
      '-drive','file=%s/ov.qcow2,if=virtio,format=qcow2'%D,
      '-serial','file:%s/%s.log'%(D,name),'-qmp','unix:%s/%s.sock,server=on,wait=off'%(D,name)]
    args += list(extra)
    if incoming: args += ['-incoming', incoming]
    p = subprocess.Popen(args, stdout=open('%s/%s.out'%(D,name),'w'), stderr=subprocess.STDOUT)
    procs.append(p)
    return p
def waitlog(name, pat, t=180):
    end=time.time()+t
    while time.time()<end:
        s=open('%s/%s.log'%(D,name), errors='replace').read()
        m=re.findall(pat, s)
        if m: return m
        time.sleep(0.3)
    print(open('%s/%s.log'%(D,name), errors='replace').read()[-3000:]); raise Exception('timeout '+pat)
subprocess.run(['qemu-img','create','-q','-f','qcow2','-b',G,'-F','qcow2',D+'/ov.qcow2'],check=True)
for f in ['src.log','dst.log']:
    open(D+'/'+f,'w').close()
src=qemu('src','1,maxcpus=4,sockets=1,cores=4,threads=1',0)
qs=Q(D+'/src.sock')
waitlog('src', 'RAKHSH-GUEST: ready')
slots=qs.x('query-hotpluggable-cpus')
slots.sort(key=lambda s:(s['props']['socket-id'],s['props']['core-id']))
for i,s in enumerate(slots):
    if 'qom-path' in s or i>2: continue
    a=dict(s['props']); a['driver']=s['type']; a['id']='vcpu%d'%i
    qs.x('device_add', **a)
qs.x('qom-set', path='/machine/peripheral/vmem0', property='requested-size', value=512<<20)
print('src', waitlog('src', r'cpus=3 memtotal=(\d+)')[-1])
print('src plugged', qs.x('qom-get', path='/machine/peripheral/vmem0', property='size'))
hot=[]
for i in (1,2):
    hot += ['-device','max-x86_64-cpu,id=vcpu%d,socket-id=0,core-id=%d,thread-id=0'%(i,i)]
dst=qemu('dst','1,maxcpus=4,sockets=1,cores=4,threads=1',512,'unix:%s/mig.sock'%D,hot)
qd=Q(D+'/dst.sock')
time.sleep(1)
qs.x('migrate', uri='unix:%s/mig.sock'%D)
end=time.time()+300
while time.time()<end:
    st=qs.x('query-migrate'); 
    if st.get('status') in ('completed','failed','cancelled'): break
    time.sleep(0.5)
print('migrate', st.get('status'), st.get('error-desc'))
print('dst status', qd.x('query-status'))
qs.x('quit')
print('dst cpus', [ (s['props']['core-id'], s.get('qom-path')) for s in qd.x('query-hotpluggable-cpus')])
print('dst plugged', qd.x('qom-get', path='/machine/peripheral/vmem0', property='size'))
# On the target: add the 4th CPU and shrink memory; the guest must report it.
s4=[s for s in qd.x('query-hotpluggable-cpus') if 'qom-path' not in s][0]
a=dict(s4['props']); a['driver']=s4['type']; a['id']='vcpu3'
qd.x('device_add', **a)
qd.x('qom-set', path='/machine/peripheral/vmem0', property='requested-size', value=256<<20)
print('dst', waitlog('dst', r'cpus=4 memtotal=(\d+)', 120)[-1])
end=time.time()+60
while time.time()<end and qd.x('qom-get', path='/machine/peripheral/vmem0', property='size')!=256<<20: time.sleep(0.3)
print('dst plugged after shrink', qd.x('qom-get', path='/machine/peripheral/vmem0', property='size'))
# and unplug the hot-added vcpu3 on the target
qd.x('device_del', id='vcpu3')
print('dst after unplug', waitlog('dst', r'RAKHSH-GUEST: cpus=3 memtotal=(\d+)', 60)[-1])
qd.x('quit')
print('OK')
subprocess.run(['rm','-rf',D])
