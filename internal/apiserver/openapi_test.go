package apiserver

import (
	"encoding/json"
	"testing"
)

// TestOpenAPI: the documents parse, name every kind with its group-version-kind under both
// served groups, and v2 converts to the protobuf form older kubectl versions read.
func TestOpenAPI(t *testing.T) {
	var d openAPIDocs
	d.build()
	if d.v2err != nil || len(d.v2proto) == 0 {
		t.Fatalf("OpenAPI v2 does not convert to protobuf: %v", d.v2err)
	}
	var root struct {
		Paths map[string]struct {
			URL string `json:"serverRelativeURL"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(d.v3root, &root); err != nil {
		t.Fatal(err)
	}
	for _, gv := range servedGroupVersions {
		key := "apis/" + gv.group + "/" + gv.version
		if root.Paths[key].URL == "" {
			t.Fatalf("v3 root lacks %s: %s", key, d.v3root)
		}
		var doc struct {
			Paths      map[string]map[string]map[string]any `json:"paths"`
			Components struct {
				Schemas map[string]map[string]any `json:"schemas"`
			} `json:"components"`
		}
		if err := json.Unmarshal(d.v3gv[key], &doc); err != nil {
			t.Fatal(err)
		}
		vm := doc.Components.Schemas["io.rakhsh.virtualization.v1alpha1.VirtualMachine"]
		props, _ := vm["properties"].(map[string]any)
		for _, f := range []string{"apiVersion", "kind", "metadata", "spec", "status"} {
			if props[f] == nil {
				t.Errorf("%s: VirtualMachine schema lacks %s", key, f)
			}
		}
		patch := doc.Paths["/apis/"+gv.group+"/"+gv.version+"/namespaces/{namespace}/virtualmachines/{name}"]["patch"]
		params, _ := patch["parameters"].([]any)
		found := false
		for _, p := range params {
			pm, _ := p.(map[string]any)
			found = found || pm["name"] == "fieldValidation"
		}
		if gvk, _ := patch["x-kubernetes-group-version-kind"].(map[string]any); !found || gvk["kind"] != "VirtualMachine" || gvk["group"] != gv.group {
			t.Errorf("%s: the PATCH of virtualmachines lacks fieldValidation or its group-version-kind: %v", key, patch)
		}
	}
}
