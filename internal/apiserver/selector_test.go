package apiserver

import (
	"net/http"
	"net/url"
	"testing"
)

func TestFieldSelector(t *testing.T) {
	obj := []byte(`{"metadata":{"name":"vm1","namespace":"p","labels":{"app":"web"}},"status":{"nodeName":"n1","phase":"Running","cores":2}}`)
	for q, want := range map[string]bool{
		"metadata.name=vm1":                       true,
		"metadata.name==vm1":                      true,
		"metadata.name!=vm1":                      false,
		"metadata.name=vm2":                       false,
		"status.nodeName=n1,status.phase=Running": true,
		"status.nodeName=n1,status.phase=Stopped": false,
		"spec.nodeName=":                          true, // absent is empty
		"status.nodeName!=":                       true,
		"status.cores=2":                          true,
	} {
		r := &http.Request{URL: &url.URL{RawQuery: url.Values{"fieldSelector": {q}, "labelSelector": {"app=web"}}.Encode()}}
		sel, err := parseSelector(r)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if got := sel.Matches(obj); got != want {
			t.Errorf("%s: %t, want %t", q, got, want)
		}
	}
	for _, bad := range []string{"metadata.name", "metadata..name=x", "=x"} {
		r := &http.Request{URL: &url.URL{RawQuery: url.Values{"fieldSelector": {bad}}.Encode()}}
		if _, err := parseSelector(r); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
