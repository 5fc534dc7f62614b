package provision

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// readISO is an independent reader for the tests: it returns the volume label and the root
// files of the primary (names as recorded) or the Joliet tree.
func readISO(img []byte, joliet bool) (string, map[string][]byte, error) {
	if len(img)%sectorSize != 0 || len(img) < 19*sectorSize {
		return "", nil, errors.New("short image")
	}
	n := 16
	if joliet {
		n = 17
	}
	vd := img[n*sectorSize : (n+1)*sectorSize]
	if string(vd[1:6]) != "CD001" || (joliet && (vd[0] != 2 || string(vd[88:91]) != "%/E")) || (!joliet && vd[0] != 1) {
		return "", nil, fmt.Errorf("descriptor %d is not the expected one", n)
	}
	if got := binary.LittleEndian.Uint32(vd[80:]); int(got)*sectorSize != len(img) {
		return "", nil, fmt.Errorf("volume size %d sectors, image has %d", got, len(img)/sectorSize)
	}
	decode := func(b []byte) string {
		if !joliet {
			return string(b)
		}
		u := make([]uint16, len(b)/2)
		for i := range u {
			u[i] = binary.BigEndian.Uint16(b[2*i:])
		}
		return string(utf16.Decode(u))
	}
	label := strings.TrimRight(decode(vd[40:72]), " ")
	root := vd[156:190]
	lba, size := binary.LittleEndian.Uint32(root[2:]), binary.LittleEndian.Uint32(root[10:])
	if binary.BigEndian.Uint32(root[6:]) != lba || binary.BigEndian.Uint32(root[14:]) != size {
		return "", nil, errors.New("both-endian fields disagree")
	}
	files := map[string][]byte{}
	dir := img[int(lba)*sectorSize : int(lba)*sectorSize+int(size)]
	for off := 0; off < len(dir); {
		l := int(dir[off])
		if l == 0 { // rest of the sector is padding
			off = (off/sectorSize + 1) * sectorSize
			continue
		}
		rec := dir[off : off+l]
		idLen := int(rec[32])
		id := rec[33 : 33+idLen]
		off += l
		if idLen == 1 && (id[0] == 0 || id[0] == 1) {
			continue
		}
		flba, fsize := binary.LittleEndian.Uint32(rec[2:]), binary.LittleEndian.Uint32(rec[10:])
		if int(flba)*sectorSize+int(fsize) > len(img) {
			return "", nil, errors.New("extent beyond the image")
		}
		files[decode(id)] = img[int(flba)*sectorSize : int(flba)*sectorSize+int(fsize)]
	}
	return label, files, nil
}

var testTime = time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)

func TestWriteISORoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 300) // spans three sectors
	files := []File{{Name: "user-data", Data: []byte("#cloud-config\n")}, {Name: "meta-data", Data: []byte("instance-id: x\n")},
		{Name: "big.bin", Data: big}, {Name: "empty", Data: nil}}
	img, err := WriteISO(ISOOptions{VolumeID: "cidata", Time: testTime}, files)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := WriteISO(ISOOptions{VolumeID: "cidata", Time: testTime}, files)
	if !bytes.Equal(img, again) {
		t.Error("the same input gave different images")
	}
	label, got, err := readISO(img, true)
	if err != nil {
		t.Fatal(err)
	}
	if label != "cidata" {
		t.Errorf("Joliet label %q", label)
	}
	for _, f := range files {
		if !bytes.Equal(got[f.Name], f.Data) {
			t.Errorf("Joliet %s: %d bytes, want %d", f.Name, len(got[f.Name]), len(f.Data))
		}
	}
	label, got, err = readISO(img, false)
	if err != nil {
		t.Fatal(err)
	}
	if label != "cidata" {
		t.Errorf("primary label %q", label)
	}
	if !bytes.Equal(got["USER_DATA.;1"], files[0].Data) || !bytes.Equal(got["BIG.BIN;1"], big) {
		t.Errorf("primary names/data wrong: %v", keys(got))
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestWriteISOWithIsoinfo reads an image back with isoinfo (genisoimage), a reader that
// shares no code with this package.
func TestWriteISOWithIsoinfo(t *testing.T) {
	isoinfo, err := exec.LookPath("isoinfo")
	if err != nil {
		t.Fatal("isoinfo not found: install genisoimage (scripts/install-deps.sh)")
	}
	files := []File{{Name: "autounattend.xml", Data: []byte("<unattend>a</unattend>\n")}, {Name: "unattend.xml", Data: []byte("<unattend>b</unattend>\n")}}
	img, err := WriteISO(ISOOptions{VolumeID: "sysprep", Time: testTime}, files)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "s.iso")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(isoinfo, "-d", "-i", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Volume id: sysprep") || !strings.Contains(string(out), "Joliet with UCS level 3") {
		t.Fatalf("isoinfo -d: %v\n%s", err, out)
	}
	out, err = exec.Command(isoinfo, "-J", "-f", "-i", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "/autounattend.xml") || !strings.Contains(string(out), "/unattend.xml") {
		t.Fatalf("isoinfo -J -f: %v\n%s", err, out)
	}
	for _, f := range files {
		out, err := exec.Command(isoinfo, "-J", "-i", p, "-x", "/"+f.Name).Output()
		if err != nil || !bytes.Equal(out, f.Data) {
			t.Errorf("isoinfo -x %s: %v: %q", f.Name, err, out)
		}
	}
}

func TestWriteISOErrors(t *testing.T) {
	ok := []File{{Name: "a", Data: []byte("x")}}
	cases := []struct {
		vol   string
		files []File
		want  string
	}{
		{"", ok, "volume ID"},
		{"a b", ok, "volume ID"},
		{"seventeen-chars-x", ok, "volume ID"},
		{"v", nil, "1-16 files"},
		{"v", []File{{Name: "a/x"}}, "only letters"},
		{"v", []File{{Name: ".hidden"}}, "starts with '.'"},
		{"v", []File{{Name: strings.Repeat("a", 65)}}, "1-64"},
		{"v", []File{{Name: "a"}, {Name: "a"}}, "given twice"},
		{"v", []File{{Name: "a-b"}, {Name: "a_b"}}, "same ISO 9660 name"},
	}
	for _, c := range cases {
		_, err := WriteISO(ISOOptions{VolumeID: c.vol, Time: testTime}, c.files)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("WriteISO(%q, %v) = %v, want an error with %q", c.vol, c.files, err, c.want)
		}
	}
}

func TestBuild(t *testing.T) {
	uid := "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
	secret := func(typ v1alpha1.SecretType, data map[string]string) *v1alpha1.Secret {
		s := &v1alpha1.Secret{Type: typ, Data: map[string][]byte{}}
		s.Name = "s1"
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		return s
	}
	m, err := Build(Source{VMName: "web", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeUserData, UserData: "#cloud-config\n"}})
	if err != nil || m.Label != "cidata" || len(m.Files) != 2 || string(m.Files[0].Data) != "instance-id: "+uid+"\nlocal-hostname: web\n" {
		t.Fatalf("inline: %+v %v", m, err)
	}
	m, err = Build(Source{VMName: "web", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeUserDataRef, UserDataRef: &v1alpha1.ProvisioningSecret{Name: "s1"}},
		Secret: secret(v1alpha1.SecretTypeCloudInit, map[string]string{"userdata": "#!/bin/sh\n"})})
	if err != nil || string(m.Files[1].Data) != "#!/bin/sh\n" {
		t.Fatalf("ref: %+v %v", m, err)
	}
	m, err = Build(Source{VMName: "w", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeSysprepRef, SysprepRef: &v1alpha1.ProvisioningSecret{Name: "s1"}},
		Secret: secret(v1alpha1.SecretTypeSysprep, map[string]string{"unattend.xml": "<u/>", "autounattend.xml": "<a/>"})})
	if err != nil || m.Label != "sysprep" || len(m.Files) != 2 || m.Files[0].Name != "autounattend.xml" {
		t.Fatalf("sysprep: %+v %v", m, err)
	}
	const secretValue = "s3cr3t-password"
	bad := []struct {
		src  Source
		want string
	}{
		{Source{VMName: "w", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeUserDataRef}}, "no Secret"},
		{Source{VMName: "w", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeUserDataRef},
			Secret: secret(v1alpha1.SecretTypeCloudInit, map[string]string{"other": secretValue})}, "no key userData"},
		{Source{VMName: "w", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeUserDataRef},
			Secret: secret(v1alpha1.SecretTypeDockerConfigJSON, map[string]string{"userData": secretValue})}, "has type kubernetes.io/dockerconfigjson"},
		{Source{VMName: "w", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeSysprepRef},
			Secret: secret(v1alpha1.SecretTypeSysprep, map[string]string{"userData": secretValue})}, "neither autounattend.xml nor unattend.xml"},
		{Source{VMName: "w", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: v1alpha1.ProvisioningTypeSysprepRef},
			Secret: secret(v1alpha1.SecretTypeSysprep, map[string]string{"unattend.xml": "<u/>", "extra": secretValue})}, "keys extra are not sysprep files"},
		{Source{VMName: "w", VMUID: uid, Provisioning: &v1alpha1.Provisioning{Type: "Other"}}, "is not one of"},
	}
	for i, c := range bad {
		_, err := Build(c.src)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("case %d: %v, want an error with %q", i, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), secretValue) {
			t.Errorf("case %d: the error quotes the Secret's data: %v", i, err)
		}
	}
}

// FuzzWriteISO: any input either is refused or gives an image the reader gets back intact.
func FuzzWriteISO(f *testing.F) {
	f.Add("cidata", "user-data", []byte("#cloud-config\n"), "meta-data", []byte("instance-id: x\n"))
	f.Add("sysprep", "autounattend.xml", []byte("<a/>"), "unattend.xml", []byte{})
	f.Add("v", "a", bytes.Repeat([]byte{1}, 5000), "A", []byte("x"))
	f.Fuzz(func(t *testing.T, vol, n1 string, d1 []byte, n2 string, d2 []byte) {
		files := []File{{Name: n1, Data: d1}, {Name: n2, Data: d2}}
		img, err := WriteISO(ISOOptions{VolumeID: vol, Time: testTime}, files)
		if err != nil {
			return
		}
		for _, joliet := range []bool{true, false} {
			label, got, err := readISO(img, joliet)
			if err != nil {
				t.Fatalf("joliet=%v: %v", joliet, err)
			}
			if label != vol || len(got) != 2 {
				t.Fatalf("joliet=%v: label %q, %d files", joliet, label, len(got))
			}
		}
		_, got, _ := readISO(img, true)
		for _, f := range files {
			if !bytes.Equal(got[f.Name], f.Data) {
				t.Fatalf("%s differs", f.Name)
			}
		}
	})
}

// BenchmarkWriteISO measures a typical cloud-init seed (64 KiB of user data).
func BenchmarkWriteISO(b *testing.B) {
	files := []File{{Name: "meta-data", Data: []byte("instance-id: 6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f\nlocal-hostname: web\n")},
		{Name: "user-data", Data: bytes.Repeat([]byte("# cloud-config line\n"), 64<<10/20)}}
	for i := 0; i < b.N; i++ {
		if _, err := WriteISO(ISOOptions{VolumeID: "cidata", Time: testTime}, files); err != nil {
			b.Fatal(err)
		}
	}
}
