// Package server assembles `rakhsh serve`: the store, the API server on a unix socket (and on
// TCP with TLS and a bearer token when asked), and, in later stages, the controllers and the
// node agent of the all-in-one mode.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/controller/eventgc"
	livemigration "github.com/rakhsh/rakhsh/internal/controller/migration"
	"github.com/rakhsh/rakhsh/internal/controller/node"
	"github.com/rakhsh/rakhsh/internal/controller/scheduler"
	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/leader"
	"github.com/rakhsh/rakhsh/internal/nodestream"
	"github.com/rakhsh/rakhsh/internal/qemu/accel"
	"github.com/rakhsh/rakhsh/internal/runtime"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
	"github.com/rakhsh/rakhsh/internal/store/etcd"
)

// Config is the validated configuration of `rakhsh serve`.
type Config struct {
	DataDir string
	Listen  string // TCP address; empty: unix socket only
	Store   string // "" or "bolt" (embedded), etcd://host:port[,...] or etcd+https://host:port[,...]
	Etcd    EtcdTLS
	TLSCert string
	TLSKey  string
	// CACert and CAKey are a cluster CA shared by every control-plane host: the serving
	// certificate of --listen is issued from it (instead of from a CA made in the data dir).
	CACert, CAKey string
	// TLSSANs are more DNS names or IP addresses the issued serving certificate names.
	TLSSANs []string
	// AdminTokenFile holds the admin token, the same on every control-plane host; empty:
	// DATA-DIR/admin.token, made on first start.
	AdminTokenFile string
	LogLevel       string
	// NoAgent runs no node agent in this process (control-plane-only mode).
	NoAgent bool
	// NoControllers runs no controllers in this process.
	NoControllers bool
	// Profiling serves the Go runtime's profiles at /debug/pprof/ on the unix socket.
	Profiling bool
	// NodeName is the name of this host's Node; default the hostname.
	NodeName string
	// NodeGracePeriod is how long a Node may miss heartbeats before it is marked Unknown.
	NodeGracePeriod time.Duration
	// UploadTimeout is how long an image or disk with an Upload data source waits for its file.
	UploadTimeout time.Duration
	// MaxImageSize bounds an imported image's unpacked bytes and virtual size (0: default).
	MaxImageSize int64
	maxImageSize string
	// AllowImportFrom lists internal networks (loopback, private, link-local, ...) that image
	// and disk imports may reach, e.g. an operator's mirror; the others are refused.
	AllowImportFrom []netip.Prefix
	allowImportFrom []string
	// MinFreeSpace is the free space imports leave on the image store's file system.
	MinFreeSpace images.MinFree
	minFreeSpace string
	// VMNetworking is how VM NICs are connected: "host" (the default: taps on the
	// ClusterNetworks' bridges, nftables, dnsmasq; see docs/networking.md) or "user" (QEMU
	// user-mode, isolated: for tests).
	VMNetworking string
	// MACRanges is the cluster's MAC pool ("first-last[,first-last...]").
	MACRanges string
	// PortForwardRange is the host ports new port forwards may take (default 20000-32767).
	PortForwardRange apiserver.PortRange
	portForwardRange string
	// DefaultSubnet is the subnet of the "main" network made on first start.
	DefaultSubnet string
	// VMRuntime is how the in-process agent runs VMs (--no-upstream-dns, --accelerator,
	// --qemu-user, --dnsmasq-user).
	VMRuntime
	// EventTTL is how long an Event is kept after its last occurrence.
	EventTTL time.Duration
	// KVMDevice is the KVM device the accelerator probe checks (hidden flag, for tests).
	KVMDevice string
	// LeaderLeaseTTL is the lease of this process's control-plane registration and election
	// on an etcd store: a dead, paused or cut-off leader is replaced about this long after
	// its last renewal (default leader.DefaultLeaseTTL, 5 s).
	LeaderLeaseTTL time.Duration
	// NodeLeaseDuration and FenceTimeout are the in-process agent's --lease-duration and
	// --fence-timeout (as `rakhsh agent`'s; zero: the defaults).
	NodeLeaseDuration, FenceTimeout time.Duration
	// Memory is the in-process agent's --ksm and --memory-reserve.
	Memory memoryFlags
	// HASafetyMargin is how long the HA controller waits after it found a node's lease
	// expired before it recovers the node's HA VMs elsewhere (docs/ha.md).
	HASafetyMargin time.Duration
	// leaderNoticeDelay (hidden flag, tests only): see leader.Etcd.NoticeDelay.
	leaderNoticeDelay time.Duration
	// StreamListen, when set, serves the in-process agent's streams to other API servers
	// (several serve processes on one etcd store), published as StreamAdvertise (host[:port];
	// needed when StreamListen is all addresses).
	StreamListen, StreamAdvertise string
	// UnderlayAddress is the built-in agent's address toward the other nodes (as `rakhsh
	// agent --underlay-address`); empty: the source address of the route toward the etcd
	// store, none with bolt.
	UnderlayAddress string
	// Live migration settings (docs/migration.md): migrations a node sends and receives at
	// once, the longest switch-over pause, a bandwidth cap per migration (MiB/s, 0: none), and
	// the transfer time allowed per GiB of memory and mirrored disk.
	MigrationMaxOutbound, MigrationMaxInbound int
	MigrationMaxDowntime                      time.Duration
	// MigrationUnencrypted is --migration-encryption=false (the zero value encrypts).
	MigrationUnencrypted                        bool
	MigrationBandwidthMiBps                     int64
	MigrationTimeoutPerGiB, MigrationMinTimeout time.Duration

	// MetricsListen serves /metrics and /sd/prometheus alone on this TCP address (plain
	// HTTP, token required); MetricsTokenFile holds the read-only metrics token
	// (docs/metrics.md).
	MetricsListen, MetricsTokenFile string
	// PrometheusURL is the Prometheus that scrapes the cluster, read by the VMs' metrics
	// subresource (the web UI's charts).
	PrometheusURL string
	// MetricsClientCA holds the CA whose client certificates may read /metrics and
	// /sd/prometheus on --listen (and nothing else).
	MetricsClientCA string
	metricsURL      string                // set by Run: the node's metrics URL
	metricsReg      prometheus.Registerer // set by Run: the in-process agent's series go here

	uploads     *images.Uploads          // set by Run: the API's upload URLs meet the image and disk controllers here
	uploadBases v1alpha1.ImageUploadURLs // set by Run from the TCP listener

	// Identity configures the audit log (identity.go).
	Identity IdentityConfig
}

// NewServeCommand returns the `serve` command.
func NewServeCommand() *cobra.Command {
	var cfg Config
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Rakhsh server (all-in-one: API, store, controllers, node agent)",
		Long: `Run the Rakhsh server in the foreground.

The API listens on the unix socket DATA-DIR/rakhsh.sock (mode 0600: local root is admin) and,
with --listen, on TCP with TLS and a bearer token (DATA-DIR/admin.token, made on first start).
Objects are kept in DATA-DIR/rakhsh.db, or in etcd with --store etcd://host:port[,...].
Several serve processes may share one etcd store: all serve the API, and one of them,
elected through an etcd lease (--leader-lease-ttl), runs the controllers; the writes of a
deposed leader are refused by the store. 'rakhsh get controlplane' shows them.
SIGTERM or SIGINT shuts the server down gracefully.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := startDaemon(cfg.LogLevel, cmd)
			if err != nil {
				return err
			}
			// The command's context ends the server too: tests run the same command in-process.
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return Run(ctx, cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/rakhsh", "directory for the socket, the embedded store, tokens and certificates")
	f.StringVar(&cfg.Listen, "listen", "", "also serve the API on this TCP address (e.g. :8443), with TLS and a bearer token")
	f.StringVar(&cfg.Store, "store", "bolt", "object store: bolt (embedded file in the data dir), etcd+https://host:port[,host:port...] or etcd://host:port[,...] (plain http: loopback only unless --insecure-etcd)")
	f.StringVar(&cfg.Etcd.CA, "etcd-ca", "", "CA bundle (PEM) that signs the etcd servers' certificates (etcd+https; default: the system's roots)")
	f.StringVar(&cfg.Etcd.Cert, "etcd-cert", "", "client certificate (PEM) for etcd (etcd+https)")
	f.StringVar(&cfg.Etcd.Key, "etcd-key", "", "private key (PEM) of --etcd-cert")
	f.BoolVar(&cfg.Etcd.Insecure, "insecure-etcd", false, "accept an etcd:// (plain http) store that is not on loopback")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate (PEM) for --listen; default: a self-signed one made in the data dir")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "TLS private key (PEM) for --tls-cert")
	f.StringVar(&cfg.CACert, "ca-cert", "", "cluster CA certificate (PEM), the same on every control-plane host: the serving certificate of --listen is issued from it and kept in the data dir, so clients that trust this CA trust every API server; default: a CA made in the data dir")
	f.StringVar(&cfg.CAKey, "ca-key", "", "private key (PEM) of --ca-cert")
	f.StringSliceVar(&cfg.TLSSANs, "tls-san", nil, "more DNS names or IP addresses for the issued serving certificate (besides localhost, the loopback addresses, the hostname and the host of --listen), e.g. the address clients reach this host on when --listen is :6443")
	f.StringVar(&cfg.AdminTokenFile, "admin-token-file", "", "file holding the admin token on its first line, the same on every control-plane host (never made by serve); default: DATA-DIR/admin.token, made on first start")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.BoolVar(&cfg.NoAgent, "no-agent", false, "run no node agent in this process: a control-plane-only host (with an etcd store it campaigns to run the controllers)")
	f.BoolVar(&cfg.NoControllers, "no-controllers", false, "run no controllers in this process, and never campaign for them (serve the API only)")
	f.BoolVar(&cfg.Profiling, "profiling", false, "serve Go runtime profiles (heap, goroutines, CPU) at /debug/pprof/ on the unix socket, which only root can reach")
	f.StringVar(&cfg.NodeName, "node-name", "", "name of this host's Node object (default: the hostname)")
	f.StringVar(&cfg.UnderlayAddress, "underlay-address", "", "IPv4 address of this host that other nodes reach it on, for the built-in agent (as 'rakhsh agent --underlay-address'; default: the source address of the route toward the etcd store, none with bolt)")
	f.IntVar(&cfg.MigrationMaxOutbound, "migration-max-outbound", livemigration.DefaultMaxOutbound, "live migrations a node sends at once (more wait)")
	f.IntVar(&cfg.MigrationMaxInbound, "migration-max-inbound", scheduler.DefaultMaxInbound, "live migrations a node receives at once (the scheduler picks another target, or fails the migration)")
	f.DurationVar(&cfg.MigrationMaxDowntime, "migration-max-downtime", livemigration.DefaultMaxDowntime, "the longest pause of the guest that a live migration may make at its switch-over")
	f.VarPF(negatedBool{&cfg.MigrationUnencrypted}, "migration-encryption", "", "encrypt live migrations' memory stream and disk mirrors between the agents; with false the agents still check each other with TLS and then send the data in the clear (only for an underlay that is a trusted network of its own: faster on hosts short of CPU)").NoOptDefVal = "true"
	f.Int64Var(&cfg.MigrationBandwidthMiBps, "migration-bandwidth", 0, "bandwidth cap of each live migration's stream in MiB/s (0: none)")
	f.DurationVar(&cfg.MigrationTimeoutPerGiB, "migration-timeout-per-gib", livemigration.DefaultTimeoutPerGiB, "time a live migration's transfer may take per GiB of memory and Local disk (at least --migration-min-timeout) before it is cancelled")
	f.DurationVar(&cfg.MigrationMinTimeout, "migration-min-timeout", livemigration.DefaultMinTimeout, "the shortest time a live migration's transfer is given, whatever the VM's size")
	f.DurationVar(&cfg.NodeGracePeriod, "node-grace-period", node.DefaultGracePeriod, "a Node whose agent has not reported for this long is marked Unknown")
	f.StringVar(&cfg.maxImageSize, "max-image-size", "128Gi", "the largest image or imported disk accepted: its bytes after decompression and its virtual size (a quantity, e.g. 200Gi)")
	f.StringSliceVar(&cfg.allowImportFrom, "allow-import-from", nil, "internal networks (CIDR, repeatable or comma-separated, e.g. 10.20.0.0/16) that HTTP and registry imports may reach; loopback, private, link-local, CGNAT, multicast and cloud metadata addresses are refused otherwise")
	f.StringVar(&cfg.minFreeSpace, "min-free-space", images.DefaultMinFree.String(), "free space imports leave on the image store's file system: a percentage of its size (10%) or a size (20Gi); an import that would cross it fails")
	f.DurationVar(&cfg.UploadTimeout, "upload-timeout", images.DefaultUploadTimeout, "how long an image or disk with an Upload data source waits for its file before it fails")
	f.StringVar(&cfg.VMNetworking, "vm-networking", "host", "how VM NICs are connected: host (bridges, taps, nftables, dnsmasq per ClusterNetwork; needs root) or user (QEMU user-mode, isolated: for tests)")
	f.StringVar(&cfg.portForwardRange, "port-forward-range", apiserver.DefaultPortForwardRange.String(), "host ports VM port forwards may take, FIRST-LAST (a forward on a lower port could capture a host service such as sshd or the API)")
	f.StringVar(&cfg.MACRanges, "mac-ranges", "", "the cluster's MAC address pool, first-last[,first-last...] (default 02:72:6b:00:00:00-02:72:6b:ff:ff:ff)")
	f.StringVar(&cfg.DefaultSubnet, "default-subnet", "", "subnet of the default NAT network main when it is created on first start (default 10.66.0.0/24)")
	f.StringVar(&cfg.KVMDevice, "kvm-device", "/dev/kvm", "the KVM device the accelerator probe checks")
	addVMRuntimeFlags(f, &cfg.VMRuntime)
	addIdentityFlags(f, &cfg.Identity)
	_ = f.MarkHidden("kvm-device")
	f.DurationVar(&cfg.EventTTL, "event-ttl", eventgc.DefaultTTL, "how long an Event is kept after it last happened (at most 50 Events are kept per object)")
	f.DurationVar(&cfg.LeaderLeaseTTL, "leader-lease-ttl", leader.DefaultLeaseTTL, "etcd store: the lease of this process's control-plane membership and leader election (whole seconds, 2s-60s); a dead, paused or cut-off leader's controllers are taken over about this long after its last renewal, and a leader that cannot renew its lease for this long stops its controllers")
	addLeaseFlags(cmd, &cfg.NodeLeaseDuration, &cfg.FenceTimeout, "the in-process agent's ")
	addMemoryFlags(cmd, &cfg.Memory, "the in-process agent's ")
	f.DurationVar(&cfg.HASafetyMargin, "ha-safety-margin", v1alpha1.DefaultHASafetyMargin,
		"how long the HA controller waits after it found a node's lease expired (and the node NotReady) before it takes the lease over and restarts the node's HA VMs on other nodes; see docs/ha.md")
	f.DurationVar(&cfg.leaderNoticeDelay, "test-leader-notice-delay", 0, "tests only: notice the end of the election lease this much later, as a paused process would (its writes are then refused as fenced)")
	_ = f.MarkHidden("test-leader-notice-delay")
	f.StringVar(&cfg.StreamListen, "stream-listen", "", "also serve the in-process agent's VM consoles, VNC and logs to other API servers on this TCP address (TLS, ticket per request), for several serve processes on one etcd store; this server itself calls its agent directly")
	f.StringVar(&cfg.StreamAdvertise, "stream-advertise", "", "host[:port] published in the Node's status.streamEndpoint for --stream-listen (default: its address when it names one IP)")
	f.StringVar(&cfg.PrometheusURL, "prometheus-url", "", "base URL (http or https) of the Prometheus that scrapes this cluster, e.g. http://10.0.0.5:9090: the VMs' metrics subresource and the web UI's charts read their series from it (docs/metrics.md)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "also serve /metrics and /sd/prometheus (alone, plain HTTP, the metrics or admin token required) on this TCP address, e.g. 127.0.0.1:9464; its URL is published as the node's and the control plane's metrics URL")
	f.StringVar(&cfg.MetricsClientCA, "metrics-client-ca", "", "CA certificates (PEM) whose client certificates may read /metrics and /sd/prometheus on --listen, and nothing else (Prometheus' tls_config cert_file/key_file)")
	f.StringVar(&cfg.MetricsTokenFile, "metrics-token-file", "", "file holding a read-only token on its first line that may read /metrics and /sd/prometheus only (for Prometheus)")
	return cmd
}

// startDaemon readies the process of a long-running command (serve, agent): its logger at
// level, writing to the command's stderr, and its garbage collector (tuneGC).
func startDaemon(level string, cmd *cobra.Command) (*slog.Logger, error) {
	log, err := newLogger(level, cmd.ErrOrStderr())
	if err != nil {
		return nil, err
	}
	tuneGC()
	return log, nil
}

func newLogger(level string, w interface{ Write([]byte) (int, error) }) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// validate checks the configuration and fills derived defaults.
func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return err
	}
	c.DataDir = abs
	if _, err := accel.ParseMode(c.Accelerator); err != nil {
		return fmt.Errorf("--accelerator: %w", err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key must be given together")
	}
	if c.TLSCert != "" && c.Listen == "" {
		return errors.New("--tls-cert needs --listen")
	}
	if (c.CACert == "") != (c.CAKey == "") {
		return errors.New("--ca-cert and --ca-key must be given together")
	}
	if c.CACert != "" && c.TLSCert != "" {
		return errors.New("--ca-cert and --tls-cert are exclusive: with --ca-cert the serving certificate is issued from the cluster CA")
	}
	if c.CACert != "" && c.Listen == "" {
		return errors.New("--ca-cert needs --listen")
	}
	if len(c.TLSSANs) > 0 && (c.Listen == "" || c.TLSCert != "") {
		return errors.New("--tls-san names addresses in the issued serving certificate: it needs --listen and goes without --tls-cert")
	}
	for _, san := range c.TLSSANs {
		if san == "" || strings.ContainsAny(san, " /:,") && net.ParseIP(san) == nil {
			return fmt.Errorf("--tls-san %q: want a DNS name or an IP address", san)
		}
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("--listen %q: %w", c.Listen, err)
		}
	}
	if c.MetricsClientCA != "" && c.Listen == "" {
		return errors.New("--metrics-client-ca verifies client certificates on --listen: it needs --listen")
	}
	if c.StreamListen != "" && c.NoAgent {
		return errors.New("--stream-listen serves the in-process agent's streams: it does not go with --no-agent")
	}
	if c.LeaderLeaseTTL == 0 {
		c.LeaderLeaseTTL = leader.DefaultLeaseTTL
	}
	if c.LeaderLeaseTTL < 2*time.Second || c.LeaderLeaseTTL > time.Minute || c.LeaderLeaseTTL%time.Second != 0 {
		return fmt.Errorf("--leader-lease-ttl %s: want whole seconds from 2s to 60s", c.LeaderLeaseTTL)
	}
	if _, _, err := c.Memory.parse(); err != nil {
		return err
	}
	if err := checkLeaseFlags(c.NodeLeaseDuration, c.FenceTimeout); err != nil {
		return err
	}
	if err := checkHASafetyMargin(c.HASafetyMargin); err != nil {
		return err
	}
	if c.StreamAdvertise != "" && c.StreamListen == "" {
		return errors.New("--stream-advertise needs --stream-listen")
	}
	if c.VMNetworking != "" && c.VMNetworking != "user" && c.VMNetworking != "host" {
		return fmt.Errorf("--vm-networking %q: use host or user", c.VMNetworking)
	}
	if c.maxImageSize != "" {
		n, err := v1alpha1.Quantity(c.maxImageSize).Value()
		if err != nil || n < 1<<20 {
			return fmt.Errorf("--max-image-size %q: want a size of at least 1Mi, such as 200Gi", c.maxImageSize)
		}
		c.MaxImageSize = n
	}
	if c.AllowImportFrom, err = images.ParseAllowList(c.allowImportFrom); err != nil {
		return err
	}
	if c.portForwardRange != "" {
		if c.PortForwardRange, err = apiserver.ParsePortRange(c.portForwardRange); err != nil {
			return fmt.Errorf("--port-forward-range: %w", err)
		}
	} else if c.PortForwardRange == (apiserver.PortRange{}) {
		c.PortForwardRange = apiserver.DefaultPortForwardRange
	}
	if c.minFreeSpace != "" {
		if c.MinFreeSpace, err = images.ParseMinFree(c.minFreeSpace); err != nil {
			return err
		}
	} else if c.MinFreeSpace == (images.MinFree{}) {
		c.MinFreeSpace = images.DefaultMinFree
	}
	if c.Store != "bolt" && c.Store != "" {
		_, useTLS, err := etcdEndpoints(c.Store, c.Etcd.Insecure)
		if err != nil {
			return err
		}
		if !useTLS && (c.Etcd.CA != "" || c.Etcd.Cert != "" || c.Etcd.Key != "") {
			return fmt.Errorf("--etcd-ca, --etcd-cert and --etcd-key apply to an etcd+https:// store, not %q (plain http)", c.Store)
		}
	} else if c.Etcd != (EtcdTLS{}) {
		return fmt.Errorf("--etcd-ca, --etcd-cert, --etcd-key and --insecure-etcd apply only to an etcd store (--store etcd+https://...)")
	}
	return nil
}

// Run serves until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	// Process-wide: the image and disk controllers import with these.
	images.SetDefaultNetworkPolicy(&images.NetworkPolicy{Allow: cfg.AllowImportFrom})
	images.SetDefaultSpaceGuard(&images.SpaceGuard{MinFree: cfg.MinFreeSpace})
	if len(cfg.AllowImportFrom) > 0 {
		log.Info("imports may reach these internal networks", "allow-import-from", fmt.Sprint(cfg.AllowImportFrom))
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("creating data dir: %w", err)
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()

	tokenFile := filepath.Join(cfg.DataDir, "admin.token")
	var token string
	if cfg.AdminTokenFile != "" {
		tokenFile = cfg.AdminTokenFile
		token, err = readAdminTokenFile(cfg.AdminTokenFile)
	} else {
		token, err = ensureToken(tokenFile)
	}
	if err != nil {
		return err
	}
	if cfg.NodeName, err = resolveNodeName(cfg.DataDir, cfg.NodeName); err != nil {
		return err
	}
	if !cfg.NoControllers {
		cfg.uploads = &images.Uploads{}
	}
	// The elector is made once the API's TCP address is known, before the API serves.
	var el leader.Elector
	acfg := apiserver.Config{Store: st, Log: log.With("component", "apiserver"), AdminToken: token, Uploads: cfg.uploads,
		PortForwardRange: cfg.PortForwardRange,
		ControlPlane:     func(ctx context.Context) (v1alpha1.ControlPlaneStatus, error) { return el.Status(ctx) },
		OnFenced:         func(f store.Fence) { el.Fenced(f) }}
	if !cfg.NoControllers {
		acfg.ImageDataDir = cfg.DataDir // the image controllers store images here
	}
	if acfg.PrometheusURL, err = checkPrometheusURL(cfg.PrometheusURL); err != nil {
		return err
	}
	if acfg.OIDC, err = oidcConfig(cfg.Identity); err != nil {
		return err
	}
	if acfg.AuditLog, err = openAuditLog(cfg.Identity, cfg.DataDir); err != nil {
		return err
	}
	defer acfg.AuditLog.Close()
	if cfg.CACert != "" {
		// The members share the CA and (with --admin-token-file) the admin token: an image
		// imported by another member's controllers is fetched from it.
		acfg.PeerCAFile = cfg.CACert
	}
	if !cfg.NoAgent {
		// The agent in this process serves its VMs' consoles and logs to this API server
		// directly, without a network hop; other nodes' through their stream endpoints.
		acfg.LocalStreams, acfg.NodeName = &nodestream.Service{DataDir: cfg.DataDir}, cfg.NodeName
	}
	var metricsL net.Listener // metrics.go
	if cfg.MetricsTokenFile != "" {
		if acfg.MetricsToken, err = readMetricsToken(cfg.MetricsTokenFile); err != nil {
			return err
		}
	}
	if cfg.MetricsListen != "" {
		if metricsL, cfg.metricsURL, err = listenMetrics(cfg.MetricsListen, cfg.NodeName); err != nil {
			return err
		}
		defer metricsL.Close()
		acfg.MetricsURL = cfg.metricsURL
	}
	api := apiserver.New(acfg)
	defer api.Shutdown()
	cfg.metricsReg = api.MetricsRegisterer()
	cfg.metricsReg.MustRegister(runtime.MetricsCollectors()...)
	if storeName(cfg) == "bolt" {
		cfg.metricsReg.MustRegister(storeSizeCollector(cfg.DataDir))
	}
	initCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = api.EnsureProject(initCtx, apiserver.DefaultProject)
	if err == nil {
		if err = api.EnsureDefaultStorageClass(initCtx); err != nil {
			err = fmt.Errorf("creating the default storage class: %w", err)
		}
	} else {
		err = fmt.Errorf("creating the default project: %w", err)
	}
	cancel()
	if err != nil {
		return err
	}

	sockPath := filepath.Join(cfg.DataDir, "rakhsh.sock")
	ul, err := listenUnix(sockPath)
	if err != nil {
		return err
	}
	local := api.LocalHandler()
	if cfg.Profiling {
		local = withProfiling(local)
	}
	servers := []*http.Server{newHTTPServer(local, false)}
	listeners := []net.Listener{ul}
	if cfg.Listen != "" {
		tl, err := listenTLS(cfg)
		if err != nil {
			ul.Close()
			return err
		}
		remote := api.RemoteHandler()
		uo, err := uiOIDC(cfg.Identity, acfg.OIDC, remote)
		if err != nil {
			tl.Close()
			ul.Close()
			return err
		}
		servers = append(servers, newHTTPServer(withUI(remote, uo, log), true))
		listeners = append(listeners, tl)
		cfg.uploadBases = uploadBases(cfg.Listen, tl.Addr())
		log.Info("serving the API over TCP", "addr", tl.Addr().String(), "token-file", tokenFile)
	}
	if cfg.metricsURL == "" && cfg.uploadBases.External != "" {
		cfg.metricsURL = strings.TrimSuffix(cfg.uploadBases.External, "/") + "/metrics"
	}
	if metricsL != nil {
		defer serveMetricsOn(ctx, metricsL, api.MetricsHandler(), log.With("component", "metrics"))()
		log.Info("serving metrics", "listen", metricsL.Addr().String(), "url", cfg.metricsURL)
	}
	apiAddr := cfg.uploadBases.External
	if apiAddr == "" {
		apiAddr = "unix://" + sockPath
	}
	el = newElector(cfg, st, apiAddr, log)
	errc := make(chan error, len(servers))
	for i := range servers {
		go func(s *http.Server, l net.Listener) {
			if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}(servers[i], listeners[i])
	}
	log.Info("rakhsh serve started", "data-dir", cfg.DataDir, "socket", sockPath, "store", storeName(cfg))

	// Controllers and the node agent talk to the API like any other client, over the socket.
	compCtx, compCancel := context.WithCancel(ctx)
	defer compCancel()
	cl, err := newLocalClient(sockPath)
	if err != nil {
		return err
	}
	var comps []component
	var cert *tls.Certificate // the node's, when its streams are served to others
	if cfg.StreamListen != "" {
		if cert, err = nodeCertificate(cfg.NodeName); err != nil {
			return err
		}
	}
	if !cfg.NoAgent {
		a, err := agentComponent(cfg, cl, cert, log)
		if err != nil {
			return err
		}
		comps = append(comps, a)
	}
	if !cfg.NoControllers {
		// Each term builds its controllers anew; building them once now checks their
		// configuration before the server is up, as the first term may come much later.
		if _, err := controllers(cfg, cl, log); err != nil {
			return err
		}
	}
	if cfg.StreamListen != "" {
		wait, err := streamService{Listen: cfg.StreamListen, Advertise: cfg.StreamAdvertise, Node: cfg.NodeName, DataDir: cfg.DataDir,
			Client: cl.WithUserAgent("rakhsh/agent-streams"), Log: log.With("component", "streams"), Cert: cert}.start(compCtx)
		if err != nil {
			return err
		}
		defer wait()
		defer compCancel()
	}
	compsDone := make(chan struct{})
	go func() {
		defer close(compsDone)
		runComponents(compCtx, comps, log)
	}()
	// The controllers run only while this process leads (always on bolt).
	electionDone := make(chan struct{})
	go func() {
		defer close(electionDone)
		el.Run(compCtx, func(ctx context.Context, t leader.Term) {
			cs, err := controllers(cfg, termClient(cl, t), log)
			if err != nil {
				log.Error("building the controllers", "err", err)
				return
			}
			runComponents(ctx, cs, log)
		})
	}()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("server failed", "err", runErr)
	}
	compCancel()
	<-compsDone
	<-electionDone
	api.Shutdown()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	_ = os.Remove(sockPath)
	log.Info("stopped")
	return runErr
}

func storeName(cfg Config) string {
	if cfg.Store != "" && cfg.Store != "bolt" {
		return cfg.Store
	}
	return "bolt"
}

func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	if cfg.Store != "" && cfg.Store != "bolt" {
		eps, useTLS, err := etcdEndpoints(cfg.Store, cfg.Etcd.Insecure)
		if err != nil {
			return nil, err
		}
		ec := etcd.Config{Endpoints: eps, Prefix: "/rakhsh"}
		if useTLS {
			if ec.TLS, err = cfg.Etcd.tlsConfig(); err != nil {
				return nil, err
			}
		}
		st, err := etcd.New(ctx, ec)
		if err != nil && useTLS && strings.Contains(err.Error(), "TLS") {
			return nil, fmt.Errorf("%w (check --etcd-ca, --etcd-cert and --etcd-key)", err)
		}
		return st, err
	}
	if err := checkMigratedMarker(cfg.DataDir); err != nil {
		return nil, err
	}
	return bolt.Open(filepath.Join(cfg.DataDir, "rakhsh.db"), bolt.Options{})
}

// listenUnix listens on the socket path, replacing a stale socket file but refusing to
// start when another server answers on it.
func listenUnix(path string) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another rakhsh serve is already listening on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// negatedBool is a boolean flag (default true) that sets *p to its negation, so that the
// zero value of the field is the flag's default.
type negatedBool struct{ p *bool }

func (b negatedBool) String() string { return strconv.FormatBool(!*b.p) }
func (b negatedBool) Type() string   { return "bool" }
func (b negatedBool) Set(v string) error {
	x, err := strconv.ParseBool(v)
	if err != nil {
		return err
	}
	*b.p = !x
	return nil
}

// checkPrometheusURL checks serve --prometheus-url: empty, or an http(s) URL with a host and
// no query, fragment or credentials.
func checkPrometheusURL(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("--prometheus-url %q: want an http or https URL with a host and no query, fragment or user, such as http://10.0.0.5:9090", v)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}
