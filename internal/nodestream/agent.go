package nodestream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// SubStreamTickets is the subresource of a Node through which its agent redeems stream
// tickets: POST a RedeemRequest, get the Grant (once).
const SubStreamTickets = "streamtickets"

// RedeemRequest is the body of a redemption.
type RedeemRequest struct {
	Ticket string `json:"ticket"`
}

// APIRedeemer redeems tickets through the API with the agent's own credential.
type APIRedeemer struct {
	Client *client.Client
	Node   string
}

// Redeem implements Redeemer.
func (a *APIRedeemer) Redeem(ctx context.Context, ticket string) (Grant, error) {
	var g Grant
	err := a.Client.Do(ctx, http.MethodPost, client.Path("nodes", "", a.Node, SubStreamTickets), nil, "", RedeemRequest{Ticket: ticket}, &g)
	switch {
	case err == nil:
		return g, nil
	case client.Reason(err) == v1alpha1.ReasonForbidden || client.IsNotFound(err):
		return Grant{}, errs.New(errs.ErrForbidden, "stream ticket refused by the API: %v", err)
	}
	return Grant{}, errs.New(errs.ErrUnavailable, "redeeming the stream ticket through the API: %v", err)
}

// Publisher keeps a Node's status.streamEndpoint equal to Endpoint: it writes it once the
// Node exists and again whenever something else changed it.
type Publisher struct {
	Client   *client.Client
	Node     string
	Endpoint v1alpha1.NodeStreamEndpoint
	Log      *slog.Logger
	// Interval is how often the Node is checked once published (default 30 s).
	Interval time.Duration
}

// Run publishes until ctx ends.
func (p *Publisher) Run(ctx context.Context) error {
	interval := p.Interval
	if interval == 0 {
		interval = 30 * time.Second
	}
	log := p.Log
	if log == nil {
		log = slog.Default()
	}
	backoff := 500 * time.Millisecond
	for {
		done, err := p.PublishOnce(ctx)
		wait := interval
		switch {
		case errors.Is(err, errNotRegistered):
			// The agent's first heartbeat registers the Node.
			log.Debug("waiting for the node to be registered to publish the stream endpoint", "node", p.Node)
			wait = time.Second
		case err != nil && ctx.Err() == nil:
			log.Warn("publishing the stream endpoint failed; retrying", "node", p.Node, "err", err)
			backoff = min(2*backoff, interval)
			wait = backoff
		case done:
			log.Info("stream endpoint published", "node", p.Node, "address", p.Endpoint.Address, "certificateSHA256", p.Endpoint.CertificateSHA256)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

var errNotRegistered = errors.New("not registered yet")

// PublishOnce writes the endpoint if the Node lacks it; done says it wrote.
func (p *Publisher) PublishOnce(ctx context.Context) (bool, error) {
	var n v1alpha1.Node
	if err := p.Client.Get(ctx, "nodes", "", p.Node, &n); err != nil {
		if client.IsNotFound(err) {
			return false, fmt.Errorf("node %q: %w", p.Node, errNotRegistered)
		}
		return false, err
	}
	if n.Status.StreamEndpoint != nil && *n.Status.StreamEndpoint == p.Endpoint {
		return false, nil
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"streamEndpoint": p.Endpoint}})
	if err != nil {
		return false, err
	}
	if err := p.Client.PatchStatus(ctx, "nodes", "", p.Node, body, nil); err != nil {
		return false, err
	}
	return true, nil
}

// AdvertiseAddress is the address a stream service listening on l is published under: advertise
// when given (a port-less host takes the listener's port); else the listener's own address
// when it is bound to one IP; else the local IP this host reaches the control plane server
// (https://host:port or unix://...) from, which the control plane can most likely reach back.
func AdvertiseAddress(l net.Addr, advertise, server string) (string, error) {
	tcp, ok := l.(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("stream service listener %s is not TCP", l)
	}
	port := fmt.Sprint(tcp.Port)
	if advertise != "" {
		if _, _, err := net.SplitHostPort(advertise); err == nil {
			return advertise, nil
		}
		return net.JoinHostPort(advertise, port), nil
	}
	if !tcp.IP.IsUnspecified() {
		return tcp.String(), nil
	}
	if server == "" {
		return "", errors.New("the stream service listens on all addresses: give the address to publish (--stream-advertise)")
	}
	u, err := url.Parse(server)
	if err != nil {
		return "", fmt.Errorf("control plane address %q: %w", server, err)
	}
	if u.Scheme == "unix" {
		return net.JoinHostPort("127.0.0.1", port), nil
	}
	host, sport := u.Hostname(), u.Port()
	if sport == "" {
		sport = "443"
	}
	// A UDP "connection" sends nothing: it only asks the kernel which address it would use.
	c, err := net.Dial("udp", net.JoinHostPort(host, sport))
	if err != nil {
		return "", fmt.Errorf("finding the address this host reaches %s from (give --stream-advertise): %w", host, err)
	}
	defer c.Close()
	ip := c.LocalAddr().(*net.UDPAddr).IP
	if ip == nil || ip.IsUnspecified() {
		return "", errors.New("no local address reaches the control plane: give --stream-advertise")
	}
	return net.JoinHostPort(ip.String(), port), nil
}
