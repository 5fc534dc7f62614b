package registry

import (
	"net/url"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

// validateNodeMetricsURL checks status.metricsURL: an http(s) URL with host and port and a
// path, nothing else (Prometheus scrapes it with the metrics token, found through
// /sd/prometheus).
func validateNodeMetricsURL(fe *errs.FieldErrors, n *v1alpha1.Node) {
	raw := n.Status.MetricsURL
	if raw == "" {
		return
	}
	msg := checkMetricsURL(raw)
	if msg != "" {
		fe.Invalid("status.metricsURL", raw, msg)
	}
}

func checkMetricsURL(raw string) string {
	if len(raw) > 512 {
		return "must be at most 512 characters"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "must be an http(s) URL: " + err.Error()
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "must be an http or https URL"
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "must hold only the scheme, host, port and path"
	}
	if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
		return "must have a path, such as /metrics"
	}
	if !strings.Contains(u.Host, ":") || strings.HasSuffix(u.Host, ":") {
		return "must name the port (host:port)"
	}
	return checkHostPort(u.Host)
}
