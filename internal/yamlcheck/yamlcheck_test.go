package yamlcheck

import (
	"errors"
	"strings"
	"testing"
)

func TestInspect(t *testing.T) {
	cases := []struct {
		name     string
		in       string
		aliases  int
		first    string
		expanded int64 // 0: not checked
		err      error
	}{
		{name: "no star: not parsed", in: "a: [unclosed", expanded: 12},
		{name: "star in a string", in: "a: 'x * y'\nb: \"*\"\n"},
		{name: "anchor without alias", in: "a: &x 1\n"},
		{name: "alias", in: "a: &x hello\nb: *x\nc: *x\n", aliases: 2, first: "*x at line 2, column 4"},
		{name: "merge key", in: "base: &b {cpu: 1}\nvm:\n  <<: *b\n  mem: 2\n", aliases: 1, first: "*b at line 3, column 7"},
		{name: "second document", in: "a: 1\n---\nb: &y 2\nc: *y\n", aliases: 1, first: "*y at line 4, column 4"},
		{name: "recursive", in: "a: &r [1, *r]\n", err: ErrRecursive},
	}
	for _, c := range cases {
		r, err := Inspect([]byte(c.in), 0)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: err %v, want %v", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if r.Aliases != c.aliases {
			t.Errorf("%s: %d aliases, want %d", c.name, r.Aliases, c.aliases)
		}
		if c.aliases > 0 && r.First.String() != c.first {
			t.Errorf("%s: first alias %q, want %q", c.name, r.First, c.first)
		}
		if c.expanded != 0 && r.Expanded != c.expanded {
			t.Errorf("%s: expanded %d, want %d", c.name, r.Expanded, c.expanded)
		}
	}
	if _, err := Inspect([]byte("a: *nope\n"), 0); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown anchor: err %v, want one naming it", err)
	}
}

// billionLaughs nests levels of aliases, each repeating the previous level ten times.
func billionLaughs(levels int) string {
	var b strings.Builder
	b.WriteString("l0: &l0 \"lol\"\n")
	for i := 1; i <= levels; i++ {
		b.WriteString("l" + itoa(i) + ": &l" + itoa(i) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(",")
			}
			b.WriteString("*l" + itoa(i-1))
		}
		b.WriteString("]\n")
	}
	return b.String()
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

// TestInspectBombs: the expanded size of alias bombs is computed without expanding them,
// and saturates at the limit.
func TestInspectBombs(t *testing.T) {
	r, err := Inspect([]byte(billionLaughs(9)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Expanded < 6_000_000_000 {
		t.Errorf("nine levels of ten: expanded %d, want more than 6e9 (10^9 strings of 6 bytes)", r.Expanded)
	}
	if r.Aliases != 90 {
		t.Errorf("aliases %d, want 90", r.Aliases)
	}
	r, err = Inspect([]byte(billionLaughs(30)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if r.Expanded != 1<<20+1 {
		t.Errorf("thirty levels with a limit of 1 MiB: expanded %d, want the limit + 1", r.Expanded)
	}
	// One large anchored scalar and many aliases (the shape that took serve to 1.4 GB).
	big := "a: &a " + strings.Repeat("x", 1<<20) + "\nb: [" + strings.TrimSuffix(strings.Repeat("*a,", 120), ",") + "]\n"
	r, err = Inspect([]byte(big), 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Aliases != 120 || r.Expanded < 121<<20 {
		t.Errorf("big scalar: %d aliases, expanded %d; want 120 and more than 121 MiB", r.Aliases, r.Expanded)
	}
}

// FuzzInspect: any input is inspected without a panic, and a stream without aliases reports
// none.
func FuzzInspect(f *testing.F) {
	f.Add([]byte("a: &x 1\nb: *x\n"))
	f.Add([]byte("a: &r [1, *r]\n"))
	f.Add([]byte(billionLaughs(4)))
	f.Add([]byte("a: '*'\n---\nb: *c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 16<<10 {
			return
		}
		r, err := Inspect(data, 1<<20)
		if err != nil {
			return
		}
		if r.Aliases > 0 && r.First.Name == "" && r.First.Line == 0 {
			t.Fatalf("%d aliases but no first alias", r.Aliases)
		}
		if r.Expanded < 0 || r.Expanded > 1<<20+1 {
			t.Fatalf("expanded %d outside [0, limit+1]", r.Expanded)
		}
	})
}
