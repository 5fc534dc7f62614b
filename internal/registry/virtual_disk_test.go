package registry

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func tkDiskFrom(kind, name string) *v1alpha1.DataSource {
	return &v1alpha1.DataSource{Type: v1alpha1.DataSourceTypeObjectRef,
		ObjectRef: &v1alpha1.DataSourceObjectRef{Kind: v1alpha1.DataSourceObjectKind(kind), Name: name}}
}

func TestVirtualDiskDefault(t *testing.T) {
	s := tkStrategy(t, "VirtualDisk")
	tests := []struct {
		name string
		ds   *v1alpha1.DataSource
		mode v1alpha1.CloneMode
		want v1alpha1.CloneMode
	}{
		{"blank", nil, "", ""},
		{"from cluster image", tkDiskFrom("ClusterVirtualImage", "debian"), "", v1alpha1.CloneModeLinked},
		{"from image", tkDiskFrom("VirtualImage", "i"), "", v1alpha1.CloneModeLinked},
		{"from snapshot", tkDiskFrom("VirtualDiskSnapshot", "s"), "", v1alpha1.CloneModeLinked},
		{"from disk", tkDiskFrom("VirtualDisk", "d"), "", v1alpha1.CloneModeFull},
		{"explicit full kept", tkDiskFrom("VirtualImage", "i"), v1alpha1.CloneModeFull, v1alpha1.CloneModeFull},
		{"http", &v1alpha1.DataSource{Type: "HTTP", HTTP: &v1alpha1.DataSourceHTTP{URL: "https://h/x"}}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &v1alpha1.VirtualDisk{Spec: v1alpha1.VirtualDiskSpec{DataSource: tt.ds, CloneMode: tt.mode}}
			s.Default(d)
			s.Default(d)
			if d.Spec.CloneMode != tt.want {
				t.Errorf("cloneMode = %q, want %q", d.Spec.CloneMode, tt.want)
			}
		})
	}
}

func TestVirtualDiskValidate(t *testing.T) {
	s := tkStrategy(t, "VirtualDisk")
	disk := func(ds *v1alpha1.DataSource, size, class string, mode v1alpha1.CloneMode) *v1alpha1.VirtualDisk {
		return &v1alpha1.VirtualDisk{ObjectMeta: v1alpha1.ObjectMeta{Name: "root", Namespace: "proj"},
			Spec: v1alpha1.VirtualDiskSpec{DataSource: ds, CloneMode: mode,
				PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: v1alpha1.Quantity(size), StorageClassName: class}}}
	}
	upload := &v1alpha1.DataSource{Type: "Upload"}
	tkRunCases(t, s, []tkCase[*v1alpha1.VirtualDisk]{
		{"blank", disk(nil, "10Gi", "local", ""), nil},
		{"blank needs size", disk(nil, "", "", ""), []tkCause{tkRequired("spec.persistentVolumeClaim.size")}},
		{"from image without size", disk(tkDiskFrom("ClusterVirtualImage", "debian"), "", "", ""), nil},
		{"from image bigger", disk(tkDiskFrom("VirtualImage", "win"), "100Gi", "fast-nvme", "Full"), nil},
		{"from disk", disk(tkDiskFrom("VirtualDisk", "other"), "", "", ""), nil},
		{"upload", disk(upload, "20G", "", ""), nil},
		{"bad size", disk(nil, "ten gigs", "", ""), []tkCause{tkInvalid("spec.persistentVolumeClaim.size")}},
		{"tiny size", disk(nil, "512Ki", "", ""), []tkCause{tkInvalid("spec.persistentVolumeClaim.size")}},
		{"bad class", disk(nil, "1Gi", "Fast_Pool", ""), []tkCause{tkInvalid("spec.persistentVolumeClaim.storageClassName")}},
		{"bad clone mode", disk(tkDiskFrom("VirtualImage", "i"), "", "", "Thin"), []tkCause{tkNotSupported("spec.cloneMode")}},
		{"clone mode on blank", disk(nil, "1Gi", "", "Full"), []tkCause{tkForbidden("spec.cloneMode")}},
		{"clone mode on upload", disk(upload, "", "", "Linked"), []tkCause{tkForbidden("spec.cloneMode")}},
		{"linked from a disk", disk(tkDiskFrom("VirtualDisk", "d"), "", "", "Linked"), []tkCause{tkInvalid("spec.cloneMode")}},
		{"objectRef kind", disk(tkDiskFrom("VirtualMachine", "vm"), "", "", ""), []tkCause{tkNotSupported("spec.dataSource.objectRef.kind")}},
		{"objectRef other project", disk(&v1alpha1.DataSource{Type: "ObjectRef", ObjectRef: &v1alpha1.DataSourceObjectRef{
			Kind: "VirtualImage", Name: "i", Namespace: "other"}}, "", "", ""), []tkCause{tkForbidden("spec.dataSource.objectRef.namespace")}},
		{"from itself", disk(tkDiskFrom("VirtualDisk", "root"), "", "", ""), []tkCause{tkInvalid("spec.dataSource.objectRef.name")}},
		{"type mismatch", disk(&v1alpha1.DataSource{Type: "Upload", HTTP: &v1alpha1.DataSourceHTTP{URL: "https://h/x"}}, "", "", ""),
			[]tkCause{tkForbidden("spec.dataSource.http")}},
		{"many problems at once", disk(&v1alpha1.DataSource{Type: "HTTP", HTTP: &v1alpha1.DataSourceHTTP{URL: "gopher://x"}}, "-1Gi", "UP", "Full"),
			[]tkCause{tkInvalid("spec.dataSource.http.url"), tkInvalid("spec.persistentVolumeClaim.size"),
				tkInvalid("spec.persistentVolumeClaim.storageClassName"), tkForbidden("spec.cloneMode")}},
	})
}

func TestVirtualDiskUpdate(t *testing.T) {
	s := tkStrategy(t, "VirtualDisk")
	mk := func(size string) *v1alpha1.VirtualDisk {
		return &v1alpha1.VirtualDisk{Spec: v1alpha1.VirtualDiskSpec{DataSource: tkDiskFrom("VirtualImage", "i"),
			CloneMode: "Linked", PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: v1alpha1.Quantity(size), StorageClassName: "p"}}}
	}
	tkCheck(t, s.ValidateUpdate(mk("10Gi"), mk("10Gi")))
	tkCheck(t, s.ValidateUpdate(mk("20Gi"), mk("10Gi")))
	tkCheck(t, s.ValidateUpdate(mk("10240Mi"), mk("10Gi")))
	tkCheck(t, s.ValidateUpdate(mk("20Gi"), mk("")))
	shrink := s.ValidateUpdate(mk("5Gi"), mk("10Gi"))
	tkCheck(t, shrink, tkForbidden("spec.persistentVolumeClaim.size"))
	if len(shrink) == 1 && !strings.Contains(shrink[0].Message, "shrinking a disk is not supported") {
		t.Errorf("message = %q", shrink[0].Message)
	}
	tkCheck(t, s.ValidateUpdate(mk(""), mk("10Gi")), tkForbidden("spec.persistentVolumeClaim.size"))

	n := mk("10Gi")
	n.Spec.DataSource = tkDiskFrom("VirtualImage", "j")
	n.Spec.CloneMode = "Full"
	n.Spec.PersistentVolumeClaim.StorageClassName = "q"
	tkCheck(t, s.ValidateUpdate(n, mk("10Gi")), tkForbidden("spec.dataSource"), tkForbidden("spec.cloneMode"))

	// Naming another class is a move; clearing the name is refused.
	moved := mk("10Gi")
	moved.Spec.PersistentVolumeClaim.StorageClassName = "shared"
	tkCheck(t, s.ValidateUpdate(moved, mk("10Gi")))
	cleared := mk("10Gi")
	cleared.Spec.PersistentVolumeClaim.StorageClassName = ""
	tkCheck(t, s.ValidateUpdate(cleared, moved), tkForbidden("spec.persistentVolumeClaim.storageClassName"))
}

func FuzzValidateVirtualDisk(f *testing.F) {
	tkFuzzSeeds(f, "VirtualDisk",
		`{"metadata":{"name":"d","namespace":"p"},"spec":{"persistentVolumeClaim":{"size":"10Gi"}}}`,
		`{"spec":{"dataSource":{"type":"ObjectRef","objectRef":{"kind":"ClusterVirtualImage","name":"debian"}},"persistentVolumeClaim":{"size":20}}}`,
		`{"spec":{"dataSource":{"type":"HTTP","http":{"url":"http://h/x","checksum":{"sha256":"AA"}}},"cloneMode":"Linked"}}`,
		`{"spec":{"dataSource":{"type":"ObjectRef","objectRef":{"kind":"VirtualDisk","name":"x"}},"persistentVolumeClaim":{"size":"1Mi","storageClassName":"local"}}}`,
	)
}

// A manifest written for Deckhouse applies unchanged (but for apiVersion): no unknown
// fields, and it defaults and validates cleanly.
func TestDeckhouseManifestsDecode(t *testing.T) {
	docs := map[string]string{
		"VirtualDisk": `{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"VirtualDisk","metadata":{"name":"linux-vm-root","namespace":"lab"},
			"spec":{"persistentVolumeClaim":{"size":"10Gi","storageClassName":"local-path"},
			"dataSource":{"type":"ObjectRef","objectRef":{"kind":"VirtualImage","name":"ubuntu-22-04"}}}}`,
		"VirtualImage": `{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"VirtualImage","metadata":{"name":"ubuntu-22-04","namespace":"lab"},
			"spec":{"storage":"ContainerRegistry","dataSource":{"type":"HTTP","http":{"url":"https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"}}}}`,
		"ClusterVirtualImage": `{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"ClusterVirtualImage","metadata":{"name":"alpine"},
			"spec":{"dataSource":{"type":"ContainerImage","containerImage":{"image":"registry.example.com/images/alpine:3.20",
			"imagePullSecret":{"name":"regcred","namespace":"ops"}}}}}`,
		"VirtualMachineIPAddress": `{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"VirtualMachineIPAddress","metadata":{"name":"vm-ip","namespace":"lab"},
			"spec":{"type":"Static","staticIP":"10.66.10.14"}}`,
		"Secret": `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"sysprep","namespace":"lab"},"type":"provisioning.virtualization.deckhouse.io/sysprep",
			"stringData":{"unattend.xml":"<unattend xmlns=\"urn:schemas-microsoft-com:unattend\"/>"}}`,
	}
	for kind, doc := range docs {
		t.Run(kind, func(t *testing.T) {
			s := tkStrategy(t, kind)
			var generic any
			if err := json.Unmarshal([]byte(doc), &generic); err != nil {
				t.Fatal(err)
			}
			obj := s.New()
			tkCheck(t, CheckUnknownFields(generic, reflect.TypeOf(obj).Elem()))
			if err := json.Unmarshal([]byte(doc), obj); err != nil {
				t.Fatal(err)
			}
			s.Default(obj)
			tkCheck(t, s.Validate(obj))
		})
	}
}

// Status values that later name files are checked like spec values: a status write cannot
// make the disk controller look outside the data dir.
func TestStatusValuesThatNameFiles(t *testing.T) {
	disk := tkStrategy(t, "VirtualDisk")
	img := tkStrategy(t, "ClusterVirtualImage")
	vimg := tkStrategy(t, "VirtualImage")
	good := func() *v1alpha1.VirtualDisk {
		return &v1alpha1.VirtualDisk{Spec: v1alpha1.VirtualDiskSpec{PersistentVolumeClaim: v1alpha1.VirtualDiskPersistentVolumeClaim{Size: "1Gi"}},
			Status: v1alpha1.VirtualDiskStatus{StorageClassName: "default", NodeName: "host-a", Format: "qcow2"}}
	}
	if fe := disk.Validate(good()); len(fe) != 0 {
		t.Fatalf("a status the disk controller writes: %v", fe)
	}
	for _, c := range []struct {
		field string
		edit  func(*v1alpha1.VirtualDiskStatus)
	}{
		{"status.storageClassName", func(s *v1alpha1.VirtualDiskStatus) { s.StorageClassName = "../../../../tmp/x" }},
		{"status.storageClassName", func(s *v1alpha1.VirtualDiskStatus) { s.StorageClassName = ".." }},
		{"status.nodeName", func(s *v1alpha1.VirtualDiskStatus) { s.NodeName = "a/b" }},
		{"status.format", func(s *v1alpha1.VirtualDiskStatus) { s.Format = "vmdk" }},
	} {
		d := good()
		c.edit(&d.Status)
		if fe := disk.Validate(d); len(fe) != 1 || !strings.Contains(fmt.Sprint(fe), c.field) {
			t.Errorf("disk status %+v: got %v, want one error on %s", d.Status, fe, c.field)
		}
	}
	for _, st := range []v1alpha1.ImageStatus{
		{Format: "qcow2;rm"},
		{SHA256: "../../etc"},
		{UsedInNamespaces: []string{"ok", "Not/Ok"}},
	} {
		ci := &v1alpha1.ClusterVirtualImage{Spec: v1alpha1.ClusterVirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "Upload"}}, Status: st}
		if fe := img.Validate(ci); len(fe) != 1 || !strings.Contains(fmt.Sprint(fe), "status.") {
			t.Errorf("cluster image status %+v: got %v, want one status error", st, fe)
		}
		vi := &v1alpha1.VirtualImage{Spec: v1alpha1.VirtualImageSpec{DataSource: v1alpha1.DataSource{Type: "Upload"}}, Status: st}
		vimg.Default(vi)
		if fe := vimg.Validate(vi); len(fe) != 1 || !strings.Contains(fmt.Sprint(fe), "status.") {
			t.Errorf("image status %+v: got %v, want one status error", st, fe)
		}
	}
}
