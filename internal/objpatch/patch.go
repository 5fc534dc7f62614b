// Package objpatch holds what the API server's patches of stored objects are made of: RFC 7386
// JSON merge patches and the strategic merge patch that merges conditions lists by type, both
// on decoded JSON values, and the form of a stored object that a JSON patch of its status
// applies to. It imports nothing of Rakhsh but its error kinds, so that the API server, the
// fake client of the controllers' tests and other tests share one implementation.
package objpatch

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/rakhsh/rakhsh/internal/errs"
)

// Merge applies the RFC 7386 JSON merge patch patch to target and returns the result;
// target's maps may be changed in place.
func Merge(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = Merge(tm[k], v)
	}
	return tm
}

// Strategic applies a merge patch in which every list named "conditions" is merged
// by the conditions' "type", as Kubernetes merges list-map keys: each condition of the patch
// replaces the one of its type or is added; {"type": T, "$patch": "delete"} removes type T;
// conditions of other types stay. So a writer sends only the conditions it owns, and writers
// of different conditions of one object do not overwrite each other. Everything else merges
// as in Merge.
func Strategic(target, patch any) (any, error) {
	return strategicMerge(target, patch, "")
}

func strategicMerge(target, patch any, path string) (any, error) {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch, nil
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		p := k
		if path != "" {
			p = path + "." + k
		}
		if strings.HasPrefix(k, "$") {
			return nil, errs.New(errs.ErrBadRequest, "strategic merge patch: the directive %q at %s is not supported (only {\"$patch\": \"delete\"} in a conditions list)", k, p)
		}
		if v == nil {
			delete(tm, k)
			continue
		}
		if l, isList := v.([]any); isList && k == "conditions" {
			merged, err := mergeConditions(tm[k], l, p)
			if err != nil {
				return nil, err
			}
			tm[k] = merged
			continue
		}
		merged, err := strategicMerge(tm[k], v, p)
		if err != nil {
			return nil, err
		}
		tm[k] = merged
	}
	return tm, nil
}

// mergeConditions merges the patch's conditions into the current list by type, keeping the
// current order and appending new types.
func mergeConditions(current any, patch []any, path string) ([]any, error) {
	cur, _ := current.([]any)
	out := append([]any{}, cur...)
	typeOf := func(c any) string {
		m, _ := c.(map[string]any)
		t, _ := m["type"].(string)
		return t
	}
	for i, c := range patch {
		m, ok := c.(map[string]any)
		t := typeOf(c)
		if !ok || t == "" {
			return nil, errs.New(errs.ErrBadRequest, "strategic merge patch: %s[%d] is not a condition with a type", path, i)
		}
		del := false
		if d, has := m["$patch"]; has {
			if d != "delete" {
				return nil, errs.New(errs.ErrBadRequest, "strategic merge patch: %s[%d]: $patch %v is not supported (only \"delete\")", path, i, d)
			}
			del = true
		}
		at := -1
		for j, x := range out {
			if typeOf(x) == t {
				at = j
				break
			}
		}
		switch {
		case del && at >= 0:
			out = append(out[:at], out[at+1:]...)
		case del:
		case at >= 0:
			out[at] = m
		default:
			out = append(out, m)
		}
	}
	return out, nil
}

// WithStatusLists returns the object with an empty status and an empty status.conditions
// where they are missing, which the stored form leaves out. A JSON patch of a status
// subresource applies to this form, so a writer appends its first condition with
// "add /status/conditions/-" without testing that no other writer made the list first.
func WithStatusLists(obj []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, fmt.Errorf("the stored object is not a JSON object: %w", err)
	}
	var st map[string]json.RawMessage
	if raw, ok := m["status"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, fmt.Errorf("the stored status is not a JSON object: %w", err)
		}
	}
	if st == nil {
		st = map[string]json.RawMessage{}
	}
	if c, ok := st["conditions"]; ok && string(c) != "null" {
		if _, had := m["status"]; had {
			return obj, nil
		}
	}
	st["conditions"] = json.RawMessage("[]")
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	m["status"] = raw
	return json.Marshal(m)
}
