package suggest

import "testing"

func TestClosest(t *testing.T) {
	for _, c := range []struct {
		s    string
		list []string
		want string
	}{
		{"memroy", []string{"cpu", "memory", "runPolicy"}, "memory"},
		{"Runing", []string{"Running", "Stopped"}, "Running"},
		{"virtualmachin", []string{"virtualmachine", "virtualdisk"}, "virtualmachine"},
		{"xyz", []string{"memory", "cpu"}, ""},
		{"", nil, ""},
	} {
		if got := Closest(c.s, c.list); got != c.want {
			t.Errorf("Closest(%q) = %q, want %q", c.s, got, c.want)
		}
	}
	if d := Distance("kitten", "sitting"); d != 3 {
		t.Errorf("Distance = %d", d)
	}
}

func FuzzDistance(f *testing.F) {
	f.Add("memroy", "memory")
	f.Fuzz(func(t *testing.T, a, b string) {
		if len(a) > 200 || len(b) > 200 {
			return
		}
		d := Distance(a, b)
		if d < 0 || d > max(len(a), len(b)) || d != Distance(b, a) || (d == 0) != (a == b) {
			t.Fatalf("Distance(%q, %q) = %d", a, b, d)
		}
	})
}
