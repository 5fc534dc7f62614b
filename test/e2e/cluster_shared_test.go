package e2e

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// What the cluster tests share: the manifests they apply, rendered from the few fields in
// which they differ, and the waits and steps they repeat.

// clusterStart starts a test in the cluster lane on the cluster pick returns (sharedCluster,
// say), and returns it, its serve and its guest image.
func clusterStart(t *testing.T, pick func(t *testing.T) *Cluster) (*Cluster, *Serve, string) {
	t.Helper()
	clusterLane(t)
	c := pick(t)
	return c, c.Serve(t), c.GuestImage(t)
}

// clusterHAAnnotation marks a VM highly available (an entry of clusterVMManifest.Annotations).
const clusterHAAnnotation = "virtualization.rakhsh.io/high-availability: enabled"

// clusterVMManifest is a VirtualMachine of the test guest: runPolicy AlwaysOn, one vCPU,
// 256Mi and a grace period of 5 s unless a field says otherwise; its block devices are the
// ClusterVirtualImage Image (when set) and then the VirtualDisks Disks.
type clusterVMManifest struct {
	Name        string
	RunPolicy   string   // AlwaysOn when ""
	Annotations []string // entries of metadata.annotations, "key: value"
	Host        string   // pins the VM by a nodeSelector on kubernetes.io/hostname
	CPU, Memory string   // flow mappings of spec.cpu and spec.memory; {cores: 1} and {size: 256Mi} when ""
	Image       string   // a ClusterVirtualImage, the first block device
	Disks       []string // VirtualDisks, after the image
	Spec        []string // more lines of spec, "key: value"
}

// YAML renders the manifest.
func (m clusterVMManifest) YAML() string {
	policy, cpu, mem := clusterOr(m.RunPolicy, "AlwaysOn"), clusterOr(m.CPU, "{cores: 1}"), clusterOr(m.Memory, "{size: 256Mi}")
	var b strings.Builder
	b.WriteString("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: " + m.Name + "\n")
	if len(m.Annotations) > 0 {
		b.WriteString("  annotations: {" + strings.Join(m.Annotations, ", ") + "}\n")
	}
	b.WriteString("spec:\n  runPolicy: " + policy + "\n  cpu: " + cpu + "\n  memory: " + mem + "\n  terminationGracePeriodSeconds: 5\n")
	for _, l := range m.Spec {
		b.WriteString("  " + l + "\n")
	}
	if m.Host != "" {
		b.WriteString("  nodeSelector: {kubernetes.io/hostname: " + m.Host + "}\n")
	}
	b.WriteString("  blockDeviceRefs:\n")
	if m.Image != "" {
		b.WriteString("  - {kind: ClusterVirtualImage, name: " + m.Image + "}\n")
	}
	for _, d := range m.Disks {
		b.WriteString("  - {kind: VirtualDisk, name: " + d + "}\n")
	}
	return b.String()
}

// clusterDiskManifest is a VirtualDisk: a blank one of Size (on StorageClass, when set), or
// one made from the ClusterVirtualImage Image or the VirtualDisk FromDisk; Node names the
// node of a Local disk (the storage-node annotation).
type clusterDiskManifest struct {
	Name         string
	Node         string
	Size         string
	StorageClass string
	Image        string
	FromDisk     string
}

// YAML renders the manifest.
func (m clusterDiskManifest) YAML() string {
	var b strings.Builder
	b.WriteString("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDisk\nmetadata:\n  name: " + m.Name + "\n")
	if m.Node != "" {
		b.WriteString("  annotations: {" + v1alpha1.AnnotationStorageNode + ": " + m.Node + "}\n")
	}
	b.WriteString("spec:\n")
	if m.Size != "" {
		pvc := "size: " + m.Size
		if m.StorageClass != "" {
			pvc += ", storageClassName: " + m.StorageClass
		}
		b.WriteString("  persistentVolumeClaim: {" + pvc + "}\n")
	}
	switch {
	case m.Image != "":
		b.WriteString("  dataSource:\n    type: ObjectRef\n    objectRef: {kind: ClusterVirtualImage, name: " + m.Image + "}\n")
	case m.FromDisk != "":
		b.WriteString("  dataSource:\n    type: ObjectRef\n    objectRef: {kind: VirtualDisk, name: " + m.FromDisk + "}\n")
	}
	return b.String()
}

// clusterSharedClassYAML is a StorageClass of type Shared over the directory dir.
func clusterSharedClassYAML(name, dir string) string {
	return "apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: StorageClass\nmetadata: {name: " + name + "}\nspec:\n  type: Shared\n  shared: {path: " + dir + "}\n"
}

// clusterApply applies the manifests, as one stream of YAML documents, through s.
func clusterApply(s *Serve, manifests ...string) {
	s.t.Helper()
	s.MustCLI(strings.Join(manifests, "---\n"), "apply", "-f", "-")
}

// clusterWaitDisks waits up to 2 minutes for each of the VirtualDisks to be Ready.
func clusterWaitDisks(s *Serve, names ...string) {
	s.t.Helper()
	for _, d := range names {
		s.MustCLI("", "wait", "vd", d, "--for", "phase=Ready", "--timeout", "2m")
	}
}

// clusterBoot waits until the VM name runs, fails the test unless it runs on node (when node
// is not ""), waits for its guest's ready marker and returns the VM as it was when it ran.
func clusterBoot(t *testing.T, s *Serve, name, node string) *v1alpha1.VirtualMachine {
	t.Helper()
	v := vmWait(t, s, name, vmBootTimeout, "Running", vmPhase(v1alpha1.VMPhaseRunning))
	if node != "" && v.Status.NodeName != node {
		t.Fatalf("the VM %s runs on %q, want %s", name, v.Status.NodeName, node)
	}
	vmWaitSerial(t, s, name, "RAKHSH-GUEST: ready", 1)
	return v
}

// clusterImportCVI applies a ClusterVirtualImage name of the test guest's ISO served at base
// through s and waits up to 3 minutes until it is Ready.
func clusterImportCVI(s *Serve, name, base string) {
	s.t.Helper()
	s.MustCLI("apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: ClusterVirtualImage\nmetadata: {name: "+name+"}\nspec:\n  dataSource:\n    type: HTTP\n    http: {url: \""+base+"/guest.iso\"}\n", "apply", "-f", "-")
	s.MustCLI("", "wait", "cvi", name, "--for", "phase=Ready", "--timeout", "3m")
}

func clusterOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// clusterTickLoop, typed on a guest's console, has it print "RKTICK n" every second.
const clusterTickLoop = "(i=0; while true; do i=$((i+1)); echo RKTICK $i; sleep 1; done) &"

// clusterSharedDisk makes, through s, a StorageClass class of type Shared over dir and a 64Mi
// VirtualDisk disk on it, and waits until the disk is Ready.
func clusterSharedDisk(s *Serve, class, dir, disk string) {
	s.t.Helper()
	clusterApply(s, clusterSharedClassYAML(class, dir))
	clusterApply(s, clusterDiskManifest{Name: disk, Size: "64Mi", StorageClass: class}.YAML())
	clusterWaitDisks(s, disk)
}

// clusterUnpin removes the VM's nodeSelector: a VM started on a chosen node is free to move.
func clusterUnpin(s *Serve, name string) {
	s.t.Helper()
	s.MustCLI("", "patch", "vm", name, "--type", "json", "-p", `[{"op":"remove","path":"/spec/nodeSelector"}]`)
}

// clusterRunningOn is a vmWait condition: the VM runs on node.
func clusterRunningOn(node string) func(v *v1alpha1.VirtualMachine) bool {
	return func(v *v1alpha1.VirtualMachine) bool {
		return v != nil && v.Status.Phase == v1alpha1.VMPhaseRunning && v.Status.NodeName == node
	}
}

// clusterConsoleEcho opens the serial console of the VM name through cl, types an empty line
// and then cmd, and waits up to a minute for want in what the console prints (what names it).
func clusterConsoleEcho(ctx context.Context, t *testing.T, cl *client.Client, name, cmd, want, what string) {
	t.Helper()
	conn, err := cl.DialStream(ctx, "virtualmachines", "default", name, "console")
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer conn.Close()
	out := &lockedBuffer{}
	go func() { _, _ = io.Copy(out, conn) }()
	if _, err := conn.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := conn.Write([]byte(cmd + "\n")); err != nil {
		t.Fatal(err)
	}
	consoleWait(t, out, want, 60*time.Second, what)
}

// clusterLiftLater is for a fault a test puts on (a paused agent, a cut link) and lifts later:
// it has lift run when the test ends, and returns a function that runs it at once instead.
func clusterLiftLater(t *testing.T, lift func()) (liftNow func()) {
	lifted := false
	t.Cleanup(func() {
		if !lifted {
			lift()
		}
	})
	return func() {
		lift()
		lifted = true
	}
}
