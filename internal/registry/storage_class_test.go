package registry

import (
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func TestStorageClassValidate(t *testing.T) {
	s := tkStrategy(t, "StorageClass")
	sc := func(spec v1alpha1.StorageClassSpec) *v1alpha1.StorageClass {
		o := &v1alpha1.StorageClass{ObjectMeta: v1alpha1.ObjectMeta{Name: "c"}, Spec: spec}
		s.Default(o)
		return o
	}
	local := func(p string) *v1alpha1.StorageClassLocal { return &v1alpha1.StorageClassLocal{Path: p} }
	shared := func(p string) *v1alpha1.StorageClassShared { return &v1alpha1.StorageClassShared{Path: p} }
	tests := []struct {
		name string
		obj  *v1alpha1.StorageClass
		want []tkCause
	}{
		{"local default pool", sc(v1alpha1.StorageClassSpec{Type: "Local"}), nil},
		{"local path", sc(v1alpha1.StorageClassSpec{Type: "Local", Local: local("/srv/disks")}), nil},
		{"local path cleaned", sc(v1alpha1.StorageClassSpec{Type: "Local", Local: local("/srv/disks/")}), nil},
		{"local relative", sc(v1alpha1.StorageClassSpec{Type: "Local", Local: local("srv/disks")}), []tkCause{tkInvalid("spec.local.path")}},
		{"local root", sc(v1alpha1.StorageClassSpec{Type: "Local", Local: local("/")}), []tkCause{tkInvalid("spec.local.path")}},
		{"local comma", sc(v1alpha1.StorageClassSpec{Type: "Local", Local: local("/a,b")}), []tkCause{tkInvalid("spec.local.path")}},
		{"local with shared", sc(v1alpha1.StorageClassSpec{Type: "Local", Shared: shared("/mnt/nfs")}), []tkCause{tkForbidden("spec.shared")}},
		{"shared", sc(v1alpha1.StorageClassSpec{Type: "Shared", Shared: shared("/mnt/nfs")}), nil},
		{"shared no path", sc(v1alpha1.StorageClassSpec{Type: "Shared"}), []tkCause{tkRequired("spec.shared.path")}},
		{"shared empty path", sc(v1alpha1.StorageClassSpec{Type: "Shared", Shared: shared("")}), []tkCause{tkRequired("spec.shared.path")}},
		{"shared with local", sc(v1alpha1.StorageClassSpec{Type: "Shared", Shared: shared("/mnt/nfs"), Local: local("")}), []tkCause{tkForbidden("spec.local")}},
		{"no type", sc(v1alpha1.StorageClassSpec{}), []tkCause{tkRequired("spec.type")}},
		{"rbd reserved", sc(v1alpha1.StorageClassSpec{Type: "RBD"}), []tkCause{tkInvalid("spec.type")}},
		{"lvm-thin reserved", sc(v1alpha1.StorageClassSpec{Type: "LVMThin"}), []tkCause{tkInvalid("spec.type")}},
		{"unknown type", sc(v1alpha1.StorageClassSpec{Type: "NFS"}), []tkCause{tkNotSupported("spec.type")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tkCheck(t, s.Validate(tc.obj), tc.want...) })
	}
	if got := sc(v1alpha1.StorageClassSpec{Type: "Local", Local: local("/srv/disks/")}).Spec.Local.Path; got != "/srv/disks" {
		t.Errorf("cleaned path = %q", got)
	}
	fe := s.Validate(sc(v1alpha1.StorageClassSpec{Type: "RBD"}))
	if len(fe) != 1 || !strings.Contains(fe[0].Message, "not supported yet") {
		t.Errorf("RBD message: %v", fe)
	}
	bad := sc(v1alpha1.StorageClassSpec{Type: "Local"})
	bad.Annotations = map[string]string{v1alpha1.AnnotationDefaultStorageClass: "yes"}
	tkCheck(t, s.Validate(bad), tkInvalid("metadata.annotations."+v1alpha1.AnnotationDefaultStorageClass))
}

func TestStorageClassUpdate(t *testing.T) {
	s := tkStrategy(t, "StorageClass")
	old := &v1alpha1.StorageClass{ObjectMeta: v1alpha1.ObjectMeta{Name: "c"},
		Spec: v1alpha1.StorageClassSpec{Type: "Shared", Shared: &v1alpha1.StorageClassShared{Path: "/mnt/a"}}}
	same := *old
	same.Annotations = map[string]string{v1alpha1.AnnotationDefaultStorageClass: "true"}
	tkCheck(t, s.ValidateUpdate(&same, old))
	moved := *old
	moved.Spec.Shared = &v1alpha1.StorageClassShared{Path: "/mnt/b"}
	tkCheck(t, s.ValidateUpdate(&moved, old), tkForbidden("spec.shared.path"))
	retyped := *old
	retyped.Spec = v1alpha1.StorageClassSpec{Type: "Local"}
	tkCheck(t, s.ValidateUpdate(&retyped, old), tkForbidden("spec.type"), tkForbidden("spec.shared.path"))
}

func FuzzValidateStorageClass(f *testing.F) {
	tkFuzzSeeds(f, "StorageClass",
		`{"metadata":{"name":"local","annotations":{"storageclass.kubernetes.io/is-default-class":"true"}},"spec":{"type":"Local"}}`,
		`{"metadata":{"name":"fast"},"spec":{"type":"Local","local":{"path":"/srv/fast/"}}}`,
		`{"metadata":{"name":"nfs"},"spec":{"type":"Shared","shared":{"path":"/mnt/nfs"}}}`,
		`{"metadata":{"name":"ceph"},"spec":{"type":"RBD"}}`,
		`{"metadata":{"name":"x"},"spec":{"type":"Shared","shared":{"path":"../x"},"local":{}}}`,
	)
}
