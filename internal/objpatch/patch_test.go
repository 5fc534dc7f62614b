package objpatch

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/errs"
)

func TestMerge(t *testing.T) {
	// The examples of RFC 7386, section 3.
	cases := []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	}
	for _, c := range cases {
		var target, patch, want any
		_ = json.Unmarshal([]byte(c.target), &target)
		_ = json.Unmarshal([]byte(c.patch), &patch)
		_ = json.Unmarshal([]byte(c.want), &want)
		got := Merge(target, patch)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("merge %s with %s = %v, want %s", c.target, c.patch, got, c.want)
		}
	}
}

func TestStrategic(t *testing.T) {
	cur := `{"status":{"phase":"Running","conditions":[{"type":"A","status":"True"},{"type":"B","status":"False","reason":"x"},{"type":"C","status":"True"}]}}`
	cases := []struct{ patch, want string }{
		// a writer of B leaves A and C alone, and its condition replaces B whole
		{`{"status":{"conditions":[{"type":"B","status":"True"}]}}`,
			`{"status":{"phase":"Running","conditions":[{"type":"A","status":"True"},{"type":"B","status":"True"},{"type":"C","status":"True"}]}}`},
		// new types are appended; other fields merge as in a merge patch
		{`{"status":{"phase":"Stopped","conditions":[{"type":"D","status":"Unknown"}]}}`,
			`{"status":{"phase":"Stopped","conditions":[{"type":"A","status":"True"},{"type":"B","status":"False","reason":"x"},{"type":"C","status":"True"},{"type":"D","status":"Unknown"}]}}`},
		// $patch: delete removes one type; deleting a missing type is no error
		{`{"status":{"conditions":[{"type":"A","$patch":"delete"},{"type":"Z","$patch":"delete"}]}}`,
			`{"status":{"phase":"Running","conditions":[{"type":"B","status":"False","reason":"x"},{"type":"C","status":"True"}]}}`},
		// null still removes the whole list
		{`{"status":{"conditions":null}}`, `{"status":{"phase":"Running"}}`},
		// an empty list changes nothing
		{`{"status":{"conditions":[]}}`, cur},
	}
	for _, c := range cases {
		var target, patch, want any
		_ = json.Unmarshal([]byte(cur), &target)
		_ = json.Unmarshal([]byte(c.patch), &patch)
		_ = json.Unmarshal([]byte(c.want), &want)
		got, err := Strategic(target, patch)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("strategic merge of %s = %v, %v; want %s", c.patch, got, err, c.want)
		}
	}
	// Lists other than conditions are replaced whole, as in a merge patch.
	var target, patch any
	_ = json.Unmarshal([]byte(`{"spec":{"networks":[{"type":"Main"},{"type":"Network"}]}}`), &target)
	_ = json.Unmarshal([]byte(`{"spec":{"networks":[{"type":"Main"}]}}`), &patch)
	if got, err := Strategic(target, patch); err != nil || len(got.(map[string]any)["spec"].(map[string]any)["networks"].([]any)) != 1 {
		t.Errorf("a list other than conditions was merged: %v, %v", got, err)
	}
	for patch, msg := range map[string]string{
		`{"status":{"conditions":[{"status":"True"}]}}`:               "status.conditions[0] is not a condition with a type",
		`{"status":{"conditions":["A"]}}`:                             "status.conditions[0] is not a condition with a type",
		`{"status":{"conditions":[{"type":"A","$patch":"replace"}]}}`: `status.conditions[0]: $patch replace is not supported`,
		`{"status":{"$setElementOrder/conditions":[{"type":"A"}]}}`:   `"$setElementOrder/conditions" at status.$setElementOrder/conditions is not supported`,
		`{"$retainKeys":["spec"]}`:                                    `"$retainKeys"`,
	} {
		var target, p any
		_ = json.Unmarshal([]byte(cur), &target)
		_ = json.Unmarshal([]byte(patch), &p)
		_, err := Strategic(target, p)
		if err == nil || !errors.Is(err, errs.ErrBadRequest) || !strings.Contains(err.Error(), msg) {
			t.Errorf("strategic merge of %s: error %v, want a bad request saying %s", patch, err, msg)
		}
	}
}
