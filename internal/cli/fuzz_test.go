package cli

import (
	"encoding/json"
	"testing"
)

// FuzzSplitManifests checks that any input splits without panicking, that every manifest has
// exactly one of Object and Err, that objects have a kind and encode as JSON again, and that
// documents are numbered in order.
func FuzzSplitManifests(f *testing.F) {
	f.Add([]byte("kind: VirtualMachine\nmetadata:\n  name: vm1\n"))
	f.Add([]byte("kind: A\n---\nkind: B\nmetadata: [\n---\n{kind: C}\n"))
	f.Add([]byte(`{"kind":"List","items":[{"kind":"VirtualDisk"},1]}`))
	f.Add([]byte("{\"kind\":\"A\"}\n{\"kind\":"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		ms := SplitManifests("fuzz", data)
		last := 0
		for i, m := range ms {
			if (m.Err == nil) == (m.Object == nil) {
				t.Fatalf("manifest %d: exactly one of Object and Err must be set: %+v", i, m)
			}
			if m.Index < last || m.Index < 1 {
				t.Fatalf("manifest %d: index %d after %d", i, m.Index, last)
			}
			last = m.Index
			if m.Line < 0 {
				t.Fatalf("manifest %d: line %d", i, m.Line)
			}
			if m.Object != nil {
				if k, _ := m.Object["kind"].(string); k == "" {
					t.Fatalf("manifest %d: object without kind: %v", i, m.Object)
				}
				b, err := json.Marshal(m.Object)
				if err != nil {
					t.Fatalf("manifest %d: does not encode: %v", i, err)
				}
				if _, err := decodeObject(b); err != nil {
					t.Fatalf("manifest %d: does not decode again: %v", i, err)
				}
			}
			_ = m.Where()
		}
	})
}
