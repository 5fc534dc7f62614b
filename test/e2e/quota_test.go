package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestProjectQuota: creates and updates that would exceed a project's quota on cores, memory,
// disk bytes, VMs or images are refused with the quota and the usage named; the usage shows
// in the Project's status and in `rakhsh describe proj`; lowering a quota below the usage
// sets QuotaExceeded.
func TestProjectQuota(t *testing.T) {
	s := StartServe(t, "--no-agent")
	proj := `apiVersion: virtualization.rakhsh.io/v1alpha1
kind: Project
metadata: {name: team}
spec:
  quota: {cores: 3, memory: 2Gi, disk: 3Gi, virtualMachines: 2, images: 1}
`
	s.MustCLI(proj, "apply", "-f", "-")
	apply := func(m string) CLIResult { return s.CLI(m, "-n", "team", "apply", "-f", "-") }
	must := func(m string) {
		t.Helper()
		if r := apply(m); r.Code != 0 {
			t.Fatalf("apply: %s", r.Stderr)
		}
	}
	refused := func(what, m string, want ...string) {
		t.Helper()
		r := apply(m)
		if r.Code == 0 {
			t.Fatalf("%s: admitted, want a quota refusal", what)
		}
		for _, w := range want {
			if !strings.Contains(r.Stderr, w) {
				t.Errorf("%s: the error lacks %q:\n%s", what, w, r.Stderr)
			}
		}
	}

	must(classVM("a", "", "2", "", "1Gi", "AlwaysOff"))
	refused("cores", classVM("b", "", "2", "", "512Mi", "AlwaysOff"),
		`exceeded quota cores of project "team": requested 2, used 2, limited to 3`)
	refused("memory", classVM("b", "", "1", "", "1536Mi", "AlwaysOff"),
		`exceeded quota memory of project "team": requested 1536Mi, used 1Gi, limited to 2Gi`)
	must(classVM("b", "", "1", "", "1Gi", "AlwaysOff"))
	refused("VM count", classVM("c", "", "1", "", "128Mi", "AlwaysOff"), "exceeded quota virtualMachines", "used 2, limited to 2")
	// Growing a VM counts only the difference.
	refused("VM update", classVM("b", "", "2", "", "1Gi", "AlwaysOff"), "exceeded quota cores", "requested 1, used 3")

	disk := func(name, size string) string {
		return "apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDisk\nmetadata: {name: " + name + "}\nspec:\n  persistentVolumeClaim: {size: " + size + "}\n"
	}
	must(disk("d1", "2Gi"))
	refused("disk", disk("d2", "2Gi"), `exceeded quota disk of project "team": requested 2Gi, used 2Gi, limited to 3Gi`)
	refused("disk growth", disk("d1", "4Gi"), "exceeded quota disk", "requested 2Gi, used 2Gi")
	// A disk without a size takes its source's: a clone of d1 asks for 2Gi too, and a disk
	// from an image that is not Ready yet cannot be counted, so it needs a size.
	clone := func(name, kind, src string) string {
		return "apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDisk\nmetadata: {name: " + name + "}\nspec:\n  dataSource:\n    type: ObjectRef\n    objectRef: {kind: " + kind + ", name: " + src + "}\n"
	}
	refused("disk clone without a size", clone("d3", "VirtualDisk", "d1"), `exceeded quota disk of project "team": requested 2Gi, used 2Gi, limited to 3Gi`)
	refused("disk from an image not Ready", clone("d4", "ClusterVirtualImage", "not-there-yet"),
		"the size of the disk's source is not known yet: set spec.persistentVolumeClaim.size")

	img := func(name string) string {
		return "apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualImage\nmetadata: {name: " + name + "}\nspec:\n  storage: ContainerRegistry\n  dataSource:\n    type: HTTP\n    http: {url: \"http://127.0.0.1:9/x.qcow2\"}\n"
	}
	must(img("i1"))
	refused("images", img("i2"), "exceeded quota images", "requested 1, used 1, limited to 1")

	// Usage in the status and in describe.
	deadline := time.Now().Add(time.Minute)
	var p v1alpha1.Project
	for time.Now().Before(deadline) {
		if err := s.Client().Get(context.Background(), "projects", "", "team", &p); err != nil {
			t.Fatal(err)
		}
		if u := p.Status.Used; u != nil && u.Cores == 3 && u.Memory == "2Gi" && u.Disk == "2Gi" && u.VirtualMachines == 2 && u.Images == 1 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if u := p.Status.Used; u == nil || u.Cores != 3 || u.Memory != "2Gi" || u.Disk != "2Gi" || u.VirtualMachines != 2 || u.Images != 1 {
		t.Fatalf("project status.used = %+v, want 3 cores, 2Gi, 2Gi disk, 2 VMs, 1 image", p.Status.Used)
	}
	out := s.MustCLI("", "describe", "proj", "team")
	for _, want := range []string{"Quota:", "cores            3            3", "memory           2Gi          2Gi", "virtualMachines  2            2"} {
		if !strings.Contains(out, want) {
			t.Errorf("describe proj lacks %q:\n%s", want, out)
		}
	}

	// Lowering the quota below the usage: nothing is removed, the project says so.
	s.MustCLI(strings.Replace(proj, "cores: 3", "cores: 1", 1), "apply", "-f", "-")
	deadline = time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		_ = s.Client().Get(context.Background(), "projects", "", "team", &p)
		if c := v1alpha1.FindCondition(p.Status.Conditions, v1alpha1.ProjectConditionQuotaExceeded); c != nil && c.Status == v1alpha1.ConditionTrue {
			if !strings.Contains(c.Message, "cores") {
				t.Errorf("QuotaExceeded message %q does not name cores", c.Message)
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("QuotaExceeded not set after lowering the quota: %+v", p.Status.Conditions)
}
