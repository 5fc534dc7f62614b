package labels

import "testing"

func TestFieldValue(t *testing.T) {
	obj := map[string]any{
		"metadata": map[string]any{"name": "web"},
		"spec":     map[string]any{"replicas": float64(3), "nodeName": nil},
	}
	for _, c := range []struct {
		path []string
		want string
	}{
		{[]string{"metadata", "name"}, "web"},
		{[]string{"spec", "replicas"}, "3"},
		{[]string{"spec", "nodeName"}, ""},
		{[]string{"status", "phase"}, ""},
		{[]string{"metadata", "name", "deeper"}, ""},
		{[]string{"spec"}, `{"nodeName":null,"replicas":3}`},
	} {
		if got := FieldValue(obj, c.path); got != c.want {
			t.Errorf("FieldValue(%v) = %q, want %q", c.path, got, c.want)
		}
	}
}
