package registry

import (
	"fmt"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestNodeMetricsURL(t *testing.T) {
	for u, wantErr := range map[string]string{
		"":                                  "",
		"http://10.0.0.1:9464/metrics":      "",
		"https://node-1.example:9100/m":     "",
		"http://[fd00::1]:9464/metrics":     "",
		"ftp://10.0.0.1:21/metrics":         "http or https",
		"http://10.0.0.1/metrics":           "port",
		"http://10.0.0.1:9464":              "path",
		"http://u:p@10.0.0.1:9464/metrics":  "only the scheme",
		"http://10.0.0.1:9464/metrics?x=1":  "only the scheme",
		"http://10.0.0.1:99999/metrics":     "port must be",
		"http://bad_host!:9464/metrics":     "",
		"http://10.0.0.1:9464/metrics#frag": "only the scheme",
	} {
		n := &v1alpha1.Node{ObjectMeta: v1alpha1.ObjectMeta{Name: "n1"}, Status: v1alpha1.NodeStatus{MetricsURL: u}}
		fe := validateNode(n)
		got := fmt.Sprint(fe)
		if u == "http://bad_host!:9464/metrics" {
			if len(fe) == 0 {
				t.Errorf("%q accepted", u)
			}
			continue
		}
		switch {
		case wantErr == "" && len(fe) > 0:
			t.Errorf("%q refused: %v", u, got)
		case wantErr != "" && (len(fe) == 0 || !strings.Contains(got, wantErr) || !strings.Contains(got, "status.metricsURL")):
			t.Errorf("%q: error %q, want one about status.metricsURL naming %q", u, got, wantErr)
		}
	}
}
