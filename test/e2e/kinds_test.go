package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

type fixture struct {
	kind      *v1alpha1.KindInfo
	name      string
	namespace string
}

// allKindsFixtures lists the objects of testdata/all-kinds.yaml, in order.
func allKindsFixtures(t *testing.T) []fixture {
	t.Helper()
	data, err := os.ReadFile("testdata/all-kinds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kindRe := regexp.MustCompile(`(?m)^kind: (\w+)\nmetadata:\n  name: ([a-z0-9-]+)`)
	var out []fixture
	for _, m := range kindRe.FindAllStringSubmatch(string(data), -1) {
		k, ok := v1alpha1.KindByName(m[1])
		if !ok {
			t.Fatalf("fixture kind %s is not a known kind", m[1])
		}
		ns := ""
		if k.Namespaced {
			ns = "default"
		}
		out = append(out, fixture{kind: k, name: m[2], namespace: ns})
	}
	return out
}

// TestEveryKind applies one object of every kind with the CLI, then gets, describes, watches
// and deletes each one.
func TestEveryKind(t *testing.T) {
	sideBySide(t)
	s := StartServe(t)
	ctx := ctxT(t)
	c := s.Client()
	fx := allKindsFixtures(t)
	if len(fx) != len(v1alpha1.Kinds) {
		t.Fatalf("all-kinds.yaml has %d objects for %d kinds", len(fx), len(v1alpha1.Kinds))
	}
	seen := map[string]bool{}
	for _, f := range fx {
		seen[f.kind.Kind] = true
	}
	for _, k := range v1alpha1.Kinds {
		if !seen[k.Kind] {
			t.Fatalf("all-kinds.yaml lacks %s", k.Kind)
		}
	}

	out := s.MustCLI("", "apply", "-f", "testdata/all-kinds.yaml")
	for _, f := range fx {
		want := f.kind.Singular + "/" + f.name + " created"
		if f.kind.Kind == "VirtualMachineIPAddressLease" && strings.Contains(out, f.kind.Singular+"/"+f.name+" configured") {
			// The network controller may lease the address for vm1 (applied above it) first.
			continue
		}
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %q:\n%s", want, out)
		}
	}
	// Applying again changes nothing.
	out = s.MustCLI("", "apply", "-f", "testdata/all-kinds.yaml")
	if strings.Count(out, " unchanged") != len(fx) {
		t.Errorf("second apply should leave all %d unchanged:\n%s", len(fx), out)
	}

	// A status write cannot name a path: the disk controller would have converted a file
	// outside the data dir. The disk's status is as it was.
	var before v1alpha1.VirtualDisk
	if err := c.Get(ctx, "virtualdisks", "default", "root", &before); err != nil {
		t.Fatal(err)
	}
	err := c.PatchStatus(ctx, "virtualdisks", "default", "root", []byte(`{"status":{"storageClassName":"../../../../tmp/x"}}`), nil)
	if !client.IsInvalid(err) || !strings.Contains(err.Error(), "status.storageClassName") {
		t.Errorf("a status patch naming a path: %v, want Invalid on status.storageClassName", err)
	}
	var after v1alpha1.VirtualDisk
	if err := c.Get(ctx, "virtualdisks", "default", "root", &after); err != nil || after.Status.StorageClassName != before.Status.StorageClassName {
		t.Errorf("the disk's status changed: %q → %q (%v)", before.Status.StorageClassName, after.Status.StorageClassName, err)
	}

	// Users before what they use: a VM goes before its disk, a disk before its image, an
	// address claim before its lease (a lease deleted under a bound claim is made again).
	for i := len(fx) - 1; i >= 0; i-- {
		f := fx[i]
		t.Run(f.kind.Kind, func(t *testing.T) {
			// Each kind has its own minute: the whole walk takes longer than one on a busy
			// machine (a run with two tests at once passed 60 s at the last kind).
			ctx := ctxT(t)
			short := f.kind.Resource
			if len(f.kind.ShortNames) > 0 {
				short = f.kind.ShortNames[0]
			}
			table := s.MustCLI("", "get", short)
			lines := strings.Split(strings.TrimSpace(table), "\n")
			if len(lines) < 2 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(table, f.name) {
				t.Fatalf("get %s table:\n%s", short, table)
			}
			for _, col := range f.kind.Columns {
				if !col.Wide && !strings.Contains(lines[0], col.Name) {
					t.Errorf("get %s header lacks column %s: %q", short, col.Name, lines[0])
				}
			}
			var obj map[string]any
			js := s.MustCLI("", "get", short, f.name, "-o", "json")
			if err := json.Unmarshal([]byte(js), &obj); err != nil {
				t.Fatalf("get -o json: %v\n%s", err, js)
			}
			if obj["kind"] != f.kind.Kind || obj["apiVersion"] != v1alpha1.APIVersion {
				t.Fatalf("get -o json gave kind %v apiVersion %v", obj["kind"], obj["apiVersion"])
			}
			yml := s.MustCLI("", "get", short, f.name, "-o", "yaml")
			if !strings.Contains(yml, "kind: "+f.kind.Kind) {
				t.Fatalf("get -o yaml:\n%s", yml)
			}
			desc := s.MustCLI("", "describe", short, f.name)
			if !strings.Contains(desc, f.name) {
				t.Fatalf("describe:\n%s", desc)
			}

			// Watch from the current version sees a label change, then the delete.
			rv := obj["metadata"].(map[string]any)["resourceVersion"].(string)
			// Only the fixtures (labelled e2e=yes): the node agent's own Node changes too.
			w, err := c.Watch(ctx, f.kind.Resource, f.namespace, client.ListOptions{ResourceVersion: rv, LabelSelector: "e2e=yes"})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			if err := c.Patch(ctx, f.kind.Resource, f.namespace, f.name, []byte(`{"metadata":{"labels":{"touched":"yes"}}}`), nil); err != nil {
				t.Fatalf("patch: %v", err)
			}
			del := s.MustCLI("", "delete", short, f.name, "--wait", "--timeout", "30s")
			if !strings.Contains(del, f.kind.Singular+"/"+f.name+" deleted") {
				t.Fatalf("delete output: %q", del)
			}
			// Controllers may write status and finalizers too: MODIFIED events (at least the
			// label change) come first, and the stream ends with DELETED.
			modified := 0
			for deleted := false; !deleted; {
				select {
				case ev, ok := <-w.Events():
					if !ok {
						t.Fatalf("watch ended: %v", w.Err())
					}
					switch ev.Type {
					case "MODIFIED":
						modified++
					case "DELETED":
						deleted = true
					default:
						t.Fatalf("watch: unexpected %s", ev.Type)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("watch: no DELETED within 20s (%d MODIFIED)", modified)
				}
			}
			if modified == 0 {
				t.Fatalf("watch: the label change gave no MODIFIED event")
			}
			r := s.CLI("", "get", short, f.name)
			if r.Code == 0 || !strings.Contains(r.Stderr, "NotFound") {
				t.Fatalf("get after delete: code %d stderr %q", r.Code, r.Stderr)
			}
		})
	}
}

// TestRestartKeepsEveryObject: a graceful restart and a kill -9 on the same data dir keep
// every object: the same uid, labels, generation and spec, and a resourceVersion that never
// goes backwards. Controllers may write status after a restart (a failed import is retried,
// a condition catches up), so status and resourceVersion may move forwards.
func TestRestartKeepsEveryObject(t *testing.T) {
	s := StartServe(t)
	s.MustCLI("", "apply", "-f", "testdata/all-kinds.yaml")
	type kept struct {
		identity string // uid, generation, labels and spec
		rv       int64
	}
	snapshot := func() map[string]kept {
		got := map[string]kept{}
		for _, f := range allKindsFixtures(t) {
			var obj struct {
				Metadata v1alpha1.ObjectMeta `json:"metadata"`
				Spec     json.RawMessage     `json:"spec"`
				Data     json.RawMessage     `json:"data"`
			}
			if err := s.Client().Get(ctxT(t), f.kind.Resource, f.namespace, f.name, &obj); err != nil {
				t.Fatalf("%s/%s: %v", f.kind.Kind, f.name, err)
			}
			labels, _ := json.Marshal(obj.Metadata.Labels)
			var rv int64
			fmt.Sscanf(obj.Metadata.ResourceVersion, "%d", &rv)
			got[f.kind.Kind+"/"+f.name] = kept{
				identity: fmt.Sprintf("uid=%s gen=%d labels=%s spec=%s data=%s", obj.Metadata.UID, obj.Metadata.Generation, labels, obj.Spec, obj.Data),
				rv:       rv,
			}
		}
		return got
	}
	// Let the controllers settle first (defaults they fill in, leases they bind).
	before := snapshot()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		time.Sleep(time.Second)
		again := snapshot()
		same := true
		for k, v := range before {
			same = same && again[k].identity == v.identity
		}
		before = again
		if same {
			break
		}
	}
	check := func(when string, now map[string]kept) {
		t.Helper()
		if len(now) != len(before) {
			t.Fatalf("%s: %d objects, want %d", when, len(now), len(before))
		}
		for k, v := range before {
			if now[k].identity != v.identity {
				t.Errorf("%s: %s changed:\n before %s\n now    %s", when, k, v.identity, now[k].identity)
			}
			if now[k].rv < v.rv {
				t.Errorf("%s: %s resourceVersion went backwards: %d -> %d", when, k, v.rv, now[k].rv)
			}
		}
	}
	s.Stop()
	s.Start()
	check("after a graceful restart", snapshot())
	s.Kill9()
	s.Start()
	check("after kill -9", snapshot())
	// New writes after a restart get higher versions than anything before.
	var obj struct {
		Metadata v1alpha1.ObjectMeta `json:"metadata"`
	}
	if err := s.Client().Create(ctxT(t), "secrets", "default", map[string]any{"kind": "Secret", "metadata": map[string]any{"name": "after"}}, &obj); err != nil {
		t.Fatal(err)
	}
	for k, v := range before {
		rv := v.rv
		var now int64
		fmt.Sscanf(obj.Metadata.ResourceVersion, "%d", &now)
		if now <= rv {
			t.Fatalf("resourceVersion went backwards after restart: new %d, %s had %d", now, k, rv)
		}
	}
}

// TestDeckhouseManifestApplies: manifests with Deckhouse's apiVersion apply unchanged and are
// stored as Rakhsh objects.
func TestDeckhouseManifestApplies(t *testing.T) {
	s := StartServe(t)
	out := s.MustCLI("", "apply", "-f", "testdata/deckhouse-class.yaml")
	for _, want := range []string{"virtualmachineclass/discovery created", "virtualmachine/linux-vm created", "virtualdisk/linux-vm-root created"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %q:\n%s", want, out)
		}
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(s.MustCLI("", "get", "vmc", "discovery", "-o", "json")), &obj); err != nil {
		t.Fatal(err)
	}
	if obj["apiVersion"] != v1alpha1.APIVersion {
		t.Fatalf("stored apiVersion %v", obj["apiVersion"])
	}
	pols := obj["spec"].(map[string]any)["sizingPolicies"].([]any)
	if len(pols) != 4 {
		t.Fatalf("sizing policies: %d", len(pols))
	}
	// Re-applying the Deckhouse manifest is a no-op.
	out = s.MustCLI("", "apply", "-f", "testdata/deckhouse-class.yaml")
	if strings.Count(out, "unchanged") != 3 {
		t.Fatalf("re-apply:\n%s", out)
	}
	// A field Rakhsh does not support is named in the error.
	bad := strings.Replace(mustRead(t, "testdata/deckhouse-class.yaml"), "  runPolicy: AlwaysOff", "  runPolicy: AlwaysOff\n  usbDevices: []", 1)
	r := s.CLI(bad, "apply", "-f", "-")
	if r.Code == 0 || !strings.Contains(r.Stderr, "spec.usbDevices") {
		t.Fatalf("unsupported field: code %d stderr %q", r.Code, r.Stderr)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestApplyReportsEachDocument: one bad document in a multi-document apply fails alone, with
// a message naming the problem, and the exit status is non-zero.
func TestApplyReportsEachDocument(t *testing.T) {
	s := StartServe(t)
	manifest := `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: good-1}
spec: {runPolicy: AlwaysOff, cpu: {cores: 1}, memory: {size: 256Mi}}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: bad-cores}
spec: {runPolicy: AlwaysOff, cpu: {cores: "two"}, memory: {size: 256Mi}}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: Bad_Name}
spec: {runPolicy: AlwaysOff, cpu: {cores: 1}, memory: {size: 256Mi}}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualTeapot
metadata: {name: tea}
---
kind: VirtualMachine
metadata: {name: broken
  yaml: [
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: bad-enum}
spec: {runPolicy: Sometimes, cpu: {cores: 0}, memory: {size: lots}}
---
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: good-2}
spec: {runPolicy: AlwaysOff, cpu: {cores: 2}, memory: {size: 1Gi}}
`
	r := s.CLI(manifest, "apply", "-f", "-")
	if r.Code == 0 {
		t.Fatalf("apply with bad documents exited 0")
	}
	for _, want := range []string{"virtualmachine/good-1 created", "virtualmachine/good-2 created"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.Stdout)
		}
	}
	for _, want := range []string{"spec.cpu.cores", "Bad_Name", "RFC 1123", "VirtualTeapot", "YAML", "spec.runPolicy", "spec.memory.size", "Sometimes"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.Stderr)
		}
	}
	l, err := s.Client().List(ctxT(t), "virtualmachines", "default", client.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 2 {
		t.Fatalf("%d VMs stored, want the 2 good ones", len(l.Items))
	}
	// Malformed JSON through the CLI.
	r = s.CLI(`{"kind": "VirtualMachine", `, "apply", "-f", "-")
	if r.Code == 0 || r.Stderr == "" {
		t.Fatalf("malformed JSON: code %d stderr %q", r.Code, r.Stderr)
	}
	// Wait for a phase that does not come times out with a clear message.
	r = s.CLI("", "wait", "vm", "good-1", "--for", "phase=Running", "--timeout", "1s")
	if r.Code == 0 || !strings.Contains(r.Stderr, "timed out") {
		t.Fatalf("wait: code %d stderr %q", r.Code, r.Stderr)
	}
	// The VM controller reports an AlwaysOff VM as Stopped: wait sees it.
	r = s.CLI("", "wait", "vm", "good-1", "--for", "phase=Stopped", "--timeout", "30s")
	if r.Code != 0 {
		t.Fatalf("wait for a phase that comes: code %d stderr %q", r.Code, r.Stderr)
	}
	// A user's patch changes spec (and generation) but never status.
	var vm v1alpha1.VirtualMachine
	if err := s.Client().Patch(ctxT(t), "virtualmachines", "default", "good-1", []byte(`{"spec":{"cpu":{"cores":3}},"status":{"phase":"Running"}}`), &vm); err != nil {
		t.Fatal(err)
	}
	if vm.Status.Phase != "Stopped" || vm.Generation != 2 || vm.Spec.CPU.Cores != 3 {
		t.Fatalf("after spec patch: phase %q generation %d cores %d", vm.Status.Phase, vm.Generation, vm.Spec.CPU.Cores)
	}
}
