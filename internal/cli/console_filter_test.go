package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// hostileGuest is console output that tries to write the clipboard (OSC 52), retitle the
// terminal, ask for a report that the terminal would type into the console (CSI 6n), and
// send a DCS string, around text with colours and cursor movement.
const hostileGuest = "boot \x1b]52;c;cm0gLXJmIH4=\x07ok\x1b]0;owned\x1b\\ \x1b[1;32mgreen\x1b[0m\x1b[6n\x1bP+q544e\x1b\\\x1b[2K\rdone\x07\n"

// guestServer serves a VM's log (the hostile output) and console (the same over a websocket).
func guestServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/virtualmachines/vm1/log"):
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte(hostileGuest))
		case strings.HasSuffix(r.URL.Path, "/virtualmachines/vm1/console"):
			ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"binary"}})
			if err != nil {
				return
			}
			// Split inside the escape sequences: the filter must see them whole anyway.
			for _, part := range []string{hostileGuest[:9], hostileGuest[9:40], hostileGuest[40:]} {
				if err := ws.Write(context.Background(), websocket.MessageBinary, []byte(part)); err != nil {
					return
				}
			}
			ws.Close(websocket.StatusNormalClosure, "")
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestGuestOutputFiltered: logs and console drop the guest's OSC, DCS and report sequences
// and control characters unless --raw; console keeps colours and cursor movement, logs keep
// only text.
func TestGuestOutputFiltered(t *testing.T) {
	srv := guestServer(t)
	const text = "boot ok green\rdone\n"
	const console = "boot ok \x1b[1;32mgreen\x1b[0m\x1b[2K\rdone\n"
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"logs", "vm", "vm1"}, text},
		{[]string{"logs", "vm", "vm1", "--raw"}, hostileGuest},
		{[]string{"logs", "vm", "vm1", "-f"}, text + text},
		{[]string{"console", "vm1"}, console},
		{[]string{"console", "vm1", "--raw"}, hostileGuest},
	}
	for _, c := range cases {
		out, errOut, code := runCLI(t, context.Background(), srv.URL, "", c.args...)
		if code != 0 || out != c.want {
			t.Errorf("rakhsh %s: code %d, stderr %q\n got %q\nwant %q", strings.Join(c.args, " "), code, errOut, out, c.want)
		}
	}
}
