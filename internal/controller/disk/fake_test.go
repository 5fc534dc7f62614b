package disk_test

import (
	"context"
	"log/slog"
	"os"
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
	log := slog.New(slog.NewTextHandler(&tWriter{t: t, on: true}, nil))
	f := runtime.NewFactory(fc, log)
	c := disk.New(disk.Config{Client: fc, Informers: f, DataDir: dataDir, Log: log, Uploads: &images.Uploads{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	f.Start(ctx)
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()

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
