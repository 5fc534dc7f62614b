package e2e

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
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

// cliConsoleDetach runs `rakhsh console VM` with standard input from a pipe, types a command
// and waits for its output (what names the console in a failure), then detaches with Ctrl-]:
// the CLI must end, without an error, within 10 s. It returns what the CLI printed.
func cliConsoleDetach(t *testing.T, s *Serve, vm, what string) string {
	t.Helper()
	cmd := exec.Command(rakhshBin(t), "console", vm)
	cmd.Env = append(os.Environ(), "RAKHSH_SERVER="+s.Server())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()
	time.Sleep(500 * time.Millisecond) // let it connect before typing
	if _, err := io.WriteString(stdin, "\necho CLI-$((5*5))\n"); err != nil {
		t.Fatal(err)
	}
	consoleWait(t, out, "CLI-25", 30*time.Second, what)
	if _, err := stdin.Write([]byte{0x1d}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("rakhsh console after Ctrl-]: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("rakhsh console did not end within 10s of Ctrl-]; output:\n%s", out.String())
	}
	return out.String()
}
