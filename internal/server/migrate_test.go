package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
	"github.com/rakhsh/rakhsh/internal/store/etcd"
	"github.com/rakhsh/rakhsh/internal/store/etcd/etcdtest"
)

// migrateSource is a data dir with a bolt store filled as an all-in-one server would leave
// it: one object of every kind, created in an order that is neither key order nor the order
// of their last writes, a deleted object, transient keys, a key of an unknown prefix, and
// the revision references that a migration rewrites.
type migrateSource struct {
	dir       string
	created   []string          // non-transient keys in creation order
	values    map[string][]byte // their last values
	transient []string
	// opOld and opNew are a superseded operation and the one that superseded it.
	opOld, opNew string
}

func objectKey(k v1alpha1.KindInfo, name string) string {
	if k.Namespaced {
		return "/" + k.Resource + "/default/" + name
	}
	return "/" + k.Resource + "/" + name
}

func objectValue(k v1alpha1.KindInfo, name, extra string) []byte {
	ns := ""
	if k.Namespaced {
		ns = `,"namespace":"default"`
	}
	return []byte(fmt.Sprintf(`{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":%q,"metadata":{"name":%q%s,"uid":"uid-%s-%s","labels":{"app":"x"},"finalizers":["rakhsh.io/test"],"creationTimestamp":"2026-01-02T03:04:05Z"},"status":{"phase":"Ready"%s}}`,
		k.Kind, name, ns, k.Resource, name, extra))
}

func newMigrateSource(t *testing.T) *migrateSource {
	t.Helper()
	ctx := context.Background()
	s := &migrateSource{dir: t.TempDir(), values: map[string][]byte{}}
	st, err := bolt.Open(filepath.Join(s.dir, "rakhsh.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	put := func(key string, val []byte) int64 {
		t.Helper()
		rev, err := st.Create(ctx, key, val)
		if err != nil {
			t.Fatal(err)
		}
		if _, transient := keyGroup(key); transient {
			s.transient = append(s.transient, key)
		} else {
			s.created = append(s.created, key)
			s.values[key] = val
		}
		return rev
	}
	// Every kind, in reverse of the API's order (so key order is not creation order), two
	// objects each ("b" before "a").
	for i := len(v1alpha1.Kinds) - 1; i >= 0; i-- {
		k := v1alpha1.Kinds[i]
		for _, n := range []string{"b", "a"} {
			put(objectKey(k, n), objectValue(k, n, ""))
		}
	}
	put("/locks/quota/default", []byte(`{"holder":"x","until":"2026-01-01T00:00:00Z"}`))
	put("/streamtickets/0123abcd", []byte(`{"node":"n1"}`))
	put("/future/thing", []byte(`not json at all`))
	// The first created objects are updated last: the order of last writes differs from
	// the order of creation.
	for _, key := range s.created[:3] {
		kv, err := st.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		v := bytes.Replace(kv.Value, []byte(`"Ready"`), []byte(`"Updated"`), 1)
		if _, err := st.Update(ctx, key, v, kv.ModRevision); err != nil {
			t.Fatal(err)
		}
		s.values[key] = v
	}
	// A deleted object is not copied.
	gone := objectKey(v1alpha1.Kinds[0], "gone")
	rev := put(gone, objectValue(v1alpha1.Kinds[0], "gone", ""))
	if _, _, err := st.Delete(ctx, gone, rev); err != nil {
		t.Fatal(err)
	}
	s.created = s.created[:len(s.created)-1]
	delete(s.values, gone)
	// Two operations: the older one superseded by the newer one, whose message names both
	// creation revisions; and an Event naming the involved object's resourceVersion.
	vmop, _ := v1alpha1.KindByResource("virtualmachineoperations")
	s.opOld, s.opNew = objectKey(*vmop, "op-old"), objectKey(*vmop, "op-new")
	oldRev := put(s.opOld, objectValue(*vmop, "op-old", ""))
	newRev := put(s.opNew, objectValue(*vmop, "op-new", ""))
	msg := fmt.Sprintf(`,"conditions":[{"type":"Completed","status":"True","reason":"Superseded","message":"superseded by the newer operation \"op-new\" (creation revision %d, after this one's %d)"}]`, newRev, oldRev)
	kv, _ := st.Get(ctx, s.opOld)
	v := objectValue(*vmop, "op-old", msg)
	if _, err := st.Update(ctx, s.opOld, v, kv.ModRevision); err != nil {
		t.Fatal(err)
	}
	s.values[s.opOld] = v
	put("/events/default/ev1", []byte(fmt.Sprintf(`{"apiVersion":"virtualization.rakhsh.io/v1alpha1","kind":"Event","metadata":{"name":"ev1","namespace":"default","uid":"uid-ev1"},"involvedObject":{"kind":"VirtualMachineOperation","name":"op-new","namespace":"default","uid":"uid-x","resourceVersion":"%d"},"reason":"Created"}`, newRev)))
	return s
}

func etcdTarget(t *testing.T) (*etcdtest.Server, *etcd.Store) {
	t.Helper()
	e := etcdtest.Start(t)
	st, err := etcd.New(context.Background(), etcd.Config{Endpoints: e.Endpoints, Prefix: etcd.DefaultPrefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return e, st
}

func listAll(t *testing.T, st store.Store) []store.KV {
	t.Helper()
	kvs, err := readAll(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return kvs
}

func TestStoreMigrate(t *testing.T) {
	src := newMigrateSource(t)
	e, dst := etcdTarget(t)
	ctx := context.Background()
	var out bytes.Buffer
	to := "etcd://" + e.Addr
	if err := runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to}, &out); err != nil {
		t.Fatalf("migrate: %v\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)
	got := map[string]store.KV{}
	for _, kv := range listAll(t, dst) {
		got[kv.Key] = kv
	}
	if len(got) != len(src.created) {
		t.Errorf("target holds %d keys, want %d", len(got), len(src.created))
	}
	for _, key := range src.transient {
		if _, ok := got[key]; ok {
			t.Errorf("transient key %s was copied", key)
		}
	}
	// Every kind is there with its content; creation order is the source's.
	var prev int64
	for i, key := range src.created {
		kv, ok := got[key]
		if !ok {
			t.Errorf("missing %s", key)
			continue
		}
		if kv.CreateRevision <= prev {
			t.Errorf("%s (created #%d) has creation revision %d, not after the previous object's %d", key, i, kv.CreateRevision, prev)
		}
		prev = kv.CreateRevision
		switch {
		case key == src.opOld:
			want := fmt.Sprintf("creation revision %d, after this one's %d", got[src.opNew].CreateRevision, got[src.opOld].CreateRevision)
			if !strings.Contains(string(kv.Value), want) {
				t.Errorf("superseded operation's message does not name the new creation revisions (%s): %s", want, kv.Value)
			}
		case strings.HasPrefix(key, "/events/"):
			if strings.Contains(string(kv.Value), "resourceVersion") {
				t.Errorf("event keeps the old store's resourceVersion: %s", kv.Value)
			}
		default:
			if !bytes.Equal(kv.Value, src.values[key]) {
				t.Errorf("%s:\n got %s\nwant %s", key, kv.Value, src.values[key])
			}
		}
	}
	for _, k := range v1alpha1.Kinds {
		if _, ok := got[objectKey(k, "a")]; !ok {
			t.Errorf("kind %s not copied", k.Kind)
		}
		if !regexpLine(out.String(), k.Kind, "2", "2", "2") && k.Kind != "VirtualMachineOperation" && k.Kind != "Event" {
			t.Errorf("summary has no line %q with 2 2 2", k.Kind)
		}
	}
	for _, want := range []string{"Verified:", "/locks/*", "skipped", "other (/future/)", "rakhsh serve --data-dir " + src.dir + " --store " + to} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The marker keeps serve off the old bolt store, and a second migration off the data dir.
	b, err := os.ReadFile(filepath.Join(src.dir, MigratedMarker))
	if err != nil || !strings.HasPrefix(string(b), to+"\n") {
		t.Fatalf("marker: %q %v", b, err)
	}
	if _, err := openStore(ctx, Config{DataDir: src.dir, Store: "bolt"}); err == nil || !strings.Contains(err.Error(), "--store "+to) || !strings.Contains(err.Error(), MigratedMarker) {
		t.Errorf("serve on the migrated bolt store: %v", err)
	}
	st, err := openStore(ctx, Config{DataDir: src.dir, Store: to})
	if err != nil {
		t.Errorf("serve on the target: %v", err)
	} else {
		st.Close()
	}
	if err := runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to, Force: true}, &out); err == nil || !strings.Contains(err.Error(), "refusing to migrate again") {
		t.Errorf("second migration: %v", err)
	}
	// Removing the marker is the documented override.
	if err := os.Remove(filepath.Join(src.dir, MigratedMarker)); err != nil {
		t.Fatal(err)
	}
	if st, err := openStore(ctx, Config{DataDir: src.dir, Store: "bolt"}); err != nil {
		t.Errorf("bolt store after removing the marker: %v", err)
	} else {
		st.Close()
	}
}

// regexpLine says whether some line of out has these fields, separated by blanks.
func regexpLine(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

func TestStoreMigrateTargetNotEmpty(t *testing.T) {
	src := newMigrateSource(t)
	e, dst := etcdTarget(t)
	ctx := context.Background()
	if _, err := dst.Create(ctx, "/projects/already-here", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	to := "etcd://" + e.Addr
	err := runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to}, &out)
	if err == nil || !strings.Contains(err.Error(), "is not empty") || !strings.Contains(err.Error(), "/projects/already-here") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("non-empty target: %v", err)
	}
	if n := len(listAll(t, dst)); n != 1 {
		t.Errorf("a refused migration wrote: the target holds %d keys", n)
	}
	if _, err := os.Stat(filepath.Join(src.dir, MigratedMarker)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("marker after a refused migration: %v", err)
	}
	// A migration stopped midway is run again with --force: the target is cleared first.
	if err := runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to, Force: true}, &out); err != nil {
		t.Fatalf("--force: %v\n%s", err, &out)
	}
	kvs := listAll(t, dst)
	if len(kvs) != len(src.created) {
		t.Errorf("after --force the target holds %d keys, want %d", len(kvs), len(src.created))
	}
	for _, kv := range kvs {
		if kv.Key == "/projects/already-here" {
			t.Error("--force kept a key that is not in the source")
		}
	}
}

func TestStoreMigrateSourceInUse(t *testing.T) {
	ctx := context.Background()
	// The target is never reached: the checks of the source come first.
	to := "etcd://127.0.0.1:1"
	t.Run("bolt file locked", func(t *testing.T) {
		src := newMigrateSource(t)
		held, err := bolt.Open(filepath.Join(src.dir, "rakhsh.db"), bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		err = runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to, LockTimeout: 100 * time.Millisecond}, &bytes.Buffer{})
		if !errors.Is(err, errSourceInUse) || !strings.Contains(err.Error(), "stop 'rakhsh serve'") || !strings.Contains(err.Error(), "VMs keep running") {
			t.Errorf("locked bolt file: %v", err)
		}
	})
	t.Run("socket answers", func(t *testing.T) {
		src := newMigrateSource(t)
		l, err := net.Listen("unix", filepath.Join(src.dir, "rakhsh.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		err = runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to}, &bytes.Buffer{})
		if !errors.Is(err, errSourceInUse) || !strings.Contains(err.Error(), "a server answers on") || !strings.Contains(err.Error(), "stop 'rakhsh serve'") {
			t.Errorf("socket answering: %v", err)
		}
	})
	t.Run("no store", func(t *testing.T) {
		err := runMigrate(ctx, migrateOptions{DataDir: t.TempDir(), To: to}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "no bolt store") {
			t.Errorf("empty data dir: %v", err)
		}
	})
	t.Run("flags", func(t *testing.T) {
		for _, c := range []struct {
			o    migrateOptions
			want string
		}{
			{migrateOptions{DataDir: t.TempDir()}, "--to: name the target"},
			{migrateOptions{DataDir: t.TempDir(), To: "etcd://10.0.0.1:2379"}, "--to \"etcd://10.0.0.1:2379\": etcd endpoint"},
			{migrateOptions{DataDir: t.TempDir(), To: "etcd://127.0.0.1:2379", Etcd: EtcdTLS{CA: "ca.pem"}}, "apply to an etcd+https:// target"},
		} {
			if err := runMigrate(ctx, c.o, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%+v: %v, want %q", c.o, err, c.want)
			}
		}
	})
}

func TestStoreMigrateDryRun(t *testing.T) {
	src := newMigrateSource(t)
	e, dst := etcdTarget(t)
	var out bytes.Buffer
	if err := runMigrate(context.Background(), migrateOptions{DataDir: src.dir, To: "etcd://" + e.Addr, DryRun: true}, &out); err != nil {
		t.Fatalf("dry run: %v\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)
	if n := len(listAll(t, dst)); n != 0 {
		t.Errorf("dry run wrote %d keys", n)
	}
	if _, err := os.Stat(filepath.Join(src.dir, MigratedMarker)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("marker after a dry run: %v", err)
	}
	for _, want := range [][]string{
		{"VirtualMachine", "2", "copy"},
		{"VirtualMachineOperation", "4", "copy"},
		{"Event", "3", "copy"},
		{"/locks/*", "1", "skip", "(transient)"},
		{"/streamtickets/*", "1", "skip", "(transient)"},
		{"TOTAL", strconv.Itoa(len(src.created) + len(src.transient))},
	} {
		if !regexpLine(out.String(), want...) {
			t.Errorf("dry run output lacks the line %q", want)
		}
	}
	if !strings.Contains(out.String(), "holds no Rakhsh key: the migration can run") {
		t.Error("dry run does not report the target empty")
	}
	// Without a target it still counts.
	out.Reset()
	if err := runMigrate(context.Background(), migrateOptions{DataDir: src.dir, DryRun: true}, &out); err != nil || !regexpLine(out.String(), "VirtualMachine", "2", "copy") {
		t.Errorf("dry run without --to: %v\n%s", err, &out)
	}
}

func TestStoreMigrateVerifyFailure(t *testing.T) {
	src := newMigrateSource(t)
	_, dst := etcdTarget(t)
	ctx := context.Background()
	srcStore, err := bolt.Open(filepath.Join(src.dir, "rakhsh.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srcStore.Close()
	vm, _ := v1alpha1.KindByResource("virtualmachines")
	changed, lost := objectKey(*vm, "a"), objectKey(*vm, "b")
	var out bytes.Buffer
	m := &migration{src: srcStore, dst: dst, out: &out, from: "bolt:" + src.dir, to: "etcd",
		afterCopy: func(ctx context.Context) error {
			kv, err := dst.Get(ctx, changed)
			if err != nil {
				return err
			}
			if _, err := dst.Update(ctx, changed, bytes.Replace(kv.Value, []byte(`"app":"x"`), []byte(`"app":"y"`), 1), kv.ModRevision); err != nil {
				return err
			}
			if _, _, err := dst.Delete(ctx, lost, 0); err != nil {
				return err
			}
			_, err = dst.Create(ctx, "/projects/intruder", []byte(`{}`))
			return err
		}}
	_, err = m.run(ctx)
	t.Logf("output:\n%s", &out)
	if err == nil || !strings.Contains(err.Error(), "verification failed: 3 problems") {
		t.Fatalf("got %v, want a verification failure with 3 problems", err)
	}
	for _, want := range []string{
		"Verification FAILED: 3 problems",
		"missing in the target: " + lost,
		"content differs: " + changed + ` (at byte`,
		"not in the source: /projects/intruder",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !regexpLine(out.String(), "VirtualMachine", "2", "2", "0") {
		t.Error("summary does not show the VirtualMachines unverified")
	}
}

// TestStoreMigrateTLS migrates into an etcd that serves clients only over TLS and checks
// client certificates, with the flags serve takes.
func TestStoreMigrateTLS(t *testing.T) {
	src := newMigrateSource(t)
	e := etcdtest.StartTLS(t)
	ctx := context.Background()
	to := "etcd+https://" + e.Addr
	var out bytes.Buffer
	// Without a client certificate etcd refuses the connection.
	if err := runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to, Etcd: EtcdTLS{CA: e.Certs.CA}}, &out); err == nil || !strings.Contains(err.Error(), "--to") {
		t.Fatalf("no client certificate: %v", err)
	}
	tlsFlags := EtcdTLS{CA: e.Certs.CA, Cert: e.Certs.ClientCert, Key: e.Certs.ClientKey}
	if err := runMigrate(ctx, migrateOptions{DataDir: src.dir, To: to, Etcd: tlsFlags}, &out); err != nil {
		t.Fatalf("migrate over TLS: %v\n%s", err, &out)
	}
	st, err := openStore(ctx, Config{DataDir: src.dir, Store: to, Etcd: tlsFlags})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n := len(listAll(t, st)); n != len(src.created) {
		t.Errorf("target holds %d keys, want %d", n, len(src.created))
	}
}
