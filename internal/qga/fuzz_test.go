package qga

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzResponse feeds arbitrary bytes to the decoders and, as the guest's side of a
// connection, to a call: nothing panics, decoded values stay within their bounds, and the
// call ends with a value or an error.
func FuzzResponse(f *testing.F) {
	for _, s := range []string{
		`{"return": {}}`,
		`{"return": {"name": "Debian", "kernel-release": "6.1"}}`,
		`{"return": [{"name": "eth0", "hardware-address": "52:54:00:12:34:56", "ip-addresses": [{"ip-address": "10.0.0.2", "prefix": 24}]}]}`,
		`{"return": {"host-name": "vm"}}`,
		`{"return": 3, "id": 1}`,
		`{"return": "frozen"}`,
		`{"error": {"class": "GenericError", "desc": "x"}}`,
		"\xff{\"return\": 1}",
		`{"return": [1, 2,,}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if os, err := DecodeOSInfo(data); err == nil {
			for _, s := range []string{os.Name, os.PrettyName, os.Version, os.VersionID, os.ID, os.KernelRelease, os.KernelVersion, os.Machine} {
				checkString(t, s, MaxString)
			}
		}
		if hn, err := DecodeHostName(data); err == nil {
			checkString(t, hn, MaxString)
		}
		if ifs, err := DecodeInterfaces(data); err == nil {
			if len(ifs) > MaxInterfaces {
				t.Fatalf("%d interfaces", len(ifs))
			}
			for _, i := range ifs {
				checkString(t, i.Name, 64)
				if i.Name == "" || len(i.IPAddresses) > MaxAddresses {
					t.Fatalf("interface %+v", i)
				}
				for _, a := range i.IPAddresses {
					if !a.Address.IsValid() || a.Prefix < 0 || a.Prefix > a.Address.BitLen() {
						t.Fatalf("address %+v", a)
					}
				}
			}
		}
		if s, err := DecodeFreezeStatus(data); err == nil && s != FreezeFrozen && s != FreezeThawed {
			t.Fatalf("state %q", s)
		}
		if line, err := readLine(bufio.NewReader(bytes.NewReader(append(data, '\n'))), 64); err == nil && len(line) > 64 {
			t.Fatalf("line of %d bytes past the limit", len(line))
		}

		// The whole call path: the fuzz input is the guest's answer to a ping.
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() {
			r := bufio.NewReader(b)
			if _, err := r.ReadBytes('\n'); err != nil {
				return
			}
			_, _ = b.Write(append(data, '\n'))
		}()
		c := NewClient(a)
		// A short timeout: an answer that only looks stale waits for more until it ends.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		_ = c.Ping(ctx)
	})
}

func checkString(t *testing.T, s string, max int) {
	t.Helper()
	if len(s) > max || !utf8.ValidString(s) || strings.ContainsAny(s, "\x00\n\r\x1b") {
		t.Fatalf("string %q breaks its bounds", s)
	}
}
