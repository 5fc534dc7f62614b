package agent

import (
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// TestMaxDowntime: the downtime limit is the policy's, 300 ms when it names none. It is set
// once before the stream starts (startStream) and never changed while the stream runs.
func TestMaxDowntime(t *testing.T) {
	if got := maxDowntime(nil); got != 300 {
		t.Errorf("the default limit is %d, want 300", got)
	}
	if got := maxDowntime(&v1alpha1.MigrationPolicySettings{}); got != 300 {
		t.Errorf("a policy without a limit gives %d, want 300", got)
	}
	if got := maxDowntime(&v1alpha1.MigrationPolicySettings{MaxDowntimeMs: 120}); got != 120 {
		t.Errorf("a policy of 120 ms gives %d", got)
	}
}
