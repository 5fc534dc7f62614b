package server

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestEtcdStoreFlag(t *testing.T) {
	for _, c := range []struct {
		store    string
		insecure bool
		eps      []string
		tls      bool
		err      string
	}{
		{store: "etcd://127.0.0.1:2379", eps: []string{"http://127.0.0.1:2379"}},
		{store: "etcd://localhost:2379,[::1]:2379", eps: []string{"http://localhost:2379", "http://[::1]:2379"}},
		{store: "etcd://10.0.0.5:2379", err: "etcd endpoint 10.0.0.5:2379 is reached over plain http"},
		{store: "etcd://127.0.0.1:2379,etcd-1.lan:2379", err: "pass --insecure-etcd"},
		{store: "etcd://10.0.0.5:2379", insecure: true, eps: []string{"http://10.0.0.5:2379"}},
		{store: "etcd+https://10.0.0.5:2379,10.0.0.6:2379", eps: []string{"https://10.0.0.5:2379", "https://10.0.0.6:2379"}, tls: true},
		{store: "etcd://", err: "names no etcd endpoint"},
		{store: "etcd://10.0.0.5", err: `endpoint "10.0.0.5" is not host:port`},
		{store: "mysql://x:1", err: `unknown scheme "mysql"`},
		{store: "etcd", err: "use bolt"},
	} {
		eps, useTLS, err := etcdEndpoints(c.store, c.insecure)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %v %v, want an error with %q", c.store, eps, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(eps, c.eps) || useTLS != c.tls {
			t.Errorf("%s: got %v tls=%v err=%v, want %v tls=%v", c.store, eps, useTLS, err, c.eps, c.tls)
		}
	}
	// serve refuses to start on a plain-http etcd off loopback, before it connects.
	cfg := Config{DataDir: t.TempDir(), Store: "etcd://192.0.2.1:2379"}
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "--insecure-etcd") {
		t.Errorf("validate: %v", err)
	}
	// TLS files with a plain-http store would be ignored: refused instead.
	cfg = Config{DataDir: t.TempDir(), Store: "etcd://192.0.2.1:2379", Etcd: EtcdTLS{Insecure: true, CA: "/etc/ssl/ca.pem"}}
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "apply to an etcd+https:// store") {
		t.Errorf("validate with --etcd-ca on etcd://: %v", err)
	}
	cfg = Config{DataDir: t.TempDir(), Store: "bolt", Etcd: EtcdTLS{Insecure: true}}
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "apply only to an etcd store") {
		t.Errorf("validate with --insecure-etcd on bolt: %v", err)
	}
}

func TestEtcdTLSFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := (EtcdTLS{CA: filepath.Join(dir, "missing.pem")}).tlsConfig(); err == nil || !strings.Contains(err.Error(), "--etcd-ca") {
		t.Errorf("missing CA file: %v", err)
	}
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not a certificate"), 0o600)
	if _, err := (EtcdTLS{CA: junk}).tlsConfig(); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("junk CA: %v", err)
	}
	if _, err := (EtcdTLS{Cert: junk}).tlsConfig(); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("cert without key: %v", err)
	}
	if _, err := (EtcdTLS{Cert: junk, Key: junk}).tlsConfig(); err == nil || !strings.Contains(err.Error(), "--etcd-cert/--etcd-key") {
		t.Errorf("junk key pair: %v", err)
	}
	cfg, err := (EtcdTLS{}).tlsConfig()
	if err != nil || cfg.RootCAs != nil || len(cfg.Certificates) != 0 {
		t.Errorf("defaults: %+v %v", cfg, err)
	}
}
