package runtime

import (
	"bytes"
	"encoding/json"
)

// OwnedPatch returns the JSON merge patch that turns before into after for the given
// top-level keys only (null for a key that after lacks), or nil when they are equal. Each
// writer of a status (scheduler, VM controller, node agent) patches only the fields it owns,
// so none overwrites another's.
func OwnedPatch(before, after []byte, keys []string) (map[string]any, error) {
	var b, a map[string]json.RawMessage
	if err := json.Unmarshal(before, &b); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(after, &a); err != nil {
		return nil, err
	}
	patch := map[string]any{}
	for _, k := range keys {
		av, aok := a[k]
		bv, bok := b[k]
		switch {
		case aok && (!bok || !bytes.Equal(av, bv)):
			patch[k] = av
		case !aok && bok:
			patch[k] = nil
		}
	}
	if len(patch) == 0 {
		return nil, nil
	}
	return patch, nil
}
