package images

import (
	"bytes"
	"testing"
)

// FuzzDetectFormat: detection never panics, is deterministic, only looks at the first
// HeaderSize bytes, and the qcow2 header check never panics and refuses non-qcow2 input.
func FuzzDetectFormat(f *testing.F) {
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Add([]byte("KDMV"))
	f.Add([]byte{})
	iso := make([]byte, 0x8010)
	copy(iso[0x8001:], "CD001")
	f.Add(iso)
	f.Fuzz(func(t *testing.T, data []byte) {
		got := DetectFormat(data)
		if again := DetectFormat(bytes.Clone(data)); again != got {
			t.Fatalf("not deterministic: %s then %s", got, again)
		}
		if len(data) > HeaderSize && DetectFormat(data[:HeaderSize]) != got {
			t.Fatal("detection looked beyond HeaderSize")
		}
		if got == FormatQCOW2 && !bytes.HasPrefix(data, []byte("QFI\xfb")) {
			t.Fatal("qcow2 without its magic")
		}
		_ = CheckSupported(got)
		hd, err := CheckQCOW2Header(data)
		if err == nil {
			if got != FormatQCOW2 {
				t.Fatalf("header check accepted a %s file", got)
			}
			if hd.Version != 2 && hd.Version != 3 {
				t.Fatalf("accepted version %d", hd.Version)
			}
		}
	})
}

// FuzzCheckVMDK: the VMDK checks never panic, and whatever they accept names no parent and
// no extent in another file.
func FuzzCheckVMDK(f *testing.F) {
	f.Add([]byte("# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\nRW 2048 SPARSE \"a.vmdk\"\n"))
	f.Add([]byte("createType=\"streamOptimized\"\nparentFileNameHint=\"/etc/passwd\"\n"))
	f.Add([]byte("createType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/shadow\" 0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := CheckVMDKDescriptor(data); err == nil {
			s := string(data)
			if i := bytes.IndexByte(data, 0); i >= 0 {
				s = s[:i]
			}
			if bytes.Contains([]byte(s), []byte("FLAT \"/")) {
				t.Fatalf("accepted a flat extent in a host file: %q", s)
			}
		}
		hdr := append([]byte("KDMV"), data...)
		_ = CheckVMDK(bytes.NewReader(hdr))
	})
}

// FuzzParseDockerConfigJSON: a pull secret's content never panics the parser, and every host
// it returns is a bare host (no scheme, no path).
func FuzzParseDockerConfigJSON(f *testing.F) {
	f.Add([]byte(`{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"}}}`))
	f.Add([]byte(`{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}`))
	f.Add([]byte(`{"auths":{"h":{"auth":"!!"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseDockerConfigJSON(data)
		if err != nil {
			return
		}
		for h := range m {
			if bytes.Contains([]byte(h), []byte("/")) || bytes.HasPrefix([]byte(h), []byte("http")) && bytes.Contains([]byte(h), []byte("://")) {
				t.Fatalf("host %q is not bare", h)
			}
		}
	})
}

// FuzzUploadToken: only a well-formed token is ever taken from an upload URL.
func FuzzUploadToken(f *testing.F) {
	f.Add("https://h:1/upload/" + NewUploadToken())
	f.Add("/upload/../../etc/passwd")
	f.Add("/upload/")
	f.Fuzz(func(t *testing.T, url string) {
		tok := UploadToken(url)
		if tok != "" && !tokenRe.MatchString(tok) {
			t.Fatalf("token %q from %q", tok, url)
		}
	})
}
