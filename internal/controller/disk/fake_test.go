package disk_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/controller/disk"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/runtime/fake"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestRunsAgainstFake: a blank disk is provisioned and deleted through the fake client, and
// an Upload disk waits for its file as a background job that the disk's deletion cancels.
func TestRunsAgainstFake(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	fc := fake.New()
	dataDir := t.TempDir()
	ctx := runFakeController(t, fc, dataDir)
	mkClass(t, fc, v1alpha1.DefaultStorageClassName, true, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal})

	mk := func(name string, ds *v1alpha1.DataSource) {
		d := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
			Spec: v1alpha1.VirtualDiskSpec{DataSource: ds,
				PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: "1Gi"}}}
		if err := fc.Create(ctx, "virtualdisks", "p1", d, nil); err != nil {
			t.Fatal(err)
		}
	}
	mk("blank", nil)
	var d v1alpha1.VirtualDisk
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "blank", &d, func() bool { return d.Status.Phase == v1alpha1.DiskPhaseReady })
	path := storage.DiskPath(dataDir, storage.DefaultPool, d.UID)
	if d.Status.Capacity != "1Gi" || !fileThere(path) {
		t.Errorf("blank disk: capacity %q, file there %v", d.Status.Capacity, fileThere(path))
	}
	if d.Status.StorageClassName != "local" || d.Status.NodeName != "n1" {
		t.Errorf("blank disk: storageClassName %q nodeName %q, want local on n1", d.Status.StorageClassName, d.Status.NodeName)
	}
	if err := fc.Delete(ctx, "virtualdisks", "p1", "blank"); err != nil {
		t.Fatal(err)
	}
	waitDiskGone(t, fc, "blank")
	if fileThere(path) {
		t.Error("the deleted disk's file is still there")
	}

	mk("up", &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeUpload})
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "up", &d, func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseWaitForUserUpload && d.Status.ImageUploadURLs != nil
	})
	// Deleting it cancels the waiting job and lets the disk go.
	if err := fc.Delete(ctx, "virtualdisks", "p1", "up"); err != nil {
		t.Fatal(err)
	}
	waitDiskGone(t, fc, "up")
}

// runFakeController runs a disk controller of node n1 with dataDir over fc until the test
// ends, and returns the context it runs in.
func runFakeController(t *testing.T, fc *fake.Client, dataDir string) context.Context {
	t.Helper()
	log := fake.Logger(t, slog.LevelInfo)
	_, ctx := fake.Start(t, fc, log, func(f *runtime.Factory) (*disk.Controller, error) {
		return disk.New(disk.Config{Deps: runtime.Deps{Client: fc, Informers: f, Log: log}, DataDir: dataDir, NodeName: "n1", Uploads: &images.Uploads{}}), nil
	})
	return ctx
}

func fileThere(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func waitDiskGone(t *testing.T, fc *fake.Client, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !client.IsNotFound(fc.Get(context.Background(), "virtualdisks", "p1", name, nil)) {
		if time.Now().After(deadline) {
			t.Fatalf("disk %s is still there", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mkClass(t *testing.T, fc *fake.Client, name string, def bool, spec v1alpha1.StorageClassSpec) {
	t.Helper()
	sc := &v1alpha1.StorageClass{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "StorageClass"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: name}, Spec: spec}
	if def {
		sc.Annotations = map[string]string{v1alpha1.AnnotationDefaultStorageClass: "true"}
	}
	if err := fc.Create(context.Background(), "storageclasses", "", sc, nil); err != nil {
		t.Fatal(err)
	}
}

// TestStorageClassesAgainstFake: a disk naming a missing class waits for it; a disk on a
// Shared class lands in the class's directory with no node; a disk moves Local -> Shared ->
// Local with its data, the old file going only after the copy checks; a move waits while a
// running VM has the disk.
func TestStorageClassesAgainstFake(t *testing.T) {
	imagetest.Need(t, "qemu-img", "qemu-io", "prlimit")
	fc := fake.New()
	dataDir, sharedDir := t.TempDir(), t.TempDir()
	ctx := runFakeController(t, fc, dataDir)
	mkClass(t, fc, "local", true, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal})

	mk := func(name, class string) {
		d := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
			Spec:       v1alpha1.VirtualDiskSpec{PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: "16Mi", StorageClassName: class}}}
		if err := fc.Create(ctx, "virtualdisks", "p1", d, nil); err != nil {
			t.Fatal(err)
		}
	}
	var d v1alpha1.VirtualDisk
	mk("waits", "nfs")
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "waits", &d, func() bool {
		c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady)
		return d.Status.Phase == v1alpha1.DiskPhasePending && c != nil && c.Reason == disk.ReasonStorageClassMissing
	})
	if c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady); !strings.Contains(c.Message, `StorageClass "nfs" does not exist`) {
		t.Errorf("missing class message: %q", c.Message)
	}
	mkClass(t, fc, "nfs", false, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeShared, Shared: &v1alpha1.StorageClassShared{Path: sharedDir}})
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "waits", &d, func() bool { return d.Status.Phase == v1alpha1.DiskPhaseReady })
	if d.Status.StorageClassName != "nfs" || d.Status.NodeName != "" || !fileThere(filepath.Join(sharedDir, "disks", d.UID+".qcow2")) {
		t.Errorf("shared disk: class %q node %q, file in the shared dir: %v", d.Status.StorageClassName, d.Status.NodeName,
			fileThere(filepath.Join(sharedDir, "disks", d.UID+".qcow2")))
	}

	// Local -> Shared -> Local, with a marker written into the disk checked at each stop.
	mk("mover", "")
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "mover", &d, func() bool { return d.Status.Phase == v1alpha1.DiskPhaseReady })
	localPath := storage.DiskPath(dataDir, storage.DefaultPool, d.UID)
	sharedPath := filepath.Join(sharedDir, "disks", d.UID+".qcow2")
	writeMarker(t, localPath)
	move := func(to string) {
		t.Helper()
		var cur v1alpha1.VirtualDisk
		if err := fc.Get(ctx, "virtualdisks", "p1", "mover", &cur); err != nil {
			t.Fatal(err)
		}
		cur.Spec.PersistentVolumeClaim.StorageClassName = to
		if err := fc.Update(ctx, "virtualdisks", "p1", "mover", &cur, nil); err != nil {
			t.Fatal(err)
		}
		fc.WaitFor(t, 30*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
			return d.Status.StorageClassName == to && d.Status.Phase == v1alpha1.DiskPhaseReady
		})
	}
	move("nfs")
	waitFileGone(t, localPath)
	if fileThere(localPath) || !fileThere(sharedPath) || d.Status.NodeName != "" {
		t.Fatalf("after the move to nfs: local file %v, shared file %v, node %q", fileThere(localPath), fileThere(sharedPath), d.Status.NodeName)
	}
	if c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating); c == nil || c.Reason != disk.ReasonMoved {
		t.Errorf("Migrating condition after the move: %+v", c)
	}
	checkMarker(t, sharedPath)
	move("local")
	waitFileGone(t, sharedPath)
	if !fileThere(localPath) || fileThere(sharedPath) || d.Status.NodeName != "n1" {
		t.Fatalf("after the move back: local file %v, shared file %v, node %q", fileThere(localPath), fileThere(sharedPath), d.Status.NodeName)
	}
	checkMarker(t, localPath)

	// A disk a running VM has open is not moved: the move waits with a condition.
	vm := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "vm1", Namespace: "p1"},
		Spec: v1alpha1.VirtualMachineSpec{CPU: v1alpha1.VirtualMachineCPU{Cores: 1}, Memory: v1alpha1.VirtualMachineMemory{Size: "64Mi"},
			BlockDeviceRefs: []v1alpha1.BlockDeviceSpecRef{{Kind: v1alpha1.BlockDeviceKindVirtualDisk, Name: "mover"}}}}
	if err := fc.Create(ctx, "virtualmachines", "p1", vm, vm); err != nil {
		t.Fatal(err)
	}
	vm.Status.Phase = v1alpha1.VMPhaseRunning
	if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm1", vm, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
		return len(d.Status.AttachedToVirtualMachines) == 1 && d.Status.AttachedToVirtualMachines[0].Mounted
	})
	_ = fc.Get(ctx, "virtualdisks", "p1", "mover", &d)
	d.Spec.PersistentVolumeClaim.StorageClassName = "nfs"
	if err := fc.Update(ctx, "virtualdisks", "p1", "mover", &d, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
		c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating)
		return c != nil && c.Reason == disk.ReasonMoveWaiting
	})
	if d.Status.StorageClassName != "local" || !fileThere(localPath) || fileThere(sharedPath) {
		t.Errorf("a disk in use moved: class %q", d.Status.StorageClassName)
	}

	// A VM bound to a node but not running yet (its agent is about to start it) holds the
	// move too, though the disk does not count it as mounted.
	_ = fc.Get(ctx, "virtualmachines", "p1", "vm1", vm)
	vm.Status.Phase, vm.Status.NodeName = v1alpha1.VMPhasePending, "n1"
	if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm1", vm, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
		return len(d.Status.AttachedToVirtualMachines) == 1 && !d.Status.AttachedToVirtualMachines[0].Mounted
	})
	time.Sleep(300 * time.Millisecond)
	if err := fc.Get(ctx, "virtualdisks", "p1", "mover", &d); err != nil {
		t.Fatal(err)
	}
	if c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating); d.Status.StorageClassName != "local" || c == nil || c.Reason != disk.ReasonMoveWaiting {
		t.Errorf("a disk of a bound VM: class %q, Migrating %+v", d.Status.StorageClassName, c)
	}
	// The VM stops for good: the waiting move goes ahead.
	_ = fc.Get(ctx, "virtualmachines", "p1", "vm1", vm)
	vm.Status.Phase, vm.Status.NodeName = v1alpha1.VMPhaseStopped, ""
	if err := fc.UpdateStatus(ctx, "virtualmachines", "p1", "vm1", vm, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
		return d.Status.StorageClassName == "nfs" && d.Status.Phase == v1alpha1.DiskPhaseReady
	})
	checkMarker(t, sharedPath)

	// respec names class and the annotations ann in the disk's spec, and waits until done.
	respec := func(class string, ann map[string]string, done func() bool) {
		t.Helper()
		_ = fc.Get(ctx, "virtualdisks", "p1", "mover", &d)
		d.Spec.PersistentVolumeClaim.StorageClassName = class
		d.Annotations = ann
		if err := fc.Update(ctx, "virtualdisks", "p1", "mover", &d, nil); err != nil {
			t.Fatal(err)
		}
		fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "mover", &d, done)
	}
	onNode := func(n string) map[string]string { return map[string]string{v1alpha1.AnnotationStorageNode: n} }
	// Shared -> Local on another node: the controller cannot reach that node's storage and
	// hands the move to its agent (status.nodeName names it, so that it may write the status).
	if err := fc.Add(&v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: "n1"}}); err != nil {
		t.Fatal(err)
	}
	if err := fc.Add(&v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: "n2"}}); err != nil {
		t.Fatal(err)
	}
	respec("local", onNode("n2"), func() bool {
		c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating)
		return d.Status.Phase == v1alpha1.DiskPhaseMigrating && c != nil && c.Reason == disk.ReasonMovingOnNode
	})
	if d.Status.NodeName != "n2" || d.Status.StorageClassName != "nfs" || !fileThere(sharedPath) {
		t.Errorf("handed to n2's agent: node %q class %q, shared file %v", d.Status.NodeName, d.Status.StorageClassName, fileThere(sharedPath))
	}
	// Naming the old class again calls the handed-over move off (n2 may be down).
	respec("nfs", onNode("n2"), func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseReady && d.Status.NodeName == "" && d.Status.StorageClassName == "nfs"
	})
	respec("local", onNode("n2"), func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseMigrating && d.Status.NodeName == "n2"
	})
	// The agent's part, as n2's agent writes it; then a move from n2's local storage to n1's
	// is handed to n1's agent, which fetches the file from n2 (status.moveSourceNodeName).
	d.Status.Phase, d.Status.StorageClassName = v1alpha1.DiskPhaseReady, "local"
	v1alpha1.SetCondition(&d.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.DiskConditionMigrating, Status: v1alpha1.ConditionFalse,
		Reason: disk.ReasonMoved, ObservedGeneration: d.Generation})
	if err := fc.UpdateStatus(ctx, "virtualdisks", "p1", "mover", &d, nil); err != nil {
		t.Fatal(err)
	}
	mkClass(t, fc, "fast", false, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal, Local: &v1alpha1.StorageClassLocal{Path: t.TempDir()}})
	respec("fast", onNode("n1"), func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseMigrating && d.Status.NodeName == "n1" && d.Status.MoveSourceNodeName == "n2"
	})
	if c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating); c == nil || c.Reason != disk.ReasonMovingOnNode ||
		!strings.Contains(c.Message, `node n1's agent copies the disk from storage class "local" on node n2 to "fast"`) {
		t.Errorf("a node-to-node move: condition %+v", c)
	}
	// Naming the old class again without the node (as rakhsh disk move does) calls it off
	// and gives the disk back to n2.
	respec("local", nil, func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseReady && d.Status.NodeName == "n2" && d.Status.MoveSourceNodeName == ""
	})
	// Handed over again; n1's agent gives up, as it writes it (the condition only): the disk
	// goes back to n2, Ready, and the failed move waits for a spec change.
	respec("fast", onNode("n1"), func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseMigrating && d.Status.NodeName == "n1" && d.Status.MoveSourceNodeName == "n2"
	})
	v1alpha1.SetCondition(&d.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.DiskConditionMigrating, Status: v1alpha1.ConditionFalse,
		Reason: disk.ReasonMoveFailed, Message: "fetching from n2 failed", ObservedGeneration: d.Generation})
	if err := fc.UpdateStatus(ctx, "virtualdisks", "p1", "mover", &d, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseReady && d.Status.NodeName == "n2" && d.Status.MoveSourceNodeName == ""
	})
	if c := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating); c.Reason != disk.ReasonMoveFailed || c.Message != "fetching from n2 failed" ||
		d.Status.StorageClassName != "local" {
		t.Errorf("after the copying node gave up: condition %+v, class %q", c, d.Status.StorageClassName)
	}

	// Within one class: the move-to-node annotation asks for a move to another node's Local
	// storage, and it is taken off once the disk is there (so that it never asks again
	// later); storage-node, from the move to n1 above, stays as it is.
	if err := fc.Add(&v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: "n3"}}); err != nil {
		t.Fatal(err)
	}
	_ = fc.Get(ctx, "virtualdisks", "p1", "mover", &d)
	d.Spec.PersistentVolumeClaim.StorageClassName = "local"
	d.Annotations = map[string]string{v1alpha1.AnnotationStorageNode: "n1", v1alpha1.AnnotationMoveToNode: "n3"}
	if err := fc.Update(ctx, "virtualdisks", "p1", "mover", &d, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
		return d.Status.Phase == v1alpha1.DiskPhaseMigrating && d.Status.NodeName == "n3" && d.Status.MoveSourceNodeName == "n2"
	})
	// n3's agent's part.
	d.Status.Phase, d.Status.MoveSourceNodeName = v1alpha1.DiskPhaseReady, ""
	v1alpha1.SetCondition(&d.Status.Conditions, v1alpha1.Condition{Type: v1alpha1.DiskConditionMigrating, Status: v1alpha1.ConditionFalse,
		Reason: disk.ReasonMoved, ObservedGeneration: d.Generation})
	if err := fc.UpdateStatus(ctx, "virtualdisks", "p1", "mover", &d, nil); err != nil {
		t.Fatal(err)
	}
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "mover", &d, func() bool {
		return d.Annotations[v1alpha1.AnnotationMoveToNode] == ""
	})
	if d.Status.NodeName != "n3" || d.Status.Phase != v1alpha1.DiskPhaseReady || d.Annotations[v1alpha1.AnnotationStorageNode] != "n1" {
		t.Errorf("after the move to n3 and the annotation's removal: node %q phase %s annotations %v", d.Status.NodeName, d.Status.Phase, d.Annotations)
	}
}

// writeMarker writes a pattern of bytes at the start of the disk's guest data.
func writeMarker(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io write: %v: %s", err, out)
	}
}

// checkMarker checks the pattern writeMarker wrote.
func checkMarker(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") {
		t.Fatalf("the moved disk lost its data: %v: %s", err, out)
	}
}

// waitFileGone waits for the old file of a move to go: it is removed just after the disk's status
// names the new class.
func waitFileGone(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); fileThere(path) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}

// readyImage creates the Ready ClusterVirtualImage "base" (an HTTP one, with annotations),
// whose file, a blank 8 MiB qcow2, is in the image store of dataDir; it returns the image and
// the path of its file.
func readyImage(t *testing.T, fc *fake.Client, dataDir string, annotations map[string]string) (*v1alpha1.ClusterVirtualImage, string) {
	t.Helper()
	ctx := context.Background()
	img := &v1alpha1.ClusterVirtualImage{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "ClusterVirtualImage"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "base", Annotations: annotations},
		Spec:       v1alpha1.ClusterVirtualImageSpec{DataSource: v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeHTTP, HTTP: &v1alpha1.DataSourceHTTP{URL: "http://example.invalid/x"}}}}
	if err := fc.Create(ctx, "clustervirtualimages", "", img, img); err != nil {
		t.Fatal(err)
	}
	file := storage.ImagePath(dataDir, img.UID)
	if err := storage.CreateBlank(ctx, file, 8<<20); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	img.Status = v1alpha1.ImageStatus{Phase: v1alpha1.ImagePhaseReady, Format: "qcow2", SHA256: hex.EncodeToString(sum[:]),
		Size: &v1alpha1.ImageSize{UnpackedBytes: 8 << 20, StoredBytes: int64(len(b))}}
	if err := fc.UpdateStatus(ctx, "clustervirtualimages", "", "base", img, nil); err != nil {
		t.Fatal(err)
	}
	return img, file
}

// TestSharedImageCopies: disks made from an image on a Shared class are linked clones of one
// copy of the image in the class (named by its content), which goes with the last of them.
func TestSharedImageCopies(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	fc := fake.New()
	dataDir, sharedDir := t.TempDir(), t.TempDir()
	ctx := runFakeController(t, fc, dataDir)
	mkClass(t, fc, "nfs", true, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeShared, Shared: &v1alpha1.StorageClassShared{Path: sharedDir}})

	img, _ := readyImage(t, fc, dataDir, nil)
	copyPath := storage.SharedImagePath(sharedDir, img.Status.SHA256)
	var d v1alpha1.VirtualDisk
	for _, name := range []string{"a", "b"} {
		vd := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1"},
			Spec: v1alpha1.VirtualDiskSpec{DataSource: &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
				ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindClusterVirtualImage, Name: "base"}}, CloneMode: v1alpha1.CloneModeLinked}}
		if err := fc.Create(ctx, "virtualdisks", "p1", vd, nil); err != nil {
			t.Fatal(err)
		}
		fc.WaitFor(t, 20*time.Second, "virtualdisks", "p1", name, &d, func() bool { return d.Status.Phase == v1alpha1.DiskPhaseReady })
		chain, err := storage.CheckChain(filepath.Join(sharedDir, "disks", d.UID+".qcow2"), "qcow2")
		if err != nil || len(chain) != 2 || chain[1].Path != copyPath {
			t.Fatalf("disk %s: chain %v, %v; want a clone of %s", name, chain, err, copyPath)
		}
	}
	if err := fc.Delete(ctx, "virtualdisks", "p1", "a"); err != nil {
		t.Fatal(err)
	}
	waitDiskGone(t, fc, "a")
	if !fileThere(copyPath) {
		t.Fatal("the image copy went while disk b is still a clone of it")
	}
	if err := fc.Delete(ctx, "virtualdisks", "p1", "b"); err != nil {
		t.Fatal(err)
	}
	waitDiskGone(t, fc, "b")
	if fileThere(copyPath) {
		t.Error("the image copy stayed after its last disk went")
	}
}

// TestDiskFromBeforeClasses: a Ready disk made before storage classes (status
// storageClassName "default", its file in the default pool, its spec naming "default") joins
// the default Local class in place: the same file, its node set, no move.
func TestDiskFromBeforeClasses(t *testing.T) {
	imagetest.Need(t, "qemu-img", "prlimit")
	fc := fake.New()
	dataDir := t.TempDir()
	log := fake.Logger(t, slog.LevelInfo)
	ctx := context.Background()
	mkClass(t, fc, "local", true, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal})
	vd := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "old", Namespace: "p1", Finalizers: []string{disk.Finalizer}},
		Spec:       v1alpha1.VirtualDiskSpec{PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: "16Mi", StorageClassName: "default"}}}
	if err := fc.Create(ctx, "virtualdisks", "p1", vd, vd); err != nil {
		t.Fatal(err)
	}
	path := storage.DiskPath(dataDir, storage.DefaultPool, vd.UID)
	if err := storage.CreateBlank(ctx, path, 16<<20); err != nil {
		t.Fatal(err)
	}
	vd.Status = v1alpha1.VirtualDiskStatus{Phase: v1alpha1.DiskPhaseReady, Capacity: "16Mi", Format: "qcow2", StorageClassName: "default", ObservedGeneration: vd.Generation}
	if err := fc.UpdateStatus(ctx, "virtualdisks", "p1", "old", vd, nil); err != nil {
		t.Fatal(err)
	}
	fake.Start(t, fc, log, func(f *runtime.Factory) (*disk.Controller, error) {
		return disk.New(disk.Config{Deps: runtime.Deps{Client: fc, Informers: f, Log: log}, DataDir: dataDir, NodeName: "n3"}), nil
	})
	var d v1alpha1.VirtualDisk
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "old", &d, func() bool { return d.Status.StorageClassName == "local" })
	time.Sleep(200 * time.Millisecond)
	if err := fc.Get(ctx, "virtualdisks", "p1", "old", &d); err != nil {
		t.Fatal(err)
	}
	if d.Status.Phase != v1alpha1.DiskPhaseReady || d.Status.NodeName != "n3" || !fileThere(path) ||
		v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionMigrating) != nil {
		t.Errorf("the old disk: phase %s node %q file %v conditions %+v", d.Status.Phase, d.Status.NodeName, fileThere(path), d.Status.Conditions)
	}
}

// TestProvisionOnNodeAgainstFake: a new Local disk annotated for another node is handed to
// that node's agent (Provisioning, ProvisioningOnNode), with no file made here; for a node
// that does not exist it waits; a copy of a disk cannot be made there and says how.
func TestProvisionOnNodeAgainstFake(t *testing.T) {
	fc := fake.New()
	dataDir := t.TempDir()
	ctx := runFakeController(t, fc, dataDir)
	mkClass(t, fc, v1alpha1.DefaultStorageClassName, true, v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal})
	if err := fc.Create(ctx, "nodes", "", &v1alpha1.Node{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Node"},
		ObjectMeta: v1alpha1.ObjectMeta{Name: "n2"}}, nil); err != nil {
		t.Fatal(err)
	}
	mk := func(name, node string, ds *v1alpha1.DataSource) {
		d := &v1alpha1.VirtualDisk{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualDisk"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: "p1", Annotations: map[string]string{v1alpha1.AnnotationStorageNode: node}},
			Spec:       v1alpha1.VirtualDiskSpec{DataSource: ds, PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: "1Gi"}}}
		if err := fc.Create(ctx, "virtualdisks", "p1", d, nil); err != nil {
			t.Fatal(err)
		}
	}
	ready := func(d *v1alpha1.VirtualDisk) *v1alpha1.Condition {
		return v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady)
	}
	var d v1alpha1.VirtualDisk
	mk("there", "n2", nil)
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "there", &d, func() bool {
		c := ready(&d)
		return d.Status.Phase == v1alpha1.DiskPhaseProvisioning && c != nil && c.Reason == disk.ReasonProvisioningOnNode
	})
	if d.Status.NodeName != "n2" || d.Status.StorageClassName != "local" || fileThere(storage.DiskPath(dataDir, storage.DefaultPool, d.UID)) {
		t.Errorf("handed over: node %q class %q, file here %v", d.Status.NodeName, d.Status.StorageClassName, fileThere(storage.DiskPath(dataDir, storage.DefaultPool, d.UID)))
	}
	mk("nowhere", "n9", nil)
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "nowhere", &d, func() bool {
		c := ready(&d)
		return d.Status.Phase == v1alpha1.DiskPhasePending && c != nil && strings.Contains(c.Message, `node "n9"`)
	})
	mk("copy", "n2", &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
		ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceKindVirtualDisk, Name: "there"}})
	fc.WaitFor(t, 10*time.Second, "virtualdisks", "p1", "copy", &d, func() bool {
		c := ready(&d)
		return d.Status.Phase == v1alpha1.DiskPhasePending && c != nil && strings.Contains(c.Message, "rakhsh disk move --node n2")
	})
}
