package cli

import (
	"strings"
	"testing"
	"time"
)

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		n, total int64
		want     string
	}{
		{0, 100 << 20, "[>                             ]   0%  0/100Mi"},
		{50 << 20, 100 << 20, "[===============>              ]  50%  50Mi/100Mi"},
		{100 << 20, 100 << 20, "[==============================] 100%  100Mi/100Mi"},
		{0, 0, "[==============================] 100%  0/0"},
	} {
		got := progressBar(tc.n, tc.total, 2*time.Second)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("progressBar(%d, %d) = %q, want prefix %q", tc.n, tc.total, got, tc.want)
		}
	}
	if got := progressBar(50<<20, 100<<20, 2*time.Second); !strings.Contains(got, "25Mi/s") {
		t.Errorf("speed: %q", got)
	}
}
