package cli

import (
	"strings"
	"testing"
)

func TestParseLabelChanges(t *testing.T) {
	got, err := parseLabelChanges([]string{"a=1", "b-", "c=", "x/y=z=w"})
	if err != nil {
		t.Fatal(err)
	}
	want := []labelChange{{key: "a", value: "1"}, {key: "b", remove: true}, {key: "c"}, {key: "x/y", value: "z=w"}}
	if len(got) != len(want) {
		t.Fatalf("%+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%d: %+v, want %+v", i, got[i], want[i])
		}
	}
	for arg, msg := range map[string]string{"plain": "neither KEY=VALUE", "=v": "empty label key", "-": "neither"} {
		if _, err := parseLabelChanges([]string{arg}); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", arg, err, msg)
		}
	}
	if _, err := parseLabelChanges([]string{"a=1", "a-"}); err == nil || !strings.Contains(err.Error(), "changed twice") {
		t.Errorf("duplicate: %v", err)
	}
}

// FuzzParseLabelChanges: any argument is either parsed into a non-empty key or refused.
func FuzzParseLabelChanges(f *testing.F) {
	for _, s := range []string{"a=b", "a-", "-", "=", "", "k=v=w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		cs, err := parseLabelChanges([]string{arg})
		if err != nil {
			return
		}
		if len(cs) != 1 || cs[0].key == "" {
			t.Fatalf("%q parsed to %+v", arg, cs)
		}
	})
}
