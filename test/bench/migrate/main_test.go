package main

import "testing"

func TestTicks(t *testing.T) {
	lines := []string{
		"rakhsh-guest# i=0; while :; do i=$((i+1)); echo TICK $i; sleep 1; done &",
		"rakhsh-guest# TICK 1",
		"TICK 2",
		"",
		"RAKHSH-GUEST: booted",
		"TICK 10",
		"TICK 3",
	}
	max, first := ticks(lines, 0)
	if max != 10 || first != 1 {
		t.Errorf("ticks(all) = %d, %d; want 10, 1", max, first)
	}
	if _, first = ticks(lines, 3); first != 10 {
		t.Errorf("first tick from line 3 = %d, want 10", first)
	}
	if max, first = ticks(lines[:1], 0); max != 0 || first != -1 {
		t.Errorf("the typed command counted as a tick: %d, %d", max, first)
	}
	if n := countBooted(lines); n != 1 {
		t.Errorf("countBooted = %d, want 1", n)
	}
}

func TestSpread(t *testing.T) {
	for _, c := range []struct {
		v    []float64
		want string
	}{
		{nil, "–"},
		{[]float64{7}, "7"},
		{[]float64{5, 1, 3}, "3 [1–5]"},
		{[]float64{4, 1, 2, 3}, "2.5 [1.0–4.0]"},
	} {
		prec := 0
		if len(c.v) == 4 {
			prec = 1
		}
		if got := spread(c.v, prec); got != c.want {
			t.Errorf("spread(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestCleanStripsEscapes(t *testing.T) {
	if got := clean([]byte("rakhsh-guest# \x1b[6nTICK 4\r")); got != "rakhsh-guest# TICK 4" {
		t.Errorf("clean = %q", got)
	}
}

func TestParseUnderlay(t *testing.T) {
	hs, err := parseUnderlay("rbm-a=10.238.0.1,rbm-b=10.238.0.2")
	if err != nil || len(hs) != 2 || hs[0] != (underlayHost{"rbm-a", "10.238.0.1"}) || hs[1] != (underlayHost{"rbm-b", "10.238.0.2"}) {
		t.Fatalf("parseUnderlay: %+v, %v", hs, err)
	}
	if hs, err := parseUnderlay(""); err != nil || hs != nil {
		t.Errorf("an empty -underlay: %+v, %v; want none", hs, err)
	}
	for _, bad := range []string{"rbm-a=10.238.0.1", "rbm-a=10.238.0.1,rbm-b", "rbm-a=x,rbm-b=10.238.0.2", "=10.238.0.1,b=10.238.0.2", "a=1.1.1.1,b=2.2.2.2,c=3.3.3.3"} {
		if _, err := parseUnderlay(bad); err == nil {
			t.Errorf("parseUnderlay(%q) was taken", bad)
		}
	}
	o := options{hosts: hs}
	if o.on(0).netns != "rbm-a" || o.on(1).netns != "rbm-b" || (options{}).on(1).netns != "" {
		t.Errorf("options.on: %q %q", o.on(0).netns, o.on(1).netns)
	}
}
