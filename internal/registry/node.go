package registry

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("Node", typed[*v1alpha1.Node]{
		Default:  defaultNode,
		Validate: validateNode,
		// Nothing of a node's spec is immutable.
	})
}

// EnsureNodeHostnameLabel sets the label every Node carries: kubernetes.io/hostname with the
// node's name (node selectors use it). Defaulting calls it, so no update can change or drop
// the label; the API server also calls it on status writes, so that Nodes made before the
// label existed get it from their agent's next heartbeat.
func EnsureNodeHostnameLabel(n *v1alpha1.Node) {
	if n.Name == "" {
		return
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[v1alpha1.NodeHostnameLabel] = n.Name
}

func defaultNode(n *v1alpha1.Node) {
	EnsureNodeHostnameLabel(n)
	r := &n.Spec.AllocationRatios
	if r.CPU == 0 {
		r.CPU = v1alpha1.DefaultCPUAllocationRatio
	}
	if r.Memory == 0 {
		r.Memory = v1alpha1.DefaultMemoryAllocationRatio
	}
}

const maxNodeTaints = 64

func validateNode(n *v1alpha1.Node) errs.FieldErrors {
	var fe errs.FieldErrors
	if len(n.Spec.Taints) > maxNodeTaints {
		fe.Invalid("spec.taints", nil, fmt.Sprintf("a node may have at most %d taints (has %d)", maxNodeTaints, len(n.Spec.Taints)))
	}
	seen := map[string]int{}
	for i, t := range n.Spec.Taints {
		p := fmt.Sprintf("spec.taints[%d]", i)
		if t.Key == "" {
			fe.Required(p+".key", "a taint key is required")
		} else if msg := validQualifiedName(t.Key); msg != "" {
			fe.Invalid(p+".key", t.Key, msg)
		}
		if len(t.Value) > 63 || !labelValue.MatchString(t.Value) {
			fe.Invalid(p+".value", t.Value, "a taint value must be empty or at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
		}
		chkEnum(&fe, p+".effect", t.Effect, true, taintEffects...)
		k := t.Key + ":" + string(t.Effect)
		if j, dup := seen[k]; dup && t.Key != "" && t.Effect != "" {
			fe.Duplicate(p, fmt.Sprintf("%s (spec.taints[%d] has the same key and effect)", k, j))
		} else {
			seen[k] = i
		}
	}
	chkRatio(&fe, "spec.allocationRatios.cpu", n.Spec.AllocationRatios.CPU)
	chkRatio(&fe, "spec.allocationRatios.memory", n.Spec.AllocationRatios.Memory)
	if a := n.Spec.Address; a != "" {
		if msg := checkAgentAddress(a); msg != "" {
			fe.Invalid("spec.address", a, msg)
		}
	}
	validateNodeMetricsURL(&fe, n) // node_metrics.go
	return fe
}

// chkRatio checks an allocation ratio; 0 means unset (the default applies).
func chkRatio(fe *errs.FieldErrors, path string, r float64) {
	if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		fe.Invalid(path, r, "must be a number greater than 0")
	}
}

// checkAgentAddress accepts host, host:port or an http(s) URL without path, query or user.
func checkAgentAddress(a string) string {
	if len(a) > 512 {
		return "must be at most 512 characters"
	}
	if strings.Contains(a, "://") {
		u, err := url.Parse(a)
		if err != nil {
			return "must be host, host:port or an http(s) URL: " + err.Error()
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return "a URL must use http or https"
		}
		if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return "a URL must hold only the scheme, host and port"
		}
		return checkHostPort(u.Host)
	}
	return checkHostPort(a)
}

func checkHostPort(hp string) string {
	host := hp
	if h, port, err := net.SplitHostPort(hp); err == nil {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return "the port must be a number from 1 to 65535"
		}
		host = h
	}
	if host == "" {
		return "a host is required"
	}
	if net.ParseIP(host) != nil {
		return ""
	}
	if len(host) > 253 || !dnsSubdomain.MatchString(strings.ToLower(host)) {
		return "must be an IP address or a DNS name, optionally with :port"
	}
	return ""
}
