package qemu

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden and the FuzzBuild seed corpus")

// TestBuildGolden compares the arguments of every case, one per line, with
// testdata/NAME.golden. Run go test ./internal/qemu/ -update to rewrite them after a deliberate
// change, and review the diff.
func TestBuildGolden(t *testing.T) {
	for _, c := range configCases {
		t.Run(c.name, func(t *testing.T) {
			in := c.input(goldenEnv(c))
			cfg, err := Build(in)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			again, err := Build(c.input(goldenEnv(c)))
			if err != nil || !reflect.DeepEqual(cfg, again) {
				t.Fatalf("Build is not deterministic: %v", err)
			}
			checkInvariants(t, in, cfg)
			got := strings.Join(cfg.Args, "\n") + "\n"
			path := filepath.Join("testdata", c.name+".golden")
			if checkGolden(t, path, got) {
				writeSeed(t, c.name, in)
			}
		})
	}
}

// checkGolden compares the arguments got with the golden file path; with -update it rewrites
// the file instead, and says so.
func checkGolden(t *testing.T, path, got string) (updated bool) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return true
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/qemu/ -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("arguments differ from %s (run with -update to accept):\n%s", path, lineDiff(string(want), got))
	}
	return false
}

// writeSeed stores in as a FuzzBuild seed (Go's corpus file format).
func writeSeed(t *testing.T, name string, in Input) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzBuild")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
	if err := os.WriteFile(filepath.Join(dir, "golden-"+name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// lineDiff is a small diff for test output: lines only in want (-) or only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			out = append(out, "line "+strconv.Itoa(i+1)+":\n- "+a+"\n+ "+b)
		}
	}
	return strings.Join(out, "\n")
}

// argValues returns the values of every occurrence of option opt in args.
func argValues(args []string, opt string) []string {
	var vs []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == opt {
			vs = append(vs, args[i+1])
		}
	}
	return vs
}

// parseOpts splits a QEMU option list the way QEMU's QemuOpts parser does: an element whose
// first '=' comes before any ',' is key=value, any other first element is the implied value
// (returned under the key ""); in values ",," is a literal comma.
func parseOpts(s string) (map[string]string, error) {
	m := map[string]string{}
	for first := true; ; first = false {
		key := ""
		if n := strings.IndexAny(s, "=,"); n >= 0 && s[n] == '=' {
			key, s = s[:n], s[n+1:]
		} else if !first {
			return nil, fmt.Errorf("element %q without '='", s)
		}
		var v strings.Builder
		for len(s) > 0 {
			if s[0] == ',' {
				if len(s) > 1 && s[1] == ',' {
					v.WriteByte(',')
					s = s[2:]
					continue
				}
				break
			}
			v.WriteByte(s[0])
			s = s[1:]
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("duplicate key %q", key)
		}
		m[key] = v.String()
		if s == "" {
			return m, nil
		}
		s = s[1:] // the separating ','
	}
}

// checkInvariants checks what must hold for every successful Build: explicit formats on every
// block node, devices only on format nodes, unescaped paths round-tripping through QEMU's
// option syntax, identity on the command line.
func checkInvariants(t testing.TB, in Input, cfg Config) {
	t.Helper()
	args := cfg.Args
	for _, a := range args {
		if strings.ContainsRune(a, 0) {
			t.Fatalf("argument %q contains NUL", a)
		}
	}
	for _, d := range argValues(args, "-drive") {
		if !strings.Contains(d, "format=") {
			t.Fatalf("-drive %s without format=", d)
		}
	}
	if u := argValues(args, "-uuid"); len(u) != 1 || u[0] != in.VM.UID {
		t.Fatalf("-uuid %v, want %s", u, in.VM.UID)
	}
	if !MatchesCmdline([]byte(strings.Join(append([]string{cfg.Binary}, args...), "\x00")+"\x00"), in.VM.UID) {
		t.Fatalf("MatchesCmdline false for the built command line")
	}
	// Block nodes.
	kinds := map[string]string{} // node name -> driver
	for _, bd := range argValues(args, "-blockdev") {
		var n map[string]any
		if err := json.Unmarshal([]byte(bd), &n); err != nil {
			t.Fatalf("-blockdev %s is not JSON: %v", bd, err)
		}
		name, _ := n["node-name"].(string)
		if name == "" || len(name) > 31 {
			t.Fatalf("-blockdev %s: bad node-name", bd)
		}
		if _, dup := kinds[name]; dup {
			t.Fatalf("node %s defined twice", name)
		}
		drv, _ := n["driver"].(string)
		switch drv {
		case "file":
			if fn, _ := n["filename"].(string); !strings.HasPrefix(fn, "/") {
				t.Fatalf("-blockdev %s: filename not absolute", bd)
			}
		case FormatRaw, FormatQCOW2:
			if f, _ := n["file"].(string); kinds[f] != "file" {
				t.Fatalf("-blockdev %s: file %q is not an earlier file node", bd, f)
			}
			back, has := n["backing"]
			if drv == FormatQCOW2 {
				if !has {
					t.Fatalf("-blockdev %s: qcow2 without explicit backing", bd)
				}
				if s, ok := back.(string); back != nil && (!ok || (kinds[s] != FormatRaw && kinds[s] != FormatQCOW2)) {
					t.Fatalf("-blockdev %s: backing %v is not an earlier format node", bd, back)
				}
			} else if has {
				t.Fatalf("-blockdev %s: raw with backing", bd)
			}
		default:
			t.Fatalf("-blockdev %s: driver %q (want file, raw or qcow2: formats are never probed)", bd, drv)
		}
		kinds[name] = drv
	}
	drives := 0
	for _, d := range argValues(args, "-device") {
		o, err := parseOpts(d)
		if err != nil {
			t.Fatalf("-device %s: %v", d, err)
		}
		if dr, ok := o["drive"]; ok {
			drives++
			if k := kinds[dr]; k != FormatRaw && k != FormatQCOW2 {
				t.Fatalf("-device %s: drive %q is not a format node", d, dr)
			}
		}
	}
	if drives != len(in.Disks) || len(cfg.Disks) != len(in.Disks) {
		t.Fatalf("%d disk devices, %d DiskObjects for %d disks", drives, len(cfg.Disks), len(in.Disks))
	}
	// Chardev paths survive QEMU's option parsing unchanged.
	want := map[string]string{"qmp": cfg.QMPSocket, "serial0": cfg.SerialSocket}
	if cfg.GuestAgentSocket != "" {
		want["qga0"] = cfg.GuestAgentSocket
	}
	if in.TPMSocket != "" {
		want["chrtpm"] = in.TPMSocket
	}
	got := map[string]string{}
	for _, c := range argValues(args, "-chardev") {
		o, err := parseOpts(c)
		if err != nil {
			t.Fatalf("-chardev %s: %v", c, err)
		}
		got[o["id"]] = o["path"]
		if cfg.PassFDs {
			got[o["id"]] = passedPath(t, cfg, o["fd"])
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("chardev paths %v, want %v", got, want)
	}
	if cfg.PassFDs {
		checkFDInvariants(t, in, cfg)
	} else if v := argValues(args, "-vnc"); len(v) != 1 {
		t.Fatalf("-vnc %v", v)
	} else if o, _ := parseOpts(v[0]); o["vnc"] != "unix:"+cfg.VNCSocket {
		t.Fatalf("-vnc %s does not parse back to %s", v[0], cfg.VNCSocket)
	} else if p := argValues(args, "-pidfile"); len(p) != 1 || p[0] != filepath.Join(in.RunDir, PIDFileName) {
		t.Fatalf("-pidfile %v", p)
	}
	if n := argValues(args, "-name"); len(n) != 1 {
		t.Fatalf("-name %v", n)
	} else if o, _ := parseOpts(n[0]); o["guest"] != in.VM.Namespace+"_"+in.VM.Name {
		t.Fatalf("-name %s", n[0])
	}
}

func TestEscapeOptValue(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"/plain/path", "/plain/path"},
		{"a,b", "a,,b"},
		{",,", ",,,,"},
		{"a=b,c=d", "a=b,,c=d"},
		{",lead", ",,lead"},
		{"trail,", "trail,,"},
	} {
		if got := EscapeOptValue(c.in); got != c.want {
			t.Errorf("EscapeOptValue(%q) = %q, want %q", c.in, got, c.want)
		}
		o, err := parseOpts(newOpts("socket").set("path", c.in).set("id", "x").String())
		if err != nil || o["path"] != c.in || o["id"] != "x" || o[""] != "socket" {
			t.Errorf("round trip of %q: %v %v", c.in, o, err)
		}
	}
}

func TestCPUTopology(t *testing.T) {
	for _, c := range []struct{ cores, sockets, per, max int }{
		{1, 1, 1, 1}, {2, 1, 2, 2}, {16, 1, 16, 16}, {17, 2, 9, 18}, {20, 2, 10, 20},
		{32, 2, 16, 32}, {33, 4, 9, 36}, {48, 4, 12, 48}, {64, 4, 16, 64}, {65, 8, 9, 72},
		{128, 8, 16, 128}, {240, 8, 30, 240},
	} {
		tp, err := CPUTopology(c.cores)
		if err != nil {
			t.Fatalf("CPUTopology(%d): %v", c.cores, err)
		}
		if tp.Cores != c.cores || tp.Sockets != c.sockets || tp.CoresPerSocket != c.per || tp.MaxCPUs() != c.max {
			t.Errorf("CPUTopology(%d) = %+v (max %d), want %d×%d (max %d)", c.cores, tp, tp.MaxCPUs(), c.sockets, c.per, c.max)
		}
	}
	for _, n := range []int{0, -1, MaxCores + 1} {
		if _, err := CPUTopology(n); err == nil {
			t.Errorf("CPUTopology(%d) succeeded", n)
		}
	}
}

func TestSMPArgument(t *testing.T) {
	for _, c := range []struct {
		cores int
		want  string
	}{
		{1, "1,sockets=1,cores=1,threads=1"},
		{20, "20,sockets=2,cores=10,threads=1"},
		{17, "17,maxcpus=18,sockets=2,cores=9,threads=1"},
		{65, "65,maxcpus=72,sockets=8,cores=9,threads=1"},
	} {
		in := validInput()
		in.VM.Spec.CPU.Cores = c.cores
		in.Node.HostCPUs = 0
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := argValues(cfg.Args, "-smp"); len(got) != 1 || got[0] != c.want {
			t.Errorf("%d cores: -smp %v, want %s", c.cores, got, c.want)
		}
	}
}

func TestMemory(t *testing.T) {
	for _, c := range []struct {
		size v1alpha1.Quantity
		want string
	}{
		{"512Mi", "512"}, {"2Gi", "2048"}, {"1G", "954"}, {"16Mi", "16"}, {"1073741825", "1025"},
	} {
		in := validInput()
		in.VM.Spec.Memory.Size, in.PadMemory = c.size, ptr(false)
		cfg, err := Build(in)
		if err != nil {
			t.Fatalf("%s: %v", c.size, err)
		}
		if got := argValues(cfg.Args, "-m"); len(got) != 1 || got[0] != c.want {
			t.Errorf("%s: -m %v, want %s", c.size, got, c.want)
		}
	}
}

func TestHotplugTopology(t *testing.T) {
	for _, c := range []struct{ cores, maxCores, sockets, per, slots int }{
		{1, 0, 1, 1, 1}, {2, 2, 1, 2, 2}, {3, 1, 1, 3, 3}, {1, 4, 1, 4, 4}, {2, 20, 2, 10, 20}, {4, 17, 2, 9, 18}, {1, 240, 8, 30, 240},
	} {
		tp, err := HotplugTopology(c.cores, c.maxCores)
		if err != nil {
			t.Fatalf("HotplugTopology(%d, %d): %v", c.cores, c.maxCores, err)
		}
		if tp.Cores != c.cores || tp.Sockets != c.sockets || tp.CoresPerSocket != c.per || tp.MaxCPUs() != c.slots {
			t.Errorf("HotplugTopology(%d, %d) = %+v, want %d present in %d×%d", c.cores, c.maxCores, tp, c.cores, c.sockets, c.per)
		}
	}
	for _, c := range [][2]int{{0, 4}, {1, MaxCores + 1}, {-1, 2}} {
		if _, err := HotplugTopology(c[0], c[1]); err == nil {
			t.Errorf("HotplugTopology(%d, %d) succeeded", c[0], c[1])
		}
	}
}

func TestSMPWithRoomToGrow(t *testing.T) {
	in := validInput()
	in.VM.Spec.CPU.Cores, in.VM.Spec.CPU.MaxCores = 1, 4
	cfg, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := argValues(cfg.Args, "-smp"); len(got) != 1 || got[0] != "1,maxcpus=4,sockets=1,cores=4,threads=1" {
		t.Errorf("-smp %v", got)
	}
	if cfg.Topology.Cores != 1 || cfg.Topology.MaxCPUs() != 4 {
		t.Errorf("topology %+v", cfg.Topology)
	}
}

// TestHotCPUs: a migration target gets its source's hot-added vCPUs as devices of the -cpu
// model in the slots after the boot vCPUs, with the ids the agent gave them; more than the
// slots hold is refused.
func TestHotCPUs(t *testing.T) {
	in := validInput()
	in.VM.Spec.CPU.Cores, in.VM.Spec.CPU.MaxCores = 1, 20 // 2 sockets of 10 slots
	in.CPUFeatures = []string{"-svm"}
	in.HotCPUs = 10
	cfg, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := argValues(cfg.Args, "-smp"); len(got) != 1 || got[0] != "1,maxcpus=20,sockets=2,cores=10,threads=1" {
		t.Errorf("-smp %v", got)
	}
	var cpus []string
	for _, d := range argValues(cfg.Args, "-device") {
		if strings.HasPrefix(d, "max-x86_64-cpu,") {
			cpus = append(cpus, d)
		}
	}
	if len(cpus) != 10 || cpus[0] != "max-x86_64-cpu,id=vcpu1,socket-id=0,core-id=1,thread-id=0" ||
		cpus[9] != "max-x86_64-cpu,id=vcpu10,socket-id=1,core-id=0,thread-id=0" {
		t.Errorf("vCPU devices %q", cpus)
	}
	in.HotCPUs = 20
	if _, err := Build(in); err == nil || !strings.Contains(err.Error(), "20 hot-added vCPUs do not fit beside 1 boot vCPUs in 20 slots") {
		t.Errorf("too many hot vCPUs: %v", err)
	}
}

func TestMemoryHotplug(t *testing.T) {
	in := validInput()
	in.VM.Spec.Memory.Size, in.VM.Spec.Memory.MaxSize, in.PadMemory = "256Mi", "1Gi", ptr(false)
	cfg, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := argValues(cfg.Args, "-m"); len(got) != 1 || got[0] != "size=256M,maxmem=1024M" {
		t.Errorf("-m %v", got)
	}
	objs, devs := argValues(cfg.Args, "-object"), argValues(cfg.Args, "-device")
	if !slices.Contains(objs, "memory-backend-ram,id=vmem0mem,size=768M") {
		t.Errorf("-object %v: no 768M backend", objs)
	}
	if !slices.Contains(devs, "virtio-mem-pci,id=vmem0,memdev=vmem0mem,block-size=2M,requested-size=0M") {
		t.Errorf("-device %v: no virtio-mem device", devs)
	}
	if h := cfg.Hotplug; h == nil || h.MaxMiB != 1024 || h.RegionMiB != 768 || h.Device != "vmem0" || h.BlockMiB != 2 {
		t.Errorf("Hotplug %+v", cfg.Hotplug)
	}
	// A migration target starts with its source's plugged size.
	in.MemoryRequestedMiB = 512
	if cfg, err = Build(in); err != nil {
		t.Fatal(err)
	}
	if devs := argValues(cfg.Args, "-device"); !slices.Contains(devs, "virtio-mem-pci,id=vmem0,memdev=vmem0mem,block-size=2M,requested-size=512M") {
		t.Errorf("-device %v: requested-size not 512M", devs)
	}
	// maxSize equal to size: no device, plain -m.
	in = validInput()
	in.VM.Spec.Memory.Size, in.VM.Spec.Memory.MaxSize, in.PadMemory = "512Mi", "512Mi", ptr(false)
	if cfg, err = Build(in); err != nil || cfg.Hotplug != nil || argValues(cfg.Args, "-m")[0] != "512" {
		t.Errorf("maxSize = size: %v %+v %v", err, cfg.Hotplug, argValues(cfg.Args, "-m"))
	}
	for _, c := range []struct {
		size, max v1alpha1.Quantity
		requested int64
		paravirt  bool
		want      string
	}{
		{"512Mi", "256Mi", 0, true, "below spec.memory.size"},
		{"512Mi", "1025Mi", 0, true, "multiple of 2Mi"},
		{"511Mi", "1Gi", 0, true, "not a multiple of 2Mi"},
		{"512Mi", "1Gi", 0, false, "paravirtualization is off"},
		{"512Mi", "1Gi", 514, true, "within 0..512Mi"},
		{"512Mi", "1Gi", 3, true, "multiple of 2Mi"},
		{"512Mi", "", 2, true, "without spec.memory.maxSize"},
		{"512Mi", "bad", 0, true, "spec.memory.maxSize"},
	} {
		in := validInput()
		in.VM.Spec.Memory.Size, in.VM.Spec.Memory.MaxSize = c.size, c.max
		in.VM.Spec.EnableParavirtualization = &c.paravirt
		in.MemoryRequestedMiB = c.requested
		if _, err := Build(in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s..%s requested %d paravirt %t: err %v, want %q", c.size, c.max, c.requested, c.paravirt, err, c.want)
		}
	}
}

func validInput() Input {
	return configCases[0].input(goldenEnv(configCases[0]))
}

func TestBuildErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		mut  func(in *Input)
		want string
	}{
		{"no vm", func(in *Input) { in.VM = nil }, "no VirtualMachine"},
		{"bad name", func(in *Input) { in.VM.Name = "VM_1" }, "metadata.name"},
		{"no namespace", func(in *Input) { in.VM.Namespace = "" }, "metadata.namespace is empty"},
		{"bad uid", func(in *Input) { in.VM.UID = "x" }, "metadata.uid"},
		{"uid with comma", func(in *Input) { in.VM.UID = testUID[:35] + "," }, "metadata.uid"},
		{"old qemu", func(in *Input) { in.Node.QEMUVersion = "6.2.0" }, "older than 7.2"},
		{"garbage version", func(in *Input) { in.Node.QEMUVersion = "v7" }, "MAJOR.MINOR"},
		{"zero cores", func(in *Input) { in.VM.Spec.CPU.Cores = 0 }, "cpu.cores 0"},
		{"too many cores", func(in *Input) { in.VM.Spec.CPU.Cores = 241 }, "cpu.cores 241"},
		{"kvm overcommit", func(in *Input) { in.Node.KVM = true; in.Node.HostCPUs = 2; in.VM.Spec.CPU.Cores = 4 }, "exceeds the 2 CPUs"},
		{"tiny memory", func(in *Input) { in.VM.Spec.Memory.Size = "8Mi" }, "out of range"},
		{"bad memory", func(in *Input) { in.VM.Spec.Memory.Size = "lots" }, "spec.memory.size"},
		{"bad os", func(in *Input) { in.VM.Spec.OSType = "BeOS" }, "spec.osType"},
		{"bad bootloader", func(in *Input) { in.VM.Spec.Bootloader = "GRUB" }, "spec.bootloader"},
		{"legacy efi", func(in *Input) {
			in.VM.Spec.OSType = v1alpha1.OSTypeLegacy
			in.VM.Spec.Bootloader = v1alpha1.BootloaderEFI
			in.NVRAMPath = "/x/nv.fd"
		}, "only the BIOS"},
		{"efi without nvram", func(in *Input) { in.VM.Spec.Bootloader = v1alpha1.BootloaderEFI }, "needs an NVRAM path"},
		{"efi without ovmf", func(in *Input) {
			in.VM.Spec.Bootloader = v1alpha1.BootloaderEFI
			in.NVRAMPath = "/x/nv.fd"
			in.Node.OVMFCode = ""
		}, "needs OVMF code"},
		{"secure without code", func(in *Input) {
			in.VM.Spec.Bootloader = v1alpha1.BootloaderEFIWithSecureBoot
			in.NVRAMPath = "/x/nv.fd"
			in.Node.OVMFSecureCode = ""
		}, "Secure Boot code"},
		{"relative nvram", func(in *Input) { in.VM.Spec.Bootloader = v1alpha1.BootloaderEFI; in.NVRAMPath = "nv.fd" }, "not absolute"},
		{"relative run dir", func(in *Input) { in.RunDir = "run/x" }, "not absolute"},
		{"unclean run dir", func(in *Input) { in.RunDir = "/run/../etc" }, "not clean"},
		{"run dir trailing slash", func(in *Input) { in.RunDir = "/run/x/" }, "not clean"},
		{"root run dir", func(in *Input) { in.RunDir = "/" }, "root directory"},
		{"double slash", func(in *Input) { in.Disks[0].Path = "/x//y" }, "not clean"},
		{"long run dir", func(in *Input) { in.RunDir = "/" + strings.Repeat("r", 100) }, "too long for unix sockets"},
		{"newline in run dir", func(in *Input) { in.RunDir = "/run/a\nb" }, "control character"},
		{"invalid utf8", func(in *Input) { in.Disks[0].Path = "/x/\xff.qcow2" }, "UTF-8"},
		{"empty format", func(in *Input) { in.Disks[0].Format = "" }, "format is required"},
		{"vmdk", func(in *Input) { in.Disks[0].Format = "vmdk" }, `"vmdk" is not qcow2 or raw`},
		{"json path", func(in *Input) { in.Disks[0].Path = `json:{"driver":"nbd"}` }, "not absolute"},
		{"empty disk id", func(in *Input) { in.Disks[0].ID = "" }, "empty ID"},
		{"colliding disk ids", func(in *Input) {
			in.Disks = append(in.Disks, Disk{ID: "ro.ot", Path: "/x/a.raw", Format: FormatRaw})
			in.Disks[0].ID = "ro_ot"
		}, "collides"},
		{"duplicate boot order", func(in *Input) {
			in.Disks = append(in.Disks, Disk{ID: "b", Path: "/x/b.raw", Format: FormatRaw, BootOrder: 1})
		}, "boot order 1 is already used"},
		{"negative boot order", func(in *Input) { in.Disks[0].BootOrder = -1 }, "negative"},
		{"long serial", func(in *Input) { in.Disks[0].Serial = strings.Repeat("s", 21) }, "serial"},
		{"serial with comma", func(in *Input) { in.Disks[0].Serial = "a,b" }, "serial"},
		{"virtio cdrom", func(in *Input) { in.Disks[0].CDROM = true; in.Disks[0].Bus = BusVirtio }, "CD-ROM cannot use the virtio"},
		{"ide on q35", func(in *Input) { in.Disks[0].Bus = BusIDE }, "use sata"},
		{"sata on pc", func(in *Input) { in.VM.Spec.OSType = v1alpha1.OSTypeLegacy; in.Disks[0].Bus = BusSATA }, "needs the q35"},
		{"bad bus", func(in *Input) { in.Disks[0].Bus = "scsi" }, `bus "scsi"`},
		{"read-only sata", func(in *Input) { in.Disks[0].Bus = BusSATA; in.Disks[0].ReadOnly = true }, "read-only disk needs the virtio"},
		{"raw with backing", func(in *Input) {
			in.Disks[0].Format = FormatRaw
			in.Disks[0].Backing = []BackingFile{{Path: "/x/b", Format: FormatRaw}}
		}, "only qcow2"},
		{"backing without format", func(in *Input) { in.Disks[0].Backing = []BackingFile{{Path: "/x/b"}} }, "backing layer 1: format is required"},
		{"raw layer above another", func(in *Input) {
			in.Disks[0].Backing = []BackingFile{{Path: "/x/b", Format: FormatRaw}, {Path: "/x/c", Format: FormatRaw}}
		}, "cannot have further backing"},
		{"deep chain", func(in *Input) {
			in.Disks[0].Backing = make([]BackingFile, MaxBackingDepth+1)
		}, "backing chain longer"},
		{"too many sata", func(in *Input) {
			in.VM.Spec.EnableParavirtualization = ptr(false)
			for i := 0; i < 24; i++ {
				in.Disks = append(in.Disks, Disk{ID: "d" + strconv.Itoa(i), Path: "/x/d" + strconv.Itoa(i), Format: FormatRaw})
			}
		}, "at most 24 SATA disks and CD-ROMs"},
		{"too many ide", func(in *Input) {
			in.VM.Spec.OSType = v1alpha1.OSTypeLegacy
			for i := 0; i < 4; i++ {
				in.Disks = append(in.Disks, Disk{ID: "d" + strconv.Itoa(i), Path: "/x/d" + strconv.Itoa(i), Format: FormatRaw})
			}
		}, "only 4 slots"},
		{"no mac", func(in *Input) { in.NICs = []NIC{{ID: "n"}} }, "MAC"},
		{"multicast mac", func(in *Input) { in.NICs = []NIC{{ID: "n", MAC: "01:00:5e:00:00:01"}} }, "multicast"},
		{"duplicate mac", func(in *Input) {
			in.NICs = []NIC{{ID: "a", MAC: "52:54:00:00:00:01"}, {ID: "b", MAC: "52:54:00:00:00:01"}}
		}, "also used"},
		{"bad tap", func(in *Input) { in.NICs = []NIC{{ID: "n", MAC: "52:54:00:00:00:01", Tap: "tap,script=/x"}} }, "tap name"},
		{"long tap", func(in *Input) { in.NICs = []NIC{{ID: "n", MAC: "52:54:00:00:00:01", Tap: strings.Repeat("t", 16)}} }, "tap name"},
		{"bad model", func(in *Input) { in.NICs = []NIC{{ID: "n", MAC: "52:54:00:00:00:01", Model: "rtl8139"}} }, "model"},
		{"bad mtu", func(in *Input) { in.NICs = []NIC{{ID: "n", MAC: "52:54:00:00:00:01", MTU: 10}} }, "MTU"},
		{"nic boot clash", func(in *Input) { in.NICs = []NIC{{ID: "n", MAC: "52:54:00:00:00:01", BootOrder: 1}} }, "already used"},
		{"host cpu under tcg", func(in *Input) { in.CPUModel = "host" }, "needs KVM"},
		{"cpu model injection", func(in *Input) { in.CPUModel = "max,hv_relaxed" }, "CPU model"},
		{"cpu feature injection", func(in *Input) { in.CPUFeatures = []string{"+aes,x"} }, "CPU feature"},
		{"relative tpm", func(in *Input) { in.TPMSocket = "tpm.sock" }, "not absolute"},
		{"relative binary is fine but control chars are not", func(in *Input) { in.Node.QEMUBinary = "qemu\n" }, "control character"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := validInput()
			c.mut(&in)
			_, err := Build(in)
			if err == nil {
				t.Fatalf("Build succeeded, want error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestBuildDerived(t *testing.T) {
	t.Run("more than 6 SATA devices get a second AHCI controller", func(t *testing.T) {
		in := validInput()
		in.VM.Spec.EnableParavirtualization = ptr(false)
		for i := 0; i < 8; i++ {
			in.Disks = append(in.Disks, Disk{ID: "c" + strconv.Itoa(i), Path: "/x/c" + strconv.Itoa(i), Format: FormatRaw, ReadOnly: true, CDROM: true})
		}
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		devs := strings.Join(argValues(cfg.Args, "-device"), "\n")
		if strings.Count(devs, "ahci,id=sata1") != 1 || strings.Contains(devs, "sata2") ||
			!strings.Contains(devs, "bus=ide.5") || !strings.Contains(devs, "bus=sata1.0") || strings.Contains(devs, "bus=ide.6") {
			t.Fatalf("devices:\n%s", devs)
		}
	})
	t.Run("windows under TCG has no Hyper-V flags", func(t *testing.T) {
		in := validInput()
		in.VM.Spec.OSType = v1alpha1.OSTypeWindows
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if c := argValues(cfg.Args, "-cpu"); len(c) != 1 || c[0] != "max" {
			t.Fatalf("-cpu %v", c)
		}
		if r := argValues(cfg.Args, "-rtc"); len(r) != 1 || r[0] != "base=localtime,driftfix=slew" {
			t.Fatalf("-rtc %v", r)
		}
	})
	t.Run("windows under KVM has Hyper-V flags", func(t *testing.T) {
		in := validInput()
		in.VM.Spec.OSType = v1alpha1.OSTypeWindows
		in.Node.KVM = true
		in.CPUModel = "EPYC"
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		c := argValues(cfg.Args, "-cpu")
		if len(c) != 1 || !strings.HasPrefix(c[0], "EPYC,hv_relaxed,") || !strings.HasSuffix(c[0], ",hv_ipi") {
			t.Fatalf("-cpu %v", c)
		}
		if cfg.Accelerator != "kvm" {
			t.Fatalf("accelerator %s", cfg.Accelerator)
		}
	})
	t.Run("vhost only with KVM and vhost-net", func(t *testing.T) {
		for _, c := range []struct{ kvm, vhost, want bool }{{true, true, true}, {true, false, false}, {false, true, false}} {
			in := validInput()
			in.Node.KVM, in.Node.VhostNet = c.kvm, c.vhost
			in.NICs = []NIC{{ID: "n", MAC: "52:54:00:00:00:01", Tap: "tap0"}}
			cfg, err := Build(in)
			if err != nil {
				t.Fatal(err)
			}
			nd := argValues(cfg.Args, "-netdev")
			if got := strings.Contains(nd[0], "vhost=on"); got != c.want {
				t.Errorf("kvm=%v vhost-net=%v: -netdev %s", c.kvm, c.vhost, nd[0])
			}
		}
	})
	t.Run("legacy with explicit paravirtualization", func(t *testing.T) {
		in := validInput()
		in.VM.Spec.OSType = v1alpha1.OSTypeLegacy
		in.VM.Spec.EnableParavirtualization = ptr(true)
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Disks[0].Driver != "virtio-blk-pci" || cfg.GuestAgentSocket == "" {
			t.Fatalf("disks %+v, agent socket %q", cfg.Disks, cfg.GuestAgentSocket)
		}
	})
	t.Run("long disk ids get hashed node names", func(t *testing.T) {
		in := validInput()
		long := strings.Repeat("x", 40)
		in.Disks = []Disk{
			{ID: long + "-a", Path: "/x/a", Format: FormatQCOW2, Backing: make16("/x/b")},
			{ID: long + "-b", Path: "/x/b", Format: FormatRaw},
		}
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		checkInvariants(t, in, cfg)
		if cfg.Disks[0].Node == cfg.Disks[1].Node {
			t.Fatalf("node names collide: %+v", cfg.Disks)
		}
		if cfg.Disks[0].Device != "disk-"+long+"-a" {
			t.Fatalf("device id %s", cfg.Disks[0].Device)
		}
	})
	t.Run("backing layer names never collide with other disks", func(t *testing.T) {
		in := validInput()
		in.Disks = []Disk{
			{ID: "x", Path: "/x/a", Format: FormatQCOW2, Backing: []BackingFile{{Path: "/x/base", Format: FormatQCOW2}}},
			{ID: "x-b1", Path: "/x/b", Format: FormatQCOW2},
			{ID: "x.b1", Path: "/x/c", Format: FormatRaw},
		}
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		checkInvariants(t, in, cfg) // fails on a duplicate node name
	})
	t.Run("no boot order means no strict boot", func(t *testing.T) {
		in := validInput()
		in.Disks[0].BootOrder = 0
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if b := argValues(cfg.Args, "-boot"); len(b) != 0 {
			t.Fatalf("-boot %v", b)
		}
	})
	t.Run("mac is lower-cased", func(t *testing.T) {
		in := validInput()
		in.NICs = []NIC{{ID: "n", MAC: "52:54:00:AB:CD:EF"}}
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		if d := argValues(cfg.Args, "-device"); !strings.Contains(strings.Join(d, " "), "mac=52:54:00:ab:cd:ef") {
			t.Fatalf("-device %v", d)
		}
	})
}

func make16(p string) []BackingFile {
	var bs []BackingFile
	for i := 0; i < MaxBackingDepth; i++ {
		bs = append(bs, BackingFile{Path: p + strconv.Itoa(i), Format: FormatQCOW2})
	}
	return bs
}

func TestMatchesCmdline(t *testing.T) {
	cmd := []byte("qemu-system-x86_64\x00-name\x00guest=p_v\x00-uuid\x00" + testUID + "\x00-S\x00")
	if !MatchesCmdline(cmd, testUID) {
		t.Error("no match for own uid")
	}
	if MatchesCmdline(cmd, "6f1c2d3e-4b5a-4c6d-8e7f-000000000000") {
		t.Error("match for another uid")
	}
	if MatchesCmdline([]byte("sleep\x00"+testUID+"\x00"), testUID) {
		t.Error("match without -uuid")
	}
	if MatchesCmdline(cmd, "") || MatchesCmdline(nil, testUID) {
		t.Error("match on empty input")
	}
	// The uid must be a whole argument.
	if MatchesCmdline([]byte("q\x00-uuid\x00"+testUID+"x\x00"), testUID) {
		t.Error("match on a prefix")
	}
}

// passedPath is the path of the passed descriptor named by an fd=N option value.
func passedPath(t testing.TB, cfg Config, fd string) string {
	t.Helper()
	n, err := strconv.Atoi(fd)
	if err != nil || n < firstPassedFD || n-firstPassedFD >= len(cfg.Passed) {
		t.Fatalf("fd=%q is not a passed descriptor (%d passed)", fd, len(cfg.Passed))
	}
	return cfg.Passed[n-firstPassedFD].Path
}

// checkFDInvariants checks a PassFDs command line: QEMU is told no path of the run directory
// or of any disk, layer or variable store (only the opaque label of an fd set names it); every
// file node opens an fd set made by -add-fd from a descriptor passed with the right access
// mode; every NIC takes a passed tap; VNC is handed over later and there is no -pidfile.
func checkFDInvariants(t testing.TB, in Input, cfg Config) {
	t.Helper()
	args := cfg.Args
	private := []string{in.RunDir, in.NVRAMPath}
	for _, d := range in.Disks {
		private = append(private, d.Path)
		for _, l := range d.Backing {
			private = append(private, l.Path)
		}
	}
	for i, a := range args {
		if i > 0 && args[i-1] == "-add-fd" {
			continue
		}
		for _, p := range private {
			if p != "" && strings.Contains(a, p) {
				t.Fatalf("argument %q names the private path %s", a, p)
			}
		}
	}
	if len(argValues(args, "-pidfile")) != 0 {
		t.Fatalf("-pidfile with PassFDs")
	}
	if v := argValues(args, "-vnc"); len(v) != 1 || v[0] != "none" || !cfg.LateVNC {
		t.Fatalf("-vnc %v, LateVNC %v; want none, true", v, cfg.LateVNC)
	}
	for i, p := range cfg.Passed {
		if p.FD != firstPassedFD+i {
			t.Fatalf("Passed[%d] is fd %d", i, p.FD)
		}
	}
	sets := map[string]Passed{}
	for _, a := range argValues(args, "-add-fd") {
		o, err := parseOpts(a)
		if err != nil {
			t.Fatalf("-add-fd %s: %v", a, err)
		}
		passedPath(t, cfg, o["fd"])
		n, _ := strconv.Atoi(o["fd"])
		p := cfg.Passed[n-firstPassedFD]
		if o["set"] != o["fd"] || p.Kind != PassFile || !strings.HasSuffix(o["opaque"], ":"+p.Path) {
			t.Fatalf("-add-fd %s does not match passed %+v", a, p)
		}
		sets[FDSetPath(n)] = p
	}
	files := 0
	for _, bd := range argValues(args, "-blockdev") {
		var n map[string]any
		if err := json.Unmarshal([]byte(bd), &n); err != nil {
			t.Fatal(err)
		}
		if n["driver"] != "file" {
			continue
		}
		files++
		fn, _ := n["filename"].(string)
		p, ok := sets[fn]
		ro, _ := n["read-only"].(bool)
		if !ok || p.Write == ro {
			t.Fatalf("-blockdev %s: filename is not a passed file with the node's access mode (%+v)", bd, p)
		}
	}
	if files != len(sets) {
		t.Fatalf("%d file nodes for %d fd sets", files, len(sets))
	}
	taps := 0
	for _, nd := range argValues(args, "-netdev") {
		o, err := parseOpts(nd)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := o["tap"]; ok || strings.HasPrefix(nd, "tap,") {
			taps++
			if o["ifname"] != "" || o["script"] != "" {
				t.Fatalf("-netdev %s: a passed tap takes no ifname or script", nd)
			}
			passedPath(t, cfg, o["fd"])
			if o["vhost"] == "on" && passedPath(t, cfg, o["vhostfd"]) != VhostNetDevice {
				t.Fatalf("-netdev %s: vhost without a passed vhost device", nd)
			}
		}
	}
	want := 0
	for _, n := range in.NICs {
		if n.Tap != "" {
			want++
		}
	}
	if taps != want {
		t.Fatalf("%d tap netdevs for %d tap NICs", taps, want)
	}
}

// TestBalloonReporting: free page reporting under KVM or QEMU 9.0+, not under TCG with
// older QEMU; a migration target's setting wins.
func TestBalloonReporting(t *testing.T) {
	for _, c := range []struct {
		kvm      bool
		version  string
		override *bool
		want     bool
	}{
		{true, "7.2.22", nil, true},
		{false, "7.2.22", nil, false},
		{false, "9.0.0", nil, true},
		{false, "10.1.2", nil, true},
		{false, "7.2.22", ptr(true), true},
		{true, "8.2.1", ptr(false), false},
	} {
		in := validInput()
		in.Node.KVM, in.Node.QEMUVersion, in.BalloonReporting = c.kvm, c.version, c.override
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		want := "virtio-balloon-pci,id=balloon0,free-page-reporting=" + map[bool]string{true: "on", false: "off"}[c.want] + ",deflate-on-oom=on"
		if devs := argValues(cfg.Args, "-device"); !slices.Contains(devs, want) || cfg.BalloonReporting != c.want || !cfg.Balloon {
			t.Errorf("kvm %v QEMU %s override %v: devices %q, want %s", c.kvm, c.version, c.override, devs, want)
		}
	}
}

// TestMemoryPad: under TCG with QEMU older than 9.0 (or an unknown version) the boot memory,
// and maxmem with it, is MemoryPadKiB longer than asked, so that QEMU syncs its dirty bitmap
// page by page; a migration target follows its source's choice.
func TestMemoryPad(t *testing.T) {
	for _, c := range []struct {
		kvm      bool
		version  string
		override *bool
		max      v1alpha1.Quantity
		want     string
	}{
		{false, "7.2.22", nil, "", "262152K"},
		{false, "", nil, "", "262152K"},
		{false, "8.2.2", nil, "1Gi", "size=262152K,maxmem=1048584K"},
		{false, "9.0.0", nil, "", "256"},
		{true, "7.2.22", nil, "1Gi", "size=256M,maxmem=1024M"},
		{true, "7.2.22", ptr(true), "", "262152K"},
		{false, "7.2.22", ptr(false), "", "256"},
	} {
		in := validInput()
		in.Node.KVM, in.Node.QEMUVersion, in.PadMemory = c.kvm, c.version, c.override
		in.VM.Spec.Memory.Size, in.VM.Spec.Memory.MaxSize = "256Mi", c.max
		cfg, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		pad := int64(0)
		if strings.Contains(c.want, "K") {
			pad = MemoryPadKiB
		}
		if got := argValues(cfg.Args, "-m"); len(got) != 1 || got[0] != c.want || cfg.MemoryPadKiB != pad || cfg.MemoryMiB != 256 {
			t.Errorf("kvm %v QEMU %q override %v: -m %v pad %d, want %s", c.kvm, c.version, c.override, got, cfg.MemoryPadKiB, c.want)
		}
		if c.max != "" && (cfg.Hotplug == nil || cfg.Hotplug.RegionMiB != 768) {
			t.Errorf("kvm %v QEMU %q: hot-plug %+v", c.kvm, c.version, cfg.Hotplug)
		}
	}
}
