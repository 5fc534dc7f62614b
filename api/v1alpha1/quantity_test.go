package v1alpha1

import (
	"encoding/json"
	"testing"
)

func TestParseQuantity(t *testing.T) {
	good := map[string]int64{
		"0": 0, "1": 1, "1500": 1500, "1Ki": 1024, "512Mi": 512 << 20, "10Gi": 10 << 30, "1Ti": 1 << 40,
		"1k": 1000, "1M": 1000000, "1G": 1000000000, "1.5Gi": 3 << 29, "0.5Ki": 512, "100m": 1, "1500m": 2,
	}
	for in, want := range good {
		got, err := ParseQuantity(in)
		if err != nil || got != want {
			t.Errorf("ParseQuantity(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Gi", "-1Gi", "1e3", "1 Gi", "1GB", "abc", "1.2.3Mi", "+5", "9999999Ei", "0x10"} {
		if v, err := ParseQuantity(bad); err == nil {
			t.Errorf("ParseQuantity(%q) = %d, want an error", bad, v)
		}
	}
}

func TestBytesQuantityAndHuman(t *testing.T) {
	for n, want := range map[int64]Quantity{0: "0", 1024: "1Ki", 3 << 30: "3Gi", 1536: "1536", 5 << 20: "5Mi"} {
		if got := BytesQuantity(n); got != want {
			t.Errorf("BytesQuantity(%d) = %s, want %s", n, got, want)
		}
		if v, _ := want.Value(); v != n {
			t.Errorf("%s parses back to %d, want %d", want, v, n)
		}
	}
	for n, want := range map[int64]string{10: "10B", 1024: "1Ki", 1536: "1.5Ki", 10 << 30: "10Gi"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestQuantityJSON(t *testing.T) {
	var v struct{ Q Quantity }
	if err := json.Unmarshal([]byte(`{"Q": 2048}`), &v); err != nil || v.Q != "2048" {
		t.Fatalf("number: %q %v", v.Q, err)
	}
	if err := json.Unmarshal([]byte(`{"Q": "1Gi"}`), &v); err != nil || v.Q != "1Gi" {
		t.Fatalf("string: %q %v", v.Q, err)
	}
	if err := json.Unmarshal([]byte(`{"Q": true}`), &v); err == nil {
		t.Fatalf("a boolean quantity was accepted")
	}
}

func FuzzParseQuantity(f *testing.F) {
	for _, s := range []string{"1Gi", "0.5Mi", "100m", "12345", "7E"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseQuantity(s)
		if err != nil {
			return
		}
		if v < 0 {
			t.Fatalf("%q parsed to negative %d", s, v)
		}
		back, err := BytesQuantity(v).Value()
		if err != nil || back != v {
			t.Fatalf("%q = %d does not round trip through %q: %d %v", s, v, BytesQuantity(v), back, err)
		}
	})
}
