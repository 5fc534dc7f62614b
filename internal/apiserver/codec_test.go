package apiserver

import (
	"encoding/json"
	"errors"
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
