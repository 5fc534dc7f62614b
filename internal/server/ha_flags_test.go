package server

import (
	"strings"
	"testing"
	"time"
)

// TestHASafetyMarginFlag: serve has --ha-safety-margin, 5s by default; a negative or too long
// margin is refused with an error naming the flag.
func TestHASafetyMarginFlag(t *testing.T) {
	f := NewServeCommand().Flags()
	if err := f.Parse([]string{"--ha-safety-margin", "7s"}); err != nil {
		t.Fatal(err)
	}
	if d, err := f.GetDuration("ha-safety-margin"); err != nil || d != 7*time.Second {
		t.Fatalf("--ha-safety-margin 7s: %v %v", d, err)
	}
	if def := NewServeCommand().Flags().Lookup("ha-safety-margin").DefValue; def != "5s" {
		t.Errorf("default %s, want 5s", def)
	}
	for _, tc := range []struct {
		margin time.Duration
		want   string
	}{
		{-time.Second, "--ha-safety-margin -1s: the HA safety margin must not be negative"},
		{11 * time.Minute, "--ha-safety-margin 11m0s: the HA safety margin must be at most 10m0s"},
	} {
		if err := checkHASafetyMargin(tc.margin); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.margin, err, tc.want)
		}
	}
	for _, ok := range []time.Duration{0, 5 * time.Second, 10 * time.Minute} {
		if err := checkHASafetyMargin(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
}
