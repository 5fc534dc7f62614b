package e2e

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/client"
)

// apiConsole is the serial console of a VM through the API websocket; what the guest writes
// collects in out.
type apiConsole struct {
	t    *testing.T
	conn net.Conn
	out  *lockedBuffer
}

// openConsole dials the serial console of the VM of the default project through the API
// websocket and types an empty line to wake the guest's shell. It is closed at the end of
// the test at the latest.
func openConsole(t *testing.T, ctx context.Context, c *client.Client, vm string) *apiConsole {
	t.Helper()
	conn, err := c.DialStream(ctx, "virtualmachines", "default", vm, "console")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	con := &apiConsole{t: t, conn: conn, out: &lockedBuffer{}}
	go func() { _, _ = io.Copy(con.out, conn) }()
	con.sh("")
	time.Sleep(300 * time.Millisecond)
	return con
}

// sh types a line on the console.
func (c *apiConsole) sh(line string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
		c.t.Fatal(err)
	}
}

// wait waits until the console showed the line want (see consoleWait).
func (c *apiConsole) wait(want string, timeout time.Duration, what string) {
	c.t.Helper()
	consoleWait(c.t, c.out, want, timeout, what)
}

// run types line and waits until the console showed the line want.
func (c *apiConsole) run(line, want string, timeout time.Duration, what string) {
	c.t.Helper()
	c.sh(line)
	c.wait(want, timeout, what)
}

func (c *apiConsole) Close() { c.conn.Close() }
