// Package registry holds the per-kind strategies of the API server: how an object of each kind
// is created empty, defaulted, validated and checked on update. Each kind registers itself
// from its own file with register; the API server looks kinds up with ByResource and ByKind.
package registry

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/suggest"
)

// Strategy is how the API server treats one kind.
type Strategy struct {
	Info *v1alpha1.KindInfo
	// New returns an empty object of the kind (a pointer to the struct).
	New func() v1alpha1.Object
	// Default fills in defaults in place. It may be nil.
	Default func(obj v1alpha1.Object)
	// Finalizers are put on every new object of the kind by the server at create, so that no
	// controller has to add them in a second write that races the object's first uses.
	Finalizers []string
	// Validate checks the whole object (spec and everything but metadata, which the server
	// checks itself) and returns one error per bad field. It may be nil.
	Validate func(obj v1alpha1.Object) errs.FieldErrors
	// ValidateUpdate checks what may not change between old and obj (immutable fields).
	// It runs after Validate on updates. It may be nil.
	ValidateUpdate func(obj, old v1alpha1.Object) errs.FieldErrors
}

var (
	byResource = map[string]*Strategy{}
	byKind     = map[string]*Strategy{}
)

// register adds a kind; the kind must be listed in v1alpha1.Kinds.
func register(kind string, s Strategy) {
	info, ok := v1alpha1.KindByName(kind)
	if !ok {
		panic("registry: kind " + kind + " is not in v1alpha1.Kinds")
	}
	if _, dup := byKind[kind]; dup {
		panic("registry: kind " + kind + " registered twice")
	}
	s.Info = info
	if s.New == nil {
		panic("registry: kind " + kind + " has no New")
	}
	byResource[info.Resource] = &s
	byKind[kind] = &s
}

// typed is a kind's strategy written against its own type: registerTyped wraps its functions
// into a Strategy (whose functions take a v1alpha1.Object), and its New makes an empty *T.
// Each function may be nil, as in Strategy. Immutable, for a kind whose update check is only
// that some fields never change, stands for ValidateUpdate: it lists those fields of an object.
type typed[P v1alpha1.Object] struct {
	Finalizers     []string
	Default        func(obj P)
	Validate       func(obj P) errs.FieldErrors
	ValidateUpdate func(obj, old P) errs.FieldErrors
	Immutable      func(obj P) []immutableField
}

// immutableField is a field that cannot change once its object is created: its path and its
// value in one object (with the default a missing value stands for, where there is one).
type immutableField struct {
	path  string
	value any
}

// immutableUpdate is the ValidateUpdate of a kind whose fields (read from the new and from
// the old object) may not change: each change is reported by chkImmutable, in fields' order.
func immutableUpdate[P any](kind string, fields func(obj P) []immutableField) func(obj, old P) errs.FieldErrors {
	return func(obj, old P) errs.FieldErrors {
		var fe errs.FieldErrors
		was := fields(old)
		for i, f := range fields(obj) {
			chkImmutable(&fe, f.path, f.value, was[i].value, kind)
		}
		return fe
	}
}

// registerTyped registers the kind of P (a *T) with the functions of t.
func registerTyped[T any, P interface {
	*T
	v1alpha1.Object
}](kind string, t typed[P]) {
	s := Strategy{New: func() v1alpha1.Object { return P(new(T)) }, Finalizers: t.Finalizers}
	if t.Immutable != nil {
		if t.ValidateUpdate != nil {
			panic("registry: " + kind + " has both Immutable and ValidateUpdate")
		}
		t.ValidateUpdate = immutableUpdate(kind, t.Immutable)
	}
	if t.Default != nil {
		s.Default = func(obj v1alpha1.Object) { t.Default(obj.(P)) }
	}
	if t.Validate != nil {
		s.Validate = func(obj v1alpha1.Object) errs.FieldErrors { return t.Validate(obj.(P)) }
	}
	if t.ValidateUpdate != nil {
		s.ValidateUpdate = func(obj, old v1alpha1.Object) errs.FieldErrors { return t.ValidateUpdate(obj.(P), old.(P)) }
	}
	register(kind, s)
}

// ByResource returns the strategy of a REST resource name such as "virtualmachines".
func ByResource(resource string) (*Strategy, bool) {
	s, ok := byResource[resource]
	return s, ok
}

// ByKind returns the strategy of a kind such as "VirtualMachine".
func ByKind(kind string) (*Strategy, bool) {
	s, ok := byKind[kind]
	return s, ok
}

// All returns every registered strategy, sorted by kind.
func All() []*Strategy {
	out := make([]*Strategy, 0, len(byKind))
	for _, s := range byKind {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Info.Kind < out[j].Info.Kind })
	return out
}

var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// ValidateName checks that name is a DNS-1123 label (lower case letters, digits and '-',
// starting and ending with a letter or digit, at most 63 characters).
func ValidateName(name string) string {
	if name == "" {
		return "a name is required"
	}
	if len(name) > 63 {
		return fmt.Sprintf("must be no more than 63 characters (has %d)", len(name))
	}
	if !dns1123Label.MatchString(name) {
		return "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')"
	}
	return ""
}

var qualifiedNamePart = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
var labelValue = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)

// validQualifiedName checks a label or annotation key: [prefix/]name.
func validQualifiedName(k string) string {
	name := k
	if i := strings.LastIndex(k, "/"); i >= 0 {
		prefix := k[:i]
		name = k[i+1:]
		if prefix == "" || len(prefix) > 253 || !dnsSubdomain.MatchString(prefix) {
			return "the prefix part must be a DNS subdomain (e.g. example.com)"
		}
	}
	if name == "" || len(name) > 63 || !qualifiedNamePart.MatchString(name) {
		return "the name part must be at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
	}
	return ""
}

// ValidateMeta checks the metadata a client may set. namespaced says whether the kind lives
// in a project.
func ValidateMeta(m *v1alpha1.ObjectMeta, namespaced bool) errs.FieldErrors {
	var fe errs.FieldErrors
	if msg := ValidateName(m.Name); msg != "" {
		if m.Name == "" {
			fe.Required("metadata.name", msg)
		} else {
			fe.Invalid("metadata.name", m.Name, msg)
		}
	}
	if namespaced {
		if msg := ValidateName(m.Namespace); msg != "" {
			if m.Namespace == "" {
				fe.Required("metadata.namespace", "a project is required")
			} else {
				fe.Invalid("metadata.namespace", m.Namespace, msg)
			}
		}
	} else if m.Namespace != "" {
		fe.Forbidden("metadata.namespace", "this kind is cluster-scoped and has no project")
	}
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if msg := validQualifiedName(k); msg != "" {
			fe.Invalid("metadata.labels", k, msg)
		}
		if v := m.Labels[k]; len(v) > 63 || !labelValue.MatchString(v) {
			fe.Invalid("metadata.labels."+k, v, "a label value must be empty or at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
		}
	}
	total := 0
	for k, v := range m.Annotations {
		if msg := validQualifiedName(k); msg != "" {
			fe.Invalid("metadata.annotations", k, msg)
		}
		total += len(k) + len(v)
	}
	if total > 256*1024 {
		fe.Invalid("metadata.annotations", nil, "annotations may hold at most 256 KiB in total")
	}
	for i, f := range m.Finalizers {
		if msg := validQualifiedName(f); msg != "" {
			fe.Invalid(fmt.Sprintf("metadata.finalizers[%d]", i), f, msg)
		}
	}
	return fe
}

// CheckUnknownFields walks a decoded JSON document (maps, slices, scalars) against the Go type
// t and reports every key the type has no field for, with its dotted path. The API rejects
// such fields instead of dropping them.
func CheckUnknownFields(doc any, t reflect.Type) errs.FieldErrors {
	var fe errs.FieldErrors
	checkUnknown(doc, t, "", &fe, 0)
	return fe
}

var rawMessageType = reflect.TypeOf([]byte(nil))

func checkUnknown(doc any, t reflect.Type, path string, fe *errs.FieldErrors, depth int) {
	if depth > 64 {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch d := doc.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			if t == reflect.TypeOf(v1alpha1.Time{}) {
				return
			}
			fields := jsonFields(t)
			keys := make([]string, 0, len(d))
			for k := range d {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				ft, ok := fields[k]
				if !ok {
					known := make([]string, 0, len(fields))
					for f := range fields {
						known = append(known, f)
					}
					sort.Strings(known)
					fe.Unknown(join(path, k), suggest.Closest(k, known))
					continue
				}
				checkUnknown(d[k], ft, join(path, k), fe, depth+1)
			}
		case reflect.Map:
			for k, v := range d {
				checkUnknown(v, t.Elem(), join(path, k), fe, depth+1)
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			if t == rawMessageType || t.Elem().Kind() == reflect.Uint8 {
				return
			}
			for i, v := range d {
				checkUnknown(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i), fe, depth+1)
			}
		}
	}
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// jsonFields maps JSON keys to field types, flattening embedded structs without a name tag.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					m[k] = v
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	fieldCache.Store(t, m)
	return m
}
