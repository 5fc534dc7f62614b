package apiserver

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// TestConsoleTickets: a project User makes a console ticket; it opens that VM's console once,
// as that user (the request reaches the stream, which answers that the VM runs nowhere);
// reuse, expiry, another VM, another stream, another user's Authorization beside it, a wrong
// Origin, a disabled user and a VM made again under the same name are refused, and a Viewer
// gets no ticket.
func TestConsoleTickets(t *testing.T) {
	url, admin, advance := remoteTestServer(t)
	ctx := testContext(t)
	for _, name := range []string{"vm1", "vm2"} {
		if err := admin.Create(ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": name},
			"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		if err := admin.Create(ctx, "users", "", map[string]any{"kind": "User", "metadata": map[string]any{"name": u}, "spec": map[string]any{}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := admin.Do(ctx, "PATCH", client.Path("projects", "", "default"), nil, "application/merge-patch+json",
		[]byte(`{"spec":{"members":[{"name":"alice","role":"User"},{"name":"bob","role":"User"},{"name":"carol","role":"Viewer"}]}}`), nil); err != nil {
		t.Fatal(err)
	}
	token := func(user string) string {
		var tok v1alpha1.Token
		if err := admin.Do(ctx, "POST", v1alpha1.IdentityPath+"/tokens", nil, "application/json", map[string]any{"user": user}, &tok); err != nil {
			t.Fatal(err)
		}
		return tok.Token
	}
	alice, bob, carol := tokenClient(t, url, token("alice")), token("bob"), tokenClient(t, url, token("carol"))
	ticket := func(c *client.Client, vm, stream string) (v1alpha1.ConsoleTicket, error) {
		var tk v1alpha1.ConsoleTicket
		err := c.Do(ctx, "POST", client.Path("virtualmachines", "default", vm, v1alpha1.SubConsoleTickets), nil, "application/json",
			v1alpha1.ConsoleTicketRequest{Stream: stream}, &tk)
		return tk, err
	}
	mustTicket := func(vm, stream string) v1alpha1.ConsoleTicket {
		t.Helper()
		tk, err := ticket(alice, vm, stream)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	open := func(path string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", url+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var st v1alpha1.Status
		_ = json.Unmarshal(b, &st)
		return resp.StatusCode, st.Message
	}
	accepted := func(code int, msg string) bool {
		return code == http.StatusServiceUnavailable && strings.Contains(msg, "bound to no node")
	}

	if _, err := ticket(carol, "vm1", ""); client.Reason(err) != v1alpha1.ReasonForbidden {
		t.Errorf("a Viewer's ticket: %v, want Forbidden", err)
	}
	if _, err := ticket(alice, "vm1", "log"); client.Reason(err) != v1alpha1.ReasonBadRequest {
		t.Errorf("a ticket for the log: %v, want BadRequest", err)
	}
	tk := mustTicket("vm1", "")
	if tk.Stream != "console" || !strings.HasSuffix(tk.Path, "/namespaces/default/virtualmachines/vm1/console?ticket="+tk.Ticket) || time.Until(tk.Expires.Time) > 31*time.Second {
		t.Fatalf("ticket %+v", tk)
	}
	if code, msg := open(tk.Path, map[string]string{"Origin": "https://evil.example"}); code != 403 || !strings.Contains(msg, "origin") {
		t.Errorf("a wrong Origin: %d %s", code, msg)
	}
	if code, msg := open(tk.Path, map[string]string{"Origin": url}); !accepted(code, msg) {
		t.Errorf("the ticket (after a refused Origin, unspent): %d %s, want it to reach the stream", code, msg)
	}
	if code, msg := open(tk.Path, nil); code != 401 || !strings.Contains(msg, "already used") {
		t.Errorf("reuse: %d %s", code, msg)
	}
	tk = mustTicket("vm1", "")
	if code, msg := open(strings.Replace(tk.Path, "/vm1/", "/vm2/", 1), nil); code != 403 || !strings.Contains(msg, "vm1") {
		t.Errorf("another VM: %d %s", code, msg)
	}
	tk = mustTicket("vm1", "vnc")
	if code, msg := open(strings.Replace(tk.Path, "/vnc?", "/console?", 1), nil); code != 403 || !strings.Contains(msg, "vnc") {
		t.Errorf("another stream: %d %s", code, msg)
	}
	tk = mustTicket("vm1", "")
	if code, msg := open(tk.Path, map[string]string{"Authorization": "Bearer " + bob}); code != 403 || !strings.Contains(msg, "alice") {
		t.Errorf("bob's Authorization with alice's ticket: %d %s", code, msg)
	}
	tk = mustTicket("vm1", "")
	advance(consoleTicketTTL + time.Second)
	if code, msg := open(tk.Path, nil); code != 401 || !strings.Contains(msg, "expired") {
		t.Errorf("expired: %d %s", code, msg)
	}
	tk = mustTicket("vm1", "")
	if err := admin.Do(ctx, "PATCH", client.Path("users", "", "alice"), nil, "application/merge-patch+json", []byte(`{"spec":{"disabled":true}}`), nil); err != nil {
		t.Fatal(err)
	}
	if code, msg := open(tk.Path, nil); code != 401 || !strings.Contains(msg, "disabled") {
		t.Errorf("a disabled user's ticket: %d %s", code, msg)
	}
	if err := admin.Do(ctx, "PATCH", client.Path("users", "", "alice"), nil, "application/merge-patch+json", []byte(`{"spec":{"disabled":false}}`), nil); err != nil {
		t.Fatal(err)
	}
	tk = mustTicket("vm1", "")
	if err := admin.Delete(ctx, "virtualmachines", "default", "vm1"); err != nil {
		t.Fatal(err)
	}
	// No VM controller runs here to remove its finalizer.
	_ = admin.Do(ctx, "PATCH", client.Path("virtualmachines", "default", "vm1"), nil, "application/merge-patch+json", []byte(`{"metadata":{"finalizers":null}}`), nil)
	if err := admin.Create(ctx, "virtualmachines", "default", map[string]any{"kind": "VirtualMachine", "metadata": map[string]any{"name": "vm1"},
		"spec": map[string]any{"runPolicy": "AlwaysOff", "cpu": map[string]any{"cores": 1}, "memory": map[string]any{"size": "128Mi"}}}, nil); err != nil {
		t.Fatal(err)
	}
	if code, msg := open(tk.Path, nil); code != 403 || !strings.Contains(msg, "earlier") {
		t.Errorf("a VM made again under the name: %d %s", code, msg)
	}
	// The admin token makes tickets too; a ticket is a credential for nothing else.
	var atk v1alpha1.ConsoleTicket
	if err := admin.Do(ctx, "POST", client.Path("virtualmachines", "default", "vm2", v1alpha1.SubConsoleTickets), nil, "application/json", nil, &atk); err != nil {
		t.Fatal(err)
	}
	if code, _ := open(client.Path("virtualmachines", "default", "vm2")+"?ticket="+atk.Ticket, nil); code != 401 {
		t.Errorf("a ticket on the VM object itself: %d, want 401", code)
	}
	if code, msg := open(atk.Path, nil); !accepted(code, msg) {
		t.Errorf("the admin's ticket: %d %s", code, msg)
	}
}
