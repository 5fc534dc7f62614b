package cli

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

const vmYAML = `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata:
  name: vm1
  labels:
    app: web
spec:
  cpu:
    cores: 2
  memory:
    size: 4Gi
`

func wantContains(t *testing.T, what, got string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(got, s) {
			t.Errorf("%s: want %q in:\n%s", what, s, got)
		}
	}
}

func TestApplyCreateConfiguredUnchanged(t *testing.T) {
	f := newFakeServer(t)
	out, errOut, code := f.run(t, vmYAML, "apply", "-f", "-")
	if code != 0 || out != "virtualmachine/vm1 created\n" {
		t.Fatalf("create: code %d out %q err %q", code, out, errOut)
	}
	stored := f.get("virtualmachines", "default", "vm1")
	if stored == nil || str(stored, "metadata.namespace") != "default" {
		t.Fatalf("not stored in default: %v", stored)
	}

	out, errOut, code = f.run(t, vmYAML, "apply", "-f", "-")
	if code != 0 || out != "virtualmachine/vm1 unchanged\n" {
		t.Fatalf("unchanged: code %d out %q err %q", code, out, errOut)
	}

	// the controller set status and a finalizer meanwhile: they must survive an apply
	s := f.get("virtualmachines", "default", "vm1")
	s["status"] = map[string]any{"phase": "Running"}
	meta(s)["finalizers"] = []any{"rakhsh.io/vm"}
	f.put("virtualmachines", s)

	changed := strings.Replace(vmYAML, "cores: 2", "cores: 4", 1)
	changed = strings.Replace(changed, "app: web", "app: db", 1)
	out, errOut, code = f.run(t, changed, "apply", "-f", "-")
	if code != 0 || out != "virtualmachine/vm1 configured\n" {
		t.Fatalf("configured: code %d out %q err %q", code, out, errOut)
	}
	got := f.get("virtualmachines", "default", "vm1")
	if str(got, "spec.cpu.cores") != "4" || str(got, "metadata.labels.app") != "db" ||
		str(got, "status.phase") != "Running" || str(got, "metadata.finalizers.0") != "rakhsh.io/vm" ||
		str(got, "metadata.uid") != "uid-vm1" {
		t.Errorf("after configure: %v", got)
	}
}

func TestBuildUpdate(t *testing.T) {
	existing := mustObj(t, `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"Secret",
		"metadata":{"name":"s","namespace":"p","resourceVersion":"7","uid":"u1","labels":{"a":"1"},"annotations":{"x":"y"},"finalizers":["f"]},
		"type":"Opaque","data":{"k":"dg=="},"status":{"phase":"X"}}`)
	manifest := mustObj(t, `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","labels":{"b":"2"}},
		"type":"Opaque","stringData":{"k":"v"}}`)
	u := buildUpdate(existing, manifest)
	if str(u, "metadata.resourceVersion") != "7" || str(u, "metadata.uid") != "u1" || str(u, "metadata.finalizers.0") != "f" {
		t.Errorf("existing metadata lost: %v", u["metadata"])
	}
	if str(u, "metadata.labels.b") != "2" || str(u, "metadata.labels.a") != "" {
		t.Errorf("labels not replaced: %v", u["metadata"])
	}
	if str(u, "metadata.annotations.x") != "y" {
		t.Errorf("annotations absent from the manifest must be kept: %v", u["metadata"])
	}
	if _, ok := u["data"]; ok {
		t.Errorf("top-level fields missing from the manifest must go: %v", u)
	}
	if str(u, "stringData.k") != "v" || str(u, "status.phase") != "X" || str(u, "apiVersion") != "v1" {
		t.Errorf("update: %v", u)
	}
	// the inputs are not modified
	if str(existing, "metadata.labels.a") != "1" || str(existing, "data.k") == "" {
		t.Errorf("existing modified: %v", existing)
	}
}

func TestApplyBadDocumentInTheMiddle(t *testing.T) {
	f := newFakeServer(t)
	f.reject = func(method, resource string, o object) *v1alpha1.Status {
		if objName(o) == "rejected" {
			return &v1alpha1.Status{Code: 422, Reason: v1alpha1.ReasonInvalid, Message: `spec.cpu.cores: Invalid value: 0: must be at least 1`}
		}
		return nil
	}
	in := "kind: VirtualDisk\nmetadata: {name: d1}\n---\nkind: VirtualDisk\nmetadata:\n  name: [broken\n---\n" +
		"kind: NoSuchKind\nmetadata: {name: x}\n---\nkind: VirtualMachine\nmetadata: {name: rejected}\n---\n" +
		"apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: VirtualDisk\nmetadata: {name: d2, namespace: proj2}\n---\n" +
		"kind: ClusterVirtualImage\nmetadata: {name: img}\n"
	dir := t.TempDir()
	file := filepath.Join(dir, "all.yaml")
	os.WriteFile(file, []byte(in), 0o644)
	out, errOut, code := f.run(t, "", "apply", "-f", file)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	wantOut := "virtualdisk/d1 created\nvirtualdisk/d2 created\nclustervirtualimage/img created\n"
	if out != wantOut {
		t.Errorf("stdout:\n%s\nwant:\n%s", out, wantOut)
	}
	wantContains(t, "stderr", errOut,
		"error: "+file+", document 2 (line 4): invalid YAML",
		`unknown kind "NoSuchKind"`,
		"Error from server (Invalid): error when creating virtualmachine/rejected: spec.cpu.cores: Invalid value")
	if f.get("virtualdisks", "proj2", "d2") == nil || f.get("clustervirtualimages", "", "img") == nil {
		t.Errorf("objects not stored where expected: %v", f.objects)
	}
}

func TestApplyNamespaceMismatch(t *testing.T) {
	f := newFakeServer(t)
	_, errOut, code := f.run(t, "kind: VirtualDisk\nmetadata: {name: d, namespace: a}\n", "-n", "b", "apply", "-f", "-")
	if code != 1 || !strings.Contains(errOut, `project "a" does not match the project "b"`) {
		t.Errorf("code %d, stderr %q", code, errOut)
	}
	out, _, code := f.run(t, "kind: VirtualDisk\nmetadata: {name: d}\n", "--project", "b", "apply", "-f", "-")
	if code != 0 || out != "virtualdisk/d created\n" || f.get("virtualdisks", "b", "d") == nil {
		t.Errorf("--project: code %d out %q", code, out)
	}
}

func TestApplyJSONListAndGenerateName(t *testing.T) {
	f := newFakeServer(t)
	in := `{"kind":"List","items":[{"kind":"VirtualDisk","metadata":{"name":"d1"}},{"kind":"VirtualMachineOperation","metadata":{"generateName":"start-"}}]}`
	out, errOut, code := f.run(t, in, "apply", "-f", "-")
	if code != 0 || out != "virtualdisk/d1 created\nvirtualmachineoperation/start-x7k2q created\n" {
		t.Errorf("code %d out %q err %q", code, out, errOut)
	}
}

func seedVMs(t *testing.T, f *fakeServer) {
	now := time.Now().UTC()
	for _, v := range []struct{ ns, name, phase string }{{"default", "vm1", "Running"}, {"default", "vm2", "Stopped"}, {"other", "vm3", "Pending"}} {
		o := vmObj(t, v.ns, v.name, v.phase, now.Add(-90*time.Second).Format(time.RFC3339))
		meta(o)["labels"] = map[string]any{"app": v.name}
		f.put("virtualmachines", o)
	}
}

func TestGet(t *testing.T) {
	f := newFakeServer(t)
	seedVMs(t, f)

	out, _, code := f.run(t, "", "get", "vm")
	if code != 0 {
		t.Fatalf("code %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME   PHASE") || !strings.HasPrefix(lines[1], "vm1    Running") ||
		!strings.HasSuffix(lines[1], "90s") {
		t.Errorf("get vm:\n%s", out)
	}

	out, _, _ = f.run(t, "", "get", "virtualmachines", "-A", "-o", "wide")
	wantContains(t, "get -A -o wide", out, "PROJECT   NAME", "COREFRACTION", "other     vm3")

	out, _, _ = f.run(t, "", "get", "vm", "-l", "app=vm2", "-o", "name")
	if out != "virtualmachine/vm2\n" {
		t.Errorf("get -l -o name: %q", out)
	}

	out, _, _ = f.run(t, "", "get", "vm/vm1", "-o", "yaml")
	wantContains(t, "get vm/vm1 -o yaml", out, "kind: VirtualMachine\n", "  name: vm1\n", "phase: Running")
	if strings.Contains(out, "kind: List") {
		t.Errorf("a single named object is printed as itself:\n%s", out)
	}

	out, _, _ = f.run(t, "", "get", "vm", "-o", "json", "-n", "other")
	wantContains(t, "get -o json", out, `"kind": "List"`, `"name": "vm3"`)

	out, errOut, code := f.run(t, "", "get", "vm", "vm1", "nope")
	if code != 1 || !strings.Contains(out, "vm1") || !strings.Contains(errOut, `Error from server (NotFound): virtualmachines "nope" not found`) {
		t.Errorf("get with a missing name: code %d out %q err %q", code, out, errOut)
	}

	out, errOut, code = f.run(t, "", "get", "vd")
	if code != 0 || out != "" || errOut != "No resources found in default project.\n" {
		t.Errorf("empty: code %d out %q err %q", code, out, errOut)
	}
	_, errOut, _ = f.run(t, "", "get", "cvi")
	if errOut != "No resources found.\n" {
		t.Errorf("empty cluster-scoped: %q", errOut)
	}

	_, errOut, code = f.run(t, "", "get", "pods")
	if code != 1 || !strings.HasPrefix(errOut, `error: the server doesn't have a resource type "pods"`) {
		t.Errorf("unknown kind: code %d err %q", code, errOut)
	}
	_, errOut, code = f.run(t, "", "get", "vm", "-o", "xml")
	if code != 1 || !strings.Contains(errOut, "unknown output format") {
		t.Errorf("bad -o: code %d err %q", code, errOut)
	}
}

func TestGetWatch(t *testing.T) {
	f := newFakeServer(t)
	seedVMs(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		out, err string
		code     int
	}
	done := make(chan result, 1)
	go func() {
		o, e, c := runCLI(t, ctx, f.URL(), "", "get", "vm", "-w")
		done <- result{o, e, c}
	}()
	// wait for the watch to be open, then change things
	waitFor(t, func() bool { return f.countRequests("GET", "/virtualmachines") >= 2 })
	s := f.get("virtualmachines", "default", "vm2")
	s["status"] = map[string]any{"phase": "Starting"}
	f.put("virtualmachines", s)
	// A change no column shows prints nothing.
	s = f.get("virtualmachines", "default", "vm2")
	s["status"] = map[string]any{"phase": "Starting", "conditions": []any{map[string]any{"type": "Running", "status": "False"}}}
	f.put("virtualmachines", s)
	f.put("virtualmachines", vmObj(t, "other", "elsewhere", "Pending", "2025-06-01T11:59:15Z"))
	f.remove("virtualmachines", "default", "vm1")
	time.Sleep(200 * time.Millisecond)
	cancel()
	r := <-done
	if r.code != 0 {
		t.Fatalf("code %d, stderr %q", r.code, r.err)
	}
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[3], "vm2    Starting") || !strings.HasPrefix(lines[4], "vm1    Running") {
		t.Errorf("watch output:\n%s", r.out)
	}
	// Later rows line up with the first table: the table left room for the longest phase.
	if col := strings.Index(lines[0], "CORES"); col < 0 || len(lines[3]) <= col || lines[3][col] != '2' || lines[3][col-1] != ' ' {
		t.Errorf("watch rows not aligned with the header:\n%s", r.out)
	}
}

func (f *fakeServer) countRequests(method, suffix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if strings.HasPrefix(r, method+" ") && strings.HasSuffix(r, suffix) {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDescribe(t *testing.T) {
	f := newFakeServer(t)
	vm := mustObj(t, `{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"VirtualMachine",
		"metadata":{"name":"vm1","namespace":"default","labels":{"app":"web","tier":"front"},"creationTimestamp":"2025-06-01T10:00:00Z"},
		"spec":{"cpu":{"cores":2},"runPolicy":"AlwaysOn"},
		"status":{"phase":"Running","nodeName":"node-a","conditions":[
			{"type":"Ready","status":"True","reason":"Running","message":"all good","lastTransitionTime":"2025-06-01T11:00:00Z"}]}}`)
	f.put("virtualmachines", vm)
	for i, ev := range []string{
		`{"kind":"Event","metadata":{"name":"e2","namespace":"default"},"involvedObject":{"kind":"VirtualMachine","name":"vm1"},"reason":"Started","message":"QEMU started","type":"Normal","lastTimestamp":"2025-06-01T11:00:00Z"}`,
		`{"kind":"Event","metadata":{"name":"e1","namespace":"default"},"involvedObject":{"kind":"VirtualMachine","name":"vm1"},"reason":"Scheduled","message":"on node-a","type":"Normal","lastTimestamp":"2025-06-01T10:01:00Z"}`,
		`{"kind":"Event","metadata":{"name":"e3","namespace":"default"},"involvedObject":{"kind":"VirtualMachine","name":"vm2"},"reason":"Other","message":"not ours","lastTimestamp":"2025-06-01T10:01:00Z"}`,
		`{"kind":"Event","metadata":{"name":"e4","namespace":"default"},"involvedObject":{"kind":"VirtualDisk","name":"vm1"},"reason":"Other","message":"a disk","lastTimestamp":"2025-06-01T10:01:00Z"}`,
	} {
		_ = i
		f.put("events", mustObj(t, ev))
	}
	out, errOut, code := f.run(t, "", "describe", "vm", "vm1")
	if code != 0 {
		t.Fatalf("code %d err %q", code, errOut)
	}
	wantContains(t, "describe", out,
		"Name:         vm1\n", "Project:      default\n", "Labels:       app=web\n              tier=front\n",
		"Annotations:  <none>\n", "Created:      2025-06-01T10:00:00Z (",
		"Spec:\n  cpu:\n    cores: 2\n  runPolicy: AlwaysOn\n",
		"Status:\n  nodeName: node-a\n  phase: Running\n",
		"Conditions:\n  TYPE   STATUS  REASON   MESSAGE   AGE\n  Ready  True    Running  all good",
		"Events:\n  TYPE    REASON     AGE",
	)
	if strings.Contains(out, "not ours") || strings.Contains(out, "a disk") {
		t.Errorf("events of other objects shown:\n%s", out)
	}
	if i, j := strings.Index(out, "Scheduled"), strings.Index(out, "Started"); i < 0 || j < 0 || i > j {
		t.Errorf("events not sorted by time:\n%s", out)
	}

	f.put("secrets", mustObj(t, `{"kind":"Secret","metadata":{"name":"s","namespace":"default"},"type":"Opaque","data":{"userData":"aGVsbG8="}}`))
	out, _, _ = f.run(t, "", "describe", "secret/s")
	wantContains(t, "describe secret", out, "Type:         Opaque\n", "Data:\n  userData:  5 bytes\n", "Events:       <none>\n")
	if strings.Contains(out, "aGVsbG8") {
		t.Errorf("secret value shown:\n%s", out)
	}

	_, errOut, code = f.run(t, "", "describe", "vm", "missing")
	if code != 1 || !strings.HasPrefix(errOut, "Error from server (NotFound):") {
		t.Errorf("missing: code %d err %q", code, errOut)
	}
	f.wantFailure(t, "describe", "vm")
}

func TestDelete(t *testing.T) {
	f := newFakeServer(t)
	seedVMs(t, f)
	out, errOut, code := f.run(t, "", "delete", "vm", "vm1", "missing")
	if code != 1 || out != "virtualmachine/vm1 deleted\n" || !strings.Contains(errOut, `Error from server (NotFound): virtualmachines "missing" not found`) {
		t.Errorf("delete: code %d out %q err %q", code, out, errOut)
	}
	out, _, code = f.run(t, "", "delete", "vm/missing", "--ignore-not-found")
	if code != 0 || out != "" {
		t.Errorf("--ignore-not-found: code %d out %q", code, out)
	}
	out, _, code = f.run(t, "kind: VirtualMachine\nmetadata: {name: vm3, namespace: other}\n---\nkind: VirtualMachine\nmetadata: {name: vm2}\n", "delete", "-f", "-")
	if code != 0 || out != "virtualmachine/vm3 deleted\nvirtualmachine/vm2 deleted\n" || f.get("virtualmachines", "other", "vm3") != nil {
		t.Errorf("delete -f: code %d out %q", code, out)
	}

	seedVMs(t, f)
	out, _, code = f.run(t, "", "delete", "vm", "-l", "app=vm1")
	if code != 0 || out != "virtualmachine/vm1 deleted\n" || f.get("virtualmachines", "default", "vm2") == nil {
		t.Errorf("delete -l: code %d out %q", code, out)
	}
	f.wantFailure(t, "delete", "vm")
}

func TestDeleteWaitWithFinalizer(t *testing.T) {
	f := newFakeServer(t)
	o := vmObj(t, "default", "vm1", "Running", "2025-06-01T11:59:15Z")
	meta(o)["finalizers"] = []any{"rakhsh.io/vm"}
	f.put("virtualmachines", o)
	go func() {
		waitFor(t, func() bool {
			return f.countRequests("GET", "/virtualmachines") >= 1 && f.countRequests("DELETE", "/vm1") >= 1
		})
		time.Sleep(100 * time.Millisecond)
		f.remove("virtualmachines", "default", "vm1") // the finalizer is done
	}()
	out, errOut, code := f.run(t, "", "delete", "vm", "vm1", "--wait", "--timeout", "5s")
	if code != 0 || out != "virtualmachine/vm1 deleted\n" {
		t.Errorf("code %d out %q err %q", code, out, errOut)
	}
	if f.get("virtualmachines", "default", "vm1") != nil {
		t.Errorf("delete --wait returned before the object was gone")
	}
}

func TestWait(t *testing.T) {
	f := newFakeServer(t)
	seedVMs(t, f)

	// already true
	out, errOut, code := f.run(t, "", "wait", "vm", "vm1", "--for", "phase=Running", "--timeout", "5s")
	if code != 0 || out != "virtualmachine/vm1 condition met\n" {
		t.Errorf("already running: code %d out %q err %q", code, out, errOut)
	}

	// becomes true through the watch, after an Expired watch forced a re-list
	f.mu.Lock()
	f.expireBelow = f.rv + 1 // the first watch (from the list's version) expires
	f.mu.Unlock()
	go func() {
		waitFor(t, func() bool { return f.countRequests("GET", "/virtualmachines") >= 9 })
		f.mu.Lock()
		f.expireBelow = 0
		f.mu.Unlock()
		s := f.get("virtualmachines", "default", "vm2")
		s["status"] = map[string]any{"phase": "Running", "conditions": []any{map[string]any{"type": "Running", "status": "True"}}}
		f.put("virtualmachines", s)
	}()
	out, errOut, code = f.run(t, "", "wait", "vm/vm2", "--for=condition=running", "--timeout", "10s")
	if code != 0 || out != "virtualmachine/vm2 condition met\n" {
		t.Errorf("condition: code %d out %q err %q", code, out, errOut)
	}

	// timeout
	start := time.Now()
	_, errOut, code = f.run(t, "", "wait", "vm", "vm1", "--for", "phase=Stopped", "--timeout", "300ms")
	if code != 1 || !strings.HasPrefix(errOut, "error: timed out waiting for phase=Stopped on virtualmachine/vm1; now: phase Running") {
		t.Errorf("timeout: code %d err %q", code, errOut)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("timeout took %v", time.Since(start))
	}

	// delete
	go func() {
		time.Sleep(200 * time.Millisecond)
		f.remove("virtualmachines", "other", "vm3")
	}()
	out, errOut, code = f.run(t, "", "-n", "other", "wait", "vm", "vm3", "--for", "delete", "--timeout", "5s")
	if code != 0 || out != "virtualmachine/vm3 condition met\n" {
		t.Errorf("delete: code %d out %q err %q", code, out, errOut)
	}

	// not found
	_, errOut, code = f.run(t, "", "wait", "vm", "nope", "--for", "phase=Running")
	if code != 1 || !strings.HasPrefix(errOut, "Error from server (NotFound)") {
		t.Errorf("not found: code %d err %q", code, errOut)
	}
	_, errOut, code = f.run(t, "", "wait", "vm", "vm1", "--for", "colour=blue")
	if code != 1 || !strings.Contains(errOut, "--for") {
		t.Errorf("bad --for: code %d err %q", code, errOut)
	}
	// A phase or condition the kind never has is refused at once, with the nearest one.
	for arg, want := range map[string]string{
		"phase=Runing":                 `VirtualMachine has no phase "Runing"; did you mean "Running"?`,
		"condition=Scheduld":           `VirtualMachine has no condition type "Scheduld"; did you mean "Scheduled"?`,
		"condition=Running=Yes":        `a condition status is True, False or Unknown`,
		"condition=NoSuchThingAtAll=1": `a condition status is True, False or Unknown`,
	} {
		start := time.Now()
		_, errOut, code = f.run(t, "", "wait", "vm", "vm1", "--for", arg, "--timeout", "30s")
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("--for %s: code %d err %q, want %q", arg, code, errOut, want)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("--for %s waited %s before refusing", arg, time.Since(start))
		}
	}
}

func TestParseWaitFor(t *testing.T) {
	cases := map[string]waitCond{
		"delete":                           {what: "delete"},
		"phase=Running":                    {what: "phase", value: "Running"},
		"condition=Ready":                  {what: "condition", key: "Ready", value: "True"},
		"condition=Ready=False":            {what: "condition", key: "Ready", value: "False"},
		"jsonpath={.status.phase}=Running": {what: "field", key: "status.phase", value: "Running"},
	}
	for in, want := range cases {
		got, err := parseWaitFor(in)
		if err != nil || got != want {
			t.Errorf("parseWaitFor(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "phase", "phase=", "condition=", "delete=now", "jsonpath=x"} {
		if _, err := parseWaitFor(bad); err == nil {
			t.Errorf("parseWaitFor(%q) accepted", bad)
		}
	}
	o := mustObj(t, `{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"False"}]}}`)
	if !(waitCond{what: "condition", key: "Ready", value: "False"}).satisfied(o) ||
		(waitCond{what: "condition", key: "Ready", value: "True"}).satisfied(o) ||
		!(waitCond{what: "field", key: "status.conditions.0.type", value: "Ready"}).satisfied(o) ||
		(waitCond{what: "delete"}).satisfied(o) || !(waitCond{what: "delete"}).satisfied(nil) {
		t.Error("satisfied is wrong")
	}
}

func TestVersionAndAPIResources(t *testing.T) {
	f := newFakeServer(t)
	out, _, code := f.run(t, "", "version")
	if code != 0 || out != "Client Version: dev\nServer Version: v0.1.0-fake\n" {
		t.Errorf("version: code %d out %q", code, out)
	}
	out, _, code = runCLI(t, context.Background(), "unix:///nonexistent/rakhsh.sock", "", "version")
	if code != 0 || !strings.Contains(out, "Server Version: <unavailable") {
		t.Errorf("version without a server: code %d out %q", code, out)
	}
	out, _, _ = f.run(t, "", "api-resources")
	wantContains(t, "api-resources", out, "NAME", "SHORTNAMES", "virtualmachines", "vm,vms", "true", "VirtualMachine", "projects")
}

func TestErrorsAndGlobalFlags(t *testing.T) {
	_, errOut, code := runCLI(t, context.Background(), "unix:///nonexistent/rakhsh.sock", "", "get", "vm")
	if code != 1 || !strings.HasPrefix(errOut, "error: ") || !strings.Contains(errOut, "rakhsh serve") {
		t.Errorf("no server: code %d err %q", code, errOut)
	}
	_, errOut, code = runCLI(t, context.Background(), "ftp://x", "", "get", "vm")
	if code != 1 || !strings.Contains(errOut, "scheme") {
		t.Errorf("bad scheme: code %d err %q", code, errOut)
	}
	_, errOut, code = runCLI(t, context.Background(), "unix:///x", "", "get", "vm", "--bogus")
	if code != 1 || !strings.Contains(errOut, "unknown flag") || !strings.Contains(errOut, "rakhsh get --help") {
		t.Errorf("bad flag: code %d err %q", code, errOut)
	}

	cc := newCLIContext()
	env := map[string]string{EnvServer: "https://env:6443", EnvToken: "tok", EnvCAFile: "/ca.pem"}
	cc.getenv = func(k string) string { return env[k] }
	root := newRootCommand(cc)
	root.SetArgs([]string{"--token", "flagtok", "--request-timeout", "5", "-n", "proj", "version", "--client"})
	root.SetOut(&strings.Builder{})
	if code := executeContext(context.Background(), root); code != 0 {
		t.Fatalf("code %d", code)
	}
	cfg, err := cc.Config()
	if err != nil || cfg.Server != "https://env:6443" || cfg.Token != "flagtok" || cfg.CAFile != "/ca.pem" || cfg.Timeout != 5*time.Second {
		t.Errorf("config %+v %v", cfg, err)
	}
	if cc.Namespace() != "proj" || !cc.NamespaceExplicit() {
		t.Errorf("namespace %q", cc.Namespace())
	}
}

func TestGetEventsFor(t *testing.T) {
	f := newFakeServer(t)
	now := time.Now().UTC()
	ev := func(name, kind, obj, reason string, ago time.Duration, count int) {
		ts := now.Add(-ago).Format(time.RFC3339)
		f.put("events", object{"apiVersion": "virtualization.rakhsh.io/v1alpha1", "kind": "Event",
			"metadata":       map[string]any{"name": name, "namespace": "default", "creationTimestamp": ts},
			"involvedObject": map[string]any{"kind": kind, "name": obj, "namespace": "default"},
			"reason":         reason, "message": reason + " happened", "type": "Normal", "count": count,
			"firstTimestamp": ts, "lastTimestamp": ts})
	}
	ev("a", "VirtualMachine", "vm1", "Started", 30*time.Second, 1)
	ev("b", "VirtualMachine", "vm1", "Crashed", 90*time.Second, 7)
	ev("c", "VirtualMachine", "vm2", "Started", 10*time.Second, 1)
	ev("d", "VirtualDisk", "vm1", "Ready", 5*time.Second, 1)
	out, errOut, code := f.run(t, "", "get", "events", "--for", "vm/vm1")
	if code != 0 {
		t.Fatalf("code %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "COUNT") || !strings.Contains(lines[1], "Crashed") ||
		!strings.Contains(lines[1], " 7 ") || !strings.Contains(lines[2], "Started") {
		t.Errorf("get events --for vm/vm1 (oldest first, vm1's only, with counts):\n%s", out)
	}
	// All events, oldest first.
	out, _, _ = f.run(t, "", "get", "events")
	if i, j := strings.Index(out, "Crashed"), strings.Index(out, "Ready"); i < 0 || j < 0 || i > j {
		t.Errorf("get events not sorted by time:\n%s", out)
	}
	for _, bad := range [][]string{{"get", "events", "--for", "vm1"}, {"get", "events", "--for", "nokind/x"}, {"get", "vm", "--for", "vm/vm1"}} {
		if _, errOut, code := f.run(t, "", bad...); code == 0 || !strings.Contains(errOut, "--for") {
			t.Errorf("%v: code %d err %q", bad, code, errOut)
		}
	}
}

// TestCompletion: cobra's __complete (what the bash, zsh and fish scripts call) offers kinds
// and the names of objects on the server.
func TestCompletion(t *testing.T) {
	f := newFakeServer(t)
	seedVMs(t, f)
	lines := func(args ...string) []string {
		t.Helper()
		out, errOut, code := f.run(t, "", append([]string{"__complete"}, args...)...)
		if code != 0 {
			t.Fatalf("__complete %v: code %d: %s", args, code, errOut)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.HasPrefix(l, ":") {
				got = append(got, l)
			}
		}
		return got
	}
	if got := lines("get", "virtualm"); !slices.Contains(got, "virtualmachines") || !slices.Contains(got, "virtualmachineoperations") {
		t.Errorf("kinds for virtualm: %v", got)
	}
	if got := lines("get", "vm", ""); !slices.Equal(got, []string{"vm1", "vm2"}) {
		t.Errorf("names of vm in default: %v", got)
	}
	if got := lines("-n", "other", "describe", "vm", ""); !slices.Equal(got, []string{"vm3"}) {
		t.Errorf("names in project other: %v", got)
	}
	if got := lines("delete", "vm/v"); !slices.Equal(got, []string{"vm/vm1", "vm/vm2"}) {
		t.Errorf("KIND/NAME: %v", got)
	}
	if got := lines("get", "vm", "vm1", ""); !slices.Equal(got, []string{"vm2"}) {
		t.Errorf("names already given are not offered again: %v", got)
	}
	if got := lines("vm", "start", "vm"); !slices.Equal(got, []string{"vm1", "vm2"}) {
		t.Errorf("vm start: %v", got)
	}
	if got := lines("logs", "vm", ""); !slices.Equal(got, []string{"vm1", "vm2"}) {
		t.Errorf("logs vm: %v", got)
	}
	if _, errOut, _ := f.run(t, "", "get", "virtualmachin"); !strings.Contains(errOut, `did you mean "virtualmachine"?`) {
		t.Errorf("unknown kind without a suggestion: %q", errOut)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out, _, code := f.run(t, "", "completion", shell); code != 0 || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: code %d, script lacks __complete", shell, code)
		}
	}
}
