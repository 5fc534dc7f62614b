package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/client"
)

// FuzzUserConfig: the config decoder never panics, and what it accepts is consistent (named,
// unique contexts with a server; the current context among them) and survives a write and
// a read.
func FuzzUserConfig(f *testing.F) {
	for _, s := range []string{
		"current-context: a\ncontexts:\n- name: a\n  server: https://h:1\n  token: rakhsh-user.x.y\n",
		"contexts:\n- name: a\n  server: s\n- name: a\n  server: s\n",
		"current-context: b\ncontexts: []\n", "{}", "contexts: 5", "a: &a [*a]", "",
		"contexts:\n- name: a\n  server: s\n  expires: 2026-01-01T00:00:00Z\n  unknown: 1\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseUserConfig(data)
		if err != nil {
			return
		}
		names := map[string]bool{}
		for _, x := range c.Contexts {
			if x.Name == "" || x.Server == "" || names[x.Name] {
				t.Fatalf("accepted a bad context %+v", x)
			}
			names[x.Name] = true
		}
		if c.CurrentContext != "" && !names[c.CurrentContext] {
			t.Fatalf("accepted current-context %q", c.CurrentContext)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseUserConfig(out); err != nil {
			t.Fatalf("a written config does not read back: %v\n%s", err, out)
		}
	})
}

// TestContextChoice: the current context is used only when no server and no token are given;
// --context picks one; flags win over the context's fields.
func TestContextChoice(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "config.yaml")
	conf := &UserConfig{CurrentContext: "a", Contexts: []UserContext{
		{Name: "a", Server: "https://a:1", Token: "tok-a", CAFile: "/ca-a"},
		{Name: "b", Server: "https://b:1", Token: "tok-b"},
	}}
	if err := saveUserConfig(conf, p); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v", st.Mode().Perm())
	}
	env := map[string]string{EnvConfig: p}
	mk := func(ctxName, server, token string) client.Config {
		cc := newCLIContext()
		cc.getenv = func(k string) string { return env[k] }
		cc.contextName, cc.server, cc.token = ctxName, server, token
		cfg, err := cc.Config()
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if c := mk("", "", ""); c.Server != "https://a:1" || c.Token != "tok-a" || c.CAFile != "/ca-a" {
		t.Errorf("current context: %+v", c)
	}
	if c := mk("b", "", ""); c.Server != "https://b:1" || c.Token != "tok-b" {
		t.Errorf("--context b: %+v", c)
	}
	if c := mk("", "unix:///x.sock", ""); c.Server != "unix:///x.sock" || c.Token != "" {
		t.Errorf("--server given: %+v", c)
	}
	if c := mk("b", "", "tok-flag"); c.Server != "https://b:1" || c.Token != "tok-flag" {
		t.Errorf("--context b --token: %+v", c)
	}
	cc := newCLIContext()
	cc.getenv = func(k string) string { return env[k] }
	cc.contextName = "nope"
	if _, err := cc.Config(); err == nil || !strings.Contains(err.Error(), `no context "nope"`) {
		t.Errorf("unknown context: %v", err)
	}
}

// TestAuditTail: the last n complete lines of the file.
func TestAuditTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(p, []byte("{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"partial\""), 0o600); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := tailFile(t.Context(), &b, p, 2, false); err != nil {
		t.Fatal(err)
	}
	if b.String() != "{\"a\":2}\n{\"a\":3}\n" {
		t.Errorf("tail -n 2: %q", b.String())
	}
	if err := tailFile(t.Context(), &b, filepath.Join(t.TempDir(), "none"), 2, false); err == nil {
		t.Error("a missing file: no error")
	}
}
