package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// clusterReadCert reads the first certificate of the PEM file path.
func clusterReadCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestClusterServeFailover: serve runs on h1 and h2 (certificates from one cluster CA, one
// admin token), the agent of h3 is given both. kill -9 of the leader serve on h1: h2's
// controllers take over within 10 s, h3 keeps heartbeating through h2, a new image imported
// by h2 and a VM pinned to h3 boot with the image fetched through h2, and the VM's log and
// console work through h2 (the CLI and client on h3, given both servers, fail over). h1,
// restarted, rejoins as a follower.
func TestClusterServeFailover(t *testing.T) {
	clusterLane(t)
	c := newCluster(t, ClusterOptions{Name: "rkm", ServeOn: []string{"h1", "h2"}})
	h1, h2, h3 := c.Host("h1"), c.Host("h2"), c.Host("h3")
	servers := map[string]*Serve{"h1": c.ServeOf(t, h1), "h2": c.ServeOf(t, h2)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Both serves' certificates come from the one CA and name their host; the shared admin
	// token works with both; one client per server, from h3.
	ca := clusterReadCert(t, c.CAFile)
	for _, h := range []*ClusterHost{h1, h2} {
		leaf := clusterReadCert(t, filepath.Join(h.DataDir, "tls.crt"))
		if err := leaf.CheckSignatureFrom(ca); err != nil {
			t.Errorf("%s's serving certificate is not signed by the cluster CA: %v", h.Name, err)
		}
		if _, err := os.Stat(filepath.Join(h.DataDir, "ca.key")); err == nil {
			t.Errorf("%s made a CA of its own", h.Name)
		}
		cl, err := client.New(client.Config{Server: h.APIServer(), Token: c.AdminToken, CAFile: c.CAFile, DialContext: nsDialer(h3.NS)})
		if err != nil {
			t.Fatal(err)
		}
		var cp v1alpha1.ControlPlane
		if err := cl.Get(ctx, "controlplanes", "", v1alpha1.ControlPlaneName, &cp); err != nil {
			t.Fatalf("admin request to %s from h3 with the cluster CA and the shared token: %v", h.Name, err)
		}
	}
	cp := waitControlPlane(t, ctx, servers, []string{"h1", "h2"}, func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && len(st.Members) == 2
	})
	if cp.Leader.Name != "h1" {
		t.Fatalf("leader %s, want h1 (started first)", cp.Leader.Name)
	}
	t.Logf("rakhsh get controlplane:\n%s", servers["h2"].MustCLI("", "get", "controlplane"))

	// An image imported by h1's controllers (into h1's data dir) downloads through h2, which
	// lacks the file and relays it from h1, with h3's node credential.
	s1 := servers["h1"]
	pre := importGuestISO(ctx, t, s1, c.ServeDir(t, h1, vmGuestDir(t)), "rkm-pre")
	if _, err := os.Stat(filepath.Join(h2.DataDir, "images", pre.UID)); err == nil {
		t.Fatalf("h2 holds the file of an image h1 imported: the relay would not be tested")
	}
	want, err := os.ReadFile(filepath.Join(vmGuestDir(t), "guest.iso"))
	if err != nil {
		t.Fatal(err)
	}
	nodeTok := strings.TrimSpace(readJSONField(t, filepath.Join(h3.DataDir, "node-credential.json"), "token"))
	viaH2, err := client.New(client.Config{Server: h2.APIServer(), Token: nodeTok, CAFile: c.CAFile, DialContext: nsDialer(h3.NS)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := viaH2.Download(ctx, client.Path("clustervirtualimages", "", "rkm-pre", "data"), nil)
	if err != nil {
		t.Fatalf("h3 downloading through h2 an image h1 imported: %v", err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the image through h2: %d bytes (%v), want the %d bytes of guest.iso", len(got), err, len(want))
	}
	if !strings.Contains(h2.Logs(t), "relaying the file from another control-plane member") {
		t.Errorf("h2 logged no relay of the image data")
	}

	// kill -9 the leader.
	h1.Kill9(t)
	killedAt := time.Now()
	cp = waitControlPlane(t, ctx, servers, []string{"h2"}, func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && st.Leader.Name == "h2"
	})
	elected := time.Since(killedAt)
	createClass(t, ctx, h2.Client(t), "after-kill")
	waitClassStatus(t, ctx, servers["h2"].Client(), "after-kill", 15*time.Second)
	working := time.Since(killedAt)
	t.Logf("takeover after kill -9 of h1: h2 elected after %s, its controllers wrote a new class's status after %s",
		elected.Round(time.Millisecond), working.Round(time.Millisecond))
	if working > 10*time.Second {
		t.Errorf("h2's controllers worked %s after h1 was killed, more than 10s", working)
	}

	// h3's agent keeps heartbeating (through h2 now); h2's in-process agent too.
	for _, h := range []*ClusterHost{h2, h3} {
		var n v1alpha1.Node
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			n = v1alpha1.Node{}
			err := servers["h2"].Client().Get(ctx, "nodes", "", h.Name, &n)
			if err == nil && n.Status.Phase == v1alpha1.NodePhaseReady && n.Status.LastHeartbeatTime != nil &&
				n.Status.LastHeartbeatTime.After(killedAt.Add(2*time.Second)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s: no heartbeat 2s after h1 was killed within 20s: %v %+v", h.Name, err, n.Status)
			}
		}
	}

	if logs := h3.Logs(t); !strings.Contains(logs, "API server failed: using the next one") || !strings.Contains(logs, "to="+h2.APIServer()) {
		t.Errorf("h3's agent logged no move from h1 to h2")
	}

	// A new image, imported by h2 (the leader now), and a VM pinned to h3 that boots from it:
	// h3's agent fetches the image through h2.
	s2 := servers["h2"]
	img := importGuestISO(ctx, t, s2, c.ServeDir(t, h2, vmGuestDir(t)), "rkm-guest")
	if _, err := os.Stat(filepath.Join(h2.DataDir, "images", img.UID)); err != nil {
		t.Errorf("the image imported after the takeover is not in h2's image store: %v", err)
	}
	clusterApply(s2, clusterVMManifest{Name: "rkm-vm", Host: "h3", Image: "rkm-guest"}.YAML())
	clusterBoot(t, s2, "rkm-vm", "h3")

	// Its log and console through h2, from h3 whose CLI and client name h1 first.
	if out := h3.MustCLI(t, "", "logs", "vm", "rkm-vm"); !strings.Contains(out, "RAKHSH-GUEST: ready") {
		t.Fatalf("rakhsh logs on h3 (servers %s): no ready marker:\n%s", h3.APIServer(), out)
	}
	clusterConsoleEcho(ctx, t, h3.Client(t), "rkm-vm", "echo FAILOVER-$((6*7))", "FAILOVER-42", "the console of the VM on h3 through h2, from h3 with h1 down")

	// h1 comes back as a follower.
	h1.Restart(t)
	cp = waitControlPlane(t, ctx, servers, []string{"h1", "h2"}, func(st v1alpha1.ControlPlaneStatus) bool {
		return st.Leader != nil && len(st.Members) == 2
	})
	if cp.Leader.Name != "h2" {
		t.Errorf("after h1's restart the leader is %s, want h2 still", cp.Leader.Name)
	}
	gcp := servers["h1"].MustCLI("", "get", "controlplane")
	t.Logf("rakhsh get controlplane after h1's restart:\n%s", gcp)
	if !regexp.MustCompile(`(?m)^h1\s+follower\s`).MatchString(gcp) || !regexp.MustCompile(`(?m)^h2\s+leader\s`).MatchString(gcp) {
		t.Errorf("get controlplane does not show h1 following h2")
	}
	s2.MustCLI("", "delete", "vm", "rkm-vm")
}

// readJSONField reads one string field of a JSON object file.
func readJSONField(t *testing.T, path, field string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	v, _ := m[field].(string)
	if v == "" {
		t.Fatalf("%s has no %s", path, field)
	}
	return v
}

// importGuestISO imports the test guest's ISO served at base as ClusterVirtualImage name
// through s, waits until it is Ready and returns it.
func importGuestISO(ctx context.Context, t *testing.T, s *Serve, base, name string) v1alpha1.ClusterVirtualImage {
	t.Helper()
	clusterImportCVI(s, name, base)
	var img v1alpha1.ClusterVirtualImage
	if err := s.Client().Get(ctx, "clustervirtualimages", "", name, &img); err != nil {
		t.Fatal(err)
	}
	return img
}
