package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
	"github.com/rakhsh/rakhsh/internal/testutil"
)

// migrateObject is what TestStoreMigrate remembers of an object across the store switch.
type migrateObject struct {
	uid, creationRevision string
	// content is a Secret's JSON without its resourceVersion and creationRevision (Secrets
	// have no status: nothing changes them across the switch).
	content string
}

// migrateSnapshot lists every object of every kind: "resource/namespace/name" → uid and
// creation revision.
func migrateSnapshot(t *testing.T, s *Serve) map[string]migrateObject {
	t.Helper()
	ctx := ctxT(t)
	c := s.Client()
	out := map[string]migrateObject{}
	for _, k := range v1alpha1.Kinds {
		l, err := c.ListAll(ctx, k.Resource, "", client.ListOptions{})
		if err != nil {
			t.Fatalf("list %s: %v", k.Resource, err)
		}
		for _, raw := range l.Items {
			var o struct {
				Metadata v1alpha1.ObjectMeta `json:"metadata"`
			}
			if err := json.Unmarshal(raw, &o); err != nil {
				t.Fatal(err)
			}
			m := o.Metadata
			mo := migrateObject{uid: m.UID, creationRevision: m.CreationRevision}
			if k.Resource == "secrets" {
				var sec v1alpha1.Secret
				if err := json.Unmarshal(raw, &sec); err != nil {
					t.Fatal(err)
				}
				sec.ResourceVersion, sec.CreationRevision = "", ""
				b, _ := json.Marshal(sec)
				mo.content = string(b)
			}
			out[k.Resource+"/"+m.Namespace+"/"+m.Name] = mo
		}
	}
	return out
}

// TestStoreMigrate grows an all-in-one host into a cluster store: an all-in-one serve (bolt)
// with about 1,000 objects and 3 running VMs is stopped (the VMs keep running), its store is
// moved into a real etcd with `rakhsh store migrate`, and serve starts again on the same data
// dir with --store etcd://: every object is there with its uid and in its creation order, the
// VMs were adopted (same QEMU processes, Running), and a stop still works.
func TestStoreMigrate(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	e := etcdtest.Start(t)
	to := "etcd://" + e.Addr
	s := vmServe(t)
	ctx := ctxT(t)

	vms := []string{"mig0", "mig1", "mig2"}
	for _, name := range vms {
		s.MustCLI(fmt.Sprintf(`apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: %s, labels: {suite: migrate}}
spec:
  runPolicy: AlwaysOnUnlessStoppedManually
  cpu: {cores: 1}
  memory: {size: 64Mi}
  terminationGracePeriodSeconds: 0
`, name), "apply", "-f", "-")
	}
	// About 1,000 objects, made by 8 writers at once: Secrets in the default project and a few
	// Projects with Secrets of their own.
	start := time.Now()
	c := s.Client()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 1000; i += 8 {
				var err error
				if i%50 == 0 {
					p := &v1alpha1.Project{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Project"},
						ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("mp%d", i), Labels: map[string]string{"suite": "migrate"}}}
					err = c.Create(ctx, "projects", "", p, nil)
				} else {
					sec := &v1alpha1.Secret{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "Secret"},
						ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("ms%d", i), Labels: map[string]string{"suite": "migrate", "n": fmt.Sprint(i)}},
						StringData: map[string]string{"value": strings.Repeat("x", i%200)}}
					err = c.Create(ctx, "secrets", "default", sec, nil)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Logf("created 1,000 objects in %s", time.Since(start).Round(time.Millisecond))

	uids := map[string]string{}
	for _, name := range vms {
		v := vmWait(t, s, name, vmBootTimeout, "Running", vmPhase(v1alpha1.VMPhaseRunning))
		uids[name] = v.UID
	}
	pids := testutil.QEMUPIDs(s.DataDir)
	for name, uid := range uids {
		if pids[uid] == 0 {
			t.Fatalf("VM %s (%s) is Running but has no live QEMU in its run directory", name, uid)
		}
	}

	// Migration refuses a source that is being served.
	migrate := func(args ...string) (string, error) {
		cmd := exec.Command(rakhshBin(t), append([]string{"store", "migrate", "--from", "bolt:" + s.DataDir, "--to", to}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := migrate(); err == nil || !strings.Contains(out, "stop 'rakhsh serve'") {
		t.Fatalf("migrate while serve runs: %v\n%s", err, out)
	}

	before := migrateSnapshot(t, s)
	s.Stop()
	for uid, pid := range pids {
		if !testutil.IsQEMUOf(pid, uid) {
			t.Fatalf("QEMU %d of %s ended with the server", pid, uid)
		}
	}
	if out, err := migrate("--dry-run"); err != nil || !strings.Contains(out, "nothing is written") {
		t.Fatalf("dry run: %v\n%s", err, out)
	} else {
		t.Logf("dry run:\n%s", out)
	}
	start = time.Now()
	out, err := migrate()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	t.Logf("migrated %d objects in %s:\n%s", len(before), took.Round(time.Millisecond), out)
	if !strings.Contains(out, "Verified:") {
		t.Fatalf("migrate did not verify:\n%s", out)
	}

	// The old bolt store of the data dir is refused from now on.
	serveOut, err := exec.Command(rakhshBin(t), "serve", "--data-dir", s.DataDir, "--vm-networking", "user").CombinedOutput()
	if err == nil || !strings.Contains(string(serveOut), "store-migrated-to") || !strings.Contains(string(serveOut), "--store "+to) {
		t.Fatalf("serve on the migrated bolt store: %v\n%s", err, serveOut)
	}

	s.Args = append(s.Args, "--store", to)
	s.Start()
	for _, name := range vms {
		vmWait(t, s, name, time.Minute, "Running after the switch", vmPhase(v1alpha1.VMPhaseRunning))
	}
	// Objects: every one is there with its uid, in its creation order.
	after := migrateSnapshot(t, s)
	type pair struct {
		key      string
		old, new int64
	}
	var order []pair
	for key, o := range before {
		n, ok := after[key]
		switch {
		case !ok:
			t.Errorf("%s is missing after the migration", key)
			continue
		case n.uid != o.uid:
			t.Errorf("%s: uid %s became %s", key, o.uid, n.uid)
		case n.content != o.content:
			t.Errorf("%s changed:\n%s\n%s", key, o.content, n.content)
		}
		var p pair
		p.key = key
		fmt.Sscan(o.creationRevision, &p.old)
		fmt.Sscan(n.creationRevision, &p.new)
		order = append(order, p)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].old < order[j].old })
	for i := 1; i < len(order); i++ {
		if order[i].new <= order[i-1].new {
			t.Errorf("creation order: %s (old %d, new %d) came after %s (old %d, new %d)",
				order[i].key, order[i].old, order[i].new, order[i-1].key, order[i-1].old, order[i-1].new)
		}
	}
	if len(before) < 1000 {
		t.Errorf("only %d objects before the migration", len(before))
	}
	// VMs: adopted, not restarted.
	time.Sleep(2 * time.Second) // let the agent finish its first pass
	now := testutil.QEMUPIDs(s.DataDir)
	for name, uid := range uids {
		if now[uid] != pids[uid] {
			t.Errorf("VM %s: QEMU pid %d before the switch, %d after", name, pids[uid], now[uid])
		}
		if n := testutil.CountQEMU(uid); n != 1 {
			t.Errorf("VM %s: %d QEMU processes after the switch", name, n)
		}
		if v := vmGet(t, s, name); v.Status.Phase != v1alpha1.VMPhaseRunning {
			t.Errorf("VM %s is %s after the switch", name, v.Status.Phase)
		}
	}
	// Operations still work on etcd; the VMs are stopped to end the test.
	for _, name := range vms {
		s.MustCLI("", "vm", "stop", name, "--wait")
		vmWait(t, s, name, time.Minute, "Stopped", vmPhase(v1alpha1.VMPhaseStopped))
		if n := testutil.CountQEMU(uids[name]); n != 0 {
			t.Errorf("VM %s: %d QEMU processes after the stop", name, n)
		}
	}
}
