package registry

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("Secret", typed[*v1alpha1.Secret]{
		Default:        defaultSecret,
		Validate:       validateSecret,
		ValidateUpdate: validateSecretUpdate,
	})
}

// defaultSecret sets the type and, as Kubernetes does, moves stringData into data.
func defaultSecret(s *v1alpha1.Secret) {
	if s.Type == "" {
		s.Type = v1alpha1.SecretTypeOpaque
	}
	if len(s.StringData) > 0 && s.Data == nil {
		s.Data = make(map[string][]byte, len(s.StringData))
	}
	for k, v := range s.StringData {
		s.Data[k] = []byte(v)
	}
	s.StringData = nil
}

var secretTypes = []string{
	string(v1alpha1.SecretTypeOpaque), string(v1alpha1.SecretTypeDockerConfigJSON),
	string(v1alpha1.SecretTypeCloudInit), string(v1alpha1.SecretTypeSysprep),
	string(v1alpha1.SecretTypeRakhshCloudInit), string(v1alpha1.SecretTypeRakhshSysprep),
}

var secretKeyRe = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)

const maxSecretKey = 253

func checkSecretKey(k string) string {
	if len(k) > maxSecretKey || !secretKeyRe.MatchString(k) || k == "." || k == ".." {
		return fmt.Sprintf("a key must be 1 to %d characters of letters, digits, '-', '_' or '.' (not \".\" or \"..\")", maxSecretKey)
	}
	return ""
}

func secretSortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func validateSecret(s *v1alpha1.Secret) errs.FieldErrors {
	var fe errs.FieldErrors
	switch s.Type {
	case "", v1alpha1.SecretTypeOpaque, v1alpha1.SecretTypeDockerConfigJSON, v1alpha1.SecretTypeCloudInit,
		v1alpha1.SecretTypeSysprep, v1alpha1.SecretTypeRakhshCloudInit, v1alpha1.SecretTypeRakhshSysprep:
	default:
		fe.NotSupported("type", string(s.Type), secretTypes)
	}
	// The effective content: data with stringData merged over it.
	content := make(map[string][]byte, len(s.Data)+len(s.StringData))
	total := 0
	for _, k := range secretSortedKeys(s.Data) {
		if msg := checkSecretKey(k); msg != "" {
			fe.Invalid("data", k, msg)
		}
		content[k] = s.Data[k]
	}
	for _, k := range secretSortedKeys(s.StringData) {
		if msg := checkSecretKey(k); msg != "" {
			fe.Invalid("stringData", k, msg)
		}
		content[k] = []byte(s.StringData[k])
	}
	for k, v := range content {
		total += len(k) + len(v)
	}
	if total > v1alpha1.SecretMaxSize {
		fe.Invalid("data", nil, fmt.Sprintf("a Secret may hold at most 1 MiB of keys and values (has %d bytes)", total))
	}

	// where names the field a key came from, for error paths.
	where := func(k string) string {
		if _, ok := s.StringData[k]; ok {
			return "stringData"
		}
		return "data"
	}
	switch {
	case s.Type == v1alpha1.SecretTypeDockerConfigJSON:
		v, ok := content[v1alpha1.SecretKeyDockerConfigJSON]
		if !ok {
			fe.Required("data[.dockerconfigjson]", "a kubernetes.io/dockerconfigjson Secret needs the key .dockerconfigjson")
		} else {
			var doc map[string]any
			if err := json.Unmarshal(v, &doc); err != nil || doc == nil {
				fe.Invalid(where(v1alpha1.SecretKeyDockerConfigJSON)+"[.dockerconfigjson]", nil, "must be a JSON object such as {\"auths\":{...}}")
			}
		}
	case s.Type.IsCloudInit():
		_, a := content[v1alpha1.SecretKeyUserData]
		_, b := content[v1alpha1.SecretKeyUserDataLower]
		if !a && !b {
			fe.Required("data[userData]", "a cloud-init Secret needs the key userData")
		}
	case s.Type.IsSysprep():
		found := false
		for _, k := range []string{v1alpha1.SecretKeyAutounattend, v1alpha1.SecretKeyUnattend} {
			v, ok := content[k]
			if !ok {
				continue
			}
			found = true
			if err := checkXML(v); err != nil {
				fe.Invalid(where(k)+"["+k+"]", nil, "must be a well-formed XML answer file: "+err.Error())
			}
		}
		if !found {
			fe.Required("data[autounattend.xml]", "a sysprep Secret needs autounattend.xml or unattend.xml")
		}
	}
	return fe
}

// checkXML reports whether b is well-formed XML with a root element.
func checkXML(b []byte) error {
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	root := false
	for {
		t, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if _, ok := t.(xml.StartElement); ok {
			root = true
		}
	}
	if !root {
		return errors.New("no root element")
	}
	return nil
}

func sameSecretData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

func validateSecretUpdate(n, o *v1alpha1.Secret) errs.FieldErrors {
	var fe errs.FieldErrors
	chkUnchanged(&fe, "type", n.Type, o.Type, "")
	if o.Immutable != nil && *o.Immutable {
		if n.Immutable == nil || !*n.Immutable {
			fe.Forbidden("immutable", "cannot be unset once the Secret is immutable")
		}
		if !sameSecretData(n.Data, o.Data) || len(n.StringData) > 0 {
			fe.Forbidden("data", "cannot be changed: the Secret is immutable")
		}
	}
	return fe
}
