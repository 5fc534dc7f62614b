package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/console"
	"golang.org/x/term"
)

// detachKey is Ctrl-], which ends `rakhsh console` without touching the VM.
const detachKey = 0x1d

// guestOutput returns the writer guest output goes through to w: the terminal filter of
// mode (see console.TermFilter), or w itself with raw.
func guestOutput(w io.Writer, raw bool, mode console.FilterMode) io.Writer {
	if raw {
		return w
	}
	return console.NewTermFilter(w, mode)
}

func newConsoleCommand(cc *cliContext) *cobra.Command {
	var raw bool
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a VM's serial console (Ctrl-] detaches)",
		Long: `Attach to a VM's serial console (Ctrl-] detaches).

What the guest prints is filtered before it reaches your terminal: text, colours and cursor
movement pass; escape sequences that make a terminal do more than draw (window titles,
clipboard writes with OSC 52, device reports, DCS/APC strings, other control characters)
are dropped. --raw passes everything, for a guest you trust.`,
		Args: cobra.ExactArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			conn, err := c.DialStream(cmd.Context(), "virtualmachines", cc.Namespace(), args[0], "console")
			if err != nil {
				return err
			}
			defer conn.Close()
			in := cmd.InOrStdin()
			if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				old, err := term.MakeRaw(int(f.Fd()))
				if err == nil {
					defer term.Restore(int(f.Fd()), old)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "Connected to %s's serial console; Ctrl-] detaches.\r\n", args[0])
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = io.Copy(guestOutput(cmd.OutOrStdout(), raw, console.FilterConsole), conn)
			}()
			go func() {
				buf := make([]byte, 1024)
				for {
					n, err := in.Read(buf)
					for i := 0; i < n; i++ {
						if buf[i] == detachKey {
							_, _ = conn.Write(buf[:i])
							conn.Close()
							return
						}
					}
					if n > 0 {
						if _, werr := conn.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						// Standard input ended (a pipe): keep printing until the server or Ctrl-C ends.
						return
					}
				}
			}()
			select {
			case <-done:
			case <-cmd.Context().Done():
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&raw, "raw", false, "pass the guest's output to the terminal unfiltered, escape sequences included (only for a guest you trust)")
	return cmd
}

func newVNCCommand(cc *cliContext) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "vnc NAME",
		Short: "Open a local TCP port that any VNC viewer can connect to for a VM's display",
		Args:  cobra.ExactArgs(1),
		RunE: cc.withClient(func(cmd *cobra.Command, args []string, c *client.Client) error {
			// Say it now, not at the first connection: a VM that does not run has no display.
			var vm v1alpha1.VirtualMachine
			if err := c.Get(cmd.Context(), "virtualmachines", cc.Namespace(), args[0], &vm); err != nil {
				return err
			}
			if p := vm.Status.Phase; p != v1alpha1.VMPhaseRunning && p != v1alpha1.VMPhasePause {
				return fmt.Errorf("virtual machine %q is %s: it has no display now (start it with `rakhsh vm start %s`)", args[0], orDash(string(p)), args[0])
			}
			probe, err := c.DialStream(cmd.Context(), "virtualmachines", cc.Namespace(), args[0], "vnc")
			if err != nil {
				return err
			}
			probe.Close()
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			defer l.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "VNC of %s on %s (Ctrl-C to stop)\n", args[0], l.Addr())
			go func() { <-cmd.Context().Done(); l.Close() }()
			for {
				tcp, err := l.Accept()
				if err != nil {
					return nil
				}
				go func() {
					defer tcp.Close()
					ctx, cancel := context.WithCancel(cmd.Context())
					defer cancel()
					ws, err := c.DialStream(ctx, "virtualmachines", cc.Namespace(), args[0], "vnc")
					if err != nil {
						printError(cmd.ErrOrStderr(), err)
						return
					}
					defer ws.Close()
					go func() { _, _ = io.Copy(ws, tcp); ws.Close() }()
					_, _ = io.Copy(tcp, ws)
				}()
			}
		}),
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "local address to listen on, e.g. 127.0.0.1:5900")
	return cmd
}

func newLogsCommand(cc *cliContext) *cobra.Command {
	var limit int64
	var qemuLog, follow, raw bool
	cmd := &cobra.Command{
		Use:   "logs vm NAME",
		Short: "Print a VM's kept serial console output (--qemu: QEMU's own log of this and the previous run)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "vm" && args[0] != "virtualmachine" && args[0] != "virtualmachines" {
				return fmt.Errorf("logs are kept for VMs only: use `rakhsh logs vm NAME`")
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			var out []byte
			q := url.Values{"limitBytes": {fmt.Sprint(limit)}}
			if qemuLog {
				q.Set("source", "qemu")
			}
			if err := c.Do(cmd.Context(), "GET", client.Path("virtualmachines", cc.Namespace(), args[1], "log"), q, "", nil, &out); err != nil {
				return err
			}
			w := guestOutput(cmd.OutOrStdout(), raw, console.FilterText)
			if _, err := w.Write(out); err != nil || !follow {
				return err
			}
			if qemuLog {
				return usageErrorf("--follow works with the serial console only")
			}
			// Then the live console, read-only, until the VM stops or Ctrl-C.
			conn, err := c.DialStream(cmd.Context(), "virtualmachines", cc.Namespace(), args[1], "console")
			if err != nil {
				return err
			}
			defer conn.Close()
			go func() { <-cmd.Context().Done(); conn.Close() }()
			_, _ = io.Copy(w, conn)
			return nil
		},
	}
	cmd.Flags().BoolVar(&raw, "raw", false, "print the output unfiltered, escape sequences and control characters included (by default only text, newlines and tabs pass, so the guest cannot retitle the terminal or write the clipboard)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing the console output as the guest writes it, until the VM stops or Ctrl-C")
	cmd.Flags().Int64Var(&limit, "limit-bytes", 1<<20, "print at most this many bytes from the end")
	cmd.Flags().BoolVar(&qemuLog, "qemu", false, "print QEMU's own output (errors, warnings) of the current and the previous run instead of the serial console")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
