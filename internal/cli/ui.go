package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/internal/ui"
)

// newUICommand is `rakhsh ui`: the web UI for the administrator of the local socket.
func newUICommand(cc *cliContext) *cobra.Command {
	var listen string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "ui",
		Short: "Open the web UI as the local socket's administrator",
		Long: "Forwards a local port to the API's unix socket and prints a one-time login URL for it.\n" +
			"The URL logs one browser in (within --ticket-ttl); every request through the port then\n" +
			"needs that browser's session, so other local users who find the port get nowhere.\n" +
			"For a remote server, open https://HOST:PORT/ui/ and log in with a token instead.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			addr := cc.ServerAddress()
			if strings.Contains(addr, ",") || !strings.HasPrefix(addr, "unix://") {
				return fmt.Errorf("rakhsh ui forwards the local unix socket, and the server is %s: open its /ui/ page in a browser and log in with a token", addr)
			}
			sock := strings.TrimPrefix(addr, "unix://")
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			defer l.Close()
			if tcp, ok := l.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
				return fmt.Errorf("--listen %s is not a loopback address: the forwarded port speaks plain HTTP", listen)
			}
			h, ticket := uiForwarder(sock, ttl)
			fmt.Fprintf(cmd.OutOrStdout(), "Open http://%s/ui/#/login?ticket=%s\n(valid once, for %s; Ctrl-C stops the UI)\n", l.Addr(), ticket, ttl)
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			}()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "local address to serve the UI on (loopback only; port 0 picks a free one)")
	cmd.Flags().DurationVar(&ttl, "ticket-ttl", 5*time.Minute, "how long the one-time login URL stays valid")
	return cmd
}

// uiForwarder serves the embedded UI and forwards the API requests of its one session to the
// unix socket sock (where every caller is admin). It returns the handler and the login ticket.
func uiForwarder(sock string, ttl time.Duration) (http.Handler, string) {
	target := &url.URL{Scheme: "http", Host: "rakhsh"}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The API checks a websocket's Origin against the Host: keep the browser's.
			pr.Out.Host = pr.In.Host
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		},
		FlushInterval: -1, // watch streams
	}
	method, ticket := ui.NewTicketLogin("local-admin", ttl)
	return ui.New(ui.Config{
		API:         proxy,
		Methods:     map[string]ui.LoginMethod{"ticket": method},
		SessionOnly: true,
		Log:         slog.New(slog.DiscardHandler),
	}), ticket
}
