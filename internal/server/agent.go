package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/qemu/accel"
)

// AgentConfig is the validated configuration of `rakhsh agent`.
type AgentConfig struct {
	// ImageCacheExpiry and ImageCacheGCInterval: how long an unused image stays in this
	// host's cache, and how often that is looked at.
	ImageCacheExpiry, ImageCacheGCInterval time.Duration
	// Server is the control plane's API: one address, or several API servers of one control
	// plane separated by commas, failed over in turn by the client.
	Server string
	Token  string
	// TokenFile holds the token (the safe way: --token shows in the process list).
	TokenFile string
	CAFile    string
	// JoinToken (or the first line of JoinTokenFile) is exchanged once for a node
	// credential kept in DataDir (see nodecred.go).
	JoinToken, JoinTokenFile string
	DataDir                  string
	NodeName                 string
	LogLevel                 string
	// HeartbeatInterval is how often the Node status is refreshed.
	HeartbeatInterval time.Duration
	// LeaseDuration and FenceTimeout: the node lease and self-fencing (docs/ha.md).
	LeaseDuration, FenceTimeout time.Duration
	// Memory is --ksm and --memory-reserve.
	Memory memoryFlags
	// VMNetworking is "host" or "user", as for serve.
	VMNetworking string
	// VMRuntime is --no-upstream-dns, --accelerator, --qemu-user and --dnsmasq-user, as for serve.
	VMRuntime
	// StreamListen is the TCP address of the stream service (consoles, VNC, logs of this
	// host's VMs, for the API servers); empty: none. StreamAdvertise is the host[:port]
	// published in the Node's status for it; empty: derived.
	StreamListen, StreamAdvertise string
	// UnderlayAddress is this node's address toward the other nodes, for the VXLAN of NAT
	// networks across hosts; empty: the source address of the route toward --server.
	UnderlayAddress string
	// MetricsListen serves the node's /metrics on this TCP address (plain HTTP) to the
	// bearer of the token in MetricsTokenFile (docs/metrics.md).
	MetricsListen, MetricsTokenFile string
}

// NewAgentCommand returns the `agent` command: the node agent alone, for a host that joins a
// control plane running elsewhere.
func NewAgentCommand() *cobra.Command {
	var cfg AgentConfig
	var servers []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent of this host against a Rakhsh control plane",
		Long: `Run the node agent in the foreground: register this host as a Node, heartbeat, and run
the VMs the scheduler binds to it. QEMU processes outlive the agent; a restarted agent adopts
them again. The all-in-one 'rakhsh serve' runs the same agent in-process.

The consoles, VNC displays and logs of this host's VMs are served to the API servers, which
proxy them to users, by the agent's stream service on --stream-listen (TLS, default :8444;
the control plane must reach it). The agent makes a fresh self-signed certificate at every
start and publishes the address (--stream-advertise, default: the address this host reaches
--server from) and the certificate's SHA-256 in its Node's status.streamEndpoint, which the
API servers pin. Every stream request carries a single-use ticket, valid for 30 s, that an API
server recorded; the agent redeems it through the API with its own credential before it
touches the VM, so nothing reaches a console without passing the API's authentication.

A host joins with a join token an admin made (rakhsh node token create): the agent exchanges
it once for the node's own credential, keeps that in DATA-DIR/node-credential.json (mode
0600) and uses only it from then on, also after restarts. The credential may do only what a
node needs (docs/nodes.md); rakhsh node remove revokes it. --token (the admin token) still
works for compatibility.

With several control-plane hosts, give every API server (--server https://a:6443,https://b:6443,
all with certificates of the cluster CA in --ca-file): the agent talks to one at a time and moves
to the next when it cannot be reached or answers 503, watches included; the join token is
exchanged with whichever answers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := startDaemon(cfg.LogLevel, cmd)
			if err != nil {
				return err
			}
			cfg.Server = strings.Join(servers, ",")
			if cfg.Server == "" {
				cfg.Server = os.Getenv("RAKHSH_SERVER")
			}
			serverList := client.SplitServers(cfg.Server)
			if cfg.Token != "" && cfg.TokenFile != "" {
				return errors.New("--token and --token-file are exclusive: give one (--token-file keeps the token out of the process list)")
			}
			if cfg.JoinToken != "" && cfg.JoinTokenFile != "" {
				return errors.New("--join-token and --join-token-file are exclusive: give one")
			}
			if (cfg.JoinToken != "" || cfg.JoinTokenFile != "") && (cfg.Token != "" || cfg.TokenFile != "") {
				return errors.New("--join-token and --token are exclusive: a joining node uses its own credential, not the admin token")
			}
			if cfg.JoinTokenFile != "" {
				tok, err := client.ReadTokenFile(cfg.JoinTokenFile)
				if err != nil {
					return err
				}
				cfg.JoinToken = tok
			}
			if cfg.Token == "" && cfg.TokenFile == "" && cfg.JoinToken == "" {
				cfg.Token = os.Getenv("RAKHSH_TOKEN")
				if cfg.Token == "" {
					cfg.TokenFile = os.Getenv("RAKHSH_TOKEN_FILE")
				}
			}
			if cfg.Token == "" && cfg.TokenFile != "" {
				tok, err := client.ReadTokenFile(cfg.TokenFile)
				if err != nil {
					return err
				}
				cfg.Token = tok
			}
			ksm, reserve, err := cfg.Memory.parse()
			if err != nil {
				return err
			}
			if err := checkLeaseFlags(cfg.LeaseDuration, cfg.FenceTimeout); err != nil {
				return err
			}
			if cfg.VMNetworking != "host" && cfg.VMNetworking != "user" {
				return fmt.Errorf("--vm-networking %q: use host or user", cfg.VMNetworking)
			}
			if len(serverList) == 0 {
				return errors.New("--server is required (https://host:port of the control plane, or unix:///path/rakhsh.sock)")
			}
			abs, err := filepath.Abs(cfg.DataDir)
			if err != nil {
				return err
			}
			cfg.DataDir = abs
			if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
				return fmt.Errorf("creating data dir: %w", err)
			}
			if err := agentCredential(cmd.Context(), &cfg, cfg.JoinToken, log); err != nil {
				return err
			}
			c, err := client.New(client.Config{Server: cfg.Server, Token: cfg.Token, CAFile: cfg.CAFile,
				OnFailover: func(from, to string, err error) {
					log.Warn("API server failed: using the next one", "from", from, "to", to, "err", err)
				}})
			if err != nil {
				return err
			}
			c = c.WithUserAgent("rakhsh/agent")
			if cfg.NodeName, err = resolveNodeName(cfg.DataDir, cfg.NodeName); err != nil {
				return err
			}
			mode, err := accel.ParseMode(cfg.Accelerator)
			if err != nil {
				return fmt.Errorf("--accelerator: %w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			var cert *tls.Certificate
			if cfg.StreamListen != "" {
				if cert, err = nodeCertificate(cfg.NodeName); err != nil {
					return err
				}
				wait, err := streamService{Listen: cfg.StreamListen, Advertise: cfg.StreamAdvertise, Server: serverList[0],
					Node: cfg.NodeName, DataDir: cfg.DataDir, Client: c.WithUserAgent("rakhsh/agent-streams"), Log: log.With("component", "streams"),
					Cert: cert}.start(ctx)
				if err != nil {
					return err
				}
				defer wait()
				defer stop()
			} else {
				log.Warn("no --stream-listen: the consoles and logs of this host's VMs cannot be reached through the API")
			}
			var hosts []string
			for _, s := range serverList {
				hosts = append(hosts, serverHost(s))
			}
			underlay, err := underlayAddress(cfg.UnderlayAddress, hosts)
			if err != nil {
				return err
			}
			guardBin, err := fenceGuardBinary()
			if err != nil {
				return err
			}
			var metricsL net.Listener
			var metricsURL, metricsToken string
			if cfg.MetricsListen != "" {
				if cfg.MetricsTokenFile == "" {
					return errors.New("--metrics-listen needs --metrics-token-file: the node's metrics are served to the bearer of the metrics token only")
				}
				if metricsToken, err = readMetricsToken(cfg.MetricsTokenFile); err != nil {
					return err
				}
				if metricsL, metricsURL, err = listenMetrics(cfg.MetricsListen, cfg.NodeName); err != nil {
					return err
				}
				defer metricsL.Close()
			}
			a, err := agent.New(agent.Config{Client: c, NodeName: cfg.NodeName, DataDir: cfg.DataDir, HeartbeatInterval: cfg.HeartbeatInterval,
				HostNetworking: cfg.VMNetworking == "host", NoUpstreamDNS: cfg.NoUpstreamDNS, Accelerator: mode,
				QEMUUser: cfg.QEMUUser, DnsmasqUser: cfg.DnsmasqUser, UnderlayAddress: underlay, Log: log,
				LeaseDuration: cfg.LeaseDuration, FenceTimeout: cfg.FenceTimeout, FenceGuard: guardBin, Certificate: cert,
				MetricsURL: metricsURL, KSM: ksm, MemoryReserve: reserve, ImageCacheExpiry: cfg.ImageCacheExpiry, ImageCacheGCInterval: cfg.ImageCacheGCInterval})
			if err != nil {
				return err
			}
			if metricsL != nil { // metrics.go
				defer serveMetricsOn(ctx, metricsL, agentMetricsHandler(newAgentRegistry(a.MetricsCollectors()), metricsToken), log.With("component", "metrics"))()
			}
			log.Info("rakhsh agent started", "server", cfg.Server, "node", cfg.NodeName, "data-dir", cfg.DataDir)
			err = a.Run(ctx)
			if ctx.Err() != nil {
				log.Info("stopped; running VMs keep running")
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&servers, "server", nil, "control plane API: https://host:port or unix:///path/rakhsh.sock (env RAKHSH_SERVER); several API servers of one control plane separated by commas or by repeating the flag: the agent uses one and fails over to the next when it cannot be reached or answers 503")
	f.StringVar(&cfg.Token, "token", "", "bearer token for the control plane (env RAKHSH_TOKEN); other local users can read it in the process list: prefer --token-file")
	f.StringVar(&cfg.TokenFile, "token-file", "", "file holding the bearer token for the control plane on its first line (env RAKHSH_TOKEN_FILE)")
	f.StringVar(&cfg.JoinToken, "join-token", "", "join token (rakhsh node token create) exchanged once for this node's own credential, kept in --data-dir; later starts need neither it nor --token")
	f.StringVar(&cfg.JoinTokenFile, "join-token-file", "", "file holding the join token on its first line")
	f.StringVar(&cfg.CAFile, "ca-file", "", "PEM CA certificates to trust for https")
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/rakhsh", "directory for disks, images and VM run directories")
	f.StringVar(&cfg.NodeName, "node-name", "", "name of this host's Node object (default: the hostname)")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 10*time.Second, "how often the Node status is refreshed; keep it well under the control plane's --node-grace-period")
	addLeaseFlags(cmd, &cfg.LeaseDuration, &cfg.FenceTimeout, "")
	addMemoryFlags(cmd, &cfg.Memory, "")
	f.StringVar(&cfg.VMNetworking, "vm-networking", "host", "how VM NICs are connected: host (bridges, taps, nftables, dnsmasq per ClusterNetwork) or user (QEMU user-mode, isolated); use the control plane's setting")
	addVMRuntimeFlags(f, &cfg.VMRuntime)
	f.StringVar(&cfg.StreamListen, "stream-listen", DefaultStreamListen, "TCP address of the stream service that serves this host's VM consoles, VNC and logs to the API servers (TLS, ticket per request); empty: none")
	f.StringVar(&cfg.StreamAdvertise, "stream-advertise", "", "host[:port] published in the Node's status.streamEndpoint for the stream service (default: the listen address, or when it is all addresses the local IP this host reaches --server from)")
	f.StringVar(&cfg.UnderlayAddress, "underlay-address", "", "IPv4 address of this host that the other nodes reach it on: the VXLAN of NAT networks across hosts is sent from and to it, and it is published as the Node's InternalIP (default: the source address of the route toward --server; none for a unix socket)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve this node's /metrics (its VMs and the node) on this TCP address, plain HTTP, to the bearer of the metrics token; published as the Node's status.metricsURL for /sd/prometheus")
	f.StringVar(&cfg.MetricsTokenFile, "metrics-token-file", "", "file holding the read-only metrics token on its first line (the same as the control plane's --metrics-token-file)")
	f.DurationVar(&cfg.ImageCacheExpiry, "image-cache-expiry", agent.DefaultImageCacheExpiry, "how long an image fetched into this host's cache is kept once no disk of the host is a linked clone of it and no VM here has it open (it is fetched again when needed)")
	f.DurationVar(&cfg.ImageCacheGCInterval, "image-cache-gc-interval", agent.DefaultImageCacheGCInterval, "how often the host's image cache is looked at for images unused for --image-cache-expiry")
	return cmd
}
