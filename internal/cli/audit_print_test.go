package cli

import "testing"

// TestPrintable: audit fields with newlines, tabs or escape sequences are shown quoted, so a
// crafted path or name can neither forge table rows nor reach the terminal as control codes.
func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"virtualmachines p1/vm1":   "virtualmachines p1/vm1",
		"vm\nfake row":             `"vm\nfake row"`,
		"a\tb":                     `"a\tb"`,
		"\x1b]0;owned\x07":         `"\x1b]0;owned\a"`,
		"/upload/caf\u00e9 \u00e9": "/upload/caf\u00e9 \u00e9",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %s, want %s", in, got, want)
		}
	}
}
