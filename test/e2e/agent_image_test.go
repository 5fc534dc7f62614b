package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// TestJoinedHostFetchesImage: a VM bound to a host that joined with `rakhsh agent` (its own
// data dir, no shared files) boots from an ISO ClusterVirtualImage. The agent fetches the
// image over the API into its content-addressed cache, resuming a partial earlier fetch, and
// checks it against the image's sha256. The data subresource answers ranges.
func TestJoinedHostFetchesImage(t *testing.T) {
	sideBySide(t)
	dir := vmGuestDir(t)
	base := vmImageServer(t, dir)
	addr := freeAddr(t)
	s := StartServe(t, "--no-agent", "--listen", addr)
	token := adminToken(t, s)
	applyGuestISO(t, s, base)
	var img v1alpha1.ClusterVirtualImage
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := s.Client().Get(ctx, "clustervirtualimages", "", "guest-iso", &img); err != nil {
		t.Fatal(err)
	}
	iso, err := os.ReadFile(filepath.Join(dir, "guest.iso"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(iso)
	sha := hex.EncodeToString(sum[:])
	if img.Status.SHA256 != sha {
		t.Fatalf("status.sha256 %q, want the ISO's %s", img.Status.SHA256, sha)
	}

	// The data subresource: a range, with the sha256 as ETag.
	resp, err := s.Client().Download(ctx, client.Path("clustervirtualimages", "", "guest-iso", "data"), http.Header{"Range": {"bytes=32768-32773"}})
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(part) != string(iso[32768:32774]) || resp.Header.Get("ETag") != `"`+sha+`"` {
		t.Fatalf("range of the data subresource: %d %q ETag %s", resp.StatusCode, part, resp.Header.Get("ETag"))
	}

	// The joined host already holds the first MiB from an interrupted fetch.
	agentDir := t.TempDir()
	cache := filepath.Join(agentDir, "pools", "default", "cache")
	if err := os.MkdirAll(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, sha+".part"), iso[:1<<20], 0o600); err != nil {
		t.Fatal(err)
	}
	startJoinedAgent(t, addr, filepath.Join(s.DataDir, "tls.crt"), agentDir,
		append(os.Environ(), "RAKHSH_TOKEN="+token), "--node-name", "joined-host")
	waitNodePhase(t, s.Client(), "joined-host", v1alpha1.NodePhaseReady, time.Minute)

	applyDocs(s, isoVM("remote", ""))
	v := vmRunningOn(t, s, "remote", "joined-host", 2*time.Minute)
	// The guest booted from the fetched copy (its serial log is on the joined host).
	serial := filepath.Join(agentDir, "run", "vms", v.UID, "serial.log")
	for deadline := time.Now().Add(vmBootTimeout); ; time.Sleep(500 * time.Millisecond) {
		b, _ := os.ReadFile(serial)
		if strings.Contains(string(b), "RAKHSH-GUEST: ready") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no boot marker in %s within %s:\n%s", serial, vmBootTimeout, b)
		}
	}
	got, err := os.ReadFile(filepath.Join(cache, sha))
	if err != nil {
		t.Fatalf("the image is not in the joined host's cache: %v", err)
	}
	if gs := sha256.Sum256(got); hex.EncodeToString(gs[:]) != sha {
		t.Fatal("the cached copy differs from the image")
	}
	if _, err := os.Stat(filepath.Join(cache, sha+".part")); !os.IsNotExist(err) {
		t.Fatalf("the partial fetch is still there: %v", err)
	}
	if args := vmQEMUArgs(t, agentDir, v.UID); !strings.Contains(args, filepath.Join(cache, sha)) {
		t.Fatalf("QEMU does not use the cached copy: %s", args)
	}
	s.MustCLI("", "delete", "vm", "remote")
	waitGone(t, s, "virtualmachines", "remote")
}
