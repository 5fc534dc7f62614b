package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cliEnv runs the CLI with extra environment variables.
func cliEnv(t *testing.T, s *Serve, env []string, args ...string) CLIResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, rakhshBin(t), args...)
	cmd.Env = append(append(os.Environ(), "RAKHSH_SERVER="+s.Server()), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return CLIResult{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// TestCLICreatePatchEditDelete drives create, patch (merge and JSON), edit (through a
// scripted editor), the grace countdown of a graceful stop, and delete --force against a
// real server, with a VM without a disk (its firmware ignores the ACPI power button).
func TestCLICreatePatchEditDelete(t *testing.T) {
	sideBySide(t)
	vmGuestDir(t)
	s := vmServe(t)
	manifest := vmDoc{Name: "c1", Policy: "Manual", Memory: "64Mi", Grace: "12"}.String()
	if out := s.MustCLI(manifest, "create", "-f", "-"); strings.TrimSpace(out) != "virtualmachine/c1 created" {
		t.Errorf("create: %q", out)
	}
	if r := s.CLI(manifest, "create", "-f", "-"); r.Code == 0 || !strings.Contains(r.Stderr, "already exists") {
		t.Errorf("second create: code %d stderr %q", r.Code, r.Stderr)
	}
	s.MustCLI("", "patch", "vm", "c1", "-p", `{"spec":{"memory":{"size":"96Mi"}}}`)
	s.MustCLI("", "patch", "vm/c1", "--type", "json", "-p", `[{"op":"replace","path":"/spec/cpu/cores","value":2},{"op":"add","path":"/metadata/labels","value":{"team":"a"}}]`)
	v := vmGet(t, s, "c1")
	if v.Spec.Memory.Size != "96Mi" || v.Spec.CPU.Cores != 2 || v.Labels["team"] != "a" {
		t.Fatalf("after patches: memory %s cores %d labels %v", v.Spec.Memory.Size, v.Spec.CPU.Cores, v.Labels)
	}
	if r := s.CLI("", "patch", "vm/c1", "--type", "json", "-p", `[{"op":"test","path":"/spec/cpu/cores","value":7}]`); r.Code == 0 || !strings.Contains(r.Stderr, "does not apply") {
		t.Errorf("failing JSON patch test op: code %d stderr %q", r.Code, r.Stderr)
	}

	// edit: a scripted editor changes the memory; an editor that changes nothing cancels.
	dir := t.TempDir()
	editor := filepath.Join(dir, "editor.sh")
	if err := os.WriteFile(editor, []byte("#!/bin/sh\nsed -i 's/size: 96Mi/size: 128Mi/' \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := cliEnv(t, s, []string{"EDITOR=" + editor}, "edit", "vm", "c1"); r.Code != 0 || !strings.Contains(r.Stdout, "virtualmachine/c1 edited") {
		t.Fatalf("edit: code %d out %q err %q", r.Code, r.Stdout, r.Stderr)
	}
	if v := vmGet(t, s, "c1"); v.Spec.Memory.Size != "128Mi" {
		t.Errorf("after edit memory is %s", v.Spec.Memory.Size)
	}
	if r := cliEnv(t, s, []string{"EDITOR=true"}, "edit", "vm/c1"); r.Code != 0 || !strings.Contains(r.Stderr, "Edit cancelled") {
		t.Errorf("unchanged edit: code %d err %q", r.Code, r.Stderr)
	}

	// A graceful stop of a guest that ignores ACPI counts the grace period down.
	s.MustCLI("", "vm", "start", "c1", "--wait")
	r := s.CLI("", "vm", "stop", "c1", "--wait")
	if r.Code != 0 || !strings.Contains(r.Stderr, "waiting for the guest of c1 to shut down") || !strings.Contains(r.Stderr, "--force does it now") {
		t.Errorf("graceful stop: code %d stderr %q", r.Code, r.Stderr)
	}

	// delete --force powers the VM off at once instead of waiting out its grace period.
	s.MustCLI("", "vm", "start", "c1", "--wait")
	start := time.Now()
	s.MustCLI("", "delete", "vm", "c1", "--force", "--wait")
	if d := time.Since(start); d >= 12*time.Second {
		t.Errorf("delete --force took %s: it waited for the guest", d)
	}
	if v := vmGet(t, s, "c1"); v != nil {
		t.Errorf("c1 still exists: %+v", v.Status)
	}
}
