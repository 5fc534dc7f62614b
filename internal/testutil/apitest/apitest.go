// Package apitest holds helpers for tests that talk to an API server: serving a handler on a
// unix socket with a client of it, and reading operations out of a list.
package apitest

import (
	"encoding/json"
	"net"
	"net/http"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// ServeUnix serves h on the unix socket sock until the end of the test and returns a client
// of it.
func ServeUnix(t testing.TB, sock string, h http.Handler) *client.Client {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go func() { _ = hs.Serve(l) }()
	t.Cleanup(func() { hs.Close() })
	c, err := client.New(client.Config{Server: "unix://" + sock})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// EvictOps returns the Evict operations of a list of VirtualMachineOperations by VM name.
func EvictOps(t testing.TB, l *v1alpha1.List) map[string][]v1alpha1.VirtualMachineOperation {
	t.Helper()
	out := map[string][]v1alpha1.VirtualMachineOperation{}
	for _, raw := range l.Items {
		var op v1alpha1.VirtualMachineOperation
		if err := json.Unmarshal(raw, &op); err != nil {
			t.Fatal(err)
		}
		if op.Spec.Type == v1alpha1.VMOPTypeEvict {
			out[op.Spec.VirtualMachineName] = append(out[op.Spec.VirtualMachineName], op)
		}
	}
	return out
}
