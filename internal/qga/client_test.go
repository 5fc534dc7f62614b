package qga

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/testutil"
	"github.com/rakhsh/rakhsh/internal/testutil/fakeqga"
)

// fakeGuest plays the guest side of the socket: it reads requests line by line and lets
// answer write whatever it likes.
type fakeGuest struct {
	path string
	reqs chan fakeqga.Request
}

func newFakeGuest(t *testing.T, answer func(w net.Conn, req fakeqga.Request)) *fakeGuest {
	t.Helper()
	g := &fakeGuest{path: filepath.Join(t.TempDir(), "qga.sock"), reqs: make(chan fakeqga.Request, 100)}
	testutil.ListenUnix(t, g.path, func(conn net.Conn) {
		fakeqga.ReadRequests(conn, func(req fakeqga.Request) bool {
			select {
			case g.reqs <- req:
			default:
			}
			answer(conn, req)
			return true
		})
	})
	return g
}

// honest answers like qemu-ga.
func honest(w net.Conn, req fakeqga.Request) {
	reply := func(v any) { fakeqga.Reply(w, req, v) }
	switch req.Execute {
	case "guest-sync-delimited":
		fakeqga.AnswerSync(w, req)
	case "guest-ping":
		reply(map[string]any{})
	case "guest-get-osinfo":
		reply(map[string]any{"name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version": "12 (bookworm)",
			"version-id": "12", "id": "debian", "kernel-release": "6.1.0-57-amd64", "kernel-version": "#1 SMP", "machine": "x86_64", "extra": 1})
	case "guest-get-host-name":
		reply(map[string]any{"host-name": "vm1"})
	case "guest-network-get-interfaces":
		reply([]any{
			fakeqga.Interface("lo", "00:00:00:00:00:00", fakeqga.Address("ipv4", "127.0.0.1", 8)),
			fakeqga.Interface("eth0", "52:54:00:12:34:56",
				fakeqga.Address("ipv4", "10.0.2.15", 24),
				fakeqga.Address("ipv4", "not-an-ip", 24),
				fakeqga.Address("ipv4", "10.0.2.16", 99),
				fakeqga.Address("ipv6", "fe80::1", 64)),
		})
	case "guest-fsfreeze-freeze":
		reply(2)
	case "guest-fsfreeze-thaw":
		reply(2)
	case "guest-fsfreeze-status":
		reply("thawed")
	case "guest-set-user-password":
		reply(map[string]any{})
	case "guest-shutdown":
		// qemu-ga answers nothing on success
	default:
		b, _ := json.Marshal(map[string]any{"error": map[string]any{"class": "CommandNotFound", "desc": "no such command"}})
		_, _ = w.Write(append(b, '\n'))
	}
}

func dial(t *testing.T, g *fakeGuest) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, g.path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestCommands(t *testing.T) {
	g := newFakeGuest(t, honest)
	c := dial(t, g)
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	os, err := c.OSInfo(ctx)
	if err != nil || os.KernelRelease != "6.1.0-57-amd64" || os.PrettyName != "Debian GNU/Linux 12 (bookworm)" || os.ID != "debian" {
		t.Fatalf("osinfo %+v, %v", os, err)
	}
	hn, err := c.HostName(ctx)
	if err != nil || hn != "vm1" {
		t.Fatalf("hostname %q, %v", hn, err)
	}
	ifs, err := c.Interfaces(ctx)
	if err != nil || len(ifs) != 2 {
		t.Fatalf("interfaces %+v, %v", ifs, err)
	}
	eth := ifs[1]
	if eth.Name != "eth0" || eth.HardwareAddress != "52:54:00:12:34:56" || len(eth.IPAddresses) != 2 ||
		eth.IPAddresses[0].Address.String() != "10.0.2.15" || eth.IPAddresses[0].Prefix != 24 || eth.IPAddresses[1].Address.String() != "fe80::1" {
		t.Fatalf("eth0 %+v (the bad address and the bad prefix must be dropped)", eth)
	}
	if n, err := c.FreezeFilesystems(ctx); err != nil || n != 2 {
		t.Fatalf("freeze %d, %v", n, err)
	}
	if s, err := c.FreezeStatus(ctx); err != nil || s != FreezeThawed {
		t.Fatalf("status %q, %v", s, err)
	}
	if n, err := c.ThawFilesystems(ctx); err != nil || n != 2 {
		t.Fatalf("thaw %d, %v", n, err)
	}
	drain(g)
	if err := c.SetUserPassword(ctx, "root", []byte("s3cret pw")); err != nil {
		t.Fatalf("set password: %v", err)
	}
	req := <-g.reqs
	args := req.Arguments
	pw, _ := base64.StdEncoding.DecodeString(args["password"].(string))
	if req.Execute != "guest-set-user-password" || args["username"] != "root" || string(pw) != "s3cret pw" || args["crypted"] != false {
		t.Fatalf("set-password request %v", req)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if req := <-g.reqs; req.Execute != "guest-shutdown" || req.Arguments["mode"] != "powerdown" {
		t.Fatalf("shutdown request %v", req)
	}
	if !c.Broken() {
		t.Fatal("a client after guest-shutdown must be broken (the agent answers nothing)")
	}
}

func drain(g *fakeGuest) {
	for {
		select {
		case <-g.reqs:
		default:
			return
		}
	}
}

func TestAgentErrorKeepsClient(t *testing.T) {
	g := newFakeGuest(t, honest)
	c := dial(t, g)
	_, err := c.call(context.Background(), "guest-no-such", nil, false)
	var ae *AgentError
	if !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
		t.Fatalf("want an AgentError, got %v", err)
	}
	if c.Broken() {
		t.Fatal("an error answer must not break the client")
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping after an error answer: %v", err)
	}
}

func TestBadInputRefusedBeforeSending(t *testing.T) {
	g := newFakeGuest(t, honest)
	c := dial(t, g)
	drain(g)
	for _, tc := range []struct{ user, pw string }{
		{"root", "a\nroot2:b"}, {"root", ""}, {"ro:ot", "x"}, {"", "x"}, {"root", strings.Repeat("x", 257)}, {"a b", "x"},
	} {
		if err := c.SetUserPassword(context.Background(), tc.user, []byte(tc.pw)); err == nil {
			t.Errorf("user %q password %q: accepted", tc.user, tc.pw)
		}
	}
	select {
	case req := <-g.reqs:
		t.Fatalf("a refused request reached the guest: %v", req)
	default:
	}
}

// TestStaleAnswers: answers to earlier requests (a wrong id, an old sync) are skipped.
func TestStaleAnswers(t *testing.T) {
	g := newFakeGuest(t, func(w net.Conn, req fakeqga.Request) {
		switch req.Execute {
		case "guest-sync-delimited":
			// junk, a stale delimiter and sync answer, then the right one
			_, _ = w.Write([]byte("garbage{\"return\":"))
			_, _ = w.Write([]byte("\xff{\"return\": 12345}\n"))
			honest(w, req)
		case "guest-ping":
			_, _ = w.Write([]byte("{\"return\": {}, \"id\": 1}\n"))
			honest(w, req)
		default:
			honest(w, req)
		}
	})
	c := dial(t, g)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if n, err := c.FreezeFilesystems(context.Background()); err != nil || n != 2 {
		t.Fatalf("after a stale answer: %d, %v", n, err)
	}
}

// TestHostileGuest: the cases a hostile guest can make; each ends the call with an error and
// a broken client, by the call's timeout at the latest, and a new Dial works again.
func TestHostileGuest(t *testing.T) {
	cases := []struct {
		name  string
		reply func(w net.Conn)
		want  func(error) bool
	}{
		{"100MB line", func(w net.Conn) { _ = fakeqga.WriteHugeLine(w, nil) }, func(err error) bool { return errors.Is(err, ErrTooLarge) }},
		{"junk JSON", func(w net.Conn) { _, _ = w.Write([]byte("{\"return\": [1, 2,,}\n")) },
			func(err error) bool { return err != nil && strings.Contains(err.Error(), "malformed") }},
		{"not an object", func(w net.Conn) { _, _ = w.Write([]byte("[]\n")) },
			func(err error) bool { return err != nil && strings.Contains(err.Error(), "malformed") }},
		{"no return", func(w net.Conn) { _, _ = w.Write([]byte("{}\n")) },
			func(err error) bool { return err != nil && strings.Contains(err.Error(), "neither") }},
		{"endless stale answers", func(w net.Conn) {
			for i := 0; i < 100; i++ {
				if _, err := w.Write([]byte("{\"return\": {}, \"id\": 7}\n")); err != nil {
					return
				}
			}
		}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "other requests") }},
		{"never answers", func(w net.Conn) {},
			func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGuest(t, func(w net.Conn, req fakeqga.Request) {
				if req.Execute == "guest-sync-delimited" {
					honest(w, req)
					return
				}
				tc.reply(w)
			})
			c := dial(t, g)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := c.Ping(ctx)
			if !tc.want(err) {
				t.Fatalf("got %v", err)
			}
			if !c.Broken() {
				t.Fatal("client not broken after a bad answer")
			}
			if err := c.Ping(context.Background()); !errors.Is(err, ErrBroken) {
				t.Fatalf("a broken client must refuse calls, got %v", err)
			}
		})
	}
}

// TestSyncRefusesEndlessJunk: a guest that sends junk without a delimiter fails Dial.
func TestSyncRefusesEndlessJunk(t *testing.T) {
	g := newFakeGuest(t, func(w net.Conn, req fakeqga.Request) {
		chunk := bytes.Repeat([]byte("{"), 1<<20)
		for i := 0; i < 10; i++ {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, g.path)
	if err == nil {
		_ = c.Close()
		t.Fatal("dial succeeded against a guest that never synchronises")
	}
	if !errors.Is(err, ErrNoSync) {
		t.Fatalf("want ErrNoSync, got %v", err)
	}
}

func TestDecodeBounds(t *testing.T) {
	var ifs []any
	for i := 0; i < 100; i++ {
		var addrs []any
		for j := 0; j < 100; j++ {
			addrs = append(addrs, map[string]any{"ip-address": "10.0.0.1", "prefix": 8})
		}
		ifs = append(ifs, map[string]any{"name": strings.Repeat("n", 1000), "ip-addresses": addrs, "hardware-address": "junk"})
	}
	raw, _ := json.Marshal(ifs)
	out, err := DecodeInterfaces(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != MaxInterfaces || len(out[0].IPAddresses) != MaxAddresses || len(out[0].Name) != 64 || out[0].HardwareAddress != "" {
		t.Fatalf("bounds not applied: %d interfaces, %d addresses, name %d bytes, mac %q",
			len(out), len(out[0].IPAddresses), len(out[0].Name), out[0].HardwareAddress)
	}
	os, err := DecodeOSInfo([]byte(`{"name":"` + strings.Repeat("é", 1000) + `\u0000\u001b[2J"}`))
	if err != nil || len(os.Name) > MaxString || strings.ContainsAny(os.Name, "\x00\x1b") {
		t.Fatalf("name %q (%d bytes), %v", os.Name, len(os.Name), err)
	}
	if _, err := DecodeFreezeStatus([]byte(`"melted"`)); err == nil {
		t.Fatal("unknown freeze state accepted")
	}
	if _, err := decodeInt("guest-fsfreeze-freeze", []byte(`-1`)); err == nil {
		t.Fatal("negative count accepted")
	}
	if _, err := DecodeHostName([]byte(`{}`)); err == nil {
		t.Fatal("a host name answer without host-name accepted")
	}
}
