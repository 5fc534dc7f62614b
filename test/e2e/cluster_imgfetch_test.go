package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// TestClusterImageFetch: serve runs on h1 and h2. An image is imported while h1 leads (its
// file is in h1's image store only). kill -9 of h1: h2 leads, the image stays Ready (h2's
// image controller cannot fetch its file from h1, which the image's stored-on annotation
// names, and does not call it lost), and a VirtualDisk made from it waits with a condition
// that names the image and h1, leaving nothing half-written in h2's image store. h1,
// restarted, rejoins as a follower (the cluster is whole again): h2 fetches the file through
// the API's image data relay into its own image store (one download for two disks and the
// image controller, checked against the image's sha256), both disks go Ready, an upload URL
// of h2's image controller works through h1 (it forwards the upload to the leader), and a VM
// booted from one of the disks on h2 reaches the guest's ready marker.
func TestClusterImageFetch(t *testing.T) {
	clusterLane(t)
	c := newCluster(t, ClusterOptions{Name: "rif", Hosts: 2, ServeOn: []string{"h1", "h2"}})
	h1, h2 := c.Host("h1"), c.Host("h2")
	servers := map[string]*Serve{"h1": c.ServeOf(t, h1), "h2": c.ServeOf(t, h2)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cp := waitControlPlane(t, ctx, servers, []string{"h1", "h2"}, func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && len(st.Members) == 2
	})
	if cp.Leader.Name != "h1" {
		t.Fatalf("leader %s, want h1 (started first)", cp.Leader.Name)
	}

	// Imported by h1's controllers, into h1's image store only.
	img := importGuestISO(ctx, t, servers["h1"], c.ServeDir(t, h1, vmGuestDir(t)), "rif-guest")
	if got := img.Annotations[images.AnnotationStoredOn]; got != "h1" {
		t.Errorf("the imported image's %s annotation is %q, want h1", images.AnnotationStoredOn, got)
	}
	h2File := storage.ImagePath(h2.DataDir, img.UID)
	if _, err := os.Stat(h2File); err == nil {
		t.Fatalf("h2 holds the file of an image h1 imported: the fetch would not be tested")
	}

	// kill -9 the leader: h2 takes over.
	h1.Kill9(t)
	s2 := servers["h2"]
	waitControlPlane(t, ctx, servers, []string{"h2"}, func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && st.Leader.Name == "h2"
	})

	// Two disks from the image while the only serve holding its file is down: each waits,
	// saying which image and which serve.
	for _, name := range []string{"rif-disk", "rif-disk2"} {
		clusterApply(s2, clusterDiskManifest{Name: name, Size: "1Gi", Image: "rif-guest"}.YAML())
	}
	d := waitObj(t, s2, "virtualdisks", "default", "rif-disk", "waiting on the fetch of its image", func(d *v1alpha1.VirtualDisk) bool {
		cond := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady)
		return cond != nil && cond.Reason == "ImageFetchFailed"
	})
	msg := v1alpha1.FindCondition(d.Status.Conditions, v1alpha1.DiskConditionReady).Message
	t.Logf("the disk's condition with h1 down: %s: %s", d.Status.Phase, msg)
	for _, want := range []string{`ClusterVirtualImage "rif-guest"`, "stored on h1", "not a live control-plane member", "this serve is h2"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the disk's condition does not say %q: %s", want, msg)
		}
	}
	if d.Status.Phase != v1alpha1.DiskPhasePending {
		t.Errorf("the disk is %s while its image cannot be fetched, want Pending", d.Status.Phase)
	}
	var now v1alpha1.ClusterVirtualImage
	if err := s2.Client().Get(ctx, "clustervirtualimages", "", "rif-guest", &now); err != nil {
		t.Fatal(err)
	}
	if now.Status.Phase != v1alpha1.ImagePhaseReady {
		t.Errorf("with h1 down, h2's image controller turned the image %s, want Ready (h1 holds its file)", now.Status.Phase)
	}
	noTemp := func(when string) {
		t.Helper()
		ents, _ := os.ReadDir(filepath.Dir(h2File))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), storage.TempPrefix) || e.Name() == img.UID {
				t.Errorf("%s, h2's image store holds %s", when, e.Name())
			}
		}
	}
	noTemp("after the failed fetches")

	// h1 comes back as a follower; h2 fetches the file from it and makes the disks.
	relaysBefore := strings.Count(h2.Logs(t), "relaying the file from another control-plane member")
	h1.Restart(t)
	cp = waitControlPlane(t, ctx, servers, []string{"h1", "h2"}, func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && len(st.Members) == 2
	})
	if cp.Leader.Name != "h2" {
		t.Errorf("after h1's restart the leader is %s, want h2 still", cp.Leader.Name)
	}
	for _, name := range []string{"rif-disk", "rif-disk2"} {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			var d v1alpha1.VirtualDisk
			err := s2.Client().Get(ctx, "virtualdisks", "default", name, &d)
			if err == nil && d.Status.Phase == v1alpha1.DiskPhaseReady {
				if d.Status.NodeName != "h2" {
					t.Errorf("disk %s is on node %q, want h2 (the leader that made it)", name, d.Status.NodeName)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("disk %s not Ready within 2m of h1's return: %v %+v", name, err, d.Status)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	f, err := os.Open(h2File)
	if err != nil {
		t.Fatalf("the image's file is not in h2's image store after the fetch: %v", err)
	}
	sum := sha256.New()
	_, err = io.Copy(sum, f)
	f.Close()
	if err != nil || hex.EncodeToString(sum.Sum(nil)) != img.Status.SHA256 {
		t.Fatalf("h2's copy of the image: %v, sha256 %x, want %s", err, sum.Sum(nil), img.Status.SHA256)
	}
	if relays := strings.Count(h2.Logs(t), "relaying the file from another control-plane member") - relaysBefore; relays != 1 {
		t.Errorf("h2 relayed the image's file %d times from h1, want 1 (one download shared by both disks and the image controller)", relays)
	}
	if !strings.Contains(h2.Logs(t), "fetched the image into this serve's image store") &&
		!strings.Contains(h2.Logs(t), "fetched a Ready image's file into this serve's image store") {
		t.Errorf("h2 logged no fetch of the image")
	}
	waitObj(t, s2, "clustervirtualimages", "", "rif-guest", "stored on h1 and h2", func(i *v1alpha1.ClusterVirtualImage) bool {
		return strings.Join(images.StoredOn(i.Annotations), ",") == "h1,h2" && i.Status.Phase == v1alpha1.ImagePhaseReady
	})

	// An upload URL works through any serve: the image controller waiting for the upload runs
	// on h2 (the leader), the file is PUT to h1, which forwards it.
	s2.MustCLI(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: ClusterVirtualImage
metadata: {name: rif-up}
spec:
  dataSource: {type: Upload}
`, "apply", "-f", "-")
	up := waitObj(t, s2, "clustervirtualimages", "", "rif-up", "waiting for its upload", func(i *v1alpha1.ClusterVirtualImage) bool {
		return i.Status.Phase == v1alpha1.ImagePhaseWaitForUserUpload && i.Status.ImageUploadURLs != nil
	})
	tok := images.UploadToken(up.Status.ImageUploadURLs.External)
	if !strings.HasPrefix(up.Status.ImageUploadURLs.External, h2.APIServer()) || tok == "" {
		t.Fatalf("the upload URL %q does not name h2, whose controllers wait for it", up.Status.ImageUploadURLs.External)
	}
	iso, err := os.Open(filepath.Join(vmGuestDir(t), "guest.iso"))
	if err != nil {
		t.Fatal(err)
	}
	defer iso.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, h1.APIServer()+images.UploadPathPrefix+tok, iso)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("the cluster CA: %v", err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: nsDialer(h1.NS), TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("uploading through h1: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("uploading through h1: %s: %s", resp.Status, body)
	}
	waitObj(t, s2, "clustervirtualimages", "", "rif-up", "Ready, stored on h2", func(i *v1alpha1.ClusterVirtualImage) bool {
		return i.Status.Phase == v1alpha1.ImagePhaseReady && i.Status.SHA256 == img.Status.SHA256 && i.Annotations[images.AnnotationStoredOn] == "h2"
	})
	if !strings.Contains(h1.Logs(t), "upload: forwarding to the leader's serve") {
		t.Errorf("h1 logged no forwarding of the upload")
	}

	// A VM on h2 boots from the disk made from the fetched file.
	clusterApply(s2, clusterStorageVM("rif-vm", "", "rif-disk"))
	clusterBoot(t, s2, "rif-vm", "h2") // its disk's node
	s2.MustCLI("", "delete", "vm", "rif-vm")
	s2.MustCLI("", "delete", "vd", "rif-disk2")
}
