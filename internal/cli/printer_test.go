package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func mustObj(t *testing.T, js string) object {
	t.Helper()
	o, err := decodeObject([]byte(js))
	if err != nil {
		t.Fatalf("bad test object: %v", err)
	}
	return o
}

func TestHumanDuration(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want string
	}{
		{-5 * time.Second, "<invalid>"},
		{-500 * time.Millisecond, "0s"},
		{0, "0s"},
		{45 * time.Second, "45s"},
		{119 * time.Second, "119s"},
		{2 * time.Minute, "2m"},
		{3*time.Minute + 12*time.Second, "3m12s"},
		{42 * time.Minute, "42m"},
		{179 * time.Minute, "179m"},
		{5 * time.Hour, "5h"},
		{5*time.Hour + 30*time.Minute, "5h30m"},
		{20 * time.Hour, "20h"},
		{3 * 24 * time.Hour, "3d"},
		{3*24*time.Hour + 4*time.Hour, "3d4h"},
		{60 * 24 * time.Hour, "60d"},
		{2 * 365 * 24 * time.Hour, "2y"},
		{(2*365 + 10) * 24 * time.Hour, "2y10d"},
		{9 * 365 * 24 * time.Hour, "9y"},
	}
	for _, c := range cases {
		if got := humanDuration(c.d); got != c.want {
			t.Errorf("humanDuration(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}

func TestLookupPath(t *testing.T) {
	o := mustObj(t, `{"metadata":{"annotations":{"a.b/c":"true"}},"status":{"attachedToVirtualMachines":[{"name":"vm1"},{"name":"vm2"}],"phase":"Ready"},"spec":{"cpu":{"cores":4}}}`)
	cases := []struct {
		path string
		want string
		ok   bool
	}{
		{"status.phase", "Ready", true},
		{"status.attachedToVirtualMachines.0.name", "vm1", true},
		{"status.attachedToVirtualMachines.1.name", "vm2", true},
		{"status.attachedToVirtualMachines.2.name", "", false},
		{"status.attachedToVirtualMachines.x.name", "", false},
		{"spec.cpu.cores", "4", true},
		{"spec.cpu.cores.deeper", "", false},
		{"nothing", "", false},
		{`metadata.annotations.a\.b/c`, "true", true},
		{"metadata.annotations.a.b/c", "", false},
	}
	for _, c := range cases {
		v, ok := lookupPath(o, c.path)
		if ok != c.ok || (ok && cellString(v) != c.want) {
			t.Errorf("lookupPath(%q) = %v, %v; want %q, %v", c.path, v, ok, c.want, c.ok)
		}
	}
}

func TestFormatCell(t *testing.T) {
	now := testNow
	cases := []struct {
		name    string
		v       any
		present bool
		format  string
		want    string
	}{
		{"missing", nil, false, "", "<none>"},
		{"empty string", "", true, "", "<none>"},
		{"string", "Running", true, "", "Running"},
		{"newline", "a\nb", true, "", "a b"},
		{"age", "2025-06-01T11:56:48Z", true, "age", "3m12s"},
		{"age missing", nil, false, "age", "<unknown>"},
		{"age fractional", "2025-06-01T07:00:00.5Z", true, "age", "4h59m"},
		{"bytes number", mustObj(t, `{"n":1610612736}`)["n"], true, "bytes", "1.5Gi"},
		{"bytes quantity", "10Gi", true, "bytes", "10Gi"},
		{"bytes small", "512", true, "bytes", "512B"},
		{"bytes junk", "lots", true, "bytes", "lots"},
		{"bool true", true, true, "bool", "true"},
		{"bool false", false, true, "bool", "false"},
		{"bool missing", nil, false, "bool", "<none>"},
		{"list", []any{"a", "b"}, true, "", `["a","b"]`},
	}
	for _, c := range cases {
		if got := formatCell(c.v, c.present, c.format, now); got != c.want {
			t.Errorf("%s: formatCell(%v) = %q, want %q", c.name, c.v, got, c.want)
		}
	}
}

func vmObj(t *testing.T, ns, name, phase, created string) object {
	return mustObj(t, `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachine",
		"metadata":{"name":"`+name+`","namespace":"`+ns+`","creationTimestamp":"`+created+`"},
		"spec":{"cpu":{"cores":2,"coreFraction":"50%"},"memory":{"size":"4Gi"}},
		"status":{"phase":"`+phase+`","nodeName":"node-a"}}`)
}

func TestTablePrinter(t *testing.T) {
	vmKind, _ := v1alpha1.LookupKind("vm")
	vdKind, _ := v1alpha1.LookupKind("vd")
	nodeKind, _ := v1alpha1.LookupKind("node")
	vms := []object{
		vmObj(t, "default", "vm1", "Running", "2025-06-01T11:59:15Z"),
		vmObj(t, "team-b", "database", "Stopped", "2025-05-29T12:00:00Z"),
	}
	cases := []struct {
		name string
		p    tablePrinter
		objs []object
		want string
	}{
		{
			name: "default columns",
			p:    tablePrinter{kind: vmKind},
			objs: vms,
			want: "" +
				"NAME       PHASE     CORES   MEMORY   NODE     IPADDRESS   AGE\n" +
				"vm1        Running   2       4Gi      node-a   <none>      45s\n" +
				"database   Stopped   2       4Gi      node-a   <none>      3d\n",
		},
		{
			name: "wide",
			p:    tablePrinter{kind: vmKind, wide: true},
			objs: vms[:1],
			want: "" +
				"NAME   PHASE     CORES   COREFRACTION   MEMORY   NODE     IPADDRESS   MIGRATION   TARGET   PROGRESS   AGE\n" +
				"vm1    Running   2       50%            4Gi      node-a   <none>      <none>      <none>   <none>     45s\n",
		},
		{
			name: "all projects",
			p:    tablePrinter{kind: vmKind, project: true},
			objs: vms,
			want: "" +
				"PROJECT   NAME       PHASE     CORES   MEMORY   NODE     IPADDRESS   AGE\n" +
				"default   vm1        Running   2       4Gi      node-a   <none>      45s\n" +
				"team-b    database   Stopped   2       4Gi      node-a   <none>      3d\n",
		},
		{
			name: "no headers, kind names",
			p:    tablePrinter{kind: vmKind, noHeaders: true, kindName: true},
			objs: vms[:1],
			want: "virtualmachine/vm1   Running   2   4Gi   node-a   <none>   45s\n",
		},
		{
			name: "array index column",
			p:    tablePrinter{kind: vdKind},
			objs: []object{mustObj(t, `{"metadata":{"name":"d1","creationTimestamp":"2025-06-01T06:00:00Z"},
				"status":{"phase":"Ready","capacity":"10Gi","attachedToVirtualMachines":[{"name":"vm1"}]}}`)},
			want: "" +
				"NAME   PHASE   CAPACITY   VIRTUALMACHINE   AGE\n" +
				"d1     Ready   10Gi       vm1              6h\n",
		},
		{
			name: "cluster-scoped",
			p:    tablePrinter{kind: nodeKind},
			objs: []object{mustObj(t, `{"metadata":{"name":"n1"},"status":{"phase":"Ready","capacity":{"cpu":"16","memory":"64Gi"}}}`)},
			want: "" +
				"NAME   STATUS   CPU   MEMORY   ACCELERATOR   AGE\n" +
				"n1     Ready    16    64Gi     <none>        <unknown>\n",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.p.now = testNow
			var b bytes.Buffer
			if err := c.p.printTable(&b, c.objs); err != nil {
				t.Fatal(err)
			}
			if b.String() != c.want {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), c.want)
			}
		})
	}
}

func TestTablePrinterWatchRowsAlign(t *testing.T) {
	vmKind, _ := v1alpha1.LookupKind("vm")
	p := tablePrinter{kind: vmKind, now: testNow}
	var b bytes.Buffer
	if err := p.printTable(&b, []object{vmObj(t, "default", "vm1", "Running", "2025-06-01T11:59:15Z")}); err != nil {
		t.Fatal(err)
	}
	if err := p.printRow(&b, vmObj(t, "default", "vm2", "Pending", "2025-06-01T11:59:15Z")); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	want := "vm2    Pending   2       4Gi      node-a   <none>      45s"
	if lines[2] != want {
		t.Errorf("watch row\n%q\nwant\n%q", lines[2], want)
	}
	if strings.Index(lines[0], "PHASE") != strings.Index(lines[2], "Pending") {
		t.Errorf("watch row not aligned with header:\n%s", b.String())
	}
}

func TestPrintObjects(t *testing.T) {
	o := mustObj(t, `{"kind":"VirtualMachine","metadata":{"name":"vm1"},"spec":{"cpu":{"cores":2}}}`)
	var b bytes.Buffer
	if err := printObjects(&b, "yaml", []object{o}, true); err != nil {
		t.Fatal(err)
	}
	if want := "kind: VirtualMachine\nmetadata:\n  name: vm1\nspec:\n  cpu:\n    cores: 2\n"; b.String() != want {
		t.Errorf("yaml single:\n%s", b.String())
	}
	b.Reset()
	if err := printObjects(&b, "json", []object{o, o}, false); err != nil {
		t.Fatal(err)
	}
	l := mustObj(t, b.String())
	if l["kind"] != "List" || len(l["items"].([]any)) != 2 {
		t.Errorf("json list: %s", b.String())
	}
	b.Reset()
	if err := printObjects(&b, "yaml", nil, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "items: []") {
		t.Errorf("empty list: %s", b.String())
	}
}

func TestResolveTargets(t *testing.T) {
	ts, err := resolveTargets([]string{"vm/a", "VirtualDisk/d", "vms/b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 || ts[0].kind.Kind != "VirtualMachine" || strings.Join(ts[0].names, ",") != "a,b" || ts[1].kind.Kind != "VirtualDisk" {
		t.Errorf("kind/name form: %+v", ts)
	}
	ts, err = resolveTargets([]string{"VD,cvi"})
	if err != nil || len(ts) != 2 || ts[1].kind.Kind != "ClusterVirtualImage" {
		t.Errorf("comma kinds: %+v %v", ts, err)
	}
	for _, bad := range [][]string{nil, {"nosuchkind"}, {"vm/a", "b"}, {"vm,vd", "x"}, {"vm", "vd/x"}} {
		if _, err := resolveTargets(bad); err == nil {
			t.Errorf("resolveTargets(%q) accepted", bad)
		}
	}
}
