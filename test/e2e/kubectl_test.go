package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKubectl drives a real server with the kubectl on this machine (Debian's
// kubernetes-client, or a newer kubectl): apply of Rakhsh and Deckhouse manifests without
// --validate=false, get with the server's columns, explain from the OpenAPI documents, edit
// through a scripted editor, patch, and delete (which waits with a fieldSelector watch).
func TestKubectl(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		skipOrFail(t, "kubectl missing: apt-get install kubernetes-client")
	}
	vmGuestDir(t)
	addr := freeAddr(t)
	s := StartServe(t, "--listen", addr)
	token := adminToken(t, s)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: rakhsh
  cluster: {server: "https://%s", certificate-authority: %s}
users:
- name: admin
  user: {token: %q}
contexts:
- name: rakhsh
  context: {cluster: rakhsh, user: admin, namespace: default}
current-context: rakhsh
`, addr, filepath.Join(s.DataDir, "tls.crt"), token)), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, env []string, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, kubectl, args...)
		cmd.Env = append(append(os.Environ(), "KUBECONFIG="+kubeconfig, "HOME="+dir), env...)
		cmd.Stdin = strings.NewReader(stdin)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	must := func(stdin string, env []string, args ...string) string {
		t.Helper()
		out, err := run(stdin, env, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	if v, err := run("", nil, "version", "--client"); err == nil {
		t.Logf("kubectl: %s", strings.TrimSpace(strings.SplitN(v, "\n", 2)[0]))
	}
	vm := func(apiVersion, name string) string {
		return vmDoc{API: apiVersion, Name: name, Policy: "Manual", Memory: "64Mi"}.String()
	}
	if out := must(vm("virtualization.rakhsh.io/v1alpha1", "k1"), nil, "apply", "-f", "-"); !strings.Contains(out, "k1 created") {
		t.Errorf("apply: %s", out)
	}
	if out := must(vm("virtualization.deckhouse.io/v1alpha2", "dh1"), nil, "apply", "-f", "-"); !strings.Contains(out, "virtualization.deckhouse.io/dh1 created") {
		t.Errorf("apply of a Deckhouse manifest: %s", out)
	}
	if out := must(vm("virtualization.deckhouse.io/v1alpha2", "dh1"), nil, "apply", "-f", "-"); !strings.Contains(out, "dh1 unchanged") {
		t.Errorf("second apply of a Deckhouse manifest: %s", out)
	}
	// A misspelt field is refused by the server, naming it.
	if out, err := run(strings.Replace(vm("virtualization.rakhsh.io/v1alpha1", "bad"), "memory:", "memroy:", 1), nil, "apply", "-f", "-"); err == nil || !strings.Contains(out, "memroy") {
		t.Errorf("apply with a misspelt field: %v\n%s", err, out)
	}
	out := must("", nil, "get", "vm")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, col := range []string{"NAME", "PHASE", "CORES", "MEMORY", "NODE", "IPADDRESS", "AGE"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("kubectl get vm lacks column %s:\n%s", col, out)
		}
	}
	if len(lines) != 3 || !strings.Contains(out, "64Mi") {
		t.Errorf("kubectl get vm:\n%s", out)
	}
	if out := must("", nil, "get", "virtualmachines.virtualization.deckhouse.io", "dh1", "-o", "yaml"); !strings.Contains(out, "apiVersion: virtualization.deckhouse.io/v1alpha2") {
		t.Errorf("the Deckhouse version answers in its apiVersion:\n%s", out)
	}
	if out := must("", nil, "explain", "virtualmachine.spec.cpu"); !strings.Contains(out, "cores") || !strings.Contains(out, "coreFraction") {
		t.Errorf("kubectl explain virtualmachine.spec.cpu:\n%s", out)
	}
	editor := filepath.Join(dir, "editor.sh")
	if err := os.WriteFile(editor, []byte("#!/bin/sh\nsed -i 's/size: 64Mi/size: 96Mi/' \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out := must("", []string{"EDITOR=" + editor, "KUBE_EDITOR=" + editor}, "edit", "vm", "k1"); !strings.Contains(out, "edited") {
		t.Errorf("kubectl edit: %s", out)
	}
	if v := vmGet(t, s, "k1"); v.Spec.Memory.Size != "96Mi" {
		t.Errorf("after kubectl edit memory is %s", v.Spec.Memory.Size)
	}
	must("", nil, "patch", "vm", "k1", "--type", "merge", "-p", `{"spec":{"cpu":{"cores":2}}}`)
	must("", nil, "patch", "vm", "k1", "--type", "json", "-p", `[{"op":"replace","path":"/spec/cpu/cores","value":3}]`)
	if v := vmGet(t, s, "k1"); v.Spec.CPU.Cores != 3 {
		t.Errorf("after kubectl patch cores is %d", v.Spec.CPU.Cores)
	}
	if out := must("", nil, "delete", "vm", "k1", "dh1", "--timeout=60s"); strings.Count(out, "deleted") != 2 {
		t.Errorf("kubectl delete: %s", out)
	}
	if out := must("", nil, "get", "vm"); !strings.Contains(out, "No resources found") {
		t.Errorf("after delete: %s", out)
	}
}
