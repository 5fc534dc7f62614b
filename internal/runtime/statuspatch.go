package runtime

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// StatusPatch returns a JSON patch (RFC 6902) for a status subresource that turns the status
// before into after, for the top-level fields named in fields and for every condition whose
// type changed ("conditions" in fields), or nil when nothing changes.
//
// Its test operations are its preconditions: the object's uid, the value each written field
// and each written condition had when it was read, and the value each field in guards had.
// So the write fails with a 409 only when another writer changed the same field or condition,
// or a guard, since it was read: the writes of other fields and other conditions by other
// components never conflict with it, and nothing is lost. New conditions are appended
// (the server shows a missing conditions list as empty to a status JSON patch); changed ones
// are replaced and gone ones removed at the index they were read at, after a test of that
// index, so a list shifted meanwhile is a conflict rather than a wrong write.
func StatusPatch(uid string, before, after any, fields, guards []string) ([]byte, error) {
	b, err := fieldsOf(before)
	if err != nil {
		return nil, err
	}
	a, err := fieldsOf(after)
	if err != nil {
		return nil, err
	}
	var tests, sets, removes, appends []jsonOp
	for _, f := range fields {
		if f == "conditions" {
			t, s, r, ap, err := conditionOps(b[f], a[f])
			if err != nil {
				return nil, err
			}
			tests, sets, removes, appends = append(tests, t...), append(sets, s...), append(removes, r...), append(appends, ap...)
			continue
		}
		bv, av := b[f], a[f]
		if bytes.Equal(bv, av) {
			continue
		}
		path := "/status/" + f
		tests = append(tests, jsonOp{Op: "test", Path: path, Value: orNull(bv)})
		if av == nil {
			sets = append(sets, jsonOp{Op: "remove", Path: path})
		} else {
			sets = append(sets, jsonOp{Op: "add", Path: path, Value: av})
		}
	}
	if len(sets)+len(removes)+len(appends) == 0 {
		return nil, nil
	}
	ops := []jsonOp{{Op: "test", Path: "/metadata/uid", Value: mustJSON(uid)}}
	for _, g := range guards {
		ops = append(ops, jsonOp{Op: "test", Path: "/status/" + g, Value: orNull(b[g])})
	}
	ops = append(ops, tests...)
	ops = append(ops, sets...)
	ops = append(ops, removes...)
	ops = append(ops, appends...)
	return json.Marshal(ops)
}

type jsonOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

// MarshalJSON keeps "value": null on tests of absent fields (omitempty would drop it).
func (o jsonOp) MarshalJSON() ([]byte, error) {
	if o.Op == "remove" {
		return json.Marshal(map[string]string{"op": o.Op, "path": o.Path})
	}
	return json.Marshal(struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}{o.Op, o.Path, orNull(o.Value)})
}

// conditionOps compares the conditions lists before and after by type.
func conditionOps(before, after json.RawMessage) (tests, sets, removes, appends []jsonOp, err error) {
	var bc, ac []v1alpha1.Condition
	if len(before) > 0 {
		if err = json.Unmarshal(before, &bc); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("status.conditions: %w", err)
		}
	}
	if len(after) > 0 {
		if err = json.Unmarshal(after, &ac); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("status.conditions: %w", err)
		}
	}
	var gone []int
	for i, c := range bc {
		path := fmt.Sprintf("/status/conditions/%d", i)
		n := v1alpha1.FindCondition(ac, c.Type)
		switch {
		case n == nil:
			tests = append(tests, jsonOp{Op: "test", Path: path, Value: mustJSON(c)})
			gone = append(gone, i)
		case !reflect.DeepEqual(*n, c):
			tests = append(tests, jsonOp{Op: "test", Path: path, Value: mustJSON(c)})
			sets = append(sets, jsonOp{Op: "replace", Path: path, Value: mustJSON(*n)})
		}
	}
	// Highest index first, so each removal leaves the indexes of the next ones alone.
	sort.Sort(sort.Reverse(sort.IntSlice(gone)))
	for _, i := range gone {
		removes = append(removes, jsonOp{Op: "remove", Path: fmt.Sprintf("/status/conditions/%d", i)})
	}
	for _, c := range ac {
		if v1alpha1.FindCondition(bc, c.Type) == nil {
			appends = append(appends, jsonOp{Op: "add", Path: "/status/conditions/-", Value: mustJSON(c)})
		}
	}
	return tests, sets, removes, appends, nil
}

func fieldsOf(status any) (map[string]json.RawMessage, error) {
	raw, err := json.Marshal(status)
	if err != nil {
		return nil, err
	}
	m := map[string]json.RawMessage{}
	if string(raw) == "null" {
		return m, nil
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("a status must be a JSON object: %w", err)
	}
	return m, nil
}

func orNull(v json.RawMessage) json.RawMessage {
	if len(v) == 0 {
		return json.RawMessage("null")
	}
	return v
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain data types are marshalled here
	}
	return b
}
