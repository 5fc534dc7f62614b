package labels

import "testing"

func TestParseAndMatch(t *testing.T) {
	l := map[string]string{"app": "web", "tier": "front", "example.com/zone": "a"}
	cases := []struct {
		sel  string
		want bool
	}{
		{"", true},
		{"app=web", true},
		{"app==web", true},
		{"app=db", false},
		{"app!=db", true},
		{"app!=web", false},
		{"missing!=x", true},
		{"tier in (front, back)", true},
		{"tier in (back)", false},
		{"tier notin (back)", true},
		{"tier notin (front)", false},
		{"missing notin (x)", true},
		{"app", true},
		{"missing", false},
		{"!missing", true},
		{"!app", false},
		{"app=web,tier=front", true},
		{"app=web, tier=back", false},
		{"example.com/zone=a", true},
	}
	for _, c := range cases {
		s, err := Parse(c.sel)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.sel, err)
		}
		if got := s.Matches(l); got != c.want {
			t.Errorf("%q matches %v = %v, want %v", c.sel, l, got, c.want)
		}
		// The printed form parses to the same selector.
		s2, err := Parse(s.String())
		if err != nil || s2.String() != s.String() {
			t.Errorf("round trip of %q: %q, %v", c.sel, s2.String(), err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{"=x", "a in (b", "a in b", "a=b,", "a b", "!", "a=b/c", "a ~ b", "/a=b"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestFromMap(t *testing.T) {
	s := FromMap(map[string]string{"b": "2", "a": "1"})
	if s.String() != "a=1,b=2" || !s.Matches(map[string]string{"a": "1", "b": "2", "c": "3"}) || s.Matches(map[string]string{"a": "1"}) {
		t.Fatalf("FromMap: %q", s.String())
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"a=b", "a in (x,y),!c", "k notin (v)", "x!=y, z", "a.b/c==d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(sel.String())
		if err != nil {
			t.Fatalf("printed form %q of %q does not parse: %v", sel.String(), s, err)
		}
		if again.String() != sel.String() {
			t.Fatalf("round trip changed %q to %q", sel.String(), again.String())
		}
		_ = sel.Matches(map[string]string{"a": "b"})
	})
}
