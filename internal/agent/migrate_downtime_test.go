package agent

import "testing"

// TestDowntimeFor: the downtime limit starts at 50 ms and doubles every two passes up to the
// maximum; a maximum below the first step is the limit from the start.
func TestDowntimeFor(t *testing.T) {
	cases := []struct {
		passes, max, want int64
	}{
		{0, 300, 50}, {1, 300, 50}, {2, 300, 50}, {3, 300, 100}, {4, 300, 100}, {5, 300, 200}, {6, 300, 200},
		{7, 300, 300}, {50, 300, 300}, {0, 20, 20}, {9, 20, 20}, {0, 2000, 50}, {9, 2000, 800}, {11, 2000, 1600}, {13, 2000, 2000},
	}
	for _, c := range cases {
		if got := downtimeFor(c.passes, c.max); got != c.want {
			t.Errorf("downtimeFor(%d passes, max %d) = %d, want %d", c.passes, c.max, got, c.want)
		}
	}
	if maxDowntime(nil) != 300 {
		t.Errorf("the default maximum is %d, want 300", maxDowntime(nil))
	}
}
