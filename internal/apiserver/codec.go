package apiserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/yamlcheck"
)

// readBody reads a request body of at most MaxBodyBytes, converting YAML to JSON when the
// content type says YAML.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	data, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errs.New(errs.ErrTooLarge, "request body is larger than the %d MiB limit", MaxBodyBytes>>20)
		}
		return nil, errs.New(errs.ErrBadRequest, "reading request body: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errs.New(errs.ErrBadRequest, "the request body is empty: send a JSON object")
	}
	ct := r.Header.Get("Content-Type")
	if strings.Contains(ct, "yaml") {
		return yamlBodyToJSON(data)
	}
	return data, nil
}

// MaxConvertedBytes bounds the JSON a YAML request body converts to. Without aliases (which
// are refused) JSON is at most a small factor larger than its YAML (quotes, brackets), so
// this only stops what the alias check missed.
const MaxConvertedBytes = 2 * MaxBodyBytes

// MaxYAMLNodes bounds the nodes of a YAML request body (a VM with every field set has a few
// hundred).
const MaxYAMLNodes = 100_000

// yamlNodeBound counts the bytes that may separate YAML nodes: flow separators and
// collection starts, block sequence dashes, mapping colons and line ends.
func yamlNodeBound(data []byte) int {
	n := 0
	for _, b := range data {
		switch b {
		case ',', '[', '{', '-', ':', '\n':
			n++
		}
	}
	return n
}

// yamlBodyToJSON converts a YAML request body to JSON. Aliases (*name) are refused before
// anything is expanded: a body of a few MiB whose aliases repeat a large anchored node would
// expand to gigabytes in the conversion. Clients that like anchors expand them locally
// (rakhsh apply and kubectl send JSON).
func yamlBodyToJSON(data []byte) ([]byte, error) {
	// Parsing costs a few hundred bytes per node: a body of 3 MiB of "[1,1,1,..." would take
	// hundreds of MB. Every node but the first is preceded by one of these bytes, so their
	// count bounds the nodes without parsing.
	if n := yamlNodeBound(data); n > MaxYAMLNodes {
		return nil, errs.New(errs.ErrTooLarge, "the YAML request body has up to %d items, more than the limit of %d: send JSON, or split the object", n, MaxYAMLNodes)
	}
	rep, err := yamlcheck.Inspect(data, MaxConvertedBytes)
	if err != nil {
		if errors.Is(err, yamlcheck.ErrRecursive) {
			return nil, errs.New(errs.ErrBadRequest, "YAML aliases are not accepted in request bodies: %v", err)
		}
		return nil, errs.New(errs.ErrBadRequest, "malformed YAML: %v", err)
	}
	if rep.Aliases > 0 {
		return nil, errs.New(errs.ErrBadRequest, "YAML aliases are not accepted in request bodies (found %d, the first %s): expand them, or send JSON", rep.Aliases, rep.First)
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, errs.New(errs.ErrBadRequest, "malformed YAML: %v", err)
	}
	if len(j) > MaxConvertedBytes {
		return nil, errs.New(errs.ErrTooLarge, "the YAML request body converts to %d bytes of JSON, more than the %d MiB limit", len(j), MaxConvertedBytes>>20)
	}
	return j, nil
}

// DecodeObject turns a JSON document into a typed object of the strategy's kind. It checks
// apiVersion and kind, converts the Deckhouse apiVersion 1:1, rejects fields the kind does not
// have (naming each) and values of the wrong type. The result has apiVersion and kind set to
// Rakhsh's.
func DecodeObject(data []byte, st *registry.Strategy) (v1alpha1.Object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, errs.New(errs.ErrBadRequest, "malformed JSON: %s", jsonErrorText(data, err))
	}
	if dec.More() {
		return nil, errs.New(errs.ErrBadRequest, "malformed JSON: unexpected data after the object")
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return nil, errs.New(errs.ErrBadRequest, "the request body must be a JSON object, not %s", jsonTypeName(doc))
	}
	kind := st.Info.Kind
	if k, present := m["kind"]; present {
		ks, _ := k.(string)
		if ks != kind {
			return nil, errs.New(errs.ErrBadRequest, "the object's kind %q does not match the resource %s (kind %s)", fmt.Sprint(k), st.Info.Resource, kind)
		}
	}
	if av, present := m["apiVersion"]; present {
		avs, _ := av.(string)
		if !acceptedAPIVersion(avs, kind) {
			return nil, errs.New(errs.ErrBadRequest, "apiVersion %q is not supported for %s: use %s (or %s)", fmt.Sprint(av), kind, v1alpha1.APIVersion, v1alpha1.DeckhouseAPI)
		}
	}
	var fe errs.FieldErrors
	fe = append(fe, registry.CheckUnknownFields(m, reflect.TypeOf(st.New()).Elem())...)
	obj := st.New()
	if err := json.Unmarshal(data, obj); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			field := ute.Field
			if field == "" {
				field = "(object)"
			}
			fe = append(fe, errs.FieldError{Field: field, Type: errs.FieldValueInvalid,
				Message: fmt.Sprintf("Invalid value: expected %s, got JSON %s", goTypeName(ute.Type), ute.Value)})
		} else {
			fe = append(fe, errs.FieldError{Type: errs.FieldValueInvalid, Message: err.Error()})
		}
	}
	if len(fe) > 0 {
		name := ""
		if md, ok := m["metadata"].(map[string]any); ok {
			name, _ = md["name"].(string)
		}
		return nil, errs.NewInvalid(kind, name, fe)
	}
	setTypeMeta(obj, kind)
	return obj, nil
}

func acceptedAPIVersion(av, kind string) bool {
	switch av {
	case v1alpha1.APIVersion, v1alpha1.DeckhouseAPI:
		return true
	case v1alpha1.CoreAPIVersion:
		return kind == "Secret" || kind == "Event"
	}
	return false
}

// setTypeMeta sets the object's apiVersion and kind to Rakhsh's.
func setTypeMeta(obj v1alpha1.Object, kind string) {
	v := reflect.ValueOf(obj).Elem()
	f := v.FieldByName("TypeMeta")
	if f.IsValid() {
		f.Set(reflect.ValueOf(v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: kind}))
	}
}

func goTypeName(t reflect.Type) string {
	if t == nil {
		return "a value"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

func jsonTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "a list"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "an object"
}

// jsonErrorText gives the line and column of a syntax error.
func jsonErrorText(data []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		off := int(se.Offset)
		if off > len(data) {
			off = len(data)
		}
		line := 1 + bytes.Count(data[:off], []byte("\n"))
		col := off - bytes.LastIndexByte(data[:off], '\n')
		return fmt.Sprintf("%v (line %d, column %d)", se, line, col)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "unexpected end of input"
	}
	return err.Error()
}

var metadataOpen = []byte(`"metadata":{`)

// withRV returns the stored JSON with metadata.resourceVersion set to rev. Stored values are
// encoded by the server without a resourceVersion, and metadata always follows apiVersion and
// kind, so this is a splice, not a re-encode.
func withRV(stored []byte, rev, created int64) []byte {
	i := bytes.Index(stored, metadataOpen)
	if i < 0 {
		return stored
	}
	i += len(metadataOpen)
	rv := revFields(rev, created)
	out := make([]byte, 0, len(stored)+len(rv)+1)
	out = append(out, stored[:i]...)
	out = append(out, rv...)
	if stored[i] != '}' {
		out = append(out, ',')
	}
	out = append(out, stored[i:]...)
	return out
}

// writeWithRV writes what withRV returns straight into w, without building a copy.
func writeWithRV(w interface {
	Write([]byte) (int, error)
	WriteString(string) (int, error)
}, stored []byte, rev, created int64) {
	i := bytes.Index(stored, metadataOpen)
	if i < 0 {
		_, _ = w.Write(stored)
		return
	}
	i += len(metadataOpen)
	_, _ = w.Write(stored[:i])
	_, _ = w.WriteString(revFields(rev, created))
	if stored[i] != '}' {
		_, _ = w.WriteString(`,`)
	}
	_, _ = w.Write(stored[i:])
}

// revFields is the metadata the server adds to a stored object: its resourceVersion and,
// when known, its creationRevision (the store revision that created it, which orders
// objects by creation exactly).
func revFields(rev, created int64) string {
	s := `"resourceVersion":"` + strconv.FormatInt(rev, 10) + `"`
	if created > 0 {
		s += `,"creationRevision":"` + strconv.FormatInt(created, 10) + `"`
	}
	return s
}

// decodeStored reads a stored value into a typed object and sets its resourceVersion.
func decodeStored(st *registry.Strategy, data []byte, rev, created int64) (v1alpha1.Object, error) {
	obj := st.New()
	if err := json.Unmarshal(data, obj); err != nil {
		return nil, fmt.Errorf("decoding stored %s: %w", st.Info.Kind, err)
	}
	m := obj.GetObjectMeta()
	m.ResourceVersion = strconv.FormatInt(rev, 10)
	m.CreationRevision = ""
	if created > 0 {
		m.CreationRevision = strconv.FormatInt(created, 10)
	}
	return obj, nil
}
