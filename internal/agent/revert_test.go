package agent

import (
	"slices"
	"testing"
)

// TestRevert: undos run last first, each once, and the stack is empty afterwards.
func TestRevert(t *testing.T) {
	var did, told []string
	r := revert{ran: func(step string) { told = append(told, step) }}
	for _, s := range []string{"a", "b", "c"} {
		r.add(s, func() { did = append(did, s) })
	}
	r.run()
	r.run()
	if want := []string{"c", "b", "a"}; !slices.Equal(did, want) || !slices.Equal(told, want) {
		t.Errorf("undid %v (told %v), want %v", did, told, want)
	}
}
