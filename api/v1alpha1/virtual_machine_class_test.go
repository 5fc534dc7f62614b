package v1alpha1

import (
	"encoding/json"
	"testing"
)

func TestCoreFractionJSON(t *testing.T) {
	for in, want := range map[string]CoreFractionValue{`10`: 10, `"10%"`: 10, `"100%"`: 100} {
		var c CoreFractionValue
		if err := json.Unmarshal([]byte(in), &c); err != nil || c != want {
			t.Errorf("%s: %d, %v; want %d", in, c, err, want)
		}
	}
	for _, in := range []string{`"10"`, `"x%"`, `true`, `{"n":10}`} {
		var c CoreFractionValue
		if err := json.Unmarshal([]byte(in), &c); err == nil {
			t.Errorf("%s was accepted as %d", in, c)
		}
	}
}
