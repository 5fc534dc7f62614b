package registry

import (
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestSecretDefault(t *testing.T) {
	s := tkStrategy(t, "Secret")
	sec := &v1alpha1.Secret{Data: map[string][]byte{"a": []byte("1"), "b": []byte("2")}, StringData: map[string]string{"b": "two", "c": "3"}}
	s.Default(sec)
	if sec.Type != v1alpha1.SecretTypeOpaque || sec.StringData != nil {
		t.Errorf("type %q, stringData %v", sec.Type, sec.StringData)
	}
	if got := tkJSON(t, sec.Data); got != tkJSON(t, map[string][]byte{"a": []byte("1"), "b": []byte("two"), "c": []byte("3")}) {
		t.Errorf("data = %s", got)
	}
	only := &v1alpha1.Secret{Type: v1alpha1.SecretTypeCloudInit, StringData: map[string]string{"userData": "#cloud-config\n"}}
	s.Default(only)
	s.Default(only)
	if string(only.Data["userData"]) != "#cloud-config\n" || only.Type != v1alpha1.SecretTypeCloudInit {
		t.Errorf("stringData only: %+v", only)
	}
}

func TestSecretValidate(t *testing.T) {
	s := tkStrategy(t, "Secret")
	xmlDoc := `<?xml version="1.0" encoding="utf-8"?><unattend xmlns="urn:schemas-microsoft-com:unattend"><settings pass="oobeSystem"/></unattend>`
	mk := func(typ string, data map[string]string, str map[string]string) *v1alpha1.Secret {
		sec := &v1alpha1.Secret{Type: v1alpha1.SecretType(typ), StringData: str}
		if data != nil {
			sec.Data = map[string][]byte{}
			for k, v := range data {
				sec.Data[k] = []byte(v)
			}
		}
		return sec
	}
	tests := []struct {
		name   string
		obj    *v1alpha1.Secret
		noDflt bool
		want   []tkCause
	}{
		{"opaque empty", mk("", nil, nil), false, nil},
		{"opaque keys", mk("Opaque", map[string]string{"a.b_c-D9": "x", ".hidden": "y"}, nil), false, nil},
		{"bad type", mk("kubernetes.io/tls", nil, nil), false, []tkCause{tkNotSupported("type")}},
		{"bad data key", mk("", map[string]string{"a/b": "x"}, nil), false, []tkCause{tkInvalid("data")}},
		{"bad stringData key (before defaulting)", mk("", nil, map[string]string{"..": "x"}), true, []tkCause{tkInvalid("stringData")}},
		{"too large", mk("", map[string]string{"big": strings.Repeat("x", 1<<20)}, nil), false, []tkCause{tkInvalid("data")}},
		{"cloud-init", mk("provisioning.virtualization.deckhouse.io/cloud-init", map[string]string{"userData": "#cloud-config"}, nil), false, nil},
		{"cloud-init rakhsh lower key", mk("provisioning.virtualization.rakhsh.io/cloud-init", nil, map[string]string{"userdata": "#!/bin/sh"}), false, nil},
		{"cloud-init without key", mk("provisioning.virtualization.deckhouse.io/cloud-init", map[string]string{"user": "x"}, nil), false,
			[]tkCause{tkRequired("data[userData]")}},
		{"sysprep", mk("provisioning.virtualization.deckhouse.io/sysprep", map[string]string{"autounattend.xml": xmlDoc}, nil), false, nil},
		{"sysprep unattend", mk("provisioning.virtualization.rakhsh.io/sysprep", map[string]string{"unattend.xml": xmlDoc}, nil), false, nil},
		{"sysprep without key", mk("provisioning.virtualization.deckhouse.io/sysprep", map[string]string{"a.xml": xmlDoc}, nil), false,
			[]tkCause{tkRequired("data[autounattend.xml]")}},
		{"sysprep bad xml", mk("provisioning.virtualization.deckhouse.io/sysprep", map[string]string{"autounattend.xml": "<unattend>", "unattend.xml": "text"}, nil), false,
			[]tkCause{tkInvalid("data[autounattend.xml]"), tkInvalid("data[unattend.xml]")}},
		{"sysprep bad xml in stringData", mk("provisioning.virtualization.deckhouse.io/sysprep", nil, map[string]string{"unattend.xml": "<a></b>"}), true,
			[]tkCause{tkInvalid("stringData[unattend.xml]")}},
		{"dockerconfigjson", mk("kubernetes.io/dockerconfigjson", map[string]string{".dockerconfigjson": `{"auths":{"r.io":{"auth":"eDp5"}}}`}, nil), false, nil},
		{"dockerconfigjson missing", mk("kubernetes.io/dockerconfigjson", map[string]string{"config.json": `{}`}, nil), false,
			[]tkCause{tkRequired("data[.dockerconfigjson]")}},
		{"dockerconfigjson not json", mk("kubernetes.io/dockerconfigjson", map[string]string{".dockerconfigjson": `[1]`}, nil), false,
			[]tkCause{tkInvalid("data[.dockerconfigjson]")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.noDflt {
				s.Default(tt.obj)
			}
			tkCheck(t, s.Validate(tt.obj), tt.want...)
		})
	}
}

func TestSecretUpdate(t *testing.T) {
	s := tkStrategy(t, "Secret")
	yes, no := true, false
	mk := func(typ string, v string, imm *bool) *v1alpha1.Secret {
		return &v1alpha1.Secret{Type: v1alpha1.SecretType(typ), Data: map[string][]byte{"k": []byte(v)}, Immutable: imm}
	}
	tkCheck(t, s.ValidateUpdate(mk("Opaque", "2", nil), mk("Opaque", "1", nil)))
	tkCheck(t, s.ValidateUpdate(mk("Opaque", "2", &yes), mk("Opaque", "1", &no)))
	tkCheck(t, s.ValidateUpdate(mk("Opaque", "1", &yes), mk("Opaque", "1", &yes)))
	tkCheck(t, s.ValidateUpdate(mk("kubernetes.io/dockerconfigjson", "1", nil), mk("Opaque", "1", nil)), tkForbidden("type"))
	tkCheck(t, s.ValidateUpdate(mk("Opaque", "2", &no), mk("Opaque", "1", &yes)), tkForbidden("immutable"), tkForbidden("data"))
	tkCheck(t, s.ValidateUpdate(mk("Opaque", "1", nil), mk("Opaque", "1", &yes)), tkForbidden("immutable"))
	empty := &v1alpha1.Secret{Type: "Opaque", Data: map[string][]byte{}, Immutable: &yes}
	tkCheck(t, s.ValidateUpdate(&v1alpha1.Secret{Type: "Opaque", Immutable: &yes}, empty))
}

func FuzzValidateSecret(f *testing.F) {
	tkFuzzSeeds(f, "Secret",
		`{"type":"provisioning.virtualization.deckhouse.io/cloud-init","stringData":{"userData":"#cloud-config\n"}}`,
		`{"type":"provisioning.virtualization.deckhouse.io/sysprep","data":{"autounattend.xml":"PGEvPg=="},"immutable":true}`,
		`{"type":"kubernetes.io/dockerconfigjson","data":{".dockerconfigjson":"e30="},"stringData":{"x":"y"}}`,
		`{"data":{"a/b":"AA=="}}`,
	)
}
