package apiserver

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
)

func TestWithRV(t *testing.T) {
	cases := map[string]string{
		`{"apiVersion":"a","kind":"K","metadata":{"name":"x"},"spec":{}}`: `{"apiVersion":"a","kind":"K","metadata":{"resourceVersion":"42","creationRevision":"7","name":"x"},"spec":{}}`,
		`{"apiVersion":"a","kind":"K","metadata":{}}`:                     `{"apiVersion":"a","kind":"K","metadata":{"resourceVersion":"42","creationRevision":"7"}}`,
	}
	for in, want := range cases {
		got := string(withRV([]byte(in), 42, 7))
		if got != want {
			t.Errorf("withRV(%s) = %s, want %s", in, got, want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("withRV produced invalid JSON %s", got)
		}
	}
}

func TestMergePatch(t *testing.T) {
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
		got := MergePatch(target, patch)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("merge %s with %s = %v, want %s", c.target, c.patch, got, c.want)
		}
	}
}

func TestStrategicMergePatch(t *testing.T) {
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
		got, err := StrategicMergePatch(target, patch)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("strategic merge of %s = %v, %v; want %s", c.patch, got, err, c.want)
		}
	}
	// Lists other than conditions are replaced whole, as in a merge patch.
	var target, patch any
	_ = json.Unmarshal([]byte(`{"spec":{"networks":[{"type":"Main"},{"type":"Network"}]}}`), &target)
	_ = json.Unmarshal([]byte(`{"spec":{"networks":[{"type":"Main"}]}}`), &patch)
	if got, err := StrategicMergePatch(target, patch); err != nil || len(got.(map[string]any)["spec"].(map[string]any)["networks"].([]any)) != 1 {
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
		_, err := StrategicMergePatch(target, p)
		if err == nil || !errors.Is(err, errs.ErrBadRequest) || !strings.Contains(err.Error(), msg) {
			t.Errorf("strategic merge of %s: error %v, want a bad request saying %s", patch, err, msg)
		}
	}
}

func TestDecodeObjectNamesUnknownAndMistypedFields(t *testing.T) {
	st, ok := registry.ByKind("Secret")
	if !ok {
		t.Fatal("Secret not registered")
	}
	_, err := DecodeObject([]byte(`{"kind":"Secret","metadata":{"name":"a","labelz":{}},"extra":{"x":1}}`), st)
	var inv *errs.InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("got %v, want Invalid", err)
	}
	fields := []string{}
	for _, c := range inv.Causes {
		fields = append(fields, c.Field)
	}
	if strings.Join(fields, ",") != "extra,metadata.labelz" {
		t.Fatalf("causes name %v, want extra and metadata.labelz", fields)
	}
	_, err = DecodeObject([]byte(`{"kind":"Secret","metadata":{"name":"a","labels":{"x":5}}}`), st)
	if !errors.As(err, &inv) || !strings.Contains(inv.Causes[0].Field, "labels") {
		t.Fatalf("mistyped label: got %v", err)
	}
	obj, err := DecodeObject([]byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"}}`), st)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(obj)
	if !strings.Contains(string(data), `"apiVersion":"virtualization.rakhsh.io/v1alpha1"`) {
		t.Fatalf("apiVersion not converted: %s", data)
	}
}

// FuzzDecodeObject feeds arbitrary documents to every kind's decoder, defaulting and
// validation: nothing may panic, defaulting must be idempotent, and what decodes must
// survive a round trip through the stored form.
func FuzzDecodeObject(f *testing.F) {
	f.Add([]byte(`{"kind":"VirtualMachine","metadata":{"name":"vm1","namespace":"default"},"spec":{"cpu":{"cores":1},"memory":{"size":"1Gi"}}}`), uint8(0))
	f.Add([]byte(`{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"VirtualDisk","metadata":{"name":"d"},"spec":{"persistentVolumeClaim":{"size":"10Gi"}}}`), uint8(3))
	f.Add([]byte(`{"kind":"Secret","metadata":{"name":"s"},"stringData":{"userData":"#cloud-config"}}`), uint8(7))
	f.Add([]byte(`{"metadata":{"name":"x","labels":{"a":"b"}},"spec":{"type":"HTTP"}}`), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		all := registry.All()
		st := all[int(which)%len(all)]
		obj, err := DecodeObject(data, st)
		if err != nil {
			return
		}
		if st.Default != nil {
			st.Default(obj)
			first, _ := json.Marshal(obj)
			st.Default(obj)
			second, _ := json.Marshal(obj)
			if string(first) != string(second) {
				t.Fatalf("%s defaulting is not idempotent:\n%s\n%s", st.Info.Kind, first, second)
			}
		}
		_ = registry.ValidateMeta(obj.GetObjectMeta(), st.Info.Namespaced)
		if st.Validate != nil {
			_ = st.Validate(obj)
		}
		stored, err := encodeStored(obj)
		if err != nil {
			t.Fatalf("encoding a decoded %s: %v", st.Info.Kind, err)
		}
		back, err := decodeStored(st, stored, 1, 1)
		if err != nil {
			t.Fatalf("decoding the stored form of %s: %v\n%s", st.Info.Kind, err, stored)
		}
		again, _ := encodeStored(back)
		if string(again) != string(stored) {
			t.Fatalf("%s stored form does not round trip:\n%s\n%s", st.Info.Kind, stored, again)
		}
	})
}

func TestWriteWithRVMatchesWithRV(t *testing.T) {
	for _, in := range []string{`{"apiVersion":"a","kind":"K","metadata":{"name":"x"},"spec":{}}`, `{"kind":"K","metadata":{}}`, `{"kind":"K"}`} {
		var b strings.Builder
		for _, created := range []int64{0, 3} {
			b.Reset()
			writeWithRV(&b, []byte(in), 7, created)
			if b.String() != string(withRV([]byte(in), 7, created)) {
				t.Errorf("writeWithRV(%s) = %s, withRV gives %s", in, b.String(), withRV([]byte(in), 7, created))
			}
		}
	}
}
