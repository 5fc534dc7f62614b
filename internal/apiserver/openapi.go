package apiserver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"sync"

	openapiv2 "github.com/google/gnostic-models/openapiv2"
	"google.golang.org/protobuf/proto"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// OpenAPI documents of every kind, generated from the Go types by reflection: /openapi/v3 (the
// discovery document and one document per group-version) and /openapi/v2. kubectl reads them
// for `explain`, and to learn that the server validates fields itself (the fieldValidation
// parameter of PATCH), so `kubectl apply` needs no --validate=false.

// servedGroupVersions are the group-versions the API serves: Rakhsh's own, and Deckhouse's,
// whose objects are the same (see deckhouse.go).
var servedGroupVersions = []struct{ group, version string }{
	{v1alpha1.Group, v1alpha1.Version},
	{DeckhouseGroup, DeckhouseVersion},
}

// openAPIBuilder turns Go types into OpenAPI schemas under one reference prefix.
type openAPIBuilder struct {
	refPrefix string
	defs      map[string]any
	v2        bool // Swagger 2.0 (no anyOf, bodies as parameters)
}

var (
	timeType     = reflect.TypeOf(v1alpha1.Time{})
	quantityType = reflect.TypeOf(v1alpha1.Quantity(""))
	rawType      = reflect.TypeOf(json.RawMessage(nil))
)

func defName(t reflect.Type) string {
	return "io.rakhsh.virtualization.v1alpha1." + t.Name()
}

func (b *openAPIBuilder) schema(t reflect.Type) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case quantityType:
		if b.v2 {
			return map[string]any{"type": "string", "format": "int-or-string"}
		}
		return map[string]any{"x-kubernetes-int-or-string": true, "anyOf": []any{map[string]any{"type": "integer"}, map[string]any{"type": "string"}}}
	case rawType:
		return map[string]any{"x-kubernetes-preserve-unknown-fields": true}
	}
	switch t.Kind() {
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint64:
		return map[string]any{"type": "integer", "format": "int64"}
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return map[string]any{"type": "integer", "format": "int32"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "format": "byte"}
		}
		return map[string]any{"type": "array", "items": b.schema(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": b.schema(t.Elem())}
	case reflect.Interface:
		return map[string]any{"x-kubernetes-preserve-unknown-fields": true}
	case reflect.Struct:
		name := defName(t)
		if _, done := b.defs[name]; !done {
			b.defs[name] = nil // recursion guard
			props := map[string]any{}
			b.properties(t, props)
			b.defs[name] = map[string]any{"type": "object", "properties": props}
		}
		return map[string]any{"$ref": b.refPrefix + name}
	}
	return map[string]any{}
}

// properties adds the JSON fields of struct t, flattening embedded and inline ones.
func (b *openAPIBuilder) properties(t reflect.Type, props map[string]any) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if (f.Anonymous && name == "") || strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				b.properties(ft, props)
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		props[name] = b.schema(f.Type)
	}
}

type openAPIDocs struct {
	once    sync.Once
	v3root  []byte
	v3gv    map[string][]byte // by "apis/GROUP/VERSION"
	v2      []byte
	v2proto []byte // v2 as protobuf (gnostic), what older kubectl versions ask for
	v2err   error  // why v2 could not be turned into protobuf (a bug: see TestOpenAPI)
}

var openAPI openAPIDocs

func (d *openAPIDocs) build() {
	d.v3gv = map[string][]byte{}
	paths := map[string]any{}
	for _, gv := range servedGroupVersions {
		b := &openAPIBuilder{refPrefix: "#/components/schemas/", defs: map[string]any{}}
		doc := map[string]any{"openapi": "3.0.0", "info": map[string]any{"title": "Rakhsh", "version": Version},
			"paths": kindPaths(b, gv.group, gv.version), "components": map[string]any{"schemas": b.defs}}
		data, _ := json.Marshal(doc)
		sum := sha256.Sum256(data)
		key := "apis/" + gv.group + "/" + gv.version
		d.v3gv[key] = data
		paths[key] = map[string]any{"serverRelativeURL": "/openapi/v3/" + key + "?hash=" + strings.ToUpper(hex.EncodeToString(sum[:]))}
	}
	d.v3root, _ = json.Marshal(map[string]any{"paths": paths})
	b := &openAPIBuilder{refPrefix: "#/definitions/", defs: map[string]any{}, v2: true}
	v2paths := map[string]any{}
	for _, gv := range servedGroupVersions {
		for p, item := range kindPaths(b, gv.group, gv.version) {
			v2paths[p] = item
		}
	}
	d.v2, _ = json.Marshal(map[string]any{"swagger": "2.0", "info": map[string]any{"title": "Rakhsh", "version": Version},
		"paths": v2paths, "definitions": b.defs})
	if doc, err := openapiv2.ParseDocument(d.v2); err == nil {
		d.v2proto, _ = proto.Marshal(doc)
	} else {
		d.v2err = err
	}
}

// kindPaths adds every kind's schema (marked with its group-version-kind) and REST paths.
func kindPaths(b *openAPIBuilder, group, version string) map[string]any {
	paths := map[string]any{}
	for _, st := range registry.All() {
		k := st.Info
		t := reflect.TypeOf(st.New()).Elem()
		ref := b.schema(t)
		gvk := map[string]any{"group": group, "version": version, "kind": k.Kind}
		if def, ok := b.defs[defName(t)].(map[string]any); ok {
			// One definition per Go type; the same type under both groups lists both.
			list, _ := def["x-kubernetes-group-version-kind"].([]any)
			def["x-kubernetes-group-version-kind"] = append(list, gvk)
		}
		ok := map[string]any{"200": map[string]any{"description": "OK", "content": map[string]any{"application/json": map[string]any{"schema": ref}}}}
		if b.v2 {
			ok = map[string]any{"200": map[string]any{"description": "OK", "schema": ref}}
		}
		op := func(action string, params ...string) map[string]any {
			o := map[string]any{"operationId": action + k.Kind + strings.ReplaceAll(group, ".", ""), "x-kubernetes-action": action,
				"x-kubernetes-group-version-kind": gvk, "responses": ok}
			var ps []any
			for _, p := range params {
				if b.v2 {
					ps = append(ps, map[string]any{"name": p, "in": "query", "type": "string"})
				} else {
					ps = append(ps, map[string]any{"name": p, "in": "query", "schema": map[string]any{"type": "string"}})
				}
			}
			if action == "post" || action == "put" || action == "patch" {
				if b.v2 {
					ps = append(ps, map[string]any{"name": "body", "in": "body", "required": true, "schema": ref})
				} else {
					o["requestBody"] = map[string]any{"content": map[string]any{"application/json": map[string]any{"schema": ref}}}
				}
			}
			if ps != nil {
				o["parameters"] = ps
			}
			return o
		}
		base := "/apis/" + group + "/" + version
		coll, item := base+"/"+k.Resource, base+"/"+k.Resource+"/{name}"
		if k.Namespaced {
			coll, item = base+"/namespaces/{namespace}/"+k.Resource, base+"/namespaces/{namespace}/"+k.Resource+"/{name}"
		}
		paths[coll] = map[string]any{"get": op("list", "labelSelector", "limit", "continue", "watch", "resourceVersion"),
			"post": op("post", "fieldValidation", "dryRun")}
		paths[item] = map[string]any{"get": op("get"), "put": op("put", "fieldValidation", "dryRun"),
			"patch": op("patch", "fieldValidation", "dryRun"), "delete": op("delete", "gracePeriodSeconds")}
	}
	return paths
}

func (s *Server) serveOpenAPIV3(w http.ResponseWriter, r *http.Request) {
	openAPI.once.Do(openAPI.build)
	p := strings.Trim(strings.TrimPrefix(r.URL.Path, "/openapi/v3"), "/")
	if p == "" {
		writeRaw(w, http.StatusOK, openAPI.v3root)
		return
	}
	data, ok := openAPI.v3gv[p]
	if !ok {
		s.notFoundPath(w, r)
		return
	}
	writeRaw(w, http.StatusOK, data)
}

func (s *Server) serveOpenAPIV2(w http.ResponseWriter, r *http.Request) {
	openAPI.once.Do(openAPI.build)
	if a := r.Header.Get("Accept"); strings.Contains(a, "protobuf") && len(openAPI.v2proto) > 0 {
		// client-go asks for the gnostic protobuf form.
		w.Header().Set("Content-Type", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
		_, _ = w.Write(openAPI.v2proto)
		return
	}
	writeRaw(w, http.StatusOK, openAPI.v2)
}
